"""The checkpoint folder format (ARCHITECTURE.md §3): one folder per step, `model.json` written last.

    {run}/checkpoints/step-0000500/
        generator_ema.safetensors   weights used for sampling
        generator.safetensors       live weights
        discriminator.safetensors
        train_state.pt              optimisers, step, RNG... (torch.load(weights_only=True), resume only)
        samples.png                 fixed-seed grid, one row per class
        model.json                  family, kwargs, data shape, classes, version, digest  <- marker

A checkpoint is whole when model.json exists and every file it lists has the size it records.
Training hands the folder to Ray Train, which uploads its files in no particular order (and in
the background), so the marker alone may be there before the weights are; readers that pick a
checkpoint by listing (`latest_checkpoint`) check the sizes too, and loads check the sha256.

Weights are safetensors and the train state is loaded with weights_only=True: nothing read
from storage is ever unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ganaug import __version__, storage
from ganaug.errors import UserError
from ganaug.registry import UnknownNameError

MARKER = "model.json"
WEIGHT_FILES = ("generator_ema", "generator", "discriminator")
TRAIN_STATE = "train_state.pt"
SAMPLES = "samples.png"
CHECKPOINTS_DIR = "checkpoints"   # {run}/checkpoints/: also Ray Train's experiment folder
_STEP_DIR = re.compile(r"^step-(\d{7,})$")


class CheckpointError(UserError):
    """A checkpoint is missing, incomplete or corrupt; the message names the URI and file."""


def step_dir_name(step: int) -> str:
    return f"step-{step:07d}"


def _tensors(module_or_state: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    # safetensors wants contiguous CPU tensors with no shared storage.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_checkpoint(
    uri: str,
    *,
    meta: dict[str, Any],
    generator_ema: nn.Module | dict,
    generator: nn.Module | dict | None = None,
    discriminator: nn.Module | dict | None = None,
    train_state: dict[str, Any] | None = None,
    samples_png: bytes | None = None,
) -> str:
    """Write a checkpoint folder; `model.json` goes last so a reader never sees half of one.

    `meta` needs: family, kind, generator_kwargs, resolution, channels, num_classes,
    class_names; extras (step, config, config_digest...) are kept as they are.
    """
    required = ("family", "kind", "generator_kwargs", "resolution", "channels", "num_classes", "class_names")
    missing = [k for k in required if k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks {missing}")
    files: dict[str, bytes] = {"generator_ema.safetensors": st_save(_tensors(generator_ema))}
    if generator is not None:
        files["generator.safetensors"] = st_save(_tensors(generator))
    if discriminator is not None:
        files["discriminator.safetensors"] = st_save(_tensors(discriminator))
    if train_state is not None:
        buf = io.BytesIO()
        torch.save(train_state, buf)
        files[TRAIN_STATE] = buf.getvalue()
    if samples_png is not None:
        files[SAMPLES] = samples_png
    full_meta = dict(meta)
    full_meta["ganaug_version"] = __version__
    full_meta["files"] = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    full_meta["sizes"] = {name: len(data) for name, data in files.items()}
    files[MARKER] = json.dumps(full_meta, indent=2, sort_keys=True).encode()
    storage.publish_folder(uri, files, marker=MARKER)
    return uri


def load_meta(uri: str) -> dict[str, Any]:
    """model.json of a complete checkpoint, or a CheckpointError naming what is wrong."""
    marker = storage.join(uri, MARKER)
    if not storage.exists(marker):
        if storage.exists(uri) and storage.listdir(uri):
            raise CheckpointError(f"incomplete checkpoint {uri}: no {MARKER} (the write did not finish)")
        raise CheckpointError(f"checkpoint not found: {uri} (expected {MARKER} inside)")
    try:
        meta = json.loads(storage.read_bytes(marker))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt {marker}: {e}") from None
    if not isinstance(meta, dict) or "family" not in meta:
        raise CheckpointError(f"corrupt {marker}: not a ganaug model.json")
    check_version(marker, meta)
    validate_meta(marker, meta)
    return meta


def _major_minor(version: str) -> tuple[int, int] | None:
    m = re.match(r"^(\d+)\.(\d+)", str(version))
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_version(marker: str, meta: dict[str, Any]) -> None:
    """Refuse a checkpoint whose format this ganaug may not read: one written by another
    major version, or by a newer minor one (older minors of the same major stay readable)."""
    theirs = meta.get("ganaug_version")
    ours, got = _major_minor(__version__), _major_minor(theirs) if isinstance(theirs, str) else None
    if got is None:
        raise CheckpointError(f"{marker}: no valid ganaug_version (got {theirs!r}); not written by ganaug")
    if got[0] != ours[0] or got > ours:
        raise CheckpointError(f"{marker}: written by ganaug {theirs}, this is ganaug {__version__}; "
                              f"use ganaug {got[0]}.{got[1]} to read it (checkpoint formats differ)")


# field -> (accepted types, check, what it must be): checked before anything is built from it
_META_FIELDS = {
    "family": (str, lambda v: bool(re.fullmatch(r"[a-z0-9_]{1,32}", v)), "a family name"),
    "kind": (str, lambda v: v in ("noise", "translation"), "'noise' or 'translation'"),
    "generator_kwargs": (dict, lambda v: all(isinstance(k, str) for k in v), "a mapping"),
    "resolution": (int, lambda v: 1 <= v <= 4096, "an integer 1..4096"),
    "channels": (int, lambda v: v in (1, 3), "1 or 3"),
    "num_classes": (int, lambda v: 0 <= v <= 100_000, "an integer 0..100000"),
    "class_names": (list, lambda v: len(v) <= 100_000 and all(isinstance(n, str) and len(n) <= 256 for n in v),
                    "a list of strings (each at most 256 characters)"),
}


def validate_meta(marker: str, meta: dict[str, Any]) -> None:
    """Field types and ranges of model.json, so a hostile or damaged file fails with the
    field named instead of building a huge or wrong model."""
    for key, (tp, ok, what) in _META_FIELDS.items():
        if key not in meta:
            raise CheckpointError(f"{marker}: field {key!r} is missing")
        v = meta[key]
        if not isinstance(v, tp) or isinstance(v, bool) or not ok(v):
            raise CheckpointError(f"{marker}: field {key!r} must be {what}, got {str(v)[:60]!r}")
    if meta["num_classes"] and len(meta["class_names"]) != meta["num_classes"]:
        raise CheckpointError(f"{marker}: field 'class_names' has {len(meta['class_names'])} names "
                              f"for num_classes {meta['num_classes']}")
    for k, v in meta["generator_kwargs"].items():
        if isinstance(v, int) and not isinstance(v, bool) and not 0 <= v <= 1 << 16:
            raise CheckpointError(f"{marker}: field 'generator_kwargs.{k}' is out of range: {v}")


def _read_verified(uri: str, name: str, meta: dict[str, Any]) -> bytes:
    path = storage.join(uri, name)
    if not storage.exists(path):
        raise CheckpointError(f"checkpoint {uri} lacks {name}")
    data = storage.read_bytes(path)
    expected = meta.get("files", {}).get(name)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(f"corrupt checkpoint file {path}: sha256 does not match model.json")
    return data


def load_weights(uri: str, which: str = "generator_ema", meta: dict | None = None) -> dict[str, torch.Tensor]:
    if which not in WEIGHT_FILES:
        raise ValueError(f"unknown weights {which!r}; one of {WEIGHT_FILES}")
    meta = meta if meta is not None else load_meta(uri)
    name = f"{which}.safetensors"
    data = _read_verified(uri, name, meta)
    try:
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"corrupt checkpoint file {storage.join(uri, name)}: {e}") from None


def load_train_state(uri: str, meta: dict | None = None) -> dict[str, Any]:
    meta = meta if meta is not None else load_meta(uri)
    data = _read_verified(uri, TRAIN_STATE, meta)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for bad archives
        raise CheckpointError(f"corrupt checkpoint file {storage.join(uri, TRAIN_STATE)}: {e}") from None


def checkpoint_id(uri: str, meta: dict | None = None) -> str:
    """Content hash of model.json plus generator_ema.safetensors (ARCHITECTURE.md §3)."""
    meta_bytes = storage.read_bytes(storage.join(uri, MARKER))
    weights = storage.read_bytes(storage.join(uri, "generator_ema.safetensors"))
    h = hashlib.sha256()
    h.update(hashlib.sha256(meta_bytes).digest())
    h.update(hashlib.sha256(weights).digest())
    return h.hexdigest()[:16]


def build_generator(uri: str, which: str = "generator_ema") -> tuple[nn.Module, dict[str, Any]]:
    """Instantiate a checkpoint's generator with its weights (eval mode, CPU)."""
    from ganaug.models.registry import get_family

    meta = load_meta(uri)
    try:
        family = get_family(meta["family"])
    except UnknownNameError as e:
        raise CheckpointError(f"checkpoint {uri}: {e}") from None
    G = family.build_generator(meta["generator_kwargs"])
    state = load_weights(uri, which, meta)
    try:
        G.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {uri}: {which} weights do not fit the model: {str(e).splitlines()[0]}") from None
    return G.eval().requires_grad_(False), meta


