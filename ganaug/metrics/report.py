"""The evaluation report: report.json (everything), report.md (a verdict table), PNG figures.

Verdicts compare each measure with a real-vs-real reference from the same run
(e.g. FID of real train vs real held-out in the same feature space), because
absolute values of a learned feature space mean nothing across datasets.

The output may be a local path or any ``ganaug.storage`` URI; the folder is
published with ``report.json`` written last, so a complete report is recognisable.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PASS, WARN, FAIL, INFO = "pass", "warn", "fail", "info"


def to_jsonable(obj: Any) -> Any:
    """Dataclasses/numpy -> plain JSON types; NaN and inf -> None (JSON has neither)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ---------------------------------------------------------------------------- verdicts


@dataclass
class Verdict:
    metric: str
    value: float | None
    reference: str  # the reference value or threshold the verdict used, in words
    verdict: str  # pass | warn | fail | info


def _ratio_rule(metric: str, value, ref, *, lower_is_better: bool, pass_at: float, warn_at: float,
                ref_label: str = "real-vs-real") -> Verdict:
    """Verdict from value/reference: pass within ``pass_at`` x the real-vs-real reference, warn within ``warn_at``."""
    if value is None or ref is None:
        return Verdict(metric, value, "no reference", INFO)
    if lower_is_better:
        v = PASS if value <= pass_at * ref else WARN if value <= warn_at * ref else FAIL
        return Verdict(metric, value, f"<= {pass_at:g} x {ref_label} {ref:.4g} (warn <= {warn_at:g} x)", v)
    v = PASS if value >= pass_at * ref else WARN if value >= warn_at * ref else FAIL
    return Verdict(metric, value, f">= {pass_at:g} x {ref_label} {ref:.4g} (warn >= {warn_at:g} x)", v)


def verdicts(metrics: dict[str, Any]) -> list[Verdict]:
    """One row per headline number in ``metrics`` (the JSON form of evaluate_arrays' results)."""
    out: list[Verdict] = []
    m = metrics
    if "fid" in m:
        # FID grows with any distribution gap; real-vs-real is the floor this feature space allows.
        # Distance-like numbers need a generous multiple, and KID below gets the same rule.
        out.append(_ratio_rule("FID", m["fid"]["value"], m["fid"]["reference"],
                               lower_is_better=True, pass_at=3.0, warn_at=10.0))
    if "kid" in m:
        ref = m["kid"]["reference"]["mean"] if m["kid"].get("reference") else None
        # KID is unbiased and can be ~0 for real-vs-real: compare with an absolute floor as well.
        ref = max(ref, 1e-3) if ref is not None else None
        out.append(_ratio_rule("KID", m["kid"]["value"]["mean"], ref, lower_is_better=True, pass_at=3.0, warn_at=10.0,
                               ref_label="max(real-vs-real, 0.001)"))
    if "prdc" in m:
        v, r = m["prdc"]["value"], m["prdc"]["reference"]
        for key in ("precision", "recall", "coverage"):
            out.append(_ratio_rule(key, v[key], r[key], lower_is_better=False, pass_at=0.8, warn_at=0.5))
        d = v["density"]
        out.append(Verdict("density", d, "0.5 .. 2 (1 = real-like)", PASS if d is not None and 0.5 <= d <= 2 else WARN))
    if "fidelity" in m:
        f = m["fidelity"]
        out.append(_ratio_rule("label fidelity", f["accuracy"], f.get("reference_accuracy"),
                               lower_is_better=False, pass_at=0.9, warn_at=0.7,
                               ref_label="its accuracy on real held-out"))
    if "diversity" in m:
        d = m["diversity"]
        out.append(Verdict("min intra-class diversity ratio", d["min_ratio"],
                           "collapse if any class < 0.5 x real, a class missing, or low coverage",
                           FAIL if d["collapse"] else PASS))
    if "memorisation" in m:
        for mem in m["memorisation"]["checks"]:
            out.append(Verdict(f"near-copies ({mem['space']})", mem["near_copy_fraction"],
                               f"<= {mem['flag_fraction']:.3g} (real unseen images: ~{mem['expected_fraction']:g})",
                               FAIL if mem["memorised"] else PASS))
    if "cas" in m:
        c = m["cas"]
        ref = c["real"]["accuracy"] if c.get("real") else None
        chance = 1.0 / max(len(c["synthetic"]["per_class"]), 1)
        if ref is not None and ref < 2 * chance:
            # The real-trained reference itself barely beats chance: the budget is too small to judge.
            out.append(Verdict("CAS accuracy", c["synthetic"]["accuracy"],
                               f"reference {ref:.3g} near chance {chance:.2g}: raise cas_epochs", WARN))
        else:
            out.append(_ratio_rule("CAS accuracy", c["synthetic"]["accuracy"], ref,
                                   lower_is_better=False, pass_at=0.9, warn_at=0.7, ref_label="real-trained"))
    if "gain" in m:
        for g in m["gain"]["ks"]:
            mean, std = g["gan_over_classic"], g["gan_over_classic_std"]
            # A gain inside the seed noise is no evidence either way.
            v = PASS if mean > 0 and mean > std else FAIL if mean < 0 and -mean > std else WARN
            out.append(Verdict(f"gain beyond classic aug, k={g['k']}", mean, f"> 0 and > seed std {std:.3g}", v))
    return out


