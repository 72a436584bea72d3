"""Typed run configuration: YAML <-> nested dataclasses, with validation that names the key.

The four sections `model`, `data`, `training`, `storage` are the contract of ARCHITECTURE.md §3.
Unknown keys are errors with a "did you mean" suggestion; values are type-checked and
range-checked; `--set a.b=c` overrides are coerced to the field's type.

Names (family, loss, augment policies, source transform) are checked against their registries'
torch-free declarations (ganaug/families.py, ganaug/choices.py), and each family's declared
model keys decide which `model.*` keys may differ from their defaults. So importing and
validating a config never imports torch or a model.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ganaug.choices import (
    AUGMENT_POLICIES,
    LOSSES,
    SOURCE_TRANSFORMS,
    augment_combination_error,
)
from ganaug.errors import UserError
from ganaug.families import FAMILIES
from ganaug.registry import Registry


class ConfigError(UserError):
    """A configuration problem; the message names the full key path."""


def _check(cond: bool, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': got {value!r}, expected {allowed}")


def _check_name(registry: Registry, value: Any, key: str) -> None:
    """A registered name, else the registry's uniform message, naming the config key."""
    if value not in registry:
        raise ConfigError(registry.unknown_message(value, f"config key '{key}'"))


def _power_of_two(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


# What a config written before a key existed meant by leaving it out: the behaviour of that
# older ganaug. Comparing a stored run's config against a new one uses these, so an upgrade does
# not refuse to resume over a key whose old meaning equals the new value.
ABSENT_MEANS = {
    "model.mbstd_group": 0,
    "model.mode_seeking": 0.0,   # the default became 1.0 (MSGAN term) after runs existed
    "model.pool_size": 0,        # cyclegan ran without its image pool before the key existed
    "data.holdout": 0.0,         # every row trained before rows could be held back
}


@dataclass
class ModelConfig:
    """Architecture settings: every family's keys in one typed container. A family reads the
    keys its FamilyConfig declares (ganaug/families.py); the others must keep their defaults."""

    family: str = "cgan"
    z_dim: int = 128            # latent size (noise families)
    width: int = 64             # base channel count; deeper layers scale from it
    max_width: int = 256        # cap on channels per layer
    w_dim: int = 128            # stylegan2: intermediate latent size
    mapping_layers: int = 4     # stylegan2: MLP depth
    embed_dim: int = 64         # class embedding size (conditional families)
    conditional: bool = True    # stylegan2: condition the mapping network on labels
    # None = the family's reference value (GANFamily.defaults), filled in by RunConfig.validate().
    spectral_norm: bool | None = None  # spectral normalisation in D (noise: on; translation: off)
    aux_classifier: float = 0.0  # cgan: weight of the ACGAN auxiliary loss (0 = off)
    mbstd_group: int = 0        # cgan: minibatch-stddev group size in D (0 = off)
    # Weight of the MSGAN term against mode collapse within a class (0 = off). Default: 1 for
    # conditional noise families, 0 for unconditional ones (None = that default).
    mode_seeking: float | None = None
    style_mixing: float = 0.9   # stylegan2: probability of mixing two w's in training
    res_blocks: int = 6         # cyclegan: ResNet blocks in each generator
    l1_weight: float = 100.0    # pix2pix: L1 weight
    cycle_weight: float = 10.0  # cyclegan: cycle-consistency weight
    identity_weight: float = 0.5  # cyclegan: identity weight, relative to cycle
    pool_size: int = 50         # cyclegan: fake-image history per discriminator (0 = off), as the reference

    def validate(self, prefix: str = "model", defaults: dict[str, Any] | None = None) -> None:
        """`defaults`: the family's resolved "model.<key>" values (RunConfig.resolve_defaults)."""
        _check_name(FAMILIES, self.family, f"{prefix}.family")
        self._check_family_keys(prefix, defaults or {})
        for k in ("z_dim", "width", "max_width", "w_dim", "embed_dim"):
            v = getattr(self, k)
            _check(1 <= v <= 4096, f"{prefix}.{k}", v, "an integer in [1, 4096]")
        _check(1 <= self.mapping_layers <= 16, f"{prefix}.mapping_layers", self.mapping_layers, "1..16")
        _check(0 <= self.res_blocks <= 32, f"{prefix}.res_blocks", self.res_blocks, "0..32")
        _check(0.0 <= self.style_mixing <= 1.0, f"{prefix}.style_mixing", self.style_mixing, "a probability in [0, 1]")
        _check(0 <= self.mbstd_group <= 64, f"{prefix}.mbstd_group", self.mbstd_group, "0 (off) .. 64")
        _check(0 <= self.pool_size <= 10000, f"{prefix}.pool_size", self.pool_size, "0 (off) .. 10000")
        for k in ("aux_classifier", "mode_seeking", "l1_weight", "cycle_weight", "identity_weight"):
            v = getattr(self, k)
            _check(v is None or v >= 0, f"{prefix}.{k}", v, "a number >= 0")

    def _check_family_keys(self, prefix: str, defaults: dict[str, Any]) -> None:
        """A key the family does not read must hold its default: the field's, or the family's
        resolved one (a run's config.yaml writes every key, so those must load again)."""
        family = FAMILIES.get(self.family)
        for f in dataclasses.fields(self):
            if f.name == "family" or f.name in family.keys:
                continue
            value = getattr(self, f.name)
            if value != defaults.get(f"model.{f.name}", f.default):
                raise ConfigError(f"config key '{prefix}.{f.name}' does not apply to family '{self.family}' "
                                  f"(got {value!r}); its keys: family, {', '.join(family.keys)}")


@dataclass
class DataConfig:
    spec: str = "builtin:digits"   # dataset spec string, see ganaug/data/
    resolution: int = 32           # images are resized to resolution x resolution
    channels: int = 1              # 1 (grey) or 3 (RGB)
    skip_bad: bool = False         # count and list unreadable images instead of failing
    # Image-to-image families: domain A is `source_transform(image)` of the same dataset
    # (paired for pix2pix), or the dataset `source_spec` when set (unpaired for cyclegan).
    source_transform: str = "invert"   # invert | edges | blur | grayscale | none
    source_spec: str = ""
    # Share of data.spec's rows held back from training (class-stratified, seeded): the
    # reference that training.select_by scores checkpoints against. A data change: it changes
    # the rows the GAN sees, so a resume compares it.
    holdout: float = 0.0

    def validate(self, prefix: str = "data") -> None:
        _check(bool(self.spec.strip()), f"{prefix}.spec", self.spec, "a dataset spec such as 'builtin:digits'")
        _check(_power_of_two(self.resolution) and 16 <= self.resolution <= 256,
               f"{prefix}.resolution", self.resolution, "a power of two in [16, 256]")
        _check(self.channels in (1, 3), f"{prefix}.channels", self.channels, "1 or 3")
        _check_name(SOURCE_TRANSFORMS, self.source_transform, f"{prefix}.source_transform")
        _check(0.0 <= self.holdout <= 0.5, f"{prefix}.holdout", self.holdout, "a share in [0, 0.5]")


@dataclass
class TrainingConfig:
    steps: int = 2000              # optimiser steps (each step = one G and one D update)
    # Per worker. Global batch = batch_size x workers: DDP averages gradients over every
    # worker's batch, so adding workers takes larger steps in images; learning rates are NOT
    # rescaled with the worker count (GANs are sensitive to lr; scale by hand if you must).
    batch_size: int = 64
    checkpoint_every: int = 500
    keep_checkpoints: int = 3      # keep the newest M checkpoint folders
    report_every: int = 50         # one metrics.jsonl line / progress line per N steps
    max_failures: int = 2          # worker-group restarts (Ray Train FailureConfig)
    seed: int = 0
    # None = the family's reference value (GANFamily.defaults), resolved by RunConfig.validate()
    # and saved resolved in the run's config.yaml. E.g. stylegan2: ns, lr 2.5e-3, betas (0, 0.99),
    # r1_gamma = 0.0002 * resolution**2 / batch_size; pix2pix/cyclegan: ns/lsgan, betas (0.5, 0.999),
    # linear lr decay; dcgan/cgan: hinge, lr 2e-4, betas (0, 0.99).
    loss: str | None = None        # ns | hinge | lsgan | wgan-gp
    lr_g: float | None = None
    lr_d: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    # "none" | "linear": constant lr for the first lr_decay_start of the steps, then linear to 0
    lr_decay: str | None = None
    lr_decay_start: float = 0.5
    r1_gamma: float | None = None  # R1 weight (0 = off)
    r1_every: int = 16             # lazy regularisation interval (D's Adam lr/betas are scaled for it)
    pl_weight: float | None = None  # stylegan2 path-length regularisation weight (0 = off)
    pl_every: int = 4              # its lazy interval
    gp_weight: float = 10.0        # WGAN-GP weight
    ema_beta: float = 0.999        # G_ema decay once ramped up
    ema_rampup: float = 0.05       # ramp: beta_t = min(beta, (1 + t)/(10 + t)) style, as a fraction of steps
    augment: str = "translation,cutout"  # D's inputs: DiffAugment color,translation,cutout list, or ada
    ada_target: float = 0.6        # adaptive p target of the r_t heuristic (0 disables adaptation)
    ada_p: float = 0.0             # initial augmentation probability
    ada_interval: int = 4          # steps between p updates
    ada_kimg: float = 100.0        # images (thousands) for p to go 0 -> 1
    num_workers: int = 2           # Ray Train workers (CLI --workers overrides)
    use_gpu: bool = False
    threads_per_worker: int = 0    # torch threads per worker (0 = cores / workers)
    # GPU only. true: cuDNN autotunes its conv algorithms per process (fastest; a resumed run's
    # steps match the uninterrupted run's only to float rounding). false: deterministic cuDNN
    # algorithms and torch.use_deterministic_algorithms (slower; see GANTrainer's docstring).
    cudnn_benchmark: bool = True
    # Wall-clock budget in minutes of training time, summed over the run's resumes (0 = none):
    # training stops at a checkpoint once it is spent. Not a model change: rerun the same
    # --name with a larger value to extend a run.
    max_minutes: float = 0.0
    # Extra Ray resources each worker asks for besides its CPU/GPU, e.g. {trainer_node: 1} (a
    # custom resource that only one node type has): the workers then run on that node type,
    # and an autoscaler starts such nodes for them.
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    # Checkpoint selection: "kid" scores every checkpoint's G_ema (select_samples images) by KID
    # in the domain feature space against the data.holdout rows, keeps {run}/best.json on the
    # lowest, and `--checkpoint RUN` then means that checkpoint. "none": the latest.
    select_by: str = "none"
    select_samples: int = 500

    def validate(self, prefix: str = "training") -> None:
        for k in ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "report_every",
                  "r1_every", "pl_every", "ada_interval", "num_workers"):
            v = getattr(self, k)
            _check(v >= 1, f"{prefix}.{k}", v, "an integer >= 1")
        _check(self.max_failures >= 0, f"{prefix}.max_failures", self.max_failures, "an integer >= 0")
        _check(self.seed >= 0, f"{prefix}.seed", self.seed, "an integer >= 0")
        _check(self.threads_per_worker >= 0, f"{prefix}.threads_per_worker", self.threads_per_worker, "an integer >= 0")
        _check_name(LOSSES, self.loss, f"{prefix}.loss")
        _check(self.select_by in ("none", "kid"), f"{prefix}.select_by", self.select_by, "none or kid")
        _check(self.select_samples >= 2, f"{prefix}.select_samples", self.select_samples, "an integer >= 2")
        for name in self.resources_per_worker:
            _check(name not in ("CPU", "GPU", "memory"), f"{prefix}.resources_per_worker.{name}", name,
                   "a custom resource name (CPU and GPU come from the worker count and use_gpu)")
        for k in ("lr_g", "lr_d"):
            v = getattr(self, k)
            _check(0 < v < 1, f"{prefix}.{k}", v, "a learning rate in (0, 1)")
        _check(self.lr_decay in ("none", "linear"), f"{prefix}.lr_decay", self.lr_decay, "none or linear")
        for k in ("beta1", "beta2", "ema_beta", "ada_p", "ada_target", "ema_rampup", "lr_decay_start"):
            v = getattr(self, k)
            _check(0 <= v <= 1, f"{prefix}.{k}", v, "a number in [0, 1]")
        for k in ("r1_gamma", "pl_weight", "gp_weight", "ada_kimg", "max_minutes"):
            v = getattr(self, k)
            _check(v >= 0, f"{prefix}.{k}", v, "a number >= 0")
        policies = [p.strip() for p in self.augment.split(",") if p.strip()]  # a comma list, or empty
        for p in policies:
            _check_name(AUGMENT_POLICIES, p, f"{prefix}.augment")
        problem = augment_combination_error(policies)  # 'ada' stands alone
        if problem:
            raise ConfigError(f"config key '{prefix}.augment': {problem}")


