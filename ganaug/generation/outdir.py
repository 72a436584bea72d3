"""The output folder's state: what is there, what may be reused, and the marker written last.

    _generation.json   the intent: the arguments (fingerprint) and environment, written first
    part-NNNNN.parquet the shards, each written atomically by a write task
    _shards/*.json     a record per finished shard (size, sha256, counts), right after it
    _manifest.json     the marker, written last; then the intent and records are deleted

A re-run refuses a folder holding another set, reuses the shards of the same set (checked by
their records, else downloaded), and refuses to mix shards made in another software/device
environment unless told to. No Ray here.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import re
import uuid

from ganaug import environment, shards, storage
from ganaug.errors import UserError
from ganaug.generation.config import GenerationError, OtherSetError
from ganaug.generation.filters import MAX_FILTER_TRIES, candidates_drawn
from ganaug.generation.plan import RunPlan
from ganaug.labels import count_labels

_SHARD_RE = re.compile(r"^part-(\d{5,})\.parquet$")


def probe_writable(out: str) -> None:
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


def prepare(out: str, arguments: dict, overwrite: bool) -> dict | None:
    """Refuse to mix sets; returns the manifest when this exact set is already complete."""
    names = storage.listdir(out)
    fp = shards.fingerprint(arguments)
    ours = [n for n in names if _SHARD_RE.match(n)]
    if not overwrite:
        if shards.MANIFEST in names:
            man = storage.read_json(storage.join(out, shards.MANIFEST))
            if man.get("fingerprint") == fp:
                return man
            raise OtherSetError(f"--out {out} already holds a generated set made with different arguments "
                                  f"({_diff(man.get('arguments', {}), arguments)}); choose another --out "
                                  "or pass --overwrite")
        if shards.INTENT in names:
            intent = storage.read_json(storage.join(out, shards.INTENT))
            if intent.get("fingerprint") != fp:
                raise OtherSetError(f"--out {out} holds an unfinished set made with different arguments "
                                      f"({_diff(intent.get('arguments', {}), arguments)}); re-run that command "
                                      "to finish it, choose another --out, or pass --overwrite")
        elif ours:
            raise OtherSetError(f"--out {out} already holds {len(ours)} Parquet shards of unknown origin; "
                                  "choose another --out or pass --overwrite")
        return None
    # --overwrite: the marker goes first so the folder is never a complete-looking mix.
    for name in [shards.MANIFEST, shards.INTENT] + ours:
        if name in names:
            storage.delete(storage.join(out, name))
    storage.delete(storage.join(out, shards.RECORDS), recursive=True)
    return None


def recorded_environment(out: str) -> dict | None:
    """The environment an unfinished set's shards were made in (None: unknown, or no set)."""
    uri = storage.join(out, shards.INTENT)
    if not storage.exists(uri):
        return None
    return storage.read_json(uri).get("environment") or None


def check_environment(out: str, recorded: dict | None, now: dict, allow: bool, reused: int, total: int) -> None:
    """Refuse to add shards made here to shards made in another environment (bytes may differ)."""
    changed = environment.differences(recorded, now) if recorded else []
    if changed and not allow:
        raise OtherSetError(f"--out {out}: {reused} of {total} shards were made in another environment "
                              f"({'; '.join(changed)}); finish the set there, pass --allow-env-change to "
                              "mix them anyway, or --overwrite to start again")


def write_intent(out: str, arguments: dict, env: dict) -> None:
    storage.write_json(storage.join(out, shards.INTENT),
                       {"fingerprint": shards.fingerprint(arguments), "arguments": arguments, "environment": env})


def sweep_temporaries(out: str) -> set[str]:
    """Delete stale shard temporaries of a killed write (local temp files; on S3, storage's
    hidden upload keys); returns the names left. Readers skip temporaries anyway; this keeps a
    finished set free of litter."""
    names = set(storage.listdir(out))
    stale = {n for n in names if n.startswith(".part-") and n.endswith(".tmp")}
    for n in stale:
        storage.delete(storage.join(out, n))
    return names - stale


def verify_existing(out: str, ranges: list[tuple[int, int, int]], seed: int, total_rows: int,
                    filtered: bool) -> dict[int, dict]:
    """Shards already written by an earlier (interrupted) run of the same command."""
    import pyarrow.parquet as pq

    names = sweep_temporaries(out)  # one listing (a LIST request on S3) serves both
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
        except Exception:  # noqa: BLE001 - a torn or foreign record or shard: check it the long way
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
        candidates = (candidates_drawn(table.column("seed").to_numpy(), a, seed, total_rows)
                      if filtered else b - a)
        # (filter fallbacks of reused shards are not recorded in them: counted as 0)
        return {"index": i, "file": name, "rows": b - a, "size": len(data), "sha256": shards.sha256(data),
                "counts": count_labels(labels), "fallback": 0, "candidates": candidates, "verified_by": "download"}

    found: dict[int, dict] = {}
    if todo:
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            for info in pool.map(check, todo):
                if info is not None:
                    found[info["index"]] = info
    return found


def finish(plan: RunPlan, results: dict[int, dict], ranges: list[tuple[int, int, int]], env: dict,
           recorded: dict | None, reused: int) -> dict:
    """Write the manifest (the marker, last) and clear the intent and records; returns the manifest."""
    out, total, arguments = plan.out, plan.total, plan.arguments
    files = [{"name": results[i]["file"], "rows": results[i]["rows"], "sha256": results[i]["sha256"],
              "first_row": a} for i, a, _ in ranges]
    counts: dict[int, int] = {}
    for r in results.values():
        for k, v in r["counts"].items():
            counts[k] = counts.get(k, 0) + v
    extra = dict(plan.manifest_extra)
    fallback = sum(r["fallback"] for r in results.values())
    if arguments.get("filter"):
        candidates = sum(r["candidates"] for r in results.values())
        rejected = candidates - (total - fallback)
        extra["filter"] = {"spec": arguments["filter"], "max_tries": MAX_FILTER_TRIES, "fallback_rows": fallback,
                           "candidates": candidates, "rejected": rejected,
                           "rejection_rate": round(rejected / max(candidates, 1), 6)}
    extra["run"] = plan.run_info
    extra["environment"] = env
    if reused and recorded and environment.differences(recorded, env):
        extra["environment_changed_from"] = recorded  # --allow-env-change: say so in the set
    job = plan.job
    manifest = shards.build_manifest(rows=total, counts=counts, files=files, checkpoint_uri=job.checkpoint_uri,
                                     checkpoint_id=job.checkpoint_id, arguments=arguments,
                                     class_names=plan.class_names, fmt=job.fmt, translated=plan.translated,
                                     extra=extra)
    # Every shard of this run is written, so a temporary now belongs to a killed earlier run's
    # task that outlived its driver for a moment (Ray reaps a dead job's workers asynchronously).
    sweep_temporaries(out)
    shards.write_manifest(out, manifest)  # the marker: last
    storage.delete(storage.join(out, shards.INTENT))
    storage.delete(storage.join(out, shards.RECORDS), recursive=True)
    return manifest
