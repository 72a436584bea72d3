"""Sweeps (`ganaug tune SWEEP.yaml`): the sweep file, its search space and the objective. No Ray.

The Ray Tune glue is `ganaug/tuning.py`; everything a user can get wrong is checked here, on
the driver, before Ray starts (ARCHITECTURE.md §3.1, "Sweeps").

A sweep file:

    base: mnist-cgan-cpu.yaml         # a `ganaug train` config; relative to this file
    set:                              # keys fixed for every trial, over base (like --set)
      data.spec: parquet:ganaug-store/kshot/mnist-k20.parquet   # what the GANs train on
      training.num_workers: 1
    validation: mnist:../shared/data/mnist[4000:5000]   # scored on; never the training data
    space:                            # dotted key -> {distribution: arguments}
      training.lr_g: {loguniform: [1.0e-4, 1.0e-3]}
      model.mode_seeking: {choice: [0.0, 1.0]}
      mix.ratio: {uniform: [0.2, 0.8]}              # synthetic share of each classifier batch
      mix.filter: {choice: [none, "fidelity:0.5"]}  # generation filter of the pool
    scheduler: {max_steps: 2000, grace_steps: 250, reduction_factor: 2}   # ASHA, in GAN steps
    num_samples: 8
    seed: 0
    classifier: {steps: 500, seeds: 3}
    samples_per_class: 100

The objective of a trial at a rung (its GAN's checkpoint at that step) is the augmentation gain
on the validation split (ganaug.metrics.selection): a fixed classifier trained on the GAN's own
training images + classic augmentation + `samples_per_class` generated images per class (each
batch `1 - mix.ratio` real in expectation) against the same classifier on the real images +
classic augmentation, paired over `classifier.seeds` seeds, both scored on `validation`. The
baseline arm does not depend on the trial: it is trained once per sweep.

Distributions are a Registry (`DISTRIBUTIONS`): choice, uniform, loguniform, randint (Tune's
semantics: randint's upper bound is exclusive). Every value a distribution can take at its ends
(each choice; each bound) is validated against the run config before any trial starts.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ganaug import storage
from ganaug.config import (
    ConfigError,
    RunConfig,
    build_dataclass,
    config_from_dict,
    read_yaml_mapping,
    set_dotted,
)
from ganaug.errors import UserError
from ganaug.registry import Registry

RUN_SECTIONS = ("model", "data", "training", "storage")
MIX_SECTION = "mix"
# Keys a sweep owns: a trial's steps come from the scheduler, its data and storage from the sweep.
NOT_SEARCHABLE = {
    "training.steps": "the scheduler sets it (scheduler.max_steps, grace_steps)",
    "data.spec": "every trial trains on the same data: give it in base or set",
    "data.source_spec": "every trial trains on the same data: give it in base or set",
    "storage.root": "use --storage (or set: storage.root)",
    "training.num_workers": "resources are not a hyper-parameter: fix it in set",
    "training.use_gpu": "resources are not a hyper-parameter: fix it in set",
}
NOT_SETTABLE = {"training.steps": "the scheduler sets it (scheduler.max_steps, grace_steps)"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,119}$")
POOL_SEED = 0  # the pool is rows 0..N-1 of `ganaug generate --seed 0`


class SweepError(ConfigError):
    """A problem with a sweep file or its flags; one line naming the key."""


# ============================================================================ distributions

class Distribution:
    """One search dimension. `candidates()` are the values checked against the config before
    any trial; `domain(tune)` is its Ray Tune search domain (the caller passes the `ray.tune`
    module, so this module never imports Ray)."""

    name = ""

    def __init__(self, args: list):
        self.args = args

    @classmethod
    def parse(cls, args: Any, where: str) -> Distribution:
        raise NotImplementedError

    def candidates(self) -> list:
        raise NotImplementedError

    def domain(self, tune) -> Any:
        return getattr(tune, self.name)(*self.args)

    def to_dict(self) -> dict:
        return {self.name: list(self.args)}


DISTRIBUTIONS: Registry[type[Distribution]] = Registry("distribution")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bounds(args: Any, where: str, name: str, *, integer: bool = False, positive: bool = False) -> list:
    kind = "integers" if integer else "numbers"
    ok = isinstance(args, list) and len(args) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) if integer else _number(v) for v in args)
    if not ok:
        raise SweepError(f"{where}: {name} takes [low, high], two {kind}; got {args!r}")
    lo, hi = args
    if not lo < hi:
        raise SweepError(f"{where}: {name} needs low < high; got {args!r}")
    if positive and lo <= 0:
        raise SweepError(f"{where}: {name} needs low > 0; got {args!r}")
    return [lo, hi]


@DISTRIBUTIONS.register("choice")
class Choice(Distribution):
    name = "choice"

    @classmethod
    def parse(cls, args: Any, where: str) -> Choice:
        if not isinstance(args, list) or not args or any(isinstance(v, (list, dict)) or v is None for v in args):
            raise SweepError(f"{where}: choice takes a non-empty list of values, e.g. {{choice: [0.1, 1.0]}}; "
                             f"got {args!r}")
        return cls(list(args))

    def candidates(self) -> list:
        return list(self.args)

    def domain(self, tune) -> Any:
        return tune.choice(list(self.args))


@DISTRIBUTIONS.register("uniform")
class Uniform(Distribution):
    name = "uniform"

    @classmethod
    def parse(cls, args: Any, where: str) -> Uniform:
        return cls([float(v) for v in _bounds(args, where, cls.name)])

    def candidates(self) -> list:
        return list(self.args)


@DISTRIBUTIONS.register("loguniform")
class LogUniform(Distribution):
    name = "loguniform"

    @classmethod
    def parse(cls, args: Any, where: str) -> LogUniform:
        return cls([float(v) for v in _bounds(args, where, cls.name, positive=True)])

    def candidates(self) -> list:
        return list(self.args)


@DISTRIBUTIONS.register("randint")
class RandInt(Distribution):
    """An integer in [low, high): Tune's randint (high excluded)."""

    name = "randint"

    @classmethod
    def parse(cls, args: Any, where: str) -> RandInt:
        return cls(_bounds(args, where, cls.name, integer=True))

    def candidates(self) -> list:
        return [self.args[0], self.args[1] - 1]