# ---------------------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: never try to open a window
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def sample_grid_png(images: np.ndarray, labels: np.ndarray, class_names: Sequence[str], *, per_class: int = 10) -> bytes:
    """One row per class, up to ``per_class`` samples each; empty cells stay black."""
    plt = _pyplot()
    n, (h, w, c) = len(class_names), images.shape[1:]
    grid = np.zeros((n * (h + 1), per_class * (w + 1), c), np.uint8)
    for row in range(n):
        for col, i in enumerate(np.flatnonzero(labels == row)[:per_class]):
            grid[row * (h + 1) : row * (h + 1) + h, col * (w + 1) : col * (w + 1) + w] = images[i]
    fig, ax = plt.subplots(figsize=(max(3, per_class * 0.6), max(2, n * 0.6)))
    ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, vmin=0, vmax=255)
    ax.set_yticks([r * (h + 1) + h / 2 for r in range(n)], list(class_names))
    ax.set_xticks([])
    ax.set_title("synthetic samples per class")
    return _png(fig)


def cas_png(cas: dict, class_names: Sequence[str]) -> bytes:
    plt = _pyplot()
    x = np.arange(len(class_names))
    syn = [cas["synthetic"]["per_class"].get(n) or 0.0 for n in class_names]
    fig, ax = plt.subplots(figsize=(max(5, len(class_names) * 0.6), 3.5))
    if cas.get("real"):
        real = [cas["real"]["per_class"].get(n) or 0.0 for n in class_names]
        ax.bar(x - 0.2, real, 0.4, label=f"trained on real ({cas['real']['accuracy']:.3f})", color="0.6")
        ax.bar(x + 0.2, syn, 0.4, label=f"trained on synthetic ({cas['synthetic']['accuracy']:.3f})")
    else:
        ax.bar(x, syn, 0.6, label=f"trained on synthetic ({cas['synthetic']['accuracy']:.3f})")
    ax.set_xticks(x, list(class_names))
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy on real held-out")
    ax.set_title("Classification Accuracy Score per class")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def gain_png(gain: dict) -> bytes:
    plt = _pyplot()
    ks = gain["ks"]
    arms = list(ks[0]["arms"]) if ks else []
    fig, ax = plt.subplots(figsize=(max(4, 2.2 * len(ks)), 3.5))
    width = 0.8 / max(len(arms), 1)
    for j, arm in enumerate(arms):
        xs = np.arange(len(ks)) + (j - (len(arms) - 1) / 2) * width
        ax.bar(xs, [g["arms"][arm]["mean"] for g in ks], width, yerr=[g["arms"][arm]["std"] for g in ks],
               capsize=3, label=arm)
    ax.set_xticks(np.arange(len(ks)), [f"k={g['k']} per class" for g in ks])
    ax.set_ylabel(f"held-out accuracy (mean ± std, {len(gain['seeds'])} seeds)")
    ax.set_title("augmentation gain")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def read_metrics_jsonl(text: str) -> list[dict]:
    """Parse a run's metrics.jsonl; blank or partial lines (a run still writing) are skipped."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in rows if isinstance(r, dict) and "step" in r]


def training_curves_png(rows: list[dict]) -> bytes:
    plt = _pyplot()
    panels = [("losses", ("loss_g", "loss_d")), ("discriminator outputs", ("d_real", "d_fake")), ("ADA p", ("ada_p",))]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=8)
    return _png(fig)


# ---------------------------------------------------------------------------- markdown


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render_markdown(report: dict, figures: Sequence[str]) -> str:
    m = report["metrics"]
    lines = ["# ganaug evaluation report", ""]
    s = report.get("settings", {})
    lines += [f"- feature space: `{s.get('feature')}`",
              f"- real train / held-out / synthetic: {s.get('n_train')} / {s.get('n_heldout')} / {s.get('n_synthetic')}"]
    d = report.get("data") or {}
    if d.get("real"):
        lines.append(f"- real: `{d['real']}`" + (f", held-out: `{d['heldout']}`" if d.get("heldout") else ""))
    syn = d.get("synthetic") or {}
    if syn.get("source"):
        lines.append(f"- synthetic: {syn['source']}" + (f" (checkpoint `{d['checkpoint']['uri']}`)"
                                                         if d.get("checkpoint") else ""))
    lines += [f"- {note}" for note in report.get("notes") or []]
    lines.append("")
    lines += ["## Verdicts", "", "| metric | value | reference / threshold | verdict |", "| --- | --- | --- | --- |"]
    for v in report["verdicts"]:
        lines.append(f"| {v['metric']} | {_fmt(v['value'])} | {v['reference']} | **{v['verdict']}** |")
    lines.append("")
    if "diversity" in m:
        lines += ["## Per-class diversity", "", "| class | n real | n synthetic | diversity ratio | coverage |",
                  "| --- | --- | --- | --- | --- |"]
        for row in m["diversity"]["per_class"]:
            lines.append(f"| {row['name']} | {row['n_real']} | {row['n_fake']} | {_fmt(row['ratio'])} | {_fmt(row['coverage'])} |")
        if m["diversity"]["reasons"]:
            lines += ["", "Collapse: " + "; ".join(m["diversity"]["reasons"])]
        lines.append("")
    if "cas" in m:
        c = m["cas"]
        lines += ["## CAS per class", "", "| class | synthetic-trained | real-trained |", "| --- | --- | --- |"]
        for name, acc in c["synthetic"]["per_class"].items():
            ref = c["real"]["per_class"].get(name) if c.get("real") else None
            lines.append(f"| {name} | {_fmt(acc)} | {_fmt(ref)} |")
        lines.append("")
    if "gain" in m and m["gain"]["ks"]:
        arms = list(m["gain"]["ks"][0]["arms"])
        lines += ["## Augmentation gain (held-out accuracy, mean ± std over seeds)", "",
                  "| k | " + " | ".join(arms) + " | GAN gain beyond classic |", "|" + " --- |" * (len(arms) + 2)]
        for g in m["gain"]["ks"]:
            cells = [f"{g['arms'][a]['mean']:.3f} ± {g['arms'][a]['std']:.3f}" for a in arms]
            cells.append(f"{g['gan_over_classic']:+.3f} ± {g['gan_over_classic_std']:.3f}")
            lines.append(f"| {g['k']} | " + " | ".join(cells) + " |")
        lines.append("")
    if figures:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    if report.get("errors"):
        lines += ["## Errors", ""] + [f"- {k}: {v}" for k, v in report["errors"].items()] + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- writing


def _publish(out_dir: str | os.PathLike, files: dict[str, bytes], marker: str) -> None:
    try:
        from ganaug import storage
    except ImportError:  # storage is optional for this module: plain local folders still work
        storage = None
    if storage is not None:
        storage.publish_folder(str(out_dir), files, marker)
        return
    root = Path(out_dir)
    for name in sorted(files, key=lambda n: n == marker):  # marker last
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(files[name])


def _read_text(uri: str | os.PathLike) -> str:
    if not str(uri).endswith(".jsonl"):  # a run folder: its metrics file
        uri = str(uri).rstrip("/") + "/metrics.jsonl"
    if "://" in str(uri):
        from ganaug import storage

        return storage.read_text(str(uri))
    return Path(uri).read_text()


def write_report(
    out_dir: str | os.PathLike,
    report: dict,
    *,
    class_names: Sequence[str],
    synthetic: tuple[np.ndarray, np.ndarray] | None = None,
    metrics_jsonl: str | os.PathLike | None = None,
) -> dict[str, str]:
    """Write report.json, report.md and the figures; returns {file name: location}.

    ``report`` is evaluate_arrays' JSON-able result (it gains a ``verdicts`` key
    if it lacks one). ``metrics_jsonl``: a training run's metrics.jsonl (or its run folder) for curves.
    """
    report = to_jsonable(report)
    report.setdefault("verdicts", [to_jsonable(v) for v in verdicts(report["metrics"])])
    files: dict[str, bytes] = {}
    m = report["metrics"]
    if synthetic is not None and len(synthetic[0]):
        files["samples_per_class.png"] = sample_grid_png(synthetic[0], np.asarray(synthetic[1]), class_names)
    if "cas" in m:
        files["cas_per_class.png"] = cas_png(m["cas"], class_names)
    if "gain" in m and m["gain"]["ks"]:
        files["augmentation_gain.png"] = gain_png(m["gain"])
    if metrics_jsonl is not None:
        rows = read_metrics_jsonl(_read_text(metrics_jsonl))
        if rows:
            files["training_curves.png"] = training_curves_png(rows)
    figures = sorted(files)
    report["figures"] = figures
    files["report.md"] = render_markdown(report, figures).encode()
    files["report.json"] = (json.dumps(report, indent=2, sort_keys=True) + "\n").encode()
    _publish(out_dir, files, marker="report.json")
    sep = "/" if "://" in str(out_dir) else os.sep
    return {name: str(out_dir).rstrip("/" + os.sep) + sep + name for name in files}
