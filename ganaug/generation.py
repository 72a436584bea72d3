"""Bulk generation (`ganaug generate`) and translation (`ganaug translate`) on Ray Data.

The pipeline is one Ray Data row per *missing* shard, {index, start, stop}, mapped by an
actor pool (`SamplerActor` / `TranslateActor`, each holding one `Sampler`). An actor makes
the shard's rows, encodes them, builds the Arrow table and writes `part-NNNNN.parquet`
atomically; it returns only {file, rows, sha256, counts}. The driver writes `_manifest.json`
last. So:

- Determinism: row i uses seed S+i; a shard's bytes depend only on its rows (the Sampler is
  batch-invariant, one torch thread per actor, fixed Parquet settings), never on which actor
  made it or how many there were.
- Resume: a shard file exists only once complete (atomic write). A re-run verifies the
  existing shards (Parquet footer + row count), makes only the missing ones, and ends with
  the same bytes as an uninterrupted run.
- No deadlock on small machines: actors take a fractional CPU (at most 1, and together at
  most cluster CPUs - 1 where possible), so Ray Data's own tasks always find a CPU.

Filters (`--filter NAME:ARG`) plug into `FILTERS`; see `register_filter`.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from ganaug import checkpoint, environment, shards, storage
from ganaug.errors import UserError, require
from ganaug.labels import PlanContext, count_labels, parse_plan
from ganaug.registry import Registry
from ganaug.testing import faults

DEFAULT_ROWS_PER_SHARD = 1000
DIE_AFTER_ENV = faults.DIE_AFTER_ENV  # kept here: the tests import it from this module
_SHARD_RE = re.compile(r"^part-(\d{5,})\.parquet$")


class GenerationError(UserError):
    pass


# ============================================================================= filters
#
# A filter rejects candidate images; rejected rows are re-drawn from a deterministic stream,
# so a filtered set is still a pure function of the arguments:
#
#   candidate j of row i uses seed S + i + j*N   (N = rows in the set; j = 0 is the plain seed)
#
# Row i keeps its first accepted candidate, and the `seed` column records that candidate's
# seed, so the row can be re-made exactly (and served). After MAX_FILTER_TRIES rejections the
# last candidate is kept and counted in the manifest (`filter.fallback_rows`).
# A filter must judge each image on its own (batch-invariant), or determinism is lost.
#
# How `--filter fidelity:0.9` plugs in (evaluation owns it): a module listed in
# FILTER_PLUGINS (e.g. ganaug/metrics/filters.py) calls at import time
#
#     register_filter("fidelity", build=lambda arg, sampler: FidelityFilter(float(arg), sampler),
#                     check=check_fraction)
#
# `check(arg)` validates the argument on the driver before any work; once the output is known to
# be writable and shards are missing, the driver calls `check(arg, meta, checkpoint_uri)` again
# so the filter can prepare shared state (e.g. train and cache its classifier) before the
# actors start. `build` runs once in every actor.

class ImageFilter(Protocol):
    def accept(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """uint8 NHWC images + int64 labels -> bool mask of the images to keep."""


@dataclass(frozen=True)
class FilterEntry:
    name: str
    build: Callable[[str, Any], ImageFilter]        # (argument, Sampler) -> filter, in each actor
    check: Callable[..., None] | None = None        # check(arg[, meta, checkpoint_uri]) on the driver


FILTER_PLUGINS = ("ganaug.metrics.filters",)
MAX_FILTER_TRIES = 8


def _load_filter_plugins() -> None:
    import importlib

    for mod in FILTER_PLUGINS:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # the plugin exists but one of its imports is missing: a real bug
                raise


FILTERS: Registry[FilterEntry] = Registry("filter", loader=_load_filter_plugins)


def register_filter(name: str, build: Callable[[str, Any], ImageFilter],
                    check: Callable[..., None] | None = None) -> None:
    FILTERS.register(name, FilterEntry(name, build, check))


def parse_filter(spec: str | None, *context: Any) -> tuple[FilterEntry, str] | None:
    if not spec:
        return None
    name, _, arg = spec.partition(":")
    entry = FILTERS.get(name.strip(), f"--filter {spec}")
    if entry.check is not None:
        entry.check(arg, *context)
    return entry, arg


def generate_rows(sampler, rows: np.ndarray, labels: np.ndarray, seed: int, truncation: float,
                  total: int, image_filter: ImageFilter | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Images and their seeds for global rows `rows` (see the filter notes above).

    Returns (uint8 NHWC images, int64 seeds, rows that kept an unaccepted last candidate).
    """
    cond = labels if sampler.conditional else None
    seeds = (seed + rows).astype(np.int64)
    images = sampler.generate(seeds.tolist(), cond, truncation)
    if image_filter is None:
        return images, seeds, 0
    pending = np.arange(len(rows))
    for j in range(MAX_FILTER_TRIES):
        if j:
            cand_seeds = seed + rows[pending] + j * total
            cand = sampler.generate(cand_seeds.tolist(), None if cond is None else labels[pending], truncation)
            images[pending], seeds[pending] = cand, cand_seeds
        mask = np.asarray(image_filter.accept(images[pending], labels[pending]), dtype=bool)
        pending = pending[~mask]
        if not pending.size:
            break
    return images, seeds, int(pending.size)