def parse_distribution(value: Any, where: str) -> Distribution:
    """`{loguniform: [1e-4, 1e-3]}` -> a Distribution; one-line errors naming `where`."""
    if not isinstance(value, dict) or len(value) != 1:
        raise SweepError(f"{where}: expected one distribution such as {{uniform: [0.2, 0.8]}} or "
                         f"{{choice: [a, b]}}; got {value!r} (choose from {', '.join(DISTRIBUTIONS.names())})")
    (name, args), = value.items()
    cls = DISTRIBUTIONS.get(str(name), where)
    return cls.parse(args, where)


# ============================================================================ the sweep file

@dataclass
class SchedulerSettings:
    """ASHA, measured in GAN training steps: rungs at grace_steps x reduction_factor^i."""

    max_steps: int = 2000
    grace_steps: int = 250
    reduction_factor: float = 2.0

    def validate(self, prefix: str = "scheduler") -> None:
        _require(self.max_steps >= 1, f"{prefix}.max_steps", self.max_steps, "an integer >= 1")
        _require(1 <= self.grace_steps <= self.max_steps, f"{prefix}.grace_steps", self.grace_steps,
                 f"an integer in [1, scheduler.max_steps={self.max_steps}]")
        _require(self.reduction_factor > 1, f"{prefix}.reduction_factor", self.reduction_factor, "a number > 1")

    def rungs(self) -> list[int]:
        """The steps a trial reports at: ASHA's milestones (rounded up) and max_steps."""
        out, t = [], float(self.grace_steps)
        while t < self.max_steps:
            step = math.ceil(t - 1e-9)
            if not out or step > out[-1]:
                out.append(step)
            t *= self.reduction_factor
        if not out or out[-1] < self.max_steps:
            out.append(self.max_steps)
        return out


@dataclass
class ClassifierSettings:
    """The fixed classifier of the objective (ganaug.metrics.classifier's SmallCNN)."""

    steps: int = 500        # optimiser steps per arm and seed
    seeds: int = 3          # classifier seeds 0..seeds-1, paired between the two arms
    resolution: int = 0     # side it judges at; 0 = the training data's own size (ARCHITECTURE.md §6)
    hflip: bool = False     # mirror in classic augmentation (photos yes, digits no)

    def validate(self, prefix: str = "classifier") -> None:
        _require(self.steps >= 1, f"{prefix}.steps", self.steps, "an integer >= 1")
        _require(self.seeds >= 1, f"{prefix}.seeds", self.seeds, "an integer >= 1")
        _require(self.resolution >= 0, f"{prefix}.resolution", self.resolution,
                 "0 (the data's own size) or a side in pixels")


