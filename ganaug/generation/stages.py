"""The two stages of a generation run, as plain callables on numpy batches (Ray Data runs them).

    shard {index, start, stop}
      -> stage 1, sampling (an actor holding the model, GPU or CPU):
         SamplerActor: labels from the plan, seeds S+i, the filter, the --size resize
         TranslateActor: read the shard's input rows, translate them
         RestyleActor: read them, project into StyleGAN2's W+, restyle a layer group
         => one row per shard: uint8 `images` (rows x H x W x C), `labels`, `seeds`, ...
      -> stage 2, encoding and writing (CPU tasks): write_shards
         encode every image, build the Arrow table, stream it through ParquetWriter into
         part-NNNNN.parquet (hashed as it passes), then the shard's record
         => {index, file, rows, size, sha256, counts, fallback, candidates}

Why two stages: the model's device never waits for PNG encoding or uploads, and Ray Data's
backpressure sits between them (stage-1 outputs are bounded by the object store budget).
One shard stays one row end to end, so its bytes depend only on its rows, never on which
actor or task made it or how many there were. No Ray import here: these are Ray Data UDFs.
"""

from __future__ import annotations

import json

import numpy as np

from ganaug import shards, storage
from ganaug.generation.config import GenerationError
from ganaug.generation.filters import candidates_drawn, generate_rows, parse_filter
from ganaug.generation.plan import ShardJob
from ganaug.labels import count_labels


def _rows(batch: dict[str, np.ndarray]):
    for k in range(len(batch["index"])):
        yield k, int(batch["index"][k]), int(batch["start"][k]), int(batch["stop"][k])


class _SamplingStage:
    """Loads the Sampler once; each call turns shard ranges into image tensors."""

    def __init__(self, job: ShardJob):
        import torch

        from ganaug.sampling import Sampler

        # One thread per actor: parallelism comes from actors, and a fixed thread count keeps
        # CPU kernels' results independent of the actor count.
        torch.set_num_threads(max(1, job.threads))
        self.job = job
        self.sampler = Sampler.from_checkpoint(job.checkpoint_uri, device=job.device)
        if self.sampler.checkpoint_id != job.checkpoint_id:
            raise GenerationError(f"checkpoint {job.checkpoint_uri} changed during the run "
                                  f"(id {job.checkpoint_id} -> {self.sampler.checkpoint_id})")

    def make(self, start: int, stop: int) -> dict:
        """{"images": uint8 NHWC, "labels": int64, "seeds": int64, "fallback": int[, "sources": [str]]}."""
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {}
        for _, index, start, stop in _rows(batch):
            made = self.make(start, stop)
            # one row per shard; the arrays become fixed-shape tensor columns ([None]: a row of one)
            row = {"index": index, "start": start, "stop": stop, "images": made["images"],
                   "labels": made["labels"], "seeds": made["seeds"], "fallback": made["fallback"]}
            for key in ("sources", "projection"):  # translated rows' sources; restyle's projection error
                if key in made:
                    row[key] = json.dumps(made[key])
            for key, value in row.items():
                out.setdefault(key, []).append(value)
        return {k: np.stack(v) if k in ("images", "labels", "seeds") else np.asarray(v) for k, v in out.items()}


class SamplerActor(_SamplingStage):
    """Generates rows start..stop of a noise model: seeds S+i, labels from the plan."""

    def __init__(self, job: ShardJob):
        super().__init__(job)
        self.filter = None
        if job.filter:
            entry, arg = parse_filter(job.filter)
            self.filter = entry.build(arg, self.sampler)

    def make(self, start: int, stop: int) -> dict:
        job = self.job
        rows = np.arange(start, stop, dtype=np.int64)
        labels = np.ascontiguousarray(job.plan.labels(start, stop), dtype=np.int64)
        images, seeds, fallback = generate_rows(self.sampler, rows, labels, job.seed, job.truncation,
                                                job.total_rows, self.filter)
        if job.size is not None:  # after the filter, which judges what G made
            from ganaug.sampling import resize_images

            images = resize_images(images, job.size)
        return {"images": images, "labels": labels, "seeds": seeds, "fallback": fallback}


