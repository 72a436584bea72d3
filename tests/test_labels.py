"""Lazy label plans equal the materialised arrays they replaced, slice for slice (no Ray)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from ganaug.labels import (
    Interleaved,
    PlanContext,
    balance_counts,
    count_labels,
    interleave,
    parse_plan,
)


def _old_arrays(spec: str | None, num: int | None, k: int) -> np.ndarray:
    """The arrays parse_plan materialised before plans were lazy (the reference)."""
    text = (spec or "uniform").strip()
    if text == "uniform":
        return np.full(num, -1, dtype=np.int64) if k == 0 else np.arange(num, dtype=np.int64) % k
    if text.startswith("counts:"):
        counts = {int(a): int(b) for a, b in (p.split("=") for p in text[len("counts:"):].split(","))}
        return interleave(counts)
    cycle = np.array([int(p) for p in text.removeprefix("list:").split(",")], dtype=np.int64)
    return cycle[np.arange(num) % len(cycle)]


def _ranges(total: int, rng: np.random.Generator, n: int = 40) -> list[tuple[int, int]]:
    cuts = [(0, total), (0, 0), (total, total), (0, 1), (total - 1, total)]
    for step in (1, 7, 64, max(1, total // 3)):
        cuts += [(a, min(a + step, total)) for a in range(0, total, step)][:n]
    cuts += [tuple(sorted(rng.integers(0, total + 1, 2).tolist())) for _ in range(n)]
    return cuts


@pytest.mark.parametrize("spec,num,k", [
    (None, 25, 10), (None, 1003, 7), ("uniform", 40, 0), ("0,3,7", 100, 10), ("list:5", 9, 10),
    ("2,2,9,1", 333, 10), ("counts:0=500,3=200", None, 10), ("counts:1=1,2=1,3=1", None, 10),
    ("counts:0=3,1=6,2=12,3=24,4=9", None, 5), ("counts:7=1000", None, 10),
    ("counts:0=997,1=991,2=2,3=1,4=499", None, 5),
])
def test_lazy_plan_equals_the_materialised_array(spec, num, k):
    plan = parse_plan(spec, PlanContext(num=num, num_classes=k))
    want = _old_arrays(spec, num, k)
    assert plan.total == len(want)
    got = plan.labels()
    assert got.dtype == np.int64 and np.array_equal(got, want)
    rng = np.random.default_rng(0)
    for a, b in _ranges(plan.total, rng):
        part = plan.labels(a, b)
        assert part.dtype == np.int64 and np.array_equal(part, want[a:b]), (spec, a, b)
    assert plan.counts() == count_labels(want)
    assert plan.counts(10, 50) == count_labels(want[10:50])
    assert plan.labels(-5, None).tolist() == want[-5:].tolist()  # slice semantics, as the array had
    # what travels to the actors is small, whatever the row count
    assert len(pickle.dumps(plan)) < 2000


def test_interleaved_slices_match_for_random_counts():
    rng = np.random.default_rng(1)
    for trial in range(60):
        labels = rng.choice(50, size=int(rng.integers(1, 12)), replace=False)
        counts = {int(lab): int(rng.integers(0, 400 if trial % 3 else 5)) for lab in labels}
        if trial % 4 == 0:  # many exact key ties: counts sharing factors
            counts = {int(lab): int(rng.choice([1, 2, 3, 4, 6, 12, 24])) * 5 for lab in labels}
        src = Interleaved.of(counts)
        want = interleave(counts)
        assert src.total == len(want)
        if not len(want):
            continue
        for a, b in _ranges(len(want), rng, n=8):
            assert np.array_equal(src.labels(a, b), want[a:b]), (counts, a, b)


def test_large_lazy_plans_stay_small_and_fast():
    import time

    counts = {c: 100_000 + 37 * c for c in range(100)}  # 10M rows, never built
    plan = parse_plan("counts:" + ",".join(f"{c}={n}" for c, n in counts.items()), PlanContext(None, 100))
    t = time.time()
    part = plan.labels(5_000_000, 5_001_000)
    assert time.time() - t < 2.0 and len(part) == 1000
    assert plan.counts() == counts and len(pickle.dumps(plan)) < 5000
    # the slice equals the same rows of a smaller, materialisable plan scaled the same way
    small = {c: 1000 + c for c in range(20)}
    want = interleave(small)
    assert np.array_equal(Interleaved.of(small).labels(7000, 7500), want[7000:7500])


def test_balance_plan_is_lazy_interleave_of_the_deficit(monkeypatch):
    from ganaug import data

    monkeypatch.setattr(data, "label_histogram", lambda spec: ({0: 10, 1: 4, 2: 7}, ["a", "b", "c"]))
    plan = parse_plan("balance:whatever", PlanContext(num=20, num_classes=3))
    add = balance_counts({0: 10, 1: 4, 2: 7}, 3, 20)
    assert np.array_equal(plan.labels(), interleave(add))
    assert np.array_equal(plan.labels(3, 11), interleave(add)[3:11])
    assert plan.info["added"] == {str(k): v for k, v in add.items() if v}