@dataclass
class MixSettings:
    """How the generated pool joins the real images. `mix.*` keys may be searched in `space`."""

    ratio: float = 0.5          # synthetic share of each classifier batch; real fraction = 1 - ratio
    filter: str = "none"        # generation filter of the pool: none, or e.g. fidelity:0.5
    truncation: float = 1.0

    def validate(self, prefix: str = MIX_SECTION) -> None:
        _require(0.0 <= self.ratio < 1.0, f"{prefix}.ratio", self.ratio, "a synthetic fraction in [0, 1)")
        _require(0.0 <= self.truncation <= 2.0, f"{prefix}.truncation", self.truncation, "a number in [0, 2]")
        if self.filter_spec:
            from ganaug.generation import parse_filter

            try:
                parse_filter(self.filter_spec)
            except UserError as e:
                raise SweepError(f"config key '{prefix}.filter': {e}") from None

    @property
    def real_fraction(self) -> float:
        return 1.0 - self.ratio

    @property
    def filter_spec(self) -> str:
        f = self.filter.strip()
        return "" if f.lower() in ("", "none") else f


@dataclass
class SweepSettings:
    """The sweep file's typed keys (`space` and `set`, mappings of dotted keys, are parsed apart)."""

    base: str = ""                  # a `ganaug train` config file (relative to the sweep file)
    validation: str = ""            # dataset spec the objective is scored on
    num_samples: int = 8            # trials
    seed: int = 0                   # of the search (Tune's random sampling)
    samples_per_class: int = 100    # generated images per class in each trial's pool
    max_concurrent: int = 2         # trials at a time, at most (fewer when the CPUs are short)
    trial_cpus: float = 0.5         # CPUs each trial holds (scoring); its training workers ask apart
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    mix: MixSettings = field(default_factory=MixSettings)

    def validate(self) -> SweepSettings:
        _require(bool(self.base.strip()), "base", self.base, "a ganaug training config file")
        _require(bool(self.validation.strip()), "validation", self.validation,
                 "a dataset spec of validation rows, e.g. mnist:../shared/data/mnist[4000:5000]")
        _require(self.num_samples >= 1, "num_samples", self.num_samples, "an integer >= 1")
        _require(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        _require(self.samples_per_class >= 1, "samples_per_class", self.samples_per_class, "an integer >= 1")
        _require(self.max_concurrent >= 1, "max_concurrent", self.max_concurrent, "an integer >= 1")
        _require(0 < self.trial_cpus <= 64, "trial_cpus", self.trial_cpus, "a number in (0, 64]")
        self.scheduler.validate()
        self.classifier.validate()
        self.mix.validate()
        return self


MAPPING_KEYS = ("space", "set")


def _require(cond: bool, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise SweepError(f"sweep key '{key}': got {value!r}, expected {allowed}")


def _set_dotted(data: dict, key: str, value: Any) -> None:
    set_dotted(data, key.split("."), value, f"key '{key}'", SweepError)


def _check_section(key: str, where: str, sections: tuple[str, ...]) -> str:
    if not isinstance(key, str) or "." not in key or not all(key.split(".")):
        raise SweepError(f"{where}: expected a dotted key such as training.lr_g or mix.ratio")
    section = key.split(".", 1)[0]
    if section not in sections:
        close = difflib.get_close_matches(section, sections, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise SweepError(f"{where}: unknown section '{section}'{hint}; choose from {', '.join(sections)}")
    return section


# ============================================================================ the plan

@dataclass
class SweepPlan:
    """A sweep, resolved and checked on the driver: what tuning.py runs."""

    name: str
    sweep_file: str
    settings: SweepSettings
    base_file: str
    base: dict                      # the base config's raw mapping with `set` applied, specs absolute
    fixed: dict[str, Any]           # the `set` keys
    space: dict[str, Distribution]
    cfg: RunConfig                  # the base config, resolved (every trial differs only in `space`)
    storage_root: str
    data_spec: str                  # absolute
    validation_spec: str            # absolute
    judge_size: int
    class_names: list[str]
    data_rows: int
    validation_rows: int

    # ------------------------------------------------------------------ places
    @property
    def runs_root(self) -> str:
        return storage.join(self.storage_root, "runs")

    @property
    def sweep_uri(self) -> str:
        return storage.join(self.storage_root, "sweeps", self.name)

    def trial_name(self, index: int) -> str:
        return f"{self.name}-t{index:02d}"

    def run_uri(self, index: int) -> str:
        return storage.join(self.runs_root, self.trial_name(index))

    # ------------------------------------------------------------------ a trial
    def run_config(self, settings: dict[str, Any], steps: int) -> RunConfig:
        """The trial's training config at `steps` (a rung): base + set + its sampled keys."""
        data = copy.deepcopy(self.base)
        for key, value in settings.items():
            if key.split(".", 1)[0] in RUN_SECTIONS:
                _set_dotted(data, key, value)
        _set_dotted(data, "training.steps", int(steps))
        _set_dotted(data, "storage.root", self.runs_root)
        return config_from_dict(data)

    def mix(self, settings: dict[str, Any]) -> MixSettings:
        values = dataclasses.asdict(self.settings.mix)
        for key, value in settings.items():
            section, _, name = key.partition(".")
            if section == MIX_SECTION:
                values[name] = value
        mix = build_dataclass(MixSettings, values, MIX_SECTION)
        mix.validate()
        return mix

    def rungs(self) -> list[int]:
        return self.settings.scheduler.rungs()

    def param_space(self, tune) -> dict[str, Any]:
        return {key: dist.domain(tune) for key, dist in self.space.items()}

    # ------------------------------------------------------------------ records
    def identity(self) -> dict:
        """What decides every trial's run: a rerun of the same sweep name must match it."""
        return {"base": self.base, "set": self.fixed, "seed": self.settings.seed,
                "space": {k: d.to_dict() for k, d in self.space.items()}}

    def describe(self) -> dict:
        return {
            "name": self.name, "sweep_file": self.sweep_file, "base_file": self.base_file,
            "settings": dataclasses.asdict(self.settings), "space": {k: d.to_dict() for k, d in self.space.items()},
            "set": self.fixed, "base": self.base, "data": {"spec": self.data_spec, "rows": self.data_rows},
            "validation": {"spec": self.validation_spec, "rows": self.validation_rows},
            "judged_at_px": self.judge_size, "class_names": self.class_names, "rungs": self.rungs(),
            "storage": self.storage_root, "runs": self.runs_root,
        }

    def record(self) -> None:
        """Write {sweep}/sweep.json; refuse a sweep name already used for other trial settings."""
        uri = storage.join(self.sweep_uri, "sweep.json")
        if storage.exists(uri):
            old = storage.read_json(uri)
            if (old or {}).get("identity") != json.loads(json.dumps(self.identity())):
                raise SweepError(f"sweep '{self.name}' exists at {self.sweep_uri} with other trial settings "
                                 "(base, set, space or seed); use a new --name")
        storage.write_json(uri, {**self.describe(), "identity": self.identity()})


# ============================================================================ loading

def load_sweep(path: str | Path, overrides: list[str] | None = None, *, storage_root: str | None = None,
               name: str | None = None) -> SweepPlan:
    """Read and check a sweep file; `overrides` are `--set key=value` strings: keys of the run
    config sections (model., data., training., storage.) join the file's `set`; any other key is
    a sweep key (num_samples=4, scheduler.max_steps=400, mix.ratio=0.3, ...)."""
    from ganaug.config import apply_overrides, parse_override

    path = Path(path)
    where = f"sweep file {path}"
    raw = read_yaml_mapping(path, "sweep file")
    run_overrides, sweep_overrides = [], []
    for text in overrides or []:
        parts, _ = parse_override(text)
        (run_overrides if parts[0] in RUN_SECTIONS else sweep_overrides).append(text)
    try:
        raw = apply_overrides(raw, sweep_overrides)
    except ConfigError as e:
        raise SweepError(f"--set: {e}") from None
    try:
        settings, space_raw, set_raw = _parse_settings(raw)
    except ConfigError as e:
        raise SweepError(f"{where}: {e}") from None
    for text in run_overrides:
        parts, value = parse_override(text)
        set_raw[".".join(parts)] = apply_overrides({}, [f"v={value}"])["v"]

    name = name or path.stem
    if not _NAME_RE.match(name):
        raise SweepError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (at most 120; a folder name)")
    base_file = Path(settings.base).expanduser()
    if not base_file.is_absolute():
        base_file = path.resolve().parent / base_file
    base_file = base_file.resolve()
    base = read_yaml_mapping(base_file, "base config")
    fixed = _apply_set(base, set_raw, where)
    try:
        cfg = config_from_dict(copy.deepcopy(base))
    except ConfigError as e:
        raise SweepError(f"{where}: base {base_file}{' with set' if fixed else ''}: {e}") from None
    if cfg.data.source_spec or cfg.model.family in ("pix2pix", "cyclegan"):
        raise SweepError(f"{where}: base {base_file}: model.family {cfg.model.family!r} translates images; "
                         "a sweep scores generated labelled images (use a conditional noise family, e.g. cgan)")
    space = _parse_space(space_raw, base, where)

    from ganaug.data.spec import absolute_spec

    data_spec = _absolute(absolute_spec, cfg.data.spec, "data.spec", where)
    validation_spec = _absolute(absolute_spec, settings.validation, "validation", where)
    _set_dotted(base, "data.spec", data_spec)
    data_rows, names, shape = _describe_data(data_spec, "data.spec", where)
    validation_rows, val_names, _ = _describe_data(validation_spec, "validation", where)
    _check_disjoint(data_spec, validation_spec, where)
    if val_names != names:
        raise SweepError(f"{where}: validation {settings.validation!r} has classes {val_names[:12]} but the "
                         f"training data ({cfg.data.spec}) has {names[:12]}; they must be the same classes")
    judge = settings.classifier.resolution or (shape[0] if shape and shape[0] == shape[1] else cfg.data.resolution)

    root = storage_root or cfg.storage.root
    root = storage.absolute(str(root))
    return SweepPlan(name=name, sweep_file=str(path.resolve()), settings=settings, base_file=str(base_file),
                     base=base, fixed=fixed, space=space, cfg=cfg, storage_root=root, data_spec=data_spec,
                     validation_spec=validation_spec, judge_size=int(judge), class_names=list(names),
                     data_rows=data_rows, validation_rows=validation_rows)


def _parse_settings(raw: dict) -> tuple[SweepSettings, Any, Any]:
    fields = [f.name for f in dataclasses.fields(SweepSettings)] + list(MAPPING_KEYS)
    for k in raw:
        if k not in fields:
            close = difflib.get_close_matches(str(k), fields, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SweepError(f"unknown sweep key '{k}'{hint}; valid keys here: {', '.join(fields)}")
    data = {k: v for k, v in raw.items() if k not in MAPPING_KEYS}
    settings = build_dataclass(SweepSettings, data, "").validate()
    space, fixed = raw.get("space"), raw.get("set")
    for key, value in (("space", space), ("set", fixed)):
        if value is not None and not isinstance(value, dict):
            raise SweepError(f"sweep key '{key}': expected a mapping of dotted keys, got {type(value).__name__}")
    return settings, dict(space or {}), dict(fixed or {})


def _apply_set(base: dict, set_raw: dict, where: str) -> dict[str, Any]:
    fixed = {}
    for key, value in set_raw.items():
        _check_section(key, f"{where}: set key '{key}'", RUN_SECTIONS)
        if key in NOT_SETTABLE:
            raise SweepError(f"{where}: set key '{key}': {NOT_SETTABLE[key]}")
        if isinstance(value, (dict, list)):
            raise SweepError(f"{where}: set key '{key}': expected a single value, got {value!r}")
        _set_dotted(base, key, value)
        fixed[key] = value
    return fixed


def _parse_space(space_raw: dict, base: dict, where: str) -> dict[str, Distribution]:
    if not space_raw:
        raise SweepError(f"{where}: space is empty; name at least one key to search, e.g. "
                         "training.lr_g: {loguniform: [1.0e-4, 1.0e-3]} (one fixed run is `ganaug train`)")
    space: dict[str, Distribution] = {}
    for key, value in space_raw.items():
        at = f"{where}: space key '{key}'"
        section = _check_section(key, at, (*RUN_SECTIONS, MIX_SECTION))
        if key in NOT_SEARCHABLE:
            raise SweepError(f"{at}: not searchable; {NOT_SEARCHABLE[key]}")
        dist = parse_distribution(value, at)
        for candidate in dist.candidates():
            try:
                if section == MIX_SECTION:
                    build_dataclass(MixSettings, {key.split(".", 1)[1]: candidate}, MIX_SECTION).validate()
                else:
                    data = copy.deepcopy(base)
                    _set_dotted(data, key, candidate)
                    config_from_dict(data)
            except UserError as e:
                raise SweepError(f"{at}: {e}") from None
        space[key] = dist
    return space


def _absolute(absolute_spec, spec: str, key: str, where: str) -> str:
    try:
        return absolute_spec(spec)
    except UserError as e:
        raise SweepError(f"{where}: {key}: {e}") from None


def _describe_data(spec: str, key: str, where: str) -> tuple[int, list[str], list[int] | None]:
    from ganaug.data import dataset_summary, label_histogram

    try:
        summary = dataset_summary(spec)
        _, names = label_histogram(spec)
    except UserError as e:
        raise SweepError(f"{where}: {key}: {e}") from None
    if not summary.get("rows"):
        raise SweepError(f"{where}: {key}: {spec!r} selects no rows")
    return int(summary["rows"]), list(names), summary.get("shape")


def _check_disjoint(train_spec: str, val_spec: str, where: str) -> None:
    """Refuse a validation split that is, or overlaps, the training rows of the same source."""
    from ganaug.data import open_reader

    pt, rt = open_reader(train_spec)
    pv, rv = open_reader(val_spec)
    same_source = (pt.scheme, pt.location, pt.classes) == (pv.scheme, pv.location, pv.classes)
    if not same_source:
        return
    a, b = pt.bounds(rt.num_rows())
    c, d = pv.bounds(rv.num_rows())
    if (a, b) == (c, d):
        raise SweepError(f"{where}: validation {val_spec!r} is the training data (data.spec); score on rows "
                         "the GAN never sees, e.g. mnist:../shared/data/mnist[4000:5000]")
    if max(a, c) < min(b, d):
        raise SweepError(f"{where}: validation {val_spec!r} overlaps the training data (data.spec rows "
                         f"{a}:{b}) at rows {max(a, c)}:{min(b, d)}; score on rows the GAN never sees")


# ============================================================================ the objective

def load_split(plan: SweepPlan, device: str = "cpu"):
    """The objective's data: the GAN's own training images (all of them) and the validation
    split, both at the judging size. Returns a ganaug.metrics.selection.GainSplit."""
    from ganaug.data import load_dataset
    from ganaug.metrics.selection import GainSplit, largest_class

    res, ch = plan.judge_size, plan.cfg.data.channels
    skip = plan.cfg.data.skip_bad
    real = load_dataset(plan.data_spec, res, ch, skip_bad=skip)
    val = load_dataset(plan.validation_spec, res, ch)
    c = plan.settings.classifier
    return GainSplit((real.images, real.labels), (val.images, val.labels), list(real.class_names),
                     largest_class(real.labels), seeds=list(range(c.seeds)), steps=c.steps,
                     gan_per_class=plan.settings.samples_per_class, subset_seed=0, hflip=c.hflip,
                     device=device, info={"real_rows": len(real), "validation_rows": len(val)})


def score_checkpoint(plan: SweepPlan, checkpoint_uri: str, settings: dict[str, Any], split,
                     baseline: list[float]) -> dict:
    """The trial's objective at one checkpoint: the paired gain of real+classic+generated over
    real+classic on the validation split (see the module docstring)."""
    from ganaug.metrics.selection import sample_pool

    mix = plan.mix(settings)
    num = plan.settings.samples_per_class * len(split.class_names)
    pool, info = sample_pool(checkpoint_uri, num, seed=POOL_SEED, truncation=mix.truncation,
                             size=(plan.judge_size, plan.judge_size), filter_spec=mix.filter_spec)
    if num and (pool[1] < 0).all():
        raise UserError(f"checkpoint {checkpoint_uri}: the model is unconditional; a sweep scores labelled "
                        "generated images (use a class-conditional model)")
    g = split.gain(pool, mix.real_fraction, baseline)
    return {"gain": round(g.mean, 6), "gain_std": round(g.std, 6), "accuracy": round(g.accuracy, 6),
            "baseline_accuracy": round(g.baseline_accuracy, 6), "real_fraction": round(mix.real_fraction, 6),
            "filter": mix.filter_spec or "none", "truncation": mix.truncation, "filter_info": info}


def choose_best(trials: list[dict]) -> dict | None:
    """The best trial: the highest gain of its LAST report (Tune's scope="last": a trial the
    scheduler stopped early competes with what it reached), then the higher step, then the
    lower index. Trials without a report are out."""
    scored = [t for t in trials if t.get("gain") is not None]
    if not scored:
        return None
    return max(scored, key=lambda t: (t["gain"], t.get("step") or 0, -int(t.get("index", 0))))