@dataclass
class StorageConfig:
    root: str = "./ganaug-store"   # local path, file:// or s3://bucket/prefix

    def validate(self, prefix: str = "storage") -> None:
        _check(bool(self.root.strip()), f"{prefix}.root", self.root, "a path or URI")


@dataclass
class RunConfig:
    """A whole training run: the YAML file's four sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def validate(self) -> "RunConfig":
        self.resolve_defaults()
        self.model.validate(defaults=self.family_defaults())
        self.data.validate()
        self.training.validate()
        self.storage.validate()
        _check(self.training.select_by == "none" or self.data.holdout > 0, "data.holdout", self.data.holdout,
               f"a share > 0 when training.select_by is {self.training.select_by!r} (the rows it judges against)")
        return self

    def family_defaults(self) -> dict[str, Any]:
        """The family's reference values ("section.key" -> value); {} for an unknown family."""
        if self.model.family not in FAMILIES:
            return {}
        return FAMILIES.get(self.model.family).defaults(self.model, self.data, self.training)

    def resolve_defaults(self) -> "RunConfig":
        """Fill every unset (None) model/training key with the family's reference value.

        An unknown family is left for ModelConfig.validate() to report.
        """
        for key, value in self.family_defaults().items():
            section, name = key.split(".", 1)
            target = getattr(self, section)
            if getattr(target, name) is None:
                setattr(target, name, value)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def digest(self) -> str:
        import hashlib

        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- parsing

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and for strings from --set, convert) a value against a field type."""
    args = typing.get_args(tp)
    if type(None) in args:  # `X | None`: an explicit null means "the family default"
        if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "~")):
            return None
        (tp,) = [a for a in args if a is not type(None)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"config key '{key}': got {value!r}, expected true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}': got {value!r}, expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': got {value!r}, expected an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}': got {value!r}, expected a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': got {value!r}, expected a number")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}': got {value!r}, expected a string")
    if typing.get_origin(tp) is dict:
        return _resource_mapping(value, key)
    raise ConfigError(f"config key '{key}': unsupported field type {_type_name(tp)}")


def _resource_mapping(value: Any, key: str) -> dict[str, float]:
    """A mapping of names to non-negative numbers (Ray resources); --set gives it as text."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value) if value.strip() else {}
        except yaml.YAMLError:
            pass
    if not isinstance(value, dict):
        raise ConfigError(f"config key '{key}': got {value!r}, expected a mapping such as {{gpu_node: 1}}")
    out = {}
    for name, amount in value.items():
        if not isinstance(name, str) or isinstance(amount, bool) or not isinstance(amount, (int, float)) \
                or not amount >= 0:
            raise ConfigError(f"config key '{key}.{name}': got {amount!r}, expected a number >= 0")
        out[name] = float(amount)
    return out


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix or '<root>'}': expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1, cutoff=0.5)
            hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{path}'{hint}; valid keys here: {', '.join(fields)}")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = _build(tp, v, path)
        else:
            kwargs[k] = _coerce(v, tp, path)
    return cls(**kwargs)


