"""`GeneratorPool`, the model replicas: multiplexed generators, Serve-batched forwards, encoding.

- `@serve.multiplexed` keeps up to `max_models_per_replica` models per replica (LRU). A model
  loads in a worker thread, so a cold load leaves the replica's loop free for the models
  already loaded; eviction calls `LoadedModel.release`, which drops the weights and, on
  CUDA, returns the cached blocks.
- `@serve.batch` merges concurrent requests into one forward. Serve 2.60 splits every batch by
  multiplexed model id, and `batch_size_fn` counts images, so `max_batch_size` caps images
  per forward whatever each request's n. A request larger than that is split before batching.
- The forward runs ON the replica's user loop (Serve's batching pattern): while it runs no
  new batch can form, so requests that arrive meanwhile wait and join the next, full batch
  instead of queueing up as many small batches.
- PNG + base64 encoding happens here, next to the model, not on the 0.25-CPU ingress.

Each image depends only on (model, seed, label, truncation) - the Sampler guarantees it - so a
served image is byte-identical to the same row of `ganaug generate`.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import weakref
from collections import Counter, deque

import numpy as np
from ray import serve

from ganaug.errors import UserError
from ganaug.imagecodec import encode_png  # the shards' encoder: served bytes equal shard bytes

logger = logging.getLogger("ray.serve")

# Batches run at once: one forward, plus one whose model is still loading (cold), so a cold
# load does not hold up the models already loaded.
MAX_CONCURRENT_BATCHES = 2


def b64_pngs(images: np.ndarray) -> list[str]:
    return [base64.b64encode(encode_png(im)).decode("ascii") for im in images]


def probe(sampler) -> None:
    """One tiny forward; raises when the model cannot produce an image of its shape."""
    shape = (1, sampler.resolution, sampler.resolution, sampler.channels)
    if sampler.kind == "noise":
        out = sampler.generate([0], [0] if sampler.conditional else None, 1.0)
    else:
        out = sampler.translate(np.zeros(shape, np.uint8))
    if out.shape != shape or out.dtype != np.uint8:
        raise RuntimeError(f"probe forward gave {out.dtype} {out.shape}, expected uint8 {shape}")


class LoadedModel:
    """What the multiplexer caches; `__del__` is its eviction hook (called on LRU unload)."""

    live: weakref.WeakSet = weakref.WeakSet()   # generator modules alive in this process

    def __init__(self, sampler):
        self.sampler = sampler
        LoadedModel.live.add(sampler.G)

    def release(self) -> None:
        sampler, self.sampler = self.sampler, None
        if sampler is None:
            return
        cuda = sampler.device.type == "cuda"
        del sampler
        gc.collect()
        if cuda:
            import torch

            torch.cuda.empty_cache()

    def __del__(self):  # the multiplexer calls this when it evicts; Python may call it again
        self.release()


def _images_in(jobs: list[tuple]) -> int:
    return sum(int(job[-1]) for job in jobs)  # every job ends with its image count


@serve.deployment(name="GeneratorPool")
class GeneratorPool:
    def __init__(self, uris: dict[str, str], max_models_per_replica: int = 4, max_batch_size: int = 32,
                 batch_wait_timeout_s: float = 0.01, torch_threads: int = 1, device: str = "cpu"):
        import torch

        torch.set_num_threads(torch_threads)
        self._uris = dict(uris)
        self._device = device
        self._max_batch_size = max_batch_size
        self._loads: Counter = Counter()
        self._batches: deque = deque(maxlen=4096)   # (kind, model, requests, images) per forward
        self._loaded: dict[str, weakref.ref] = {}   # for check_health: models this replica holds

        async def _ganaug_load_model(model_id: str) -> LoadedModel:
            return await self._load(model_id)

        # Built here, not at class level, so the LRU bound comes from the app's arguments.
        self._get_model = serve.multiplexed(max_num_models_per_replica=max_models_per_replica)(
            _ganaug_load_model)
        for fn in (self._sample_batch, self._translate_batch):
            fn.set_max_batch_size(max_batch_size)
            fn.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def _load(self, model_id: str) -> LoadedModel:
        from ganaug.sampling import Sampler

        if model_id not in self._uris:
            raise UserError(f"unknown model {model_id!r}")
        sampler = await asyncio.to_thread(Sampler.from_checkpoint, self._uris[model_id], self._device)
        self._loads[model_id] += 1
        model = LoadedModel(sampler)
        self._loaded[model_id] = weakref.ref(model)
        logger.info("loaded model %s (%s, %s)", model_id, sampler.family, sampler.checkpoint_id)
        return model

    async def _sampler(self, model_id: str):
        sampler = (await self._get_model(model_id)).sampler
        if sampler is None:  # evicted between the cache lookup and now: load it again
            sampler = (await self._get_model(model_id)).sampler
        return sampler

    # -- public methods, called through the ingress's handle (multiplexed_model_id set) --

    async def sample(self, seed: int, n: int, labels: list[int] | None, truncation: float,
                     size: tuple[int, int] | None = None) -> dict:
        """-> {"generator", "images": base64 PNGs}; image j from seed + j, labels[j], resized to
        `size` (H, W) as `ganaug generate --size` does (None: the model's resolution)."""
        mid = serve.get_multiplexed_model_id()
        step = self._max_batch_size
        size = None if size is None else (int(size[0]), int(size[1]))
        parts = await asyncio.gather(*(
            self._sample_batch((mid, float(truncation), seed + s, None if labels is None else labels[s:s + step],
                                size, min(step, n - s)))
            for s in range(0, n, step)))
        return {"generator": parts[0][1], "images": [d for p in parts for d in p[0]]}

    async def translate(self, images: np.ndarray) -> dict:
        """uint8 N x R x R x C -> {"generator", "png": the first translated image's PNG bytes}."""
        mid = serve.get_multiplexed_model_id()
        datas, generator = await self._translate_batch((mid, images, int(images.shape[0])))
        return {"generator": generator, "png": datas[0]}

    async def stats(self) -> dict:
        return {
            "loads": dict(self._loads),
            "live_generators": len(LoadedModel.live),
            "batches": [{"kind": k, "model": m, "requests": r, "images": i} for k, m, r, i in self._batches],
        }

    async def reset_stats(self) -> None:
        self._batches.clear()

    async def check_health(self) -> None:
        """Serve's health probe: every model this replica holds must still produce an image."""
        for mid, ref in list(self._loaded.items()):
            model = ref()
            sampler = model.sampler if model is not None else None
            if sampler is None:
                self._loaded.pop(mid, None)
                continue
            await asyncio.to_thread(probe, sampler)

    # -- Serve's batching; one batch holds one model (Serve splits by multiplexed id) --

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01, max_concurrent_batches=MAX_CONCURRENT_BATCHES,
                 batch_size_fn=_images_in)
    async def _sample_batch(self, jobs: list[tuple]) -> list:
        from ganaug.sampling import resize_images  # torch-backed, like Sampler: loaded in replicas only

        mid = jobs[0][0]
        sampler = await self._sampler(mid)
        out: list = [None] * len(jobs)
        by_truncation: dict[float, list[int]] = {}
        for i, job in enumerate(jobs):
            by_truncation.setdefault(job[1], []).append(i)
        for trunc, idx in by_truncation.items():
            seeds: list[int] = []
            labels: list[int] | None = [] if sampler.conditional else None
            for i in idx:
                _, _, seed, labs, _, n = jobs[i]
                seeds.extend(range(seed, seed + n))
                if labels is not None:
                    labels.extend(labs)
            images = sampler.generate(seeds, labels, trunc)   # on the loop: see the module doc
            self._batches.append(("sample", mid, len(idx), len(seeds)))
            start = 0
            for i in idx:
                size, n = jobs[i][4], jobs[i][5]
                # Each image is resized on its own (resize_images), so a job's bytes do not
                # depend on the other jobs of its batch.
                out[i] = (b64_pngs(resize_images(images[start:start + n], size)), sampler.checkpoint_id)
                start += n
        return out

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01, max_concurrent_batches=MAX_CONCURRENT_BATCHES,
                 batch_size_fn=_images_in)
    async def _translate_batch(self, jobs: list[tuple]) -> list:
        mid = jobs[0][0]
        sampler = await self._sampler(mid)
        batch = np.concatenate([images for _, images, _ in jobs])
        translated = sampler.translate(batch)
        self._batches.append(("translate", mid, len(jobs), int(batch.shape[0])))
        out, start = [], 0
        for _, images, n in jobs:
            out.append(([encode_png(im) for im in translated[start:start + n]], sampler.checkpoint_id))
            start += n
        return out