# ----------------------------------------------------------------------------- run folders

def checkpoints_root(run_uri: str) -> str:
    return storage.join(run_uri, CHECKPOINTS_DIR)


def is_whole(uri: str) -> bool:
    """model.json is there and every file it lists has its recorded size (no download)."""
    marker = storage.join(uri, MARKER)
    try:
        meta = json.loads(storage.read_bytes(marker))
        sizes = meta.get("sizes") or {}   # checkpoints written before sizes were recorded: the marker
        return all(storage.size(storage.join(uri, name)) == size for name, size in sizes.items())
    except (storage.StorageError, ValueError, UnicodeDecodeError, AttributeError):
        return False


def list_checkpoints(run_uri: str, complete_only: bool = True) -> list[tuple[int, str]]:
    """(step, uri) of a run's checkpoints, oldest first; with complete_only, only whole ones."""
    root = checkpoints_root(run_uri)
    out = []
    for name in storage.listdir(root):
        m = _STEP_DIR.match(name)
        if not m:
            continue
        uri = storage.join(root, name)
        if complete_only and not is_whole(uri):
            continue
        out.append((int(m.group(1)), uri))
    return sorted(out)


def latest_checkpoint(run_uri: str) -> str | None:
    """The newest whole checkpoint of a run (checked newest first, so older ones cost nothing)."""
    root = checkpoints_root(run_uri)
    steps = sorted(((int(m.group(1)), name) for name in storage.listdir(root) if (m := _STEP_DIR.match(name))),
                   reverse=True)
    for _, name in steps:
        uri = storage.join(root, name)
        if is_whole(uri):
            return uri
    return None


BEST = "best.json"   # {run}/best.json: the checkpoint training.select_by judged best so far


def read_best(run_uri: str) -> dict | None:
    uri = storage.join(run_uri, BEST)
    return storage.read_json(uri) if storage.exists(uri) else None


def resolve_with_reason(uri: str) -> tuple[str, str]:
    """(checkpoint folder, how it was chosen): the folder itself; for a run folder, the
    checkpoint its best.json names when that one is whole, else its latest whole checkpoint."""
    if storage.exists(storage.join(uri, MARKER)):
        return uri, "folder"
    if storage.exists(checkpoints_root(uri)):
        best = read_best(uri)
        if best and best.get("checkpoint") and is_whole(best["checkpoint"]):
            return best["checkpoint"], f"best by {best.get('metric', '?')} ({best.get('kid', '?')}) at step {best.get('step')}"
        latest = latest_checkpoint(uri)
        if latest:
            return latest, "latest"
    load_meta(uri)  # raises the precise error (missing / incomplete)
    return uri, "folder"


def resolve_checkpoint(uri: str) -> str:
    """Accept a checkpoint folder or a run folder (-> its best checkpoint if judged, else its latest)."""
    return resolve_with_reason(uri)[0]
