"""`ganaug evaluate`: load real and synthetic data, run the metrics, write the report.

The metrics themselves live in ganaug.metrics (``evaluate_arrays``); this module only
gathers their inputs:

- real data: ``--real SPEC`` is the train part; ``--heldout SPEC`` the held-out part. Without
  ``--heldout``, the last ``--heldout-fraction`` (20 %) of every class's rows of ``--real``, in
  dataset order, is held out: deterministic, and still fair when a folder is sorted by class.
- synthetic data: a generated set (``--synthetic parquet:URI`` or a plain folder URI with
  ``_manifest.json``, or any dataset spec), or, with only ``--checkpoint``, a set sampled here
  with the same rows ``ganaug generate --labels uniform --seed S`` would make (row i: seed
  S+i, label i mod K), so a report and a generated set describe the same images.
- large sets: above ``--ray-threshold`` rows (or with ``--ray``) the synthetic features are a
  Ray Data job (read_parquet -> decode -> an actor pool of ``FeatureMapper``), so a million
  rows cost what a thousand do on the driver; the image-level metrics (label fidelity, CAS,
  augmentation gain, pixel-space copies) then use the first ``--max-images`` rows (generated
  sets are label-interleaved, so a prefix is a balanced sample).
- ``--gan-kshot``: the augmentation-gain arms get GANs trained on their own k-shot subsets
  (the honest low-data setting) instead of the GAN trained on the whole train part.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ganaug import storage
from ganaug.config import ConfigError, config_from_dict
from ganaug.data import dataset_summary, load_dataset, open_reader, parse_spec
from ganaug.data.spec import SPEC_PREFIXES
from ganaug.data.images import BadImage, conform, decode_image
from ganaug.errors import UserError
from ganaug.evaluation_config import EvaluateConfig, EvaluateError
from ganaug.evaluation_config import check as _check
from ganaug.labels import PlanContext, parse_plan
from ganaug.raycluster import (
    actor_cpu_share,
    cluster_cpus,
    cluster_gpus,
    ensure_ray,
    ordered_data_job,
    probe_environment,
)

# torch-backed modules (metrics, sampling, checkpoint, training) are imported inside the
# functions that use them: Ray Data's decode tasks import this module for _decode_batch and
# should not pay for torch there.


Arrays = tuple[np.ndarray, np.ndarray]


# ============================================================================= real data


def split_heldout(labels: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): the last `fraction` of each class's rows, in dataset order.

    Every class keeps at least one training row; a class with one row has none held out.
    """
    labels = np.asarray(labels)
    train, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_held = min(round(len(idx) * fraction), len(idx) - 1)
        train.append(idx[: len(idx) - n_held])
        held.append(idx[len(idx) - n_held:])
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
    return cat(train), cat(held)


def _load(spec: str, resolution: int | None, channels: int | None, skip_bad: bool, flag: str):
    try:
        return load_dataset(spec, resolution, channels, skip_bad=skip_bad)
    except UserError as e:
        raise EvaluateError(f"{flag} {spec}: {str(e).splitlines()[0]}") from None


def load_real(cfg: EvaluateConfig, resolution: int, channels: int) -> tuple[Arrays, Arrays, list[str], dict]:
    train = _load(cfg.real, resolution, channels, cfg.skip_bad, "--real")
    names = list(train.class_names)
    _check(len(train) > 0, f"--real {cfg.real}: no rows")
    _check(bool(train.labels.size) and train.labels.min() >= 0,
           f"--real {cfg.real}: unlabelled rows; evaluation needs a labelled real dataset")
    info: dict[str, Any] = {"real": cfg.real, "bad_real": len(train.bad)}
    if cfg.heldout:
        held = _load(cfg.heldout, resolution, channels, cfg.skip_bad, "--heldout")
        _check(len(held) > 0, f"--heldout {cfg.heldout}: no rows")
        _check(held.labels.min() >= 0 and held.labels.max() < len(names),
               f"--heldout {cfg.heldout}: labels outside the {len(names)} classes of --real")
        if held.class_names and list(held.class_names[: len(names)]) != names[: len(held.class_names)]:
            raise EvaluateError(f"--heldout {cfg.heldout}: class names {held.class_names[:5]}... differ from "
                                f"--real's {names[:5]}...")
        info.update(heldout=cfg.heldout, split="given")
        return (train.images, train.labels), (held.images, held.labels), names, info
    tr, he = split_heldout(train.labels, cfg.heldout_fraction)
    _check(len(he) > 0, f"--real {cfg.real}: too few rows per class to hold any out; give --heldout")
    info.update(heldout=None, split=f"last {cfg.heldout_fraction:.0%} of each class's rows of --real (dataset order) "
                                    f"held out: {len(tr)} train / {len(he)} held-out")
    return ((train.images[tr], train.labels[tr]), (train.images[he], train.labels[he]), names, info)


