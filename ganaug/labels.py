"""Label plans: which label each generated row gets (`ganaug generate --labels SPEC`).

A plan is parsed once on the driver into a `LabelPlan`: a compact description (uniform i % K,
a cycled list, interleaved counts), not an array, so a plan for a billion rows is a few bytes
and the driver holds nothing per row. `labels(a, b)` computes rows a..b-1 on demand, in any
worker, giving exactly the array the whole plan would have had sliced at [a:b]; the
manifest's counts come from the description. Specs:

    uniform                 row i gets i % K (the default for conditional models)
    0,3,7 | list:0,3,7      the listed labels, cycled
    counts:0=500,3=200      exactly these counts (total = sum), interleaved
    balance:DATASET         the deficit that brings every class of DATASET up to its largest
                            class; with --num, --num images split so the final totals are as
                            even as possible

New kinds register a parser with `@plan_parser("name")`; nothing branches on names. A parser
returns a `LabelSource` (lazy) or, for simple plug-ins, a whole int64 array.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

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


# ----------------------------------------------------------------------------- sources

class LabelSource(Protocol):
    """Rows -> labels, computed on demand. Must pickle small: it travels to every actor."""

    total: int

    def labels(self, start: int, stop: int) -> np.ndarray:
        """int64 labels of rows start..stop-1 (0 <= start <= stop <= total)."""

    def counts(self) -> dict[int, int]:
        """{label: rows} over the whole plan (labels with no rows left out)."""


@dataclass(frozen=True)
class Uniform:
    """Row i gets i % K; an unconditional model (K = 0) gets -1 everywhere."""

    total: int
    num_classes: int

    def labels(self, start: int, stop: int) -> np.ndarray:
        if self.num_classes == 0:
            return np.full(stop - start, -1, dtype=np.int64)
        return np.arange(start, stop, dtype=np.int64) % self.num_classes

    def counts(self) -> dict[int, int]:
        if self.num_classes == 0:
            return {-1: self.total} if self.total else {}
        q, r = divmod(self.total, self.num_classes)
        return {c: q + (c < r) for c in range(self.num_classes) if q + (c < r)}


@dataclass(frozen=True)
class Cycled:
    """Row i gets cycle[i % len(cycle)]."""

    total: int
    cycle: tuple[int, ...]

    def labels(self, start: int, stop: int) -> np.ndarray:
        cycle = np.asarray(self.cycle, dtype=np.int64)
        return cycle[np.arange(start, stop) % len(cycle)]

    def counts(self) -> dict[int, int]:
        q, r = divmod(self.total, len(self.cycle))
        out: dict[int, int] = {}
        for pos, label in enumerate(self.cycle):
            out[label] = out.get(label, 0) + q + (pos < r)
        return {k: v for k, v in sorted(out.items()) if v}


@dataclass(frozen=True)
class Interleaved:
    """`interleave(counts)` computed a slice at a time, without the whole array.

    interleave() sorts every row by (key, label) with key = (k + 0.5) / counts[label] for the
    label's k-th row (float64, as computed there). For a boundary position a, this finds how
    many rows of each label come before it: the a-th smallest key by bisection over float64
    values (non-negative floats order like their bit patterns), then the labels tied at that
    key in label order. A slice then gathers each label's rows between two boundaries and
    sorts just those by the same float keys, so it equals interleave(counts)[a:b] exactly.
    """

    items: tuple[tuple[int, int], ...]   # (label, count > 0), by label

    @classmethod
    def of(cls, counts: dict[int, int]) -> Interleaved:
        return cls(tuple((int(k), int(v)) for k, v in sorted(counts.items()) if v > 0))

    @property
    def total(self) -> int:
        return sum(c for _, c in self.items)

    def counts(self) -> dict[int, int]:
        return dict(self.items)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        lab = np.array([k for k, _ in self.items], dtype=np.int64)
        cnt = np.array([c for _, c in self.items], dtype=np.int64)
        return lab, cnt

    @staticmethod
    def _count_le(x: float, cnt: np.ndarray) -> np.ndarray:
        """Per label: rows whose key (k + 0.5) / c is <= x (exact for the float keys)."""
        c = cnt.astype(np.float64)
        t = np.clip(np.floor(x * c - 0.5), -1, cnt - 1).astype(np.int64)   # an estimate, off by rounding
        while True:  # keys rise with k, so stepping to the exact boundary converges in a step or two
            nxt = t + 1
            up = (nxt < cnt) & ((nxt + 0.5) / c <= x)
            down = (t >= 0) & ((t + 0.5) / c > x)
            if not (up.any() or down.any()):
                return t + 1
            t = np.where(up, nxt, np.where(down, t - 1, t))

    def _before(self, a: int, cnt: np.ndarray) -> np.ndarray:
        """Per label: how many of its rows sit at positions < a."""
        if a <= 0:
            return np.zeros_like(cnt)
        if a >= int(cnt.sum()):
            return cnt.copy()
        # the smallest float x with more than `a` keys <= x is the key at position a
        lo, hi = 0, int(np.float64(1.0).view(np.int64))
        while lo < hi:
            mid = (lo + hi) // 2
            if int(self._count_le(float(np.int64(mid).view(np.float64)), cnt).sum()) > a:
                hi = mid
            else:
                lo = mid + 1
        x = np.int64(lo).view(np.float64)
        le = self._count_le(float(x), cnt)
        lt = self._count_le(float(np.nextafter(x, -np.inf)), cnt)
        tied = np.flatnonzero(le > lt)           # labels with a row at key x, in label order
        out = lt.copy()
        out[tied[: a - int(lt.sum())]] += 1      # ties go by label: the first ones come before a
        return out

    def labels(self, start: int, stop: int) -> np.ndarray:
        if stop <= start:
            return np.zeros(0, dtype=np.int64)
        lab, cnt = self._arrays()
        lo, hi = self._before(start, cnt), self._before(stop, cnt)
        keys, labs = [], []
        for label, c, a, b in zip(lab.tolist(), cnt.tolist(), lo.tolist(), hi.tolist()):
            if b > a:
                keys.append((np.arange(a, b, dtype=np.float64) + 0.5) / c)
                labs.append(np.full(b - a, label, dtype=np.int64))
        k, lb = np.concatenate(keys), np.concatenate(labs)
        return lb[np.lexsort((lb, k))]


@dataclass(frozen=True)
class Materialised:
    """A plug-in parser's whole array (O(rows); the built-in plans are all lazy)."""

    array: np.ndarray

    @property
    def total(self) -> int:
        return int(self.array.shape[0])

    def labels(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]

    def counts(self) -> dict[int, int]:
        return count_labels(self.array)