def read_input(job: ShardJob, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows start..stop of the input dataset (relative to its slice): images at the model's size,
    labels and sources. Read in the actor, never on the driver."""
    from ganaug.data import DatasetSpec, iter_dataset
    from ganaug.data.paired import is_paired_spec, load_side

    spec = str(DatasetSpec(job.dataset_scheme, job.dataset_location,
                           job.dataset_offset + start, job.dataset_offset + stop, job.dataset_classes))
    if is_paired_spec(spec):  # a pair spec's inputs are its A side
        parts = [load_side(spec, "a", job.resolution, job.channels)]
    else:
        parts = list(iter_dataset(spec, batch_rows=max(1, stop - start), resolution=job.resolution,
                                  channels=job.channels))
    images = np.concatenate([p.images for p in parts]) if parts else np.zeros((0,))
    if images.shape[0] != stop - start:
        raise GenerationError(f"dataset {spec}: read {images.shape[0]} rows, expected {stop - start}")
    labels = np.concatenate([p.labels for p in parts]).astype(np.int64)
    return images, labels, [s for p in parts for s in p.sources]


class TranslateActor(_SamplingStage):
    """Translates rows start..stop of the input dataset."""

    def make(self, start: int, stop: int) -> dict:
        images, labels, sources = read_input(self.job, start, stop)
        # Translation draws no noise: seed -1 (and truncation 1 in stage 2).
        return {"images": self.sampler.translate(images), "labels": labels,
                "seeds": np.full(stop - start, -1, dtype=np.int64), "fallback": 0, "sources": sources}


# Images projected (and rows restyled) per optimisation batch: fixed, so a shard's bytes do not
# depend on the device's memory, and small enough for a CPU actor.
PROJECT_CHUNK = 64


class RestyleActor(_SamplingStage):
    """`translate --restyle`: output row r is input row r // variants, projected into W+ (once per
    shard) and given `restyle`'s layers from the style latent of seed style_seed + r."""

    def __init__(self, job: ShardJob):
        super().__init__(job)
        self.features = None
        if job.feature_net is not None:
            import torch

            from ganaug.metrics.classifier import SmallCNN

            net = SmallCNN(**job.feature_net["config"])
            # torch.tensor copies: the arrays Ray hands over are read-only
            net.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in job.feature_net["state"].items()})
            net = net.to(self.sampler.device).eval().requires_grad_(False)
            self.features = net.features

    def make(self, start: int, stop: int) -> dict:
        from ganaug.projection import project, restyle

        job, G = self.job, self.sampler.G
        first, last = start // job.variants, (stop - 1) // job.variants + 1
        images, labels, sources = read_input(job, first, last)
        conditional = self.sampler.conditional
        if conditional:
            bad = np.flatnonzero((labels < 0) | (labels >= self.sampler.num_classes))
            if len(bad):
                raise GenerationError(f"--input row {job.dataset_offset + first + int(bad[0])}: label "
                                      f"{int(labels[bad[0]])} is not one of the model's "
                                      f"{self.sampler.num_classes} classes")
        ws, error, start_error = [], [], []
        for a in range(0, len(images), PROJECT_CHUNK):
            part = slice(a, a + PROJECT_CHUNK)
            p = project(G, images[part], labels[part] if conditional else None, steps=job.project_steps,
                        lr=job.project_lr, features=self.features)
            ws.append(p.ws)
            error.append(p.error)
            start_error.append(p.start_error)
        import torch

        ws_all = torch.cat(ws)
        rows = np.arange(start, stop, dtype=np.int64)
        pick = rows // job.variants - first
        style_seeds = job.style_seed + rows
        out = [restyle(G, ws_all[pick[a:a + PROJECT_CHUNK]], job.restyle, style_seeds[a:a + PROJECT_CHUNK].tolist(),
                       labels[pick[a:a + PROJECT_CHUNK]] if conditional else None)
               for a in range(0, len(rows), PROJECT_CHUNK)]
        err, err0 = np.concatenate(error), np.concatenate(start_error)
        return {"images": np.concatenate(out), "labels": labels[pick], "seeds": style_seeds, "fallback": 0,
                "sources": [sources[i] for i in pick],
                "projection": {"images": int(len(err)), "mse_mean_latent": float(err0.mean()),
                               "mse_projected": float(err.mean())}}


SAMPLING_STAGES = {"generate": SamplerActor, "translate": TranslateActor, "restyle": RestyleActor}


def write_shards(batch: dict[str, np.ndarray], job: ShardJob) -> dict[str, np.ndarray]:
    """Stage 2: encode each shard's images and stream the shard, then its record, to storage."""
    encoder = shards.get_encoder(job.fmt)
    out: dict[str, list] = {key: [] for key in ("index", "file", "rows", "size", "sha256", "counts", "fallback",
                                                "candidates")}
    for k, index, start, stop in _rows(batch):
        labels = np.asarray(batch["labels"][k], dtype=np.int64)
        seeds = np.asarray(batch["seeds"][k], dtype=np.int64)
        encoded = [encoder.encode_one(img) for img in batch["images"][k]]
        sources = json.loads(str(batch["sources"][k])) if "sources" in batch else None
        table = shards.build_table(encoded, np.arange(start, stop, dtype=np.int64), labels,
                                   [job.class_name(int(lab)) for lab in labels.tolist()], seeds,
                                   1.0 if job.translated else job.truncation, job.checkpoint_id, encoder.ext,
                                   sources=sources)
        del encoded  # the table holds its own copy
        name = shards.shard_name(index)
        written = shards.write_shard(storage.join(job.out, name), table)
        info = {"index": index, "file": name, "rows": table.num_rows, "size": written.size,
                "sha256": written.sha256, "counts": count_labels(labels), "fallback": int(batch["fallback"][k]),
                "candidates": candidates_drawn(seeds, start, job.seed, job.total_rows) if job.filter
                else stop - start}
        if "projection" in batch:
            info["projection"] = json.loads(str(batch["projection"][k]))
            out.setdefault("projection", [])
        # After the shard: a record without its shard never exists.
        storage.write_json(storage.join(job.out, shards.record_name(index)), info)
        for key, column in out.items():
            column.append(json.dumps(info[key]) if key in ("counts", "projection") else info[key])
    return {k: np.asarray(v) for k, v in out.items()}
