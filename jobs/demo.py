"""`make demo`: the whole product on one machine, through the same code paths as the CLI.

1. a local Ray bound to 127.0.0.1, token auth on;
2. train a class-conditional GAN on builtin:digits with 2 Ray Train workers;
3. generate a balanced augmentation set (Parquet shards + manifest);
4. evaluate it on held-out digits: CAS, domain FID, augmentation gain at k = 10;
5. serve the generator over HTTP, fetch samples with the Python client, shut Serve down;
6. print a summary table and the paths of the artefacts.

A second run reuses what is still valid: the finished training run (same name), the complete
generated set (same arguments), the cached domain classifier, and the evaluation report when
its inputs are unchanged. Ctrl-C shuts Serve and Ray down before exiting.

    python -m jobs.demo [--store DIR] [--small]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN_SPEC = "builtin:digits[0:1400]"    # the demo's real training part
HELDOUT_SPEC = "builtin:digits[1400:]"   # 397 digits never seen by the GAN or its tuning


@dataclass
class DemoConfig:
    store: str = "./ganaug-store"
    name: str = "demo-cgan"
    preset: str = str(REPO / "jobs" / "configs" / "digits-cgan.yaml")
    workers: int = 2
    train_overrides: list[str] = field(default_factory=lambda: [
        f"data.spec={TRAIN_SPEC}", "training.steps=500", "training.checkpoint_every=250",
        "training.report_every=50"])
    num: int = 5000                 # synthetic rows, balanced against the training part
    rows_per_shard: int = 1000
    gen_workers: int = 2
    ks: str = "10"
    seeds: int = 2
    gain_steps: int = 200
    cas_epochs: int = 5
    domain_epochs: int = 8
    # One torch thread on the driver: Ray's idle workers share the 2 cores, and an
    # oversubscribed multi-threaded torch runs many times slower than a single thread.
    eval_threads: int = 1
    serve_samples: int = 16

    @classmethod
    def small(cls, store: str) -> "DemoConfig":
        """The test's size: same steps, minutes less."""
        return cls(store=store, train_overrides=[
            f"data.spec={TRAIN_SPEC}", "training.steps=20", "training.checkpoint_every=10",
            "training.report_every=10", "model.width=8", "model.z_dim=16", "model.embed_dim=8",
            "training.batch_size=16"],
            num=400, rows_per_shard=100, seeds=1, gain_steps=20, cas_epochs=1, domain_epochs=1,
            serve_samples=4)


