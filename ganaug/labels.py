"""Label plans: which label each generated row gets (`ganaug generate --labels SPEC`).

A plan is parsed once on the driver into a `LabelPlan`, whose `labels()` is a deterministic
int64 array (row i -> label), so the manifest's counts are exact and any worker can take
any row range. Specs:

    uniform                 row i gets i % K (the default for conditional models)
    0,3,7 | list:0,3,7      the listed labels, cycled
    counts:0=500,3=200      exactly these counts (total = sum), interleaved
    balance:DATASET         the deficit that brings every class of DATASET up to its largest
                            class; with --num, --num images split so the final totals are as
                            even as possible

New kinds register a parser with `@plan_parser("name")`; nothing branches on names.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ganaug.errors import UserError
from ganaug.registry import Registry


class LabelPlanError(UserError):
    pass


@dataclass
class PlanContext:
    """What a parser may need: the model's classes and the requested --num (None = omitted)."""

    num: int | None
    num_classes: int            # 0 = unconditional model
    class_names: list[str] = field(default_factory=list)


@dataclass
class LabelPlan:
    spec: str
    labels_array: np.ndarray    # int64, one per row
    info: dict = field(default_factory=dict)  # extra provenance for the manifest (e.g. histogram)

    @property
    def total(self) -> int:
        return int(self.labels_array.shape[0])

    def labels(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self.labels_array[start:stop]

    def counts(self, start: int = 0, stop: int | None = None) -> dict[int, int]:
        return count_labels(self.labels(start, stop))


def count_labels(labels: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(np.asarray(labels, dtype=np.int64), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


PlanParser = Callable[[str, PlanContext], np.ndarray | tuple[np.ndarray, dict]]
PLANS: Registry[PlanParser] = Registry("label plan")


def plan_parser(name: str) -> Callable[[PlanParser], PlanParser]:
    """Register `fn(argument, ctx) -> labels array (or (array, info))` for specs 'name:argument'."""
    return PLANS.register(name)


def plan_names() -> list[str]:
    return sorted(PLANS.names())


def _need_num(ctx: PlanContext, what: str) -> int:
    if ctx.num is None:
        raise LabelPlanError(f"--labels {what} needs --num")
    return ctx.num


def _check_label(label: int, ctx: PlanContext, spec: str) -> int:
    if not 0 <= label < ctx.num_classes:
        raise LabelPlanError(f"--labels {spec}: unknown label {label}; the model has labels "
                             f"0..{ctx.num_classes - 1}")
    return label


def _parse_int(text: str, spec: str, what: str) -> int:
    text = text.strip()
    if not re.fullmatch(r"[+-]?\d+", text):
        raise LabelPlanError(f"--labels {spec}: {what} {text!r} is not an integer")
    return int(text)


@plan_parser("uniform")
def _uniform(arg: str, ctx: PlanContext) -> np.ndarray:
    if arg:
        raise LabelPlanError(f"--labels uniform takes no argument, got 'uniform:{arg}'")
    n = _need_num(ctx, "uniform")
    if ctx.num_classes == 0:
        return np.full(n, -1, dtype=np.int64)
    return np.arange(n, dtype=np.int64) % ctx.num_classes


@plan_parser("list")
def _list(arg: str, ctx: PlanContext) -> np.ndarray:
    spec = arg
    parts = [p for p in arg.split(",") if p.strip()]
    if not parts:
        raise LabelPlanError("--labels: empty label list")
    cycle = np.array([_check_label(_parse_int(p, spec, "label"), ctx, spec) for p in parts], dtype=np.int64)
    n = _need_num(ctx, spec)
    return cycle[np.arange(n) % len(cycle)]


def interleave(counts: dict[int, int]) -> np.ndarray:
    """A deterministic, well-mixed order with exactly counts[l] rows of label l.

    Label l's k-th row sits at position (k + 0.5) / counts[l] of the sequence; sorting these
    positions (ties by label) spreads every class evenly over the set and over its shards.
    """
    keys, labs = [], []
    for label in sorted(counts):
        c = counts[label]
        if c > 0:
            keys.append((np.arange(c, dtype=np.float64) + 0.5) / c)
            labs.append(np.full(c, label, dtype=np.int64))
    if not keys:
        return np.zeros(0, dtype=np.int64)
    k, lab = np.concatenate(keys), np.concatenate(labs)
    return lab[np.lexsort((lab, k))]


@plan_parser("counts")
def _counts(arg: str, ctx: PlanContext) -> np.ndarray:
    spec = f"counts:{arg}"
    counts: dict[int, int] = {}
    for item in (p for p in arg.split(",") if p.strip()):
        if "=" not in item:
            raise LabelPlanError(f"--labels {spec}: expected LABEL=COUNT items, got {item.strip()!r}")
        lab_s, cnt_s = item.split("=", 1)
        label = _check_label(_parse_int(lab_s, spec, "label"), ctx, spec)
        count = _parse_int(cnt_s, spec, "count")
        if count < 0:
            raise LabelPlanError(f"--labels {spec}: negative count {count} for label {label}")
        if label in counts:
            raise LabelPlanError(f"--labels {spec}: label {label} given twice")
        counts[label] = count
    total = sum(counts.values())
    if total == 0:
        raise LabelPlanError(f"--labels {spec}: the counts add up to 0 rows")
    if ctx.num is not None and ctx.num != total:
        raise LabelPlanError(f"--num {ctx.num} does not match --labels {spec} (which adds up to {total}); "
                             "omit --num or make them agree")
    return interleave(counts)


def balance_counts(histogram: dict[int, int], num_classes: int, num: int | None) -> dict[int, int]:
    """How many images of each class to add so the classes end up as even as possible.

    num=None: exactly the deficit of every class relative to the largest one.
    num given: water-filling; raise the lowest classes first, ties go to the smaller label.
    """
    have = np.array([int(histogram.get(c, 0)) for c in range(num_classes)], dtype=np.int64)
    if num is None:
        add = have.max() - have
        return {c: int(a) for c, a in enumerate(add)}
    # Largest level T with sum(max(0, T - have)) <= num, by bisection.
    lo, hi = int(have.min()), int(have.max()) + num + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if int(np.maximum(0, mid - have).sum()) <= num:
            lo = mid
        else:
            hi = mid
    add = np.maximum(0, lo - have)
    rest = num - int(add.sum())
    # The classes now at level T (have <= T) get one more each, smallest label first;
    # by maximality of T there are more of them than `rest`.
    at_level = [c for c in range(num_classes) if have[c] + add[c] == lo]
    for c in at_level[:rest]:
        add[c] += 1
    return {c: int(a) for c, a in enumerate(add)}


@plan_parser("balance")
def _balance(arg: str, ctx: PlanContext) -> tuple[np.ndarray, dict]:
    if not arg.strip():
        raise LabelPlanError("--labels balance:DATASET needs a dataset spec, e.g. balance:mnist:DIR")
    from ganaug.data import label_histogram

    hist, _names = label_histogram(arg)
    # -1 counts unlabelled rows: they belong to no class, so they need no balancing.
    hist = {int(k): int(v) for k, v in hist.items() if int(k) != -1}
    bad = sorted(k for k in hist if not 0 <= k < ctx.num_classes)
    if bad:
        raise LabelPlanError(f"--labels balance:{arg}: the dataset has label {bad[0]}, which the model "
                             f"does not know (labels 0..{ctx.num_classes - 1})")
    if ctx.num is not None and ctx.num < 0:
        raise LabelPlanError(f"--num {ctx.num} is negative")
    add = balance_counts(hist, ctx.num_classes, ctx.num)
    if sum(add.values()) == 0:
        raise LabelPlanError(f"--labels balance:{arg}: the dataset is already balanced; pass --num "
                             "to add images to every class")
    info = {"dataset": arg, "histogram": {str(k): v for k, v in sorted(hist.items())},
            "added": {str(k): v for k, v in add.items() if v}}
    return interleave(add), info


def parse_plan(spec: str | None, ctx: PlanContext) -> LabelPlan:
    """Parse a --labels spec for a model; errors are one-line LabelPlanErrors."""
    if ctx.num is not None and ctx.num < 1:
        raise LabelPlanError(f"--num must be >= 1, got {ctx.num}")
    text = (spec or "uniform").strip()
    if re.fullmatch(r"[\s\d,+-]+", text):
        name, arg = "list", text          # a bare list: 0,3,7
    else:
        name, _, arg = text.partition(":")
        name = name.strip().lower()
    parser = PLANS.get(name, f"--labels {text}")  # e.g. uniform, 0,3,7, counts:0=500,3=200, balance:DIR
    if ctx.num_classes == 0 and name != "uniform":
        raise LabelPlanError(f"--labels {text}: the model is unconditional; omit --labels (or use uniform)")
    result = parser(arg, ctx)
    labels, info = result if isinstance(result, tuple) else (result, {})
    return LabelPlan(spec=text, labels_array=np.ascontiguousarray(labels, dtype=np.int64), info=info)
