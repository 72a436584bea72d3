"""Mixed-stream throughput: rows/s a TorchTrainer consumes from `mixed_dataset` streamed from a
checkpoint, against the same trainer reading the same mix from a materialised set.

    python benchmarks/mixed_throughput.py [--real SPEC] [--ratio 0.5] [--epochs 2] [--repeats 2]

Prints one JSON object. Both arms run in this one process on one Ray, alternating
(set, stream, set, stream, ...), and the ratio is median(stream) / median(set). Target >= 0.8.
- set: `ganaug generate` writes the synthetic rows first (not timed), then the trainer reads
  real + set rows through `mixed_dataset(real, synthetic=SET)`;
- stream: `mixed_dataset(real, checkpoint=CKPT)`: Sampler actors make the rows on the fly.
The trainer: 2 Ray Train workers, each iterating its shard in batches of 64 and running one
SmallCNN training step per batch (so the stream competes with real consumer work). rows/s is
counted inside rank 0 from its first batch to its last (worker start-up excluded), times the
worker count; the wait for the first batch is reported beside it. The stream must be much larger
than what Ray Data buffers ahead, or both arms measure the buffer: the defaults stream 16,000 rows. The model is a freshly initialised cgan at --resolution (speed does not depend
on training). Other processes sharing the CPUs skew both arms alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def _consume(config: dict) -> None:
    """The trainer loop: one SmallCNN step per batch; rank 0 writes its rows/s."""
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    from ganaug.classify import batch_tensors, train_step
    from ganaug.metrics.classifier import SmallCNN

    torch.set_num_threads(1)
    model = prepare_model(SmallCNN(config["channels"], 10, width=16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
    rows, t0, start = 0, None, time.perf_counter()
    for batch in ray.train.get_dataset_shard("train").iter_batches(batch_size=64, batch_format="numpy",
                                                                   drop_last=True):
        if t0 is None:
            t0 = time.perf_counter()
        x, y = batch_tensors(batch, "cpu")
        train_step(model, opt, sched, x, y)
        rows += len(y)
    seconds = time.perf_counter() - (t0 or time.perf_counter())
    if ray.train.get_context().get_world_rank() == 0:
        Path(config["out"]).write_text(json.dumps({"rows": rows, "seconds": seconds,
                                                   "first_batch_s": (t0 or start) - start}))


def run_arm(ds, out: Path, channels: int, workers: int) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    result_file = out / f"arm-{time.time_ns()}.json"
    t0 = time.perf_counter()
    TorchTrainer(_consume, train_loop_config={"out": str(result_file), "channels": channels},
                 datasets={"train": ds.select_columns(["image", "label"])},
                 scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 0.5}),
                 run_config=RunConfig(name=result_file.stem, storage_path=str(out / "ray"))).fit()
    got = json.loads(result_file.read_text())
    return {"rows_per_s": workers * got["rows"] / max(got["seconds"], 1e-9), "rows": workers * got["rows"],
            "consume_s": round(got["seconds"], 2), "first_batch_s": round(got["first_batch_s"], 2), "wall_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_real = f"mnist:{MNIST}[0:4000]" if MNIST.exists() else "builtin:digits"
    p.add_argument("--real", default=default_real)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--resolution", type=int, default=32)
    a = p.parse_args()

    import ray

    from generate_throughput import build_checkpoint
    from ganaug.data import dataset_summary, mixed_dataset
    from ganaug.generation import GenerateConfig, run_generate
    from ganaug.mixplan import synthetic_count

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    tmp = Path(tempfile.mkdtemp(prefix="ganaug-mixed-bench-"))
    ckpt = build_checkpoint(str(tmp), a.width, a.resolution)
    real = dataset_summary(a.real)
    n = int(real["rows"])
    need = a.epochs * synthetic_count(n, a.ratio)
    t0 = time.perf_counter()
    run_generate(GenerateConfig(checkpoint=ckpt, num=need, out=str(tmp / "set"), seed=0), progress=False)
    generate_s = time.perf_counter() - t0
    channels = int(real["shape"][2])
    arms: dict[str, list[dict]] = {"set": [], "stream": []}
    for _ in range(a.repeats):
        for arm in ("set", "stream"):
            source = {"synthetic": str(tmp / "set")} if arm == "set" else {"checkpoint": ckpt}
            ds = mixed_dataset(a.real, ratio=a.ratio, epochs=a.epochs, seed=0, **source)
            arms[arm].append(run_arm(ds, tmp, channels, a.workers))
            print(f"{arm}: {arms[arm][-1]}", file=sys.stderr)
    med = {arm: statistics.median(r["rows_per_s"] for r in runs) for arm, runs in arms.items()}
    print(json.dumps({
        "benchmark": "mixed_throughput", "real": a.real, "real_rows": n, "ratio": a.ratio, "epochs": a.epochs,
        "synthetic_rows": need, "generator": f"cgan width {a.width} at {a.resolution} px (untrained)",
        "workers": a.workers, "cpus": os.cpu_count(), "set_generate_s": round(generate_s, 1),
        "runs": arms, "set_rows_per_s": round(med["set"], 1), "stream_rows_per_s": round(med["stream"], 1),
        "stream_over_set": round(med["stream"] / med["set"], 3), "target": 0.8}))


if __name__ == "__main__":
    main()