def _say(msg: str) -> None:
    print(msg, flush=True)


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def start_local_ray():
    """A fresh local Ray on 127.0.0.1 with token auth (Ray's default for local clusters)."""
    import ray

    # A new local Ray turns token auth on by itself (and writes ~/.ray/auth_token); refuse
    # an environment that opts out, rather than silently running without it (ARCHITECTURE.md §5).
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        from ganaug.errors import UserError

        raise UserError("RAY_AUTH_MODE=disabled: the demo keeps Ray's token auth on; unset it")
    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
    import logging

    for noisy in ("ray.data", "ray.serve", "ray.train"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    ray.init(address="local", _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1",
             include_dashboard=False, log_to_driver=False, configure_logging=True,
             logging_level="ERROR")
    return ray


def step_train(cfg: DemoConfig) -> dict:
    from ganaug.config import load_config
    from ganaug.training.worker import run_training

    run_cfg = load_config(cfg.preset, cfg.train_overrides)
    return run_training(run_cfg, workers=cfg.workers, storage_root=f"{cfg.store}/runs", name=cfg.name, echo=_say)


def step_generate(cfg: DemoConfig, checkpoint: str) -> dict:
    """Reuse (or finish) the set when it was made with these exact arguments, checkpoint
    included; otherwise (another checkpoint, another environment) make it again."""
    from ganaug.generation import GenerateConfig, OtherSetError, run_generate

    gen = GenerateConfig(checkpoint=checkpoint, out=f"{cfg.store}/sets/{cfg.name}-balanced",
                         num=cfg.num, labels=f"balance:{TRAIN_SPEC}", seed=0,
                         rows_per_shard=cfg.rows_per_shard, workers=cfg.gen_workers).validate()
    try:
        summary = run_generate(gen, progress=True)
    except OtherSetError as e:  # another checkpoint or environment made it: the demo replaces it
        _say(f"[generate] {e}: generating it again")
        gen.overwrite = True
        return run_generate(gen, progress=True)
    if summary["generated_rows"] == 0:
        _say(f"[generate] same arguments and checkpoint: reusing {summary['out']}")
    return summary


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def step_evaluate(cfg: DemoConfig, checkpoint: str, gen_summary: dict) -> dict:
    from ganaug import storage
    from ganaug.evaluation import EvaluateConfig, run_evaluate

    out = f"{cfg.store}/eval/{cfg.name}"
    ev = EvaluateConfig(out=out, real=TRAIN_SPEC, heldout=HELDOUT_SPEC, checkpoint=checkpoint,
                        synthetic=gen_summary["out"], metrics="fid,kid,prdc,fidelity,diversity,cas,gain",
                        ks=cfg.ks, seeds=cfg.seeds, gain_steps=cfg.gain_steps, cas_epochs=cfg.cas_epochs,
                        domain_epochs=cfg.domain_epochs, threads=cfg.eval_threads).validate()
    # Reuse the report when nothing it depends on changed (the set's manifest pins the
    # checkpoint id and every shard's sha256).
    manifest = storage.read_json(storage.join(gen_summary["out"], "_manifest.json"))
    key = _digest({"eval": asdict(ev), "files": manifest.get("files"), "generator": manifest.get("generator")})
    marker = storage.join(out, "_demo_inputs.json")
    if storage.exists(marker) and storage.read_json(marker).get("key") == key \
            and storage.exists(storage.join(out, "report.json")):
        _say(f"[evaluate] inputs unchanged: reusing {out}/report.json")
        return {"reused": True, "out": out, "report": storage.read_json(storage.join(out, "report.json"))}
    summary = run_evaluate(ev, echo=_say)
    storage.write_json(marker, {"key": key})
    summary["report"] = storage.read_json(storage.join(out, "report.json"))
    return summary


def step_serve(cfg: DemoConfig, run_uri: str) -> dict:
    """Serve the run over real HTTP, fetch samples with the client, check them, shut down."""
    import numpy as np
    from ray import serve

    from ganaug.client import GeneratorClient
    from ganaug.sampling import Sampler
    from serve.app import ServeArgs, app_builder

    token = secrets.token_urlsafe(24)
    port = _free_port(8000)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        args = ServeArgs(models={"digits": run_uri}, token=token, num_cpus=0.5, ingress_num_cpus=0.1)
        serve.run(app_builder(args), name="ganaug-demo", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        labels = [i % 10 for i in range(cfg.serve_samples)]
        t0 = time.perf_counter()
        with GeneratorClient(url, token=token) as client:
            models = client.models()
            images = client.sample("digits", n=len(labels), labels=labels, seed=1234, truncation=1.0)
        latency = time.perf_counter() - t0
        expected = Sampler.from_checkpoint(run_uri).generate(range(1234, 1234 + len(labels)), labels, 1.0)
        return {"url": url, "models": [m["id"] for m in models], "images": int(images.shape[0]),
                "seconds": round(latency, 3), "identical_to_sampler": bool(np.array_equal(images, expected))}
    finally:
        serve.shutdown()


def _metric(report: dict, *path, default=None):
    node = report
    for p in path:
        if not isinstance(node, dict) or p not in node:
            return default
        node = node[p]
    return node


def summary_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def run_demo(cfg: DemoConfig) -> dict:
    t0 = time.perf_counter()
    ray = start_local_ray()
    try:
        _say(f"== 1/4 train: cgan on {TRAIN_SPEC}, {cfg.workers} Ray Train workers")
        train = step_train(cfg)
        _say(f"== 2/4 generate: {cfg.num} images balanced against {TRAIN_SPEC}")
        gen = step_generate(cfg, train["checkpoint"])
        _say(f"== 3/4 evaluate on held-out {HELDOUT_SPEC}")
        ev = step_evaluate(cfg, train["checkpoint"], gen)
        _say("== 4/4 serve over HTTP and fetch samples with ganaug.client")
        srv = step_serve(cfg, train["checkpoint"])
    finally:
        ray.shutdown()
    report = ev["report"]
    metrics = report.get("metrics", {})
    cas = _metric(metrics, "cas", "synthetic", "accuracy")
    cas_ref = _metric(metrics, "cas", "real", "accuracy")
    fid = _metric(metrics, "fid", "value")
    fid_ref = _metric(metrics, "fid", "reference")
    gain = next(iter(_metric(metrics, "gain", "ks", default=[])), {})
    ckpt = train["checkpoint"]
    result = {
        "checkpoint": ckpt, "run": train.get("run"), "set": gen["out"], "rows": gen["rows"],
        "report": f"{ev['out']}/report.md", "grid": f"{ckpt}/samples.png",
        "cas": cas, "cas_real_reference": cas_ref, "fid_domain": fid, "fid_real_vs_real": fid_ref,
        "gain": {k: gain.get(k) for k in ("k", "gan_gain", "gan_over_classic")}
        | {"arms": {n: {"mean": a["mean"], "std": a["std"]} for n, a in gain.get("arms", {}).items()}},
        "verdicts": {v["metric"]: v["verdict"] for v in report.get("verdicts", [])},
        "serve": srv, "seconds": round(time.perf_counter() - t0, 1),
    }
    return result


def _fmt(v, pct=False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" if pct else (f"{v:.3f}" if isinstance(v, float) else str(v))


def print_summary(res: dict) -> None:
    gain = res.get("gain") or {}
    arms = gain.get("arms", {}) if isinstance(gain, dict) else {}

    def arm(name):
        a = arms.get(name) or {}
        return f"{_fmt(a.get('mean'), pct=True)} ± {_fmt(a.get('std'), pct=True)}" if a else "n/a"

    rows = [
        ("generated rows", str(res["rows"])),
        ("CAS (synthetic-only CNN on real held-out)", _fmt(res["cas"], pct=True)),
        ("  same CNN trained on real", _fmt(res["cas_real_reference"], pct=True)),
        ("domain FID (synthetic vs held-out)", _fmt(res["fid_domain"])),
        ("  real train vs held-out", _fmt(res["fid_real_vs_real"])),
    ]
    for name in ("real", "real+classic", "real+gan", "real+classic+gan"):
        if name in arms:
            rows.append((f"k={gain.get('k')} per class, {name}", arm(name)))
    if gain.get("gan_over_classic") is not None:
        rows.append(("  gain of +GAN over real+classic", f"{100 * gain['gan_over_classic']:+.1f} points"))
    s = res["serve"]
    rows += [
        ("served samples", f"{s['images']} in {s['seconds']} s, identical to Sampler: {s['identical_to_sampler']}"),
        ("sample grid", res["grid"]),
        ("report", res["report"]),
        ("shards", res["set"]),
        ("total time", f"{res['seconds']} s"),
    ]
    _say("\n== summary\n" + summary_table(rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default="./ganaug-store", help="where runs, sets and reports go")
    p.add_argument("--small", action="store_true", help="a tiny run of the same steps (used by the tests)")
    a = p.parse_args(argv)
    cfg = DemoConfig.small(a.store) if a.small else DemoConfig(store=a.store)
    from ganaug.cli import quiet_ray_defaults
    from ganaug.errors import UserError

    quiet_ray_defaults()

    try:
        res = run_demo(cfg)
    except KeyboardInterrupt:
        print("interrupted: Serve and Ray were shut down", file=sys.stderr)
        return 130
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_summary(res)
    print(json.dumps(res, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
