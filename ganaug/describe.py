"""`ganaug info`: say what a URI or dataset spec is (checkpoint, run, generated set, dataset)."""

from __future__ import annotations

import json
from typing import Any

from ganaug import checkpoint, storage
from ganaug.data.spec import SPEC_PREFIXES, parse_spec
from ganaug.errors import UserError

MANIFEST = "_manifest.json"


def _describe_checkpoint(uri: str) -> dict[str, Any]:
    meta = checkpoint.load_meta(uri)
    keep = ("family", "kind", "resolution", "channels", "num_classes", "class_names", "step",
            "images_seen", "ganaug_version", "config_digest", "generator_kwargs")
    return {"type": "checkpoint", "uri": uri, "id": checkpoint.checkpoint_id(uri),
            **{k: meta[k] for k in keep if k in meta}}


def _describe_run(uri: str) -> dict[str, Any]:
    ckpts = checkpoint.list_checkpoints(uri)
    out: dict[str, Any] = {"type": "run", "uri": uri, "checkpoints": [u for _, u in ckpts]}
    if ckpts:
        out["latest"] = _describe_checkpoint(ckpts[-1][1])
    metrics = storage.join(uri, "metrics.jsonl")
    if storage.exists(metrics):
        lines = storage.read_text(metrics).strip().splitlines()
        out["reports"] = len(lines)
        if lines:
            out["last_report"] = json.loads(lines[-1])
    return out


def _describe_generated(uri: str, allow_incomplete: bool) -> dict[str, Any]:
    man = storage.join(uri, MANIFEST)
    if storage.exists(man):
        manifest = storage.read_json(man)
        return {"type": "generated_set", "uri": uri, **manifest}
    if not allow_incomplete:
        raise UserError(f"{uri} is an incomplete generated set (no {MANIFEST}); "
                        "re-run the generate command to finish it, or pass --allow-incomplete")
    parts = [n for n in storage.listdir(uri) if n.endswith(".parquet")]
    return {"type": "generated_set", "uri": uri, "complete": False, "files": parts}


def describe(uri: str, allow_incomplete: bool = False) -> dict[str, Any]:
    if uri.startswith(SPEC_PREFIXES):
        from ganaug.data import dataset_summary

        if uri.startswith("parquet:"):
            location = parse_spec(uri).location
            if storage.isdir(location) and not allow_incomplete and not storage.exists(storage.join(location, MANIFEST)) \
                    and any(n.startswith("part-") for n in storage.listdir(location)):
                _describe_generated(location, allow_incomplete)  # raises the incomplete-set error
        return {"type": "dataset", **dataset_summary(uri)}
    if storage.exists(storage.join(uri, checkpoint.MARKER)):
        return _describe_checkpoint(uri)
    if storage.exists(checkpoint.checkpoints_root(uri)):
        return _describe_run(uri)
    names = storage.listdir(uri) if storage.exists(uri) else []
    if MANIFEST in names or any(n.endswith(".parquet") for n in names):
        return _describe_generated(uri, allow_incomplete)
    if names:
        # A checkpoint folder missing its marker: say so precisely.
        if any(n.endswith(".safetensors") for n in names):
            checkpoint.load_meta(uri)
        raise UserError(f"{uri}: not a ganaug checkpoint, run or generated set")
    raise UserError(f"{uri}: not found (and not a dataset spec; specs start with "
                    f"{', '.join(s for s in SPEC_PREFIXES)})")
