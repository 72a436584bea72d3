"""Generation at scale: memory of the driver and of the workers, and images/s, as a set grows.

    python benchmarks/generate_scale.py [--rows 100000,1000000] [--resolution 8] [--rows-per-shard 1000]
                                        [--cpus N] [--labels SPEC] [--keep]

Prints one JSON object with one entry per size:
- driver: its RSS before the run and its peak during it (sampled every 0.25 s from
  /proc/self/status), and the growth. Bounded memory means the growth does not scale with
  rows: the label plan is lazy and the driver keeps one small result per shard.
- workers: the peak RSS of the sampling actors' processes and of the processes running the
  encode/write tasks (while they run them), read from /proc for the Ray workers of this run.
- images/s over the pipeline (actor start-up included), seconds, shards.
The model is a freshly initialised tiny cgan (default 8 px, 1 channel): per-row costs are
the pipeline's own, not the model's. The load average is reported with each size: the
machine may be shared. Sets are deleted after each size unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Self

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _status_kb(pid: int | str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(name))
    return kids


def _ray_workers() -> dict[int, str]:
    """pid -> process title of every Ray worker below this driver (its raylet's children)."""
    kids, out, todo = _children(), {}, [os.getpid()]
    while todo:
        for pid in kids.get(todo.pop(), []):
            todo.append(pid)
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    title = f.read().split(b"\0")[0].decode(errors="replace")
            except (FileNotFoundError, ProcessLookupError):
                continue
            if title.startswith("ray::"):
                out[pid] = title
    return out


def _title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[0].decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


class Monitor:
    """Samples the driver's RSS and the Ray workers' RSS until stopped.

    A worker's title ("ray::MapBatches(write_shards)", "ray::MapWorker(...SamplerActor...)",
    "ray::IDLE") says what it is doing now, so the RSS is attributed to a stage only while the
    worker runs that stage's code: a pooled worker that earlier ran something else (e.g. the
    environment probe, which imports torch) is not charged to the write stage.
    """

    def __init__(self, every_s: float = 0.05):
        self.every_s = every_s
        self.driver_peak_kb = 0
        self.peak_kb = {"sample": 0, "write": 0}
        self.seen: dict[str, set[int]] = {"sample": set(), "write": set()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        pids: list[int] = []
        last_walk = 0.0
        while not self._stop.is_set():
            now = time.time()
            if now - last_walk > 1.0:  # the /proc tree walk is the expensive part: once a second
                pids, last_walk = list(_ray_workers()), now
            self.driver_peak_kb = max(self.driver_peak_kb, _status_kb("self", "VmRSS"))
            for pid in pids:
                title = _title(pid)
                stage = "sample" if "SamplerActor" in title else "write" if "write_shards" in title else None
                if stage is not None:
                    self.seen[stage].add(pid)
                    self.peak_kb[stage] = max(self.peak_kb[stage], _status_kb(pid, "VmRSS"))
            self._stop.wait(self.every_s)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def workers(self) -> dict:
        return {"sampling_actor_peak_rss_mb": round(self.peak_kb["sample"] / 1024, 1),
                "sampling_actor_processes": len(self.seen["sample"]),
                "write_task_peak_rss_mb": round(self.peak_kb["write"] / 1024, 1),
                "write_task_processes": len(self.seen["write"])}


def build_checkpoint(folder: str, resolution: int) -> str:
    import torch

    from ganaug import checkpoint
    from ganaug.config import ModelConfig
    from ganaug.models.registry import DataInfo, get_family

    fam = get_family("cgan")
    names = [str(i) for i in range(10)]
    kwargs = fam.generator_kwargs(ModelConfig(family="cgan", width=8, z_dim=16, max_width=32, embed_dim=8),
                                  DataInfo(resolution, 1, 10, names))
    torch.manual_seed(0)
    meta = {"family": "cgan", "kind": "noise", "generator_kwargs": kwargs, "resolution": resolution,
            "channels": 1, "num_classes": 10, "class_names": names}
    return checkpoint.save_checkpoint(os.path.join(folder, "ckpt"), meta=meta,
                                      generator_ema=fam.build_generator(kwargs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="100000,1000000", help="comma-separated set sizes")
    p.add_argument("--rows-per-shard", type=int, default=1000)
    p.add_argument("--resolution", type=int, default=8)
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--labels", default=None, help="a --labels spec (default uniform)")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()

    os.environ.pop("RAY_ADDRESS", None)
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    from ganaug.generation import GenerateConfig, run_generate
    from ganaug.raycluster import ensure_ray

    tmp = tempfile.mkdtemp(prefix="ganaug-scale-")
    ckpt = build_checkpoint(tmp, args.resolution)
    ensure_ray(include_dashboard=False, log_to_driver=False, num_cpus=args.cpus)
    runs = []
    for rows in [int(r) for r in args.rows.split(",") if r.strip()]:
        out = os.path.join(tmp, f"set-{rows}")
        load = [round(x, 2) for x in os.getloadavg()]
        before_kb = _status_kb("self", "VmRSS")
        with Monitor() as mon:
            s = run_generate(GenerateConfig(checkpoint=ckpt, out=out, num=rows, rows_per_shard=args.rows_per_shard,
                                            workers=args.workers, labels=args.labels), progress=True)
        peak_kb = max(mon.driver_peak_kb, _status_kb("self", "VmRSS"))
        size_mb = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out)) / 2**20
        runs.append({"rows": rows, "shards": s["shards"], "images_per_s": s["images_per_s"],
                     "pipeline_seconds": s["pipeline_seconds"], "seconds": s["seconds"],
                     "set_mb": round(size_mb, 1), "stages": s.get("stages"),
                     "driver_rss_before_mb": round(before_kb / 1024, 1),
                     "driver_peak_rss_mb": round(peak_kb / 1024, 1),
                     "driver_growth_mb": round((peak_kb - before_kb) / 1024, 1),
                     **mon.workers(), "load_average_at_start": load,
                     "load_average_at_end": [round(x, 2) for x in os.getloadavg()]})
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({"benchmark": "generate_scale", "resolution": args.resolution, "cpus": args.cpus,
                      "machine_cpus": os.cpu_count(), "rows_per_shard": args.rows_per_shard, "runs": runs}))
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
