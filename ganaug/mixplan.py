"""The plan of a mixed real + synthetic stream (ARCHITECTURE.md §3.8). No Ray here: the glue in
`mixed.py` turns the plan's blocks into a Ray Dataset.

- An epoch over N real rows at synthetic fraction `ratio` has S = round(N * ratio / (1 - ratio))
  synthetic rows, so N + S rows in all (ratio 0.5: one synthetic row per real row).
- Labels are matched by class NAME: the generator's (or the set's) label for each real class is
  looked up by its name, and a real class it lacks is refused in one line.
- Every epoch is cut into blocks of about `block_rows` rows. A block holds a few chunks of
  CHUNK_ROWS consecutive real rows (the chunks permuted per epoch by (seed, epoch), so reads stay
  sequential while each epoch sees the rows in a new order) and its share of the synthetic rows;
  its rows are then shuffled by (seed, epoch, block). The stream is thus a pure function of
  (inputs, seed, epoch).
- From a checkpoint, synthetic row j of epoch e is sampled with seed S0 + e * SEED_STRIDE + j, and
  its labels follow `labels.interleave` of the per-class counts: epoch 0 equals
  `ganaug generate --seed S0 --labels counts:...` row for row. From a set, epoch e takes the
  set's rows e * S + j (wrapping around), with the set's own labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ganaug.errors import UserError
from ganaug.labels import balance_counts, interleave

SEED_STRIDE = 2**32
CHUNK_ROWS = 128


class MixError(UserError):
    """A mixed-dataset request that cannot be met; the message names the argument."""


def synthetic_count(real_rows: int, ratio: float) -> int:
    """Synthetic rows per epoch so they are `ratio` of the N + S rows."""
    if not 0.0 <= ratio < 1.0:
        raise MixError(f"ratio must be in [0, 1) (the synthetic fraction of the rows), got {ratio!r}")
    return round(real_rows * ratio / (1.0 - ratio))


def align_classes(real_names: list[str], other_names: list[str], what: str) -> np.ndarray:
    """For each real label, the label that `what` (the generator or the set) gives the same class
    name; refuses when a real class has no namesake there."""
    index = {name: i for i, name in enumerate(other_names)}
    missing = [n for n in real_names if n not in index]
    if missing:
        shown = ", ".join(other_names[:20]) or "(none)"
        raise MixError(f"classes do not match: {what} has no class {', '.join(map(repr, missing[:5]))} "
                       f"of the real data (labels are matched by class name; its classes: {shown})")
    return np.asarray([index[n] for n in real_names], np.int64)


def proportional_counts(histogram: np.ndarray, total: int) -> dict[int, int]:
    """`total` rows split over the classes in the real data's proportions (largest remainder)."""
    hist = np.asarray(histogram, np.float64)
    if total == 0 or hist.sum() == 0:
        return {c: 0 for c in range(len(hist))}
    exact = hist / hist.sum() * total
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")  # ties go to the smaller label
    counts[order[: total - int(counts.sum())]] += 1
    return {c: int(n) for c, n in enumerate(counts)}


@dataclass
class MixPlan:
    """What one call of mixed_dataset streams; `blocks()` yields the work items per epoch."""

    real_rows: int
    synthetic_rows: int                 # per epoch
    class_names: list[str]              # the real data's, the stream's label space
    real_histogram: np.ndarray          # real rows per class
    source: str                         # "checkpoint" | "set" | "none"
    seed: int = 0
    first_epoch: int = 0
    epochs: int = 1
    block_rows: int = 1024
    balance: bool = False
    set_rows: int = 0                   # rows of the synthetic set (source "set")
    synthetic_counts: dict[int, int] = field(default_factory=dict)  # per epoch (source "checkpoint")
    image_shape: tuple[int, int, int] = (0, 0, 0)  # H, W, C of every row

    @property
    def rows_per_epoch(self) -> int:
        return self.real_rows + self.synthetic_rows

    def summary(self) -> dict:
        return {"real_rows": self.real_rows, "synthetic_rows": self.synthetic_rows,
                "rows_per_epoch": self.rows_per_epoch, "epochs": self.epochs, "first_epoch": self.first_epoch,
                "source": self.source, "seed": self.seed, "balance": self.balance,
                "image_shape": list(self.image_shape),
                "synthetic_per_class": ({self.class_names[c]: n for c, n in self.synthetic_counts.items()}
                                        if self.synthetic_counts else None)}

    def synthetic_labels(self) -> np.ndarray:
        """The real-space label of each synthetic row of an epoch (checkpoint source)."""
        return interleave(self.synthetic_counts)

    def blocks(self, epoch: int) -> list[dict]:
        """One epoch's work items, in stream order: real row spans, synthetic rows, shuffle seed."""
        n, s = self.real_rows, self.synthetic_rows
        n_blocks = max(1, -(-(n + s) // self.block_rows))
        n_chunks = -(-n // CHUNK_ROWS)
        chunks = np.random.default_rng([self.seed, epoch, 1]).permutation(n_chunks)
        groups = np.array_split(chunks, n_blocks)
        syn_bounds = [round(s * b / n_blocks) for b in range(n_blocks + 1)]
        labels = self.synthetic_labels() if self.source == "checkpoint" else None
        items = []
        for b, group in enumerate(groups):
            spans = np.asarray([(c * CHUNK_ROWS, min((c + 1) * CHUNK_ROWS, n)) for c in group], np.int64)
            lo, hi = syn_bounds[b], syn_bounds[b + 1]
            items.append({
                "epoch": epoch, "block": b,
                "real_spans": spans.reshape(-1, 2).tobytes(),
                "syn_lo": lo, "syn_hi": hi,
                "syn_labels": b"" if labels is None else labels[lo:hi].tobytes(),
            })
        return items

    def all_blocks(self) -> list[dict]:
        return [item for e in range(self.first_epoch, self.first_epoch + self.epochs) for item in self.blocks(e)]


def plan_synthetic_counts(histogram: np.ndarray, total: int, balance: bool) -> dict[int, int]:
    """Per-class synthetic rows: the real proportions, or (balance) the rarest classes first."""
    if balance:
        hist = {c: int(v) for c, v in enumerate(histogram)}
        return balance_counts(hist, len(histogram), total)
    return proportional_counts(histogram, total)


def decode_spans(item: dict) -> np.ndarray:
    return np.frombuffer(item["real_spans"], np.int64).reshape(-1, 2)


def decode_labels(item: dict) -> np.ndarray:
    return np.frombuffer(item["syn_labels"], np.int64)


def synthetic_seeds(seed: int, epoch: int, lo: int, hi: int) -> np.ndarray:
    """Sample seeds of synthetic rows lo..hi of an epoch (checkpoint source)."""
    return seed + epoch * SEED_STRIDE + np.arange(lo, hi, dtype=np.int64)


def set_spans(epoch: int, lo: int, hi: int, per_epoch: int, set_rows: int) -> list[tuple[int, int]]:
    """The set rows that synthetic rows lo..hi of an epoch take ((epoch * S + j) mod M), as spans."""
    spans, start = [], epoch * per_epoch + lo
    remaining = hi - lo
    while remaining > 0:
        a = start % set_rows
        take = min(remaining, set_rows - a)
        spans.append((a, a + take))
        start += take
        remaining -= take
    return spans


def block_order(seed: int, epoch: int, block: int, rows: int) -> np.ndarray:
    """The in-block shuffle: a permutation of the block's rows, by (seed, epoch, block)."""
    return np.random.default_rng([seed, epoch, block, 2]).permutation(rows)