# ============================================================================= synthetic data


def synthetic_spec(uri: str) -> str:
    """A generated-set URI or any dataset spec -> a dataset spec."""
    uri = uri.strip()
    return uri if uri.startswith(SPEC_PREFIXES) else f"parquet:{uri}"


def uniform_labels(sampler, num: int) -> np.ndarray:
    """The labels of rows 0..num-1 under `ganaug generate --labels uniform`."""
    k = sampler.num_classes if sampler.conditional else 0
    return parse_plan("uniform", PlanContext(num, k, list(sampler.class_names))).labels()


def sample_balanced(sampler, num: int, seed: int, truncation: float,
                    echo: Callable[[str], None] | None = None) -> Arrays:
    """Rows 0..num-1 of `ganaug generate --labels uniform --seed S`: seed S+i, label i mod K."""
    labels = uniform_labels(sampler, num)
    images = np.empty((num, sampler.resolution, sampler.resolution, sampler.channels), np.uint8)
    step, t0, last = 1024, time.time(), 0.0
    for a in range(0, num, step):
        b = min(a + step, num)
        cond = labels[a:b] if sampler.conditional else None
        images[a:b] = sampler.generate(range(seed + a, seed + b), cond, truncation)
        if echo and time.time() - last > 5:
            last = time.time()
            echo(f"evaluate: sampled {b}/{num} images ({b / max(last - t0, 1e-9):.0f}/s)")
    return images, labels


@dataclass
class _DomainFactory:
    """Rebuilds a trained domain CNN inside a Ray actor from its safetensors bytes (no shared disk needed)."""

    weights: bytes
    arch: tuple[int, int, int, float]
    fingerprint: str
    device: str = "cpu"
    threads: int = 1

    @classmethod
    def of(cls, domain, device: str, threads: int = 1) -> _DomainFactory:
        from safetensors.torch import save  # torch-backed: see the note at the top

        clf = domain.classifier
        state = {k: v.detach().cpu().contiguous() for k, v in clf.state_dict().items()}
        return cls(save(state), (clf.in_channels, clf.num_classes, clf.width, float(clf.dropout.p)),
                   domain.fingerprint, device, threads)

    def __call__(self):
        import torch  # torch-backed: see the note at the top
        from safetensors.torch import load

        from ganaug.metrics.classifier import SmallCNN
        from ganaug.metrics.features import DomainFeatures

        torch.set_num_threads(max(1, self.threads))
        model = SmallCNN(*self.arch)
        model.load_state_dict(load(self.weights))
        return DomainFeatures(model.eval(), fingerprint=self.fingerprint, cache_hit=True, device=self.device)


@dataclass
class _SpecFactory:
    """build_extractor(spec) inside an actor (inception:/torchscript: paths must exist on every node)."""

    spec: str
    device: str = "cpu"
    threads: int = 1

    def __call__(self):
        import torch  # torch-backed: see the note at the top

        from ganaug.metrics.features import build_extractor

        torch.set_num_threads(max(1, self.threads))
        return build_extractor(self.spec, device=self.device)


def _decode_batch(table, *, image_col: str, image_kind: str, label_col: str | None, resolution: int,
                  channels: int) -> dict:
    """Ray Data stage: a pyarrow batch of encoded rows -> {"image": uint8 NHWC, "label": int64}."""
    col = table.column(image_col)
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    data = col.field("bytes") if image_kind == "struct" else col
    images = []
    for i, b in enumerate(data.to_pylist()):
        try:
            images.append(conform(decode_image(b), resolution, channels))
        except BadImage as e:
            raise EvaluateError(f"synthetic set: unreadable image in a batch (row {i} of it): {e}") from None
    if label_col is not None:
        lab = table.column(label_col).to_numpy(zero_copy_only=False)
        labels = np.where(np.isnan(lab), -1, lab).astype(np.int64) if lab.dtype.kind == "f" else lab.astype(np.int64)
    else:
        labels = np.full(len(images), -1, np.int64)
    out = np.stack(images) if images else np.zeros((0, resolution, resolution, channels), np.uint8)
    return {"image": out, "label": labels}