@dataclass
class LabelPlan:
    spec: str
    source: LabelSource
    info: dict = field(default_factory=dict)  # extra provenance for the manifest (e.g. histogram)

    @property
    def total(self) -> int:
        return int(self.source.total)

    def labels(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Labels of rows [start:stop], with Python slice semantics (as the array's slice)."""
        a, b, _ = slice(start, stop).indices(self.total)
        return self.source.labels(a, max(a, b))

    @property
    def labels_array(self) -> np.ndarray:
        """Every row's label (materialises the plan: for small plans and tests)."""
        return self.labels()

    def counts(self, start: int = 0, stop: int | None = None) -> dict[int, int]:
        if start == 0 and (stop is None or stop >= self.total):
            return dict(sorted(self.source.counts().items()))
        return count_labels(self.labels(start, stop))


def count_labels(labels: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(np.asarray(labels, dtype=np.int64), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


PlanParser = Callable[[str, PlanContext], "LabelSource | np.ndarray | tuple[LabelSource | np.ndarray, dict]"]
PLANS: Registry[PlanParser] = Registry("label plan")


def plan_parser(name: str) -> Callable[[PlanParser], PlanParser]:
    """Register `fn(argument, ctx) -> LabelSource or labels array (or (that, info))` for specs
    'name:argument'."""
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
def _uniform(arg: str, ctx: PlanContext) -> Uniform:
    if arg:
        raise LabelPlanError(f"--labels uniform takes no argument, got 'uniform:{arg}'")
    return Uniform(_need_num(ctx, "uniform"), ctx.num_classes)


@plan_parser("list")
def _list(arg: str, ctx: PlanContext) -> Cycled:
    spec = arg
    parts = [p for p in arg.split(",") if p.strip()]
    if not parts:
        raise LabelPlanError("--labels: empty label list")
    cycle = tuple(_check_label(_parse_int(p, spec, "label"), ctx, spec) for p in parts)
    return Cycled(_need_num(ctx, spec), cycle)


def interleave(counts: dict[int, int]) -> np.ndarray:
    """A deterministic, well-mixed order with exactly counts[l] rows of label l.

    Label l's k-th row sits at position (k + 0.5) / counts[l] of the sequence; sorting these
    positions (ties by label) spreads every class evenly over the set and over its shards.
    The whole array: `Interleaved` gives any slice of it without building it.
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
def _counts(arg: str, ctx: PlanContext) -> Interleaved:
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
    return Interleaved.of(counts)


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
def _balance(arg: str, ctx: PlanContext) -> tuple[Interleaved, dict]:
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
    return Interleaved.of(add), info


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
    source, info = result if isinstance(result, tuple) else (result, {})
    if isinstance(source, (np.ndarray, list, tuple)):  # a plug-in's whole array
        source = Materialised(np.ascontiguousarray(source, dtype=np.int64))
    return LabelPlan(spec=text, source=source, info=info)