def candidates_drawn(seeds: np.ndarray, first_row: int, seed: int, total: int) -> int:
    """Filter candidates drawn for these rows, read back from the seeds they kept.

    Row i's candidate j has seed S + i + j*N, so a kept seed says how many candidates were
    tried; this works for shards reused from an earlier run too.
    """
    rows = np.arange(first_row, first_row + len(seeds), dtype=np.int64)
    return int(((np.asarray(seeds, dtype=np.int64) - seed - rows) // max(total, 1) + 1).sum())


# ============================================================================= configs

def _check(cond: bool, msg: str) -> None:
    require(cond, msg, GenerationError)


def _check_common(out: str, rows_per_shard: int, fmt: str, workers: int | None) -> None:
    _check(bool(out and out.strip()), "--out is required: a folder path or s3://bucket/prefix")
    _check(rows_per_shard >= 1, f"--rows-per-shard must be >= 1, got {rows_per_shard}")
    shards.get_encoder(fmt)
    _check(workers is None or workers >= 1, f"--workers must be >= 1, got {workers}")


@dataclass
class GenerateConfig:
    """The arguments of `ganaug generate` (flags map 1:1)."""

    checkpoint: str = ""
    out: str = ""
    num: int | None = None
    labels: str | None = None          # None = uniform
    truncation: float = 1.0
    seed: int = 0
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
    format: str = "png"
    workers: int | None = None         # actors; None = one per cluster CPU (GPU with use_gpu)
    use_gpu: bool = False
    filter: str | None = None
    overwrite: bool = False
    size: str | None = None            # HxW | native (model.json's native_size); None = the model's
    allow_env_change: bool = False     # resume a set begun in another environment (environment.py)
    shared_fs: bool = False            # plain paths are a filesystem every node mounts

    def validate(self) -> GenerateConfig:
        _check(bool(self.checkpoint), "--checkpoint is required: a checkpoint or run folder URI")
        _check_common(self.out, self.rows_per_shard, self.format, self.workers)
        _check(self.num is None or self.num >= 1, f"--num must be >= 1, got {self.num}")
        _check(self.seed >= 0, f"--seed must be >= 0, got {self.seed}")
        _check(0.0 <= self.truncation <= 2.0, f"--truncation must be in [0, 2], got {self.truncation}")
        return self


@dataclass
class TranslateConfig:
    """The arguments of `ganaug translate`."""

    checkpoint: str = ""
    input: str = ""
    out: str = ""
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
    format: str = "png"
    workers: int | None = None
    use_gpu: bool = False
    overwrite: bool = False
    allow_env_change: bool = False
    shared_fs: bool = False

    def validate(self) -> TranslateConfig:
        _check(bool(self.checkpoint), "--checkpoint is required: a translation checkpoint or run URI")
        _check(bool(self.input), "--input is required: a dataset spec such as mnist:DIR or parquet:URI")
        _check_common(self.out, self.rows_per_shard, self.format, self.workers)
        return self


# ============================================================================= actors

@dataclass
class ShardJob:
    """What every actor needs; pickled once per actor."""

    checkpoint_uri: str
    checkpoint_id: str
    out: str
    fmt: str
    total_rows: int
    device: str = "cpu"
    threads: int = 1
    # generate
    seed: int = 0
    truncation: float = 1.0
    filter: str | None = None
    size: tuple[int, int] | None = None   # resize the generated images to H x W (None = as made)
    # translate: absolute rows of the dataset location
    dataset_scheme: str = ""
    dataset_location: str = ""
    dataset_offset: int = 0
    dataset_classes: tuple[str, ...] | None = None   # the input spec's class filter, if any
    resolution: int = 0
    channels: int = 0
    class_names: list[str] = field(default_factory=list)


class _ShardActor:
    """Loads the Sampler once; each call makes, encodes and writes whole shards."""

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
        self.encoder = shards.get_encoder(job.fmt)

    def make_table(self, start: int, stop: int, row: dict):
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"index": [], "file": [], "rows": [], "sha256": [], "counts": [], "fallback": [],
                                "candidates": []}
        for k in range(len(batch["index"])):
            row = {key: batch[key][k] for key in batch}
            index, start, stop = int(row["index"]), int(row["start"]), int(row["stop"])
            table, fallback = self.make_table(start, stop, row)
            data = shards.table_bytes(table)
            name = shards.shard_name(index)
            storage.write_bytes(storage.join(self.job.out, name), data)
            info = {"index": index, "file": name, "rows": table.num_rows, "size": len(data),
                    "sha256": shards.sha256(data), "counts": count_labels(table.column("label").to_numpy()),
                    "fallback": fallback,
                    "candidates": candidates_drawn(table.column("seed").to_numpy(), start, self.job.seed,
                                                   self.job.total_rows) if self.job.filter else stop - start}
            # After the shard: a record without its shard never exists.
            storage.write_json(storage.join(self.job.out, shards.record_name(index)), info)
            for key in out:
                out[key].append(json.dumps(info[key]) if key == "counts" else info[key])
        return {k: np.asarray(v) for k, v in out.items()}


class SamplerActor(_ShardActor):
    """Generates rows start..stop of a noise model: seeds S+i, labels from the plan."""

    def __init__(self, job: ShardJob):
        super().__init__(job)
        self.filter = None
        if job.filter:
            entry, arg = parse_filter(job.filter)
            self.filter = entry.build(arg, self.sampler)

    def make_table(self, start: int, stop: int, row: dict):
        job = self.job
        rows = np.arange(start, stop, dtype=np.int64)
        labels = np.frombuffer(row["labels"], dtype=np.int64).copy()
        images, seeds, fallback = generate_rows(self.sampler, rows, labels, job.seed, job.truncation,
                                                job.total_rows, self.filter)
        if job.size is not None:  # after the filter, which judges what G made
            from ganaug.sampling import resize_images

            images = resize_images(images, job.size)
        encoded = [self.encoder.encode_one(img) for img in images]
        names = [self.sampler.class_name(int(lab)) for lab in labels]
        table = shards.build_table(encoded, rows, labels, names, seeds, job.truncation, job.checkpoint_id,
                                   self.encoder.ext)
        return table, fallback


class TranslateActor(_ShardActor):
    """Translates rows start..stop of the input dataset (read here, not on the driver)."""

    def make_table(self, start: int, stop: int, row: dict):
        from ganaug.data import DatasetSpec, iter_dataset
        from ganaug.data.paired import is_paired_spec, load_side

        job = self.job
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
        sources = [s for p in parts for s in p.sources]
        translated = self.sampler.translate(images)
        encoded = [self.encoder.encode_one(img) for img in translated]
        names = [job.class_names[lab] if 0 <= lab < len(job.class_names) else "" for lab in labels.tolist()]
        # Translation draws no noise: seed -1, truncation 1.
        table = shards.build_table(encoded, np.arange(start, stop), labels, names,
                                   np.full(stop - start, -1, dtype=np.int64), 1.0, job.checkpoint_id,
                                   self.encoder.ext, sources=sources)
        return table, 0


# ============================================================================= driver

def shard_ranges(total: int, rows_per_shard: int) -> list[tuple[int, int, int]]:
    return [(i, a, min(a + rows_per_shard, total)) for i, a in enumerate(range(0, total, rows_per_shard))]


def _load_checkpoint(uri: str, want: str) -> tuple[str, dict, str]:
    resolved = checkpoint.resolve_checkpoint(uri)
    meta = checkpoint.load_meta(resolved)
    kind = meta.get("kind")
    if kind != want:
        if want == "noise":
            raise GenerationError(f"--checkpoint {uri}: {meta.get('family')} is an image-to-image (translation) "
                                  "model, not a noise generator; use `ganaug translate`")
        raise GenerationError(f"--checkpoint {uri}: {meta.get('family')} is a noise generator, not a "
                              "translation model; use `ganaug generate`")
    return resolved, meta, checkpoint.checkpoint_id(resolved, meta)


def _probe_writable(out: str) -> None:
    probe = storage.join(out, f".ganaug-probe-{uuid.uuid4().hex[:8]}")
    try:
        storage.write_bytes(probe, b"")
        storage.delete(probe)
    except UserError as e:
        raise GenerationError(f"--out {out} is not writable: {e}") from None


def _diff(old: dict, new: dict) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if len(keys) > 1 and "label_counts" in keys:  # implied by num/labels; long
        keys.remove("label_counts")
    parts = [f"{k}: {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}" for k in keys]
    text = "; ".join(parts)
    return text if len(text) <= 300 else text[:297] + "..."


def _prepare_out(out: str, arguments: dict, overwrite: bool) -> dict | None:
    """Refuse to mix sets; returns the manifest when this exact set is already complete."""
    names = storage.listdir(out)
    fp = shards.fingerprint(arguments)
    ours = [n for n in names if _SHARD_RE.match(n)]
    if not overwrite:
        if shards.MANIFEST in names:
            man = storage.read_json(storage.join(out, shards.MANIFEST))
            if man.get("fingerprint") == fp:
                return man
            raise GenerationError(f"--out {out} already holds a generated set made with different arguments "
                                  f"({_diff(man.get('arguments', {}), arguments)}); choose another --out "
                                  "or pass --overwrite")
        if shards.INTENT in names:
            intent = storage.read_json(storage.join(out, shards.INTENT))
            if intent.get("fingerprint") != fp:
                raise GenerationError(f"--out {out} holds an unfinished set made with different arguments "
                                      f"({_diff(intent.get('arguments', {}), arguments)}); re-run that command "
                                      "to finish it, choose another --out, or pass --overwrite")
        elif ours:
            raise GenerationError(f"--out {out} already holds {len(ours)} Parquet shards of unknown origin; "
                                  "choose another --out or pass --overwrite")
        return None
    # --overwrite: the marker goes first so the folder is never a complete-looking mix.
    for name in [shards.MANIFEST, shards.INTENT] + ours:
        if name in names:
            storage.delete(storage.join(out, name))
    storage.delete(storage.join(out, shards.RECORDS), recursive=True)
    return None


def _recorded_environment(out: str) -> dict | None:
    """The environment an unfinished set's shards were made in (None: unknown, or no set)."""
    uri = storage.join(out, shards.INTENT)
    if not storage.exists(uri):
        return None
    return storage.read_json(uri).get("environment") or None


def _check_environment(out: str, recorded: dict | None, now: dict, allow: bool, reused: int, total: int) -> None:
    """Refuse to add shards made here to shards made in another environment (bytes may differ)."""
    changed = environment.differences(recorded, now) if recorded else []
    if changed and not allow:
        raise GenerationError(f"--out {out}: {reused} of {total} shards were made in another environment "
                              f"({'; '.join(changed)}); finish the set there, pass --allow-env-change to "
                              "mix them anyway, or --overwrite to start again")


def _verify_existing(out: str, ranges: list[tuple[int, int, int]], job: ShardJob) -> dict[int, dict]:
    """Shards already written by an earlier (interrupted) run of the same command."""
    import pyarrow.parquet as pq

    names = set(storage.listdir(out))
    # stale temporaries of a killed write (local temp files; on S3, storage's hidden upload keys)
    for n in names:
        if n.startswith(".part-") and n.endswith(".tmp"):
            storage.delete(storage.join(out, n))
    todo = [(i, a, b) for i, a, b in ranges if shards.shard_name(i) in names]

    def by_record(i: int, rows: int) -> dict | None:
        """The shard's record, if its size and Parquet footer agree with it (no download)."""
        uri, rec_uri = storage.join(out, shards.shard_name(i)), storage.join(out, shards.record_name(i))
        if not storage.exists(rec_uri):
            return None
        try:
            rec = storage.read_json(rec_uri)
            if rec.get("rows") != rows or storage.size(uri) != rec.get("size"):
                return None
            with storage.open_input(uri) as fh:
                if pq.ParquetFile(fh).metadata.num_rows != rows:
                    return None
        except Exception:  # a torn or foreign record or shard: check it the long way
            return None
        return {**rec, "counts": {int(k): v for k, v in rec["counts"].items()}, "verified_by": "record"}

    def check(item):
        i, a, b = item
        name = shards.shard_name(i)
        found = by_record(i, b - a)
        if found is not None:
            return found
        data = storage.read_bytes(storage.join(out, name))
        if shards.check_shard_bytes(data, b - a) is not None:
            return None  # incomplete or foreign: make it again
        table = pq.read_table(io.BytesIO(data), columns=["label", "seed"])
        labels = table.column("label").to_numpy()
        candidates = (candidates_drawn(table.column("seed").to_numpy(), a, job.seed, job.total_rows)
                      if job.filter else b - a)
        # (filter fallbacks of reused shards are not recorded in them: counted as 0)
        return {"index": i, "file": name, "rows": b - a, "sha256": shards.sha256(data),
                "counts": count_labels(labels), "fallback": 0, "candidates": candidates, "verified_by": "download"}

    found: dict[int, dict] = {}
    if todo:
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            for info in pool.map(check, todo):
                if info is not None:
                    found[info["index"]] = info
    return found


class _RowProgressLine:
    """One progress line on stderr (rewritten in place on a terminal), throttled to 1/s."""

    def __init__(self, what: str, total_rows: int, done_rows: int, enabled: bool):
        self.what, self.total, self.done, self.enabled = what, total_rows, done_rows, enabled
        self.start = time.time()
        self.new = 0
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def update(self, rows: int, force: bool = False) -> None:
        self.done += rows
        self.new += rows
        now = time.time()
        if not self.enabled or (now - self.last < 1.0 and not force):
            return
        self.last = now
        rate = self.new / max(now - self.start, 1e-9)
        line = f"{self.what}: {self.done}/{self.total} rows ({100 * self.done / max(self.total, 1):.0f}%), " \
               f"{rate:.0f} images/s"
        sys.stderr.write(("\r" + line) if self.tty else (line + "\n"))
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self.update(0, force=True)
            if self.tty:
                sys.stderr.write("\n")


def _actor_resources(workers: int | None, n_missing: int, use_gpu: bool) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor) for the connected cluster."""
    from ganaug.raycluster import actor_cpu_share, cluster_cpus, cluster_gpus

    cpus, gpus = cluster_cpus(), cluster_gpus()
    # With --use-gpu each actor asks for one whole GPU: Ray (and an autoscaler starting GPU
    # nodes from zero) provisions them; fractions would pack every actor onto one device.
    default = max(1, int(gpus)) if use_gpu else max(1, int(cpus))
    n = max(1, min(workers or default, n_missing))
    return n, actor_cpu_share(cpus, n), (1.0 if use_gpu else 0.0)


def _run_pipeline(actor_cls: type, job: ShardJob, items: list[dict], workers: int | None,
                  use_gpu: bool) -> Iterator[dict]:
    from ganaug.raycluster import ensure_ray, ordered_data_job

    ray = ensure_ray()
    from ray.data import ActorPoolStrategy

    n, cpu, gpu = _actor_resources(workers, len(items), use_gpu)
    with ordered_data_job(GenerationError):  # our own single progress line instead of Ray's
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        remote: dict[str, Any] = {"num_cpus": cpu}
        if gpu:
            remote["num_gpus"] = gpu
        ds = ds.map_batches(actor_cls, fn_constructor_kwargs={"job": job}, batch_size=1, batch_format="numpy",
                            compute=ActorPoolStrategy(min_size=n, max_size=n), **remote)
        for row in ds.iter_rows():
            yield {"index": int(row["index"]), "file": str(row["file"]), "rows": int(row["rows"]),
                   "sha256": str(row["sha256"]),
                   "counts": {int(k): v for k, v in json.loads(str(row["counts"])).items()},
                   "fallback": int(row["fallback"]), "candidates": int(row["candidates"])}


def _run_sharded(*, what: str, out: str, total: int, rows_per_shard: int, arguments: dict, run_info: dict,
                 job: ShardJob, actor_cls: type, row_extra: Callable[[int, int], dict], workers: int | None,
                 use_gpu: bool, overwrite: bool, class_names: list[str], translated: bool,
                 manifest_extra: dict, t0: float, progress: bool, allow_env_change: bool = False,
                 shared_fs: bool = False, before_pipeline: Callable[[], None] | None = None) -> dict:
    _probe_writable(out)
    done = _prepare_out(out, arguments, overwrite)
    if done is not None:
        return _summary(out, done, generated=0, reused=len(done["files"]), t0=t0, pipeline_s=0.0)
    recorded = _recorded_environment(out)
    ranges = shard_ranges(total, rows_per_shard)
    results = _verify_existing(out, ranges, job)
    missing = [(i, a, b) for i, a, b in ranges if i not in results]
    reused = len(results)
    by_record = sum(1 for r in results.values() if r.get("verified_by") == "record")
    env = recorded or {}
    if missing:
        from ganaug.raycluster import ensure_ray, probe_environment, require_shared_paths

        if before_pipeline is not None:
            before_pipeline()
        ensure_ray()  # before the clock starts: images/s measures the pipeline, not Ray's startup
        # Actors on any node write the shards and read the checkpoint; the driver lists them.
        require_shared_paths({"--out": out, "--checkpoint": job.checkpoint_uri}, shared_fs)
        env = probe_environment(use_gpu, echo=(lambda line: sys.stderr.write(f"{what}: {line}\n")) if progress
                                else None)
        _check_environment(out, recorded if reused else None, env, allow_env_change, reused, len(ranges))
    storage.write_json(storage.join(out, shards.INTENT),
                       {"fingerprint": shards.fingerprint(arguments), "arguments": arguments, "environment": env})
    bar = _RowProgressLine(what, total, sum(r["rows"] for r in results.values()), progress)
    t1 = time.time()
    if missing:
        if reused and progress:
            sys.stderr.write(f"{what}: resuming, {reused} of {len(ranges)} shards already complete "
                             f"({by_record} checked by their records, {reused - by_record} downloaded)\n")
        items = [{"index": i, "start": a, "stop": b, **row_extra(a, b)} for i, a, b in missing]
        for made, info in enumerate(_run_pipeline(actor_cls, job, items, workers, use_gpu), start=1):
            results[info["index"]] = info
            bar.update(info["rows"])
            faults.maybe_crash("generate.after_shard", shards=made)  # tests: a driver killed mid-run
    bar.close()
    pipeline_s = time.time() - t1
    files = [{"name": results[i]["file"], "rows": results[i]["rows"], "sha256": results[i]["sha256"],
              "first_row": a} for i, a, _ in ranges]
    counts: dict[int, int] = {}
    for r in results.values():
        for k, v in r["counts"].items():
            counts[k] = counts.get(k, 0) + v
    extra = dict(manifest_extra)
    fallback = sum(r["fallback"] for r in results.values())
    if arguments.get("filter"):
        candidates = sum(r["candidates"] for r in results.values())
        rejected = candidates - (total - fallback)
        extra["filter"] = {"spec": arguments["filter"], "max_tries": MAX_FILTER_TRIES, "fallback_rows": fallback,
                           "candidates": candidates, "rejected": rejected,
                           "rejection_rate": round(rejected / max(candidates, 1), 6)}
    extra["run"] = run_info
    extra["environment"] = env
    if reused and recorded and environment.differences(recorded, env):
        extra["environment_changed_from"] = recorded  # --allow-env-change: say so in the set
    manifest = shards.build_manifest(rows=total, counts=counts, files=files, checkpoint_uri=job.checkpoint_uri,
                                     checkpoint_id=job.checkpoint_id, arguments=arguments,
                                     class_names=class_names, fmt=job.fmt, translated=translated, extra=extra)
    shards.write_manifest(out, manifest)  # the marker: last
    storage.delete(storage.join(out, shards.INTENT))
    storage.delete(storage.join(out, shards.RECORDS), recursive=True)
    summary = _summary(out, manifest, generated=sum(b - a for i, a, b in missing), reused=reused, t0=t0,
                       pipeline_s=pipeline_s)
    if reused:  # how the reused shards were checked: by their records (footer + size) or downloaded
        summary["reused_checked_by_record"] = by_record
    return summary


def _summary(out: str, manifest: dict, *, generated: int, reused: int, t0: float, pipeline_s: float) -> dict:
    seconds = time.time() - t0
    return {
        "out": out,
        "manifest": storage.join(out, shards.MANIFEST),
        "rows": manifest["rows"],
        "shards": len(manifest["files"]),
        "counts": manifest["counts"],
        "generated_rows": generated,
        "reused_shards": reused,
        "generator": manifest["checkpoint"]["id"],
        "seconds": round(seconds, 3),
        "pipeline_seconds": round(pipeline_s, 3),
        "images_per_s": round(generated / pipeline_s, 1) if pipeline_s > 0 else 0.0,
    }


def run_generate(cfg: GenerateConfig, progress: bool = True) -> dict:
    """Generate a set; every input error is raised before Ray starts. Returns the summary."""
    t0 = time.time()
    cfg.validate()
    ckpt_uri, meta, ckpt_id = _load_checkpoint(cfg.checkpoint, "noise")
    class_names = list(meta.get("class_names", []))
    num_classes = int(meta.get("num_classes", 0))
    plan = parse_plan(cfg.labels, PlanContext(cfg.num, num_classes, class_names))
    parse_filter(cfg.filter)
    from ganaug.sampling import parse_size

    size = parse_size(cfg.size, meta)
    arguments = {
        "task": "generate", "checkpoint_id": ckpt_id, "num": plan.total, "labels": plan.spec,
        "label_counts": {str(k): v for k, v in plan.counts().items()}, "truncation": cfg.truncation,
        "seed": cfg.seed, "rows_per_shard": cfg.rows_per_shard, "format": cfg.format, "filter": cfg.filter,
    }
    if size is not None:  # only when asked: sets made before --size keep their fingerprint
        arguments["size"] = list(size)
    # Absolute: the actors run in working directories of their own.
    job = ShardJob(checkpoint_uri=storage.absolute(ckpt_uri), checkpoint_id=ckpt_id, out=storage.absolute(cfg.out),
                   fmt=cfg.format, total_rows=plan.total, device="cuda" if cfg.use_gpu else "cpu", seed=cfg.seed,
                   truncation=cfg.truncation, filter=cfg.filter, size=size)
    extra = {"label_plan": plan.info} if plan.info else {}
    resolution = int(meta["resolution"])
    extra["image_size"] = list(size or (resolution, resolution))  # [H, W] of the written images
    return _run_sharded(what="generate", out=cfg.out, total=plan.total, rows_per_shard=cfg.rows_per_shard,
                        arguments=arguments, run_info={"checkpoint": cfg.checkpoint, "workers": cfg.workers,
                                                       "use_gpu": cfg.use_gpu},
                        job=job, actor_cls=SamplerActor,
                        row_extra=lambda a, b: {"labels": plan.labels(a, b).tobytes()},
                        workers=cfg.workers, use_gpu=cfg.use_gpu, overwrite=cfg.overwrite,
                        class_names=class_names, translated=False, manifest_extra=extra, t0=t0, progress=progress,
                        allow_env_change=cfg.allow_env_change, shared_fs=cfg.shared_fs,
                        before_pipeline=lambda: parse_filter(cfg.filter, meta, ckpt_uri))


def run_translate(cfg: TranslateConfig, progress: bool = True) -> dict:
    """Translate a dataset with a pix2pix/cyclegan checkpoint into a generated set."""
    from ganaug.data import open_reader, parse_spec
    from ganaug.data.spec import absolute_spec

    t0 = time.time()
    cfg.validate()
    ckpt_uri, meta, ckpt_id = _load_checkpoint(cfg.checkpoint, "translation")
    parsed, reader = open_reader(cfg.input)
    parsed = parse_spec(absolute_spec(cfg.input))  # the actors read it from their own directories
    try:
        start, stop = parsed.bounds(reader.num_rows())
        class_names = list(reader.class_names())
    except storage.StorageError as e:
        raise GenerationError(f"--input {cfg.input}: {e}") from None
    total = stop - start
    _check(total > 0, f"--input {cfg.input}: the dataset has no rows")
    arguments = {"task": "translate", "checkpoint_id": ckpt_id, "input": cfg.input, "num": total,
                 "rows_per_shard": cfg.rows_per_shard, "format": cfg.format}
    job = ShardJob(checkpoint_uri=storage.absolute(ckpt_uri), checkpoint_id=ckpt_id, out=storage.absolute(cfg.out),
                   fmt=cfg.format, total_rows=total,
                   device="cuda" if cfg.use_gpu else "cpu", dataset_scheme=parsed.scheme,
                   dataset_location=parsed.location, dataset_offset=start, dataset_classes=parsed.classes,
                   resolution=int(meta["resolution"]),
                   channels=int(meta["channels"]), class_names=class_names)
    return _run_sharded(what="translate", out=cfg.out, total=total, rows_per_shard=cfg.rows_per_shard,
                        arguments=arguments, run_info={"checkpoint": cfg.checkpoint, "workers": cfg.workers,
                                                       "use_gpu": cfg.use_gpu},
                        job=job, actor_cls=TranslateActor, row_extra=lambda a, b: {},
                        workers=cfg.workers, use_gpu=cfg.use_gpu, overwrite=cfg.overwrite,
                        class_names=class_names, translated=True, manifest_extra={}, t0=t0, progress=progress,
                        allow_env_change=cfg.allow_env_change, shared_fs=cfg.shared_fs)


def config_dict(cfg: GenerateConfig | TranslateConfig) -> dict:
    return asdict(cfg)