def build_dataclass(cls: type, data: Any, prefix: str = "") -> Any:
    """A mapping -> the nested dataclass `cls`, with this module's checks (unknown keys with a
    "did you mean", values coerced to each field's type, errors naming the dotted key): the
    one YAML -> typed config mapper, shared by every config ganaug reads."""
    return _build(cls, data, prefix)


def config_from_dict(data: dict) -> RunConfig:
    return _build(RunConfig, data, "").validate()


def parse_override(text: str) -> tuple[list[str], str]:
    if "=" not in text:
        raise ConfigError(f"bad override {text!r}: expected key=value, e.g. model.width=64")
    key, value = text.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"bad override {text!r}: empty key part")
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=c` strings onto a raw config dict; values are parsed as YAML scalars."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for text in overrides:
        parts, raw = parse_override(text)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (dict, list)):
            value = raw
        set_dotted(data, parts, value, f"bad override {text!r}")
    return data


def set_dotted(data: dict, parts: list[str], value: Any, context: str, error: type[ConfigError] = ConfigError) -> None:
    """data[a][b]... = value for the key parts [a, b, ...], creating sections; a part that is a
    value, not a section, is `error` ("CONTEXT: 'a' is not a section")."""
    node = data
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise error(f"{context}: '{p}' is not a section")
        node = nxt
    node[parts[-1]] = value


MAX_YAML_ALIASES = 100       # a run config needs a handful; a "billion laughs" needs thousands
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 100_000     # nodes after expanding every alias


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader (plain data only, no Python objects) that refuses more than
    MAX_YAML_ALIASES alias uses, so nested anchors cannot expand into a YAML bomb."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases = getattr(self, "_aliases", 0) + 1
            if self._aliases > MAX_YAML_ALIASES:
                raise ConfigError(f"more than {MAX_YAML_ALIASES} YAML aliases (*name); "
                                  "refusing a possible YAML bomb")
        return super().compose_node(parent, index)

    def construct_document(self, node):
        sizes: dict[int, int] = {}

        def expanded(n) -> int:  # memoised: shared (aliased) nodes are counted once per use
            if id(n) not in sizes:
                sizes[id(n)] = 1  # a recursive alias counts as one while it is walked
                kids = [x for pair in n.value for x in pair] if isinstance(n, yaml.MappingNode) \
                    else n.value if isinstance(n, yaml.SequenceNode) else []
                sizes[id(n)] = 1 + sum(expanded(k) for k in kids)
            return sizes[id(n)]

        if expanded(node) > MAX_YAML_NODES:
            raise ConfigError(f"YAML expands to more than {MAX_YAML_NODES} values through its "
                              "aliases; refusing a possible YAML bomb")
        return super().construct_document(node)


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    """A YAML file that must hold a mapping, read safely and bounded (size, alias expansion).

    Every config ganaug reads (run configs, the Serve config) comes through here, so a YAML
    bomb or a huge file is refused the same way everywhere, with one line naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}")
    if p.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(f"{what} {p}: larger than {MAX_YAML_BYTES} bytes; not a config")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_BoundedLoader) or {}
    except ConfigError as e:
        raise ConfigError(f"{what} {p}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {p}: invalid YAML: {str(e).splitlines()[0]}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {what} {p}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {p}: expected a mapping at the top level")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML run config (or the defaults when path is None) and apply overrides."""
    data: dict = {} if path is None else read_yaml_mapping(path)
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data)