def parquet_features_ray(spec: str, make_extractor: Callable[[], Any], *, resolution: int, channels: int,
                         workers: int | None = None, use_gpu: bool = False, batch_size: int = 256,
                         allow_incomplete: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, D], labels [N]) of a Parquet set, in row order, as one Ray Data job.

    read_parquet on the shard files (through ganaug.storage's filesystem: local or S3) ->
    decode tasks -> an ActorPoolStrategy pool of FeatureMapper (the extractor is built once per
    actor from `make_extractor`). Actors take fractional CPUs and leave one CPU to Ray Data's
    own tasks (ARCHITECTURE.md §5: a pool holding every CPU deadlocks the read).
    """
    from ganaug.metrics.features import FeatureMapper  # torch-backed: see the note at the top

    parsed = parse_spec(spec)
    _check(parsed.scheme == "parquet", f"the Ray Data feature path reads Parquet sets, not {spec!r}")
    _check(parsed.start is None and parsed.stop is None and not parsed.classes,
           f"{spec}: the Ray Data feature path reads whole sets; drop the [a:b] slice and class filter")
    _, reader = open_reader(spec, allow_incomplete)
    fs, _ = storage.resolve(reader.files[0])
    paths = [storage.resolve(f)[1] for f in reader.files]
    columns = [reader.image_col] + ([reader.label_col] if reader.label_col else [])

    ray = ensure_ray()
    from ray.data import ActorPoolStrategy  # Ray only on this large-set path (ARCHITECTURE.md §1)

    cpus, gpus = cluster_cpus(), cluster_gpus()
    if use_gpu:  # GPU workers may scale from zero: wait for one, saying so, instead of refusing
        probe_environment(True, echo=lambda line: print(f"evaluate: {line}", file=sys.stderr, flush=True))
        gpus = max(gpus, cluster_gpus())
    n = max(1, workers or (int(gpus) if use_gpu else max(1, int(cpus) - 1)))
    actor_cpu = actor_cpu_share(cpus, n, floor=0.25)
    remote: dict[str, Any] = {"num_cpus": actor_cpu}
    if use_gpu:
        remote["num_gpus"] = 1.0  # whole devices: the autoscaler provisions them
    with ordered_data_job(EvaluateError):  # features come back in row order
        ds = ray.data.read_parquet(paths, filesystem=fs, columns=columns, file_extensions=None)
        ds = ds.map_batches(_decode_batch, batch_format="pyarrow", batch_size=batch_size, num_cpus=0.25,
                            fn_kwargs={"image_col": reader.image_col, "image_kind": reader.image_kind,
                                       "label_col": reader.label_col, "resolution": resolution,
                                       "channels": channels})
        ds = ds.map_batches(FeatureMapper, batch_format="numpy", batch_size=batch_size,
                            fn_constructor_kwargs={"make_extractor": make_extractor, "drop_images": True},
                            compute=ActorPoolStrategy(min_size=1, max_size=n), **remote)
        feats, labels = [], []
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            feats.append(np.asarray(batch["features"], np.float32))
            labels.append(np.asarray(batch["label"], np.int64))
    if not feats:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(feats), np.concatenate(labels)


# ============================================================================= k-shot GANs


def train_kshot_pools(meta: dict, real_train: Arrays, class_names: list[str], ks: list[int], *, subset_seed: int,
                      steps: int | None, per_class: int, seed: int, truncation: float, device: str,
                      echo: Callable[[str], None]) -> tuple[dict[int, Arrays], dict]:
    """{k: synthetic pool} from a GAN per k trained (checkpoint's config) on exactly the k-shot subset the arms use."""
    # torch-backed: see the note at the top
    from ganaug.metrics.downstream import kshot_indices
    from ganaug.sampling import Sampler
    from ganaug.training.loop import GANTrainer

    if not meta.get("config"):
        raise EvaluateError("--gan-kshot: the checkpoint's model.json has no training config; "
                            "use a checkpoint written by `ganaug train`")
    if meta.get("kind") != "noise" or int(meta.get("num_classes", 0)) < 1:
        raise EvaluateError(f"--gan-kshot needs a class-conditional noise model, not {meta.get('family')}")
    raw = dict(meta["config"])
    raw["data"] = {**raw.get("data", {}), "resolution": int(meta["resolution"]), "channels": int(meta["channels"])}
    try:
        cfg = config_from_dict(raw)
    except ConfigError as e:
        raise EvaluateError(f"--gan-kshot: the checkpoint's config: {e}") from None
    steps = int(steps or cfg.training.steps)
    cfg.training.steps = steps
    num_classes = len(class_names)
    pools, info = {}, {"steps": steps, "family": cfg.model.family, "subset_seed": subset_seed, "seconds": {}}
    for k in ks:
        t0 = time.time()
        idx = kshot_indices(real_train[1], k, subset_seed, num_classes)
        trainer = GANTrainer(cfg, real_train[0][idx], real_train[1][idx], class_names, device=device)
        report_every = max(1, steps // 4)
        trainer.fit(steps, report_every=report_every, checkpoint_every=steps + 1,
                    on_report=lambda r, k=k: echo(f"evaluate: k-shot GAN k={k}: step {r['step']}/{steps} "
                                                  f"loss_g {r['loss_g']:.3f} loss_d {r['loss_d']:.3f}"))
        sampler = Sampler(trainer.G_ema, trainer.model_meta(), device=device)
        pools[k] = sample_balanced(sampler, per_class * num_classes, seed, truncation)
        info["seconds"][str(k)] = round(time.time() - t0, 1)
    return pools, info


# ============================================================================= orchestration


def _run_of(checkpoint_uri: str) -> str | None:
    """{run}/checkpoints/step-N -> {run}; None when the checkpoint is not inside a run folder."""
    parent = storage.parent(checkpoint_uri)
    if storage.basename(parent) == "checkpoints":
        return storage.parent(parent)
    return None


def _native_shape(spec: str, flag: str) -> tuple[int, int]:
    try:
        shape = dataset_summary(spec)["shape"]
    except UserError as e:
        raise EvaluateError(f"{flag} {spec}: {str(e).splitlines()[0]}") from None
    _check(shape is not None, f"{flag} {spec}: no rows")
    _check(shape[0] == shape[1], f"{flag} {spec}: images are {shape[0]}x{shape[1]}; evaluation needs square images")
    return int(shape[0]), int(shape[2])


def _summary(report: dict, files: dict[str, str], out: str, seconds: float, feature_path: str) -> dict:
    m = report["metrics"]
    s: dict[str, Any] = {
        "out": out, "report": files.get("report.json"), "markdown": files.get("report.md"),
        "figures": [files[f] for f in report.get("figures", [])],
        "n_train": report["settings"]["n_train"], "n_heldout": report["settings"]["n_heldout"],
        "n_synthetic": report["settings"]["n_synthetic"], "feature": report["settings"]["feature"],
        "feature_path": feature_path, "seconds": round(seconds, 2),
        "verdicts": {v["metric"]: v["verdict"] for v in report["verdicts"]},
    }
    if "fid" in m:
        s.update(fid=m["fid"]["value"], fid_reference=m["fid"]["reference"])
    if "kid" in m:
        s["kid"] = m["kid"]["value"]["mean"]
    if "prdc" in m:
        s.update({k: m["prdc"]["value"][k] for k in ("precision", "recall", "coverage")})
    if "fidelity" in m:
        s["label_fidelity"] = m["fidelity"]["accuracy"]
    if "cas" in m:
        s.update(cas=m["cas"]["synthetic"]["accuracy"], cas_real=m["cas"]["real"]["accuracy"])
    if "gain" in m:
        s["gain_over_classic"] = {str(g["k"]): g["gan_over_classic"] for g in m["gain"]["ks"]}
    if "diversity" in m:
        s["collapse"] = m["diversity"]["collapse"]
    if "memorisation" in m:
        s["memorised"] = m["memorisation"]["memorised"]
    return s


@dataclass
class _Inputs:
    """What step 1 found: the checkpoint (if any), the synthetic spec, the image shape, the run's log."""

    meta: dict | None
    ckpt_uri: str | None
    syn_spec: str | None
    resolution: int
    channels: int
    metrics_jsonl: str | None


@dataclass
class _Real:
    train: Arrays
    heldout: Arrays
    class_names: list[str]


@dataclass
class _Synthetic:
    arrays: Arrays
    features: tuple[np.ndarray, np.ndarray] | None = None  # every row's, from Ray Data (large sets)
    feature_path: str = "in-process"


@dataclass
class _Record:
    """What the report says about how it was made: its data sources, notes and stage timings."""

    say: Callable[[str], None]
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)

    def stage(self, name: str, t0: float) -> None:
        self.timing[name] = round(time.time() - t0, 2)


def run_evaluate(cfg: EvaluateConfig, echo: Callable[[str], None] | None = None) -> dict:
    """Evaluate; every input error is raised before heavy work. Returns the summary (the CLI's JSON line)."""
    from ganaug.metrics import EvalOptions  # torch-backed: see the note at the top
    from ganaug.metrics.features import DomainSettings

    rec = _Record(echo or (lambda line: print(line, file=sys.stderr, flush=True)))
    t_start = time.time()
    # 1. Check the arguments and every input, cheapest first, before any heavy work.
    cfg.validate()
    metrics, ks, device = cfg.metric_list(), cfg.k_list(), "cuda" if cfg.use_gpu else "cpu"
    _set_threads(cfg.threads)
    inputs = _check_inputs(cfg, device, rec)
    # 2. Load the real data: its train and held-out parts.
    real = _prepare_real(cfg, inputs, rec)
    options = EvalOptions(domain=DomainSettings(epochs=cfg.domain_epochs), cas_epochs=cfg.cas_epochs,
                          gain_steps=cfg.gain_steps, gan_per_class=cfg.gan_per_class, device=device)
    # 3. Load or sample the synthetic set; an unlabelled one gets the domain classifier's labels.
    syn = _prepare_synthetic(cfg, inputs, real, options, rec)
    metrics = _pseudo_label(cfg, syn, real, options, metrics, rec)
    _check_synthetic(cfg, syn, real, rec)
    # 4. With --gan-kshot, a GAN per k trained on exactly the gain arms' k-shot subsets.
    gain_pools = _kshot_pools(cfg, inputs.meta, real, ks, metrics, options, rec)
    # 5. Run the metrics.
    report = _run_metrics(cfg, real, syn, metrics, ks, options, gain_pools, rec)
    # 6. Write the report (report.json last) and return the summary.
    files = _write_report(cfg, report, real, syn, inputs.metrics_jsonl, rec)
    return _summary(report, files, cfg.out, time.time() - t_start, syn.feature_path)


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch  # torch-backed: see the note at the top

        torch.set_num_threads(threads)


# ---- 1. inputs


def _check_inputs(cfg: EvaluateConfig, device: str, rec: _Record) -> _Inputs:
    """The checkpoint, the images' shape, the run's metrics.jsonl, the feature file: one-line errors, no heavy work."""
    meta, ckpt_uri = _checkpoint_meta(cfg, rec) if cfg.checkpoint else (None, None)
    syn_spec = synthetic_spec(cfg.synthetic) if cfg.synthetic else None
    if meta is not None:
        resolution, channels = int(meta["resolution"]), int(meta["channels"])
    else:  # validate() made sure there is a --synthetic
        resolution, channels = _native_shape(syn_spec, "--synthetic")
    metrics_jsonl = _metrics_log(cfg, ckpt_uri)
    _check_feature(cfg.feature, device)
    if cfg.gan_kshot and not (meta or {}).get("config"):
        raise EvaluateError("--gan-kshot: the checkpoint's model.json has no training config; "
                            "use a checkpoint written by `ganaug train`")
    return _Inputs(meta, ckpt_uri, syn_spec, resolution, channels, metrics_jsonl)


def _checkpoint_meta(cfg: EvaluateConfig, rec: _Record) -> tuple[dict, str]:
    from ganaug import checkpoint  # torch-backed: see the note at the top

    ckpt_uri = checkpoint.resolve_checkpoint(cfg.checkpoint)
    meta = checkpoint.load_meta(ckpt_uri)
    if not cfg.synthetic:
        _check(meta.get("kind") == "noise", f"--checkpoint {cfg.checkpoint}: {meta.get('family')} translates "
                                            "images; make a set with `ganaug translate` and pass --synthetic")
    rec.data["checkpoint"] = {"uri": ckpt_uri, "id": checkpoint.checkpoint_id(ckpt_uri),
                              "family": meta.get("family"), "step": meta.get("step")}
    return meta, ckpt_uri


def _metrics_log(cfg: EvaluateConfig, ckpt_uri: str | None) -> str | None:
    """The training run's metrics.jsonl for the curves figure: --run's (required), else the checkpoint's run's."""
    run_uri = cfg.run or (_run_of(ckpt_uri) if ckpt_uri else None)
    if not run_uri:
        return None
    candidate = run_uri if run_uri.endswith(".jsonl") else storage.join(run_uri, "metrics.jsonl")
    if storage.exists(candidate):
        return candidate
    if cfg.run:
        raise EvaluateError(f"--run {cfg.run}: no metrics.jsonl there")
    return None


def _check_feature(feature: str, device: str) -> None:
    """Load an extractor file once here: a bad file is a one-line error before any work."""
    if feature == "domain":
        return
    from ganaug.metrics.features import build_extractor  # torch-backed: see the note at the top

    try:
        build_extractor(feature, device=device)
    except (OSError, ValueError, RuntimeError) as e:
        raise EvaluateError(f"--feature {feature}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None


# ---- 2. real data


def _prepare_real(cfg: EvaluateConfig, inputs: _Inputs, rec: _Record) -> _Real:
    t = time.time()
    train, heldout, class_names, info = load_real(cfg, inputs.resolution, inputs.channels)
    rec.data.update(info)
    rec.stage("load_real", t)
    meta = inputs.meta
    if meta is not None and meta.get("kind") == "noise" and int(meta.get("num_classes", 0)) > 0:
        _check(int(meta["num_classes"]) == len(class_names),
               f"--checkpoint has {meta['num_classes']} classes but --real {cfg.real} has {len(class_names)}")
        if list(meta.get("class_names") or []) not in ([], class_names):
            rec.notes.append(f"class names differ: checkpoint {meta['class_names'][:5]}... vs real "
                             f"{class_names[:5]}...; labels are matched by index")
    rec.say(f"evaluate: real {len(train[0])} train / {len(heldout[0])} held-out images, {len(class_names)} classes, "
            f"{inputs.resolution}x{inputs.resolution}x{inputs.channels}")
    return _Real(train, heldout, class_names)


# ---- 3. synthetic data


def _domain(cfg: EvaluateConfig, real: _Real, options) -> Any:
    """The domain classifier trained on the real train part (cached in --cache-dir)."""
    from ganaug.metrics.features import DomainFeatures  # torch-backed: see the note at the top

    return DomainFeatures.from_training(real.train[0], real.train[1], len(real.class_names), settings=options.domain,
                                        cache_dir=cfg.cache_dir, device=options.device)


def _prepare_synthetic(cfg: EvaluateConfig, inputs: _Inputs, real: _Real, options, rec: _Record) -> _Synthetic:
    t = time.time()
    if inputs.syn_spec is None:
        syn = _Synthetic(_sample_synthetic(cfg, inputs.ckpt_uri, real, options.device, rec))
    else:
        syn = _load_synthetic(cfg, inputs, real, options, rec)
    rec.stage("synthetic", t)
    return syn


def _sample_synthetic(cfg: EvaluateConfig, ckpt_uri: str, real: _Real, device: str, rec: _Record) -> Arrays:
    """The rows `ganaug generate --labels uniform --seed S` would make: as many as --num, --per-class or real train."""
    from ganaug.sampling import Sampler  # torch-backed: see the note at the top

    sampler = Sampler.from_checkpoint(ckpt_uri, device=device)
    k = max(sampler.num_classes, 1) if sampler.conditional else 1
    num = cfg.num or (cfg.per_class * k if cfg.per_class else len(real.train[0]))
    rec.say(f"evaluate: sampling {num} images from {ckpt_uri} (seed {cfg.seed}, truncation {cfg.truncation})")
    synthetic = sample_balanced(sampler, num, cfg.seed, cfg.truncation, rec.say)
    rec.data["synthetic"] = {"source": "sampled", "rows": num, "seed": cfg.seed, "truncation": cfg.truncation,
                             "labels": "uniform (row i: seed S+i, label i mod K), as `ganaug generate`"}
    return synthetic


def _load_synthetic(cfg: EvaluateConfig, inputs: _Inputs, real: _Real, options, rec: _Record) -> _Synthetic:
    """--synthetic: its images (on the Ray path, the first --max-images) and, on the Ray path, every row's features."""
    spec = inputs.syn_spec
    parsed, rows = _open_synthetic(cfg, spec)
    use_ray = cfg.ray if cfg.ray is not None else rows > cfg.ray_threshold
    if use_ray and (parsed.scheme != "parquet" or parsed.classes):
        _check(cfg.ray is not True, f"--ray: the Ray Data feature path reads whole Parquet sets, not {spec}")
        use_ray = False
    rec.data["synthetic"] = {"source": cfg.synthetic, "spec": spec, "rows": rows}
    manifest = _manifest_summary(parsed)
    if manifest is not None:
        rec.data["synthetic"]["manifest"] = manifest
    if use_ray:
        result, syn = _synthetic_on_ray(cfg, inputs, real, options, rows, rec)
    else:
        syn = _load(spec, inputs.resolution, inputs.channels, cfg.skip_bad, "--synthetic")
        result = _Synthetic((syn.images, syn.labels))
    names, k = real.class_names, len(real.class_names)
    if syn.class_names and k and list(syn.class_names[:k]) != names[: len(syn.class_names)]:
        rec.notes.append(f"class names differ: synthetic {syn.class_names[:5]}... vs real {names[:5]}...; "
                         "labels are matched by index")
    return result


def _open_synthetic(cfg: EvaluateConfig, spec: str) -> tuple[Any, int]:
    """(parsed spec, rows it selects) without reading any image."""
    try:
        parsed, reader = open_reader(spec)
        start, stop = parsed.bounds(reader.num_rows())
    except UserError as e:
        raise EvaluateError(f"--synthetic {cfg.synthetic}: {str(e).splitlines()[0]}") from None
    return parsed, stop - start


def _manifest_summary(parsed) -> dict | None:
    """A generated set's provenance from its _manifest.json, if it has one."""
    uri = storage.join(parsed.location, "_manifest.json") if parsed.scheme == "parquet" else None
    if not (uri and storage.exists(uri)):
        return None
    man = storage.read_json(uri)
    return {k: man.get(k) for k in ("rows", "counts", "checkpoint", "arguments", "filter", "created") if k in man}


def _synthetic_on_ray(cfg: EvaluateConfig, inputs: _Inputs, real: _Real, options, rows: int,
                      rec: _Record) -> tuple[_Synthetic, Any]:
    """Every row's features as a Ray Data job; the first --max-images rows as images. Returns (result, dataset)."""
    spec = inputs.syn_spec
    image_rows = min(rows, cfg.max_images)
    img_spec = spec if image_rows == rows else f"{spec}[0:{image_rows}]"
    syn = _load(img_spec, inputs.resolution, inputs.channels, cfg.skip_bad, "--synthetic")
    rec.say(f"evaluate: synthetic features of {rows} rows on Ray Data ({cfg.feature})")
    t = time.time()
    if cfg.feature == "domain":
        factory: Any = _DomainFactory.of(_domain(cfg, real, options), options.device)
    else:
        factory = _SpecFactory(cfg.feature, options.device)
    features = parquet_features_ray(spec, factory, resolution=inputs.resolution, channels=inputs.channels,
                                    workers=cfg.workers, use_gpu=cfg.use_gpu)
    rec.stage("ray_features", t)
    if image_rows < rows:
        rec.notes.append(f"feature metrics use all {rows} synthetic rows (Ray Data); image-level metrics "
                         f"(fidelity, CAS, gain, pixel copies) use the first {image_rows} rows")
    return _Synthetic((syn.images, syn.labels), features, "ray"), syn


def _pseudo_label(cfg: EvaluateConfig, syn: _Synthetic, real: _Real, options, metrics: list[str],
                  rec: _Record) -> list[str]:
    """An unlabelled set (an unconditional generator) takes the domain classifier's predictions as labels,
    and label fidelity is dropped. Returns the metrics to run."""
    labels = syn.arrays[1]
    if not (len(labels) and (labels < 0).any()):
        return metrics
    _check(bool((labels < 0).all()), "the synthetic set mixes labelled and unlabelled rows")
    from ganaug.metrics.classifier import predict  # torch-backed: see the note at the top

    clf = _domain(cfg, real, options).classifier
    syn.arrays = (syn.arrays[0], predict(clf, syn.arrays[0]))
    if syn.features is not None:
        _check(cfg.feature == "domain", "an unlabelled synthetic set on the Ray path needs --feature domain "
                                        "(its pseudo-labels come from the domain classifier's head)")
        syn.features = (syn.features[0], _head_labels(clf, syn.features[0]))
    if "fidelity" in metrics:
        metrics = [m for m in metrics if m != "fidelity"]
        _check(bool(metrics), "--metrics fidelity: the synthetic set is unlabelled (unconditional generator), "
                              "so label fidelity has nothing to check")
    rec.notes.append("the synthetic set is unlabelled (unconditional generator): labels are the domain classifier's "
                     "predictions, and label fidelity is skipped")
    return metrics


def _head_labels(clf, features: np.ndarray) -> np.ndarray:
    """The domain classifier's predictions from features it computed (its head only)."""
    import torch  # torch-backed: see the note at the top

    with torch.no_grad():
        logits = clf.head(torch.from_numpy(features).to(next(clf.parameters()).device))
    return logits.argmax(1).cpu().numpy().astype(np.int64)


def _check_synthetic(cfg: EvaluateConfig, syn: _Synthetic, real: _Real, rec: _Record) -> None:
    images, labels = syn.arrays
    num_classes = len(real.class_names)
    _check(len(images) > 0, "the synthetic set has no rows")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    _check(bad.size == 0, f"synthetic label {int(bad[0]) if bad.size else 0} is outside the {num_classes} classes "
                          f"of --real {cfg.real}")
    rec.say(f"evaluate: {len(syn.features[1]) if syn.features else len(images)} synthetic images "
            f"({syn.feature_path} features)")


# ---- 4. k-shot GANs


def _kshot_pools(cfg: EvaluateConfig, meta: dict | None, real: _Real, ks: list[int], metrics: list[str], options,
                 rec: _Record) -> dict[int, Arrays] | None:
    if "gain" not in metrics:
        return None
    if not cfg.gan_kshot:
        rec.notes.append("augmentation gain: the GAN arms use the evaluated generator, trained on the whole train "
                         "part (more real data than the k-shot arms see); pass --gan-kshot for the honest low-data "
                         "setting")
        return None
    t = time.time()
    pools, info = train_kshot_pools(
        meta, real.train, real.class_names, ks, subset_seed=0, steps=cfg.gan_kshot_steps,
        per_class=cfg.gan_per_class, seed=cfg.seed, truncation=cfg.truncation, device=options.device, echo=rec.say)
    options.subset_seed = 0
    rec.data["gan_kshot"] = info
    rec.stage("gan_kshot", t)
    rec.notes.append(f"augmentation gain: a {info['family']} GAN per k trained for {info['steps']} steps "
                     "on exactly that k-shot subset (fixed subset, seed 0); seeds vary the classifier only")
    return pools


# ---- 5. metrics and 6. the report


def _run_metrics(cfg: EvaluateConfig, real: _Real, syn: _Synthetic, metrics: list[str], ks: list[int], options,
                 gain_pools: dict[int, Arrays] | None, rec: _Record) -> dict:
    from ganaug.metrics import evaluate_arrays  # torch-backed: see the note at the top

    rec.say(f"evaluate: metrics {', '.join(metrics)}")
    t = time.time()
    report = evaluate_arrays(real.train, real.heldout, syn.arrays, real.class_names, metrics, ks=ks, seeds=cfg.seeds,
                             feature=cfg.feature, cache_dir=cfg.cache_dir, options=options,
                             synthetic_features=syn.features, gain_pools=gain_pools)
    rec.stage("metrics", t)
    return report


def _write_report(cfg: EvaluateConfig, report: dict, real: _Real, syn: _Synthetic, metrics_jsonl: str | None,
                  rec: _Record) -> dict[str, str]:
    """Fold what the run recorded into the report and write it; report.json is the folder's marker (written last)."""
    from ganaug.metrics.report import write_report  # torch-backed: see the note at the top

    if rec.data.get("split") and rec.data["split"] != "given":
        rec.notes.insert(0, f"held-out split: {rec.data['split']}")
    report["data"] = rec.data
    report["notes"] = rec.notes
    report["settings"]["feature_path"] = syn.feature_path
    report["settings"]["evaluate"] = {k: v for k, v in asdict(cfg).items()}
    report["timing_s"] = {**report["timing_s"], **{f"stage:{k}": v for k, v in rec.timing.items()}}
    files = write_report(cfg.out, report, class_names=real.class_names, synthetic=syn.arrays,
                         metrics_jsonl=metrics_jsonl)
    report["figures"] = sorted(f for f in files if f.endswith(".png"))
    return files


def config_dict(cfg: EvaluateConfig) -> dict:
    return asdict(cfg)


__all__ = ["EvaluateConfig", "EvaluateError", "parquet_features_ray", "run_evaluate", "sample_balanced",
           "split_heldout", "synthetic_spec", "train_kshot_pools"]
