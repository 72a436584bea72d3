"""The files of a training run folder, and the progress line. No Ray here.

    {storage}/{name}/
        config.yaml                 resolved RunConfig (written by the driver before training)
        metrics.jsonl               one JSON line per report, steps strictly increasing
        checkpoints/                Ray Train's experiment folder: its snapshot of the reported
                                    checkpoints (checkpoint_manager_snapshot.json) and
            step-XXXXXXX/           the checkpoints it uploaded (the format of ganaug.checkpoint)
        samples/step-XXXXXXX.png    the checkpoint's fixed-seed grid, kept after pruning

metrics.jsonl is small (one line per `report_every` steps), so "append" is "rewrite the
whole file atomically" (storage.write_bytes). That is the only append S3 has, and on local
disk it means a reader never sees a torn line.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ganaug import storage
from ganaug.checkpoint import step_dir_name

METRICS = "metrics.jsonl"
CONFIG = "config.yaml"
SAMPLES_DIR = "samples"

# Keys of a metrics line that are bookkeeping, not values to print next to the losses.
_NOT_SHOWN = {"step", "images_seen", "images_per_s", "seconds", "rank", "node", "g_hash", "d_hash",
              "resumed_from", "d_fake_g", "preemption_checkpoint",
              "checkpoint_s", "quality", "best_step"}
_FIRST = ("loss_g", "loss_d", "d_real", "d_fake")


def metrics_uri(run_uri: str) -> str:
    return storage.join(run_uri, METRICS)


def config_uri(run_uri: str) -> str:
    return storage.join(run_uri, CONFIG)


def samples_uri(run_uri: str, step: int) -> str:
    return storage.join(run_uri, SAMPLES_DIR, f"{step_dir_name(step)}.png")


# --------------------------------------------------------------------------- secrets

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    """Drop credentials embedded in URIs (scheme://user:secret@host -> scheme://***@host)."""
    return _USERINFO.sub(lambda m: m.group("scheme") + "***@", str(text))


def redact_obj(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_obj(v) for v in obj]
    if isinstance(obj, str):
        return redact(obj)
    return obj


# --------------------------------------------------------------------------- config.yaml

def write_config(run_uri: str, config_yaml: str) -> str:
    uri = config_uri(run_uri)
    storage.write_text(uri, redact(config_yaml))
    return uri


# --------------------------------------------------------------------------- metrics.jsonl

def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null (json.dumps would write invalid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def read_metrics(run_uri: str) -> list[dict]:
    """The run's metrics lines; [] when there is no file. Torn or foreign lines are skipped."""
    uri = metrics_uri(run_uri)
    if not storage.exists(uri):
        return []
    out = []
    for line in storage.read_text(uri).splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            out.append(rec)
    return out


def seconds_spent(run_uri: str, upto_step: int) -> float:
    """Training seconds the run had reached at `upto_step` (the checkpoint it resumes from):
    the `seconds` of the last metrics line at or before it, which every resume continues."""
    lines = [r for r in read_metrics(run_uri) if r["step"] <= upto_step]
    return float(lines[-1].get("seconds") or 0.0) if lines else 0.0


class MetricsLog:
    """metrics.jsonl of one run, owned by rank 0.

    On (re)start, `resume(step)` keeps only the lines with step <= the step training resumes
    from, so the file stays strictly increasing whatever crashed after the last checkpoint.
    Reports are kept in memory and the file is written at checkpoints (`flush`), not at every
    report: an object store cannot append, and rewriting the file per report cost one growing
    upload per report. Lines after the last checkpoint would be dropped on resume anyway.
    """

    def __init__(self, run_uri: str):
        self.run_uri = run_uri
        self.uri = metrics_uri(run_uri)
        self.lines: list[dict] = []

    def resume(self, step: int) -> list[dict]:
        old = read_metrics(self.run_uri)
        self.lines = [r for r in old if r["step"] <= step]
        if len(self.lines) != len(old):
            self._flush()
        return self.lines

    @property
    def last(self) -> dict | None:
        return self.lines[-1] if self.lines else None

    def append(self, record: dict) -> None:
        if self.lines and record["step"] <= self.lines[-1]["step"]:
            # Never write a non-monotonic file; a repeated step replaces the old line.
            self.lines = [r for r in self.lines if r["step"] < record["step"]]
        self.lines.append(_clean(dict(record)))

    def flush(self) -> None:
        self._flush()

    def _flush(self) -> None:
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.lines)
        storage.write_text(self.uri, text)


# --------------------------------------------------------------------------- progress line

def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _num(v: Any) -> str:
    if v is None:
        return "nan"
    v = float(v)
    if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3):
        return f"{v:.2e}"
    return f"{v:.3f}"


def loss_items(record: dict) -> list[tuple[str, Any]]:
    """(name, value) of the numbers worth printing: losses and D outputs first, ada_p last."""
    nums = {k: v for k, v in record.items()
            if k not in _NOT_SHOWN and (v is None or isinstance(v, (int, float))) and not isinstance(v, bool)}
    last = ("ada_p", "ada_rt")  # the augmentation strength and the signal that drives it, together
    order = [k for k in _FIRST if k in nums] + sorted(k for k in nums if k not in _FIRST and k not in last)
    order += [k for k in last if k in nums]
    return [(k, nums[k]) for k in order]


def format_progress(record: dict, total_steps: int, *, global_batch: int) -> str:
    """One human line per report, e.g.

    step   40/200  20%  312.5 img/s  loss_d 1.234  loss_g 0.876  d_real 0.412  ada_p 0.000  ada_rt 0.650  0:12  ETA 0:48

    The ETA uses the last window's pace (images_per_s over the global batch), so a resumed
    run's estimate does not count the time lost to the crash.
    """
    step = int(record["step"])
    width = len(str(total_steps))
    pct = 100.0 * step / max(total_steps, 1)
    parts = [f"step {step:>{width}d}/{total_steps}", f"{pct:3.0f}%"]
    rate = record.get("images_per_s")
    eta = None
    if rate:
        parts.append(f"{float(rate):.1f} img/s")
        eta = (total_steps - step) * global_batch / float(rate)
    parts += [f"{k} {_num(v)}" for k, v in loss_items(record)]
    parts.append(f"{format_duration(record.get('seconds'))}  ETA {format_duration(eta)}")
    return "  ".join(parts)
