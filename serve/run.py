"""Building the ganaug Serve application, and running it in the foreground (`ganaug serve`).

    serve run serve/config.yaml            # or: serve deploy serve/config.yaml
    ganaug serve serve/config.yaml --model digits=./ganaug-store/runs/demo-cgan

Two deployments: `GanaugAPI` (serve/api.py, the ingress) and `GeneratorPool` (serve/pool.py,
the model replicas). Overload is answered fast with 503: both have a bounded queue
(`max_ongoing_requests` + `max_queued_requests`), beyond which Serve rejects instead of queueing.

No `from __future__ import annotations` here: Ray inspects `app_builder`'s annotation at run
time to turn the config's `args:` into a `ServeArgs`, which needs a real class, not a string.
"""

import json
import os
import signal
import threading
import time
from typing import Any

from ray import serve

from ganaug.errors import UserError
from serve.api import GanaugAPI, Secret
from serve.args import ServeArgs, ServeConfigError, check_exposure, token_configured
from serve.pool import GeneratorPool

# Serve's proxy gives up on a request after this long (a 64-image request on a busy CPU
# replica takes seconds, not minutes); the config's http_options may say otherwise.
REQUEST_TIMEOUT_S = 60.0
BACKPRESSURE = {"status_code": 503, "retry_after_s": 1}


def _absolute(uri: str) -> str:
    if "://" in uri:
        return uri
    return os.path.abspath(os.path.expanduser(uri))


def describe_models(models: dict[str, str]) -> tuple[dict[str, dict], dict[str, str]]:
    """Read each model's model.json (small) once: the ingress's catalog and pinned URIs."""
    from ganaug import checkpoint

    catalog, uris = {}, {}
    for mid, uri in models.items():
        try:
            ckpt = checkpoint.resolve_checkpoint(_absolute(uri))
            meta = checkpoint.load_meta(ckpt)
        except UserError as e:
            raise ServeConfigError(f"model {mid!r}: {e}") from None
        kind = meta.get("kind", "noise")
        num_classes = int(meta.get("num_classes", 0) or 0)
        catalog[mid] = {
            "id": mid, "family": meta["family"], "kind": kind,
            "resolution": int(meta["resolution"]), "channels": int(meta["channels"]),
            "num_classes": num_classes, "class_names": list(meta.get("class_names", [])),
            "conditional": kind == "noise" and num_classes > 0, "step": meta.get("step"),
            "native_size": [int(v) for v in meta["native_size"]] if meta.get("native_size") else None,
        }
        uris[mid] = ckpt
    return catalog, uris


def app_builder(args: ServeArgs):
    """Build the application from typed args (Serve validates the config's `args:` into ServeArgs)."""
    if not isinstance(args, ServeArgs):
        args = ServeArgs.model_validate(args)
    catalog, uris = describe_models(args.models)

    pool_opts: dict[str, Any] = {
        "max_ongoing_requests": args.max_ongoing_requests,
        "max_queued_requests": args.max_queued_requests,
        "ray_actor_options": {"num_cpus": args.num_cpus, "num_gpus": args.gpus_per_replica},
        "backpressure_config": BACKPRESSURE,
        "health_check_period_s": args.health_check_period_s,
    }
    if args.autoscaling is not None:
        pool_opts["autoscaling_config"] = args.autoscaling.serve_config(args.max_batch_size)
    else:
        pool_opts["num_replicas"] = args.num_replicas
    device = "cuda" if args.gpus_per_replica > 0 else "cpu"
    pool = GeneratorPool.options(**pool_opts).bind(
        uris, args.max_models_per_replica, args.max_batch_size, args.batch_wait_timeout_s, args.torch_threads,
        device)
    literal = Secret(args.token.get_secret_value()) if args.token and args.token.get_secret_value() else None
    return GanaugAPI.options(
        num_replicas=args.ingress_num_replicas,
        max_ongoing_requests=args.ingress_max_ongoing_requests,
        max_queued_requests=args.max_queued_requests,
        backpressure_config=BACKPRESSURE,
        ray_actor_options={"num_cpus": args.ingress_num_cpus},
    ).bind(pool, catalog, args.limits(), args.token_env, literal, args.require_token, args.expose_stats)


def run_foreground(args: ServeArgs, *, host: str = "127.0.0.1", port: int = 8000, name: str = "ganaug",
                   route_prefix: str = "/", request_timeout_s: float = REQUEST_TIMEOUT_S,
                   allow_unauthenticated: bool = False, echo=print) -> None:
    """Start Serve on host:port, deploy the app and block until Ctrl-C (then shut it down)."""
    import ray

    check_exposure(args, host, allow_unauthenticated)
    if args.require_token and not token_configured(args):
        raise ServeConfigError(f"require_token is set but ${args.token_env} is empty")
    app = app_builder(args)  # validates checkpoints before any Ray start-up cost
    remote = bool(os.environ.get("RAY_ADDRESS"))
    started_ray = not ray.is_initialized()
    if started_ray:
        # A local Ray unless RAY_ADDRESS points at a cluster; its workers inherit this process's
        # environment, which is how the token reaches the ingress replica. No dashboard: it
        # costs memory and start-up time, and `serve.run` talks to the controller directly.
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=True)

    def _stop(signum, frame):  # `docker stop` / systemd send SIGTERM: shut down as for Ctrl-C
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
    try:
        serve.start(http_options={"host": host, "port": port, "request_timeout_s": request_timeout_s})
        serve.run(app, name=name, route_prefix=route_prefix)
        auth = "bearer token" if token_configured(args) else "NO AUTH"
        echo(json.dumps({"serving": f"http://{host}:{port}{route_prefix.rstrip('/')}",
                         "gallery": f"http://{host}:{port}{route_prefix.rstrip('/')}/gallery",
                         "models": sorted(args.models), "auth": auth}))
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        echo("shutting down")
    finally:
        try:
            # On a shared cluster remove only our app; a Ray we started goes away entirely.
            serve.delete(name) if remote else serve.shutdown()
        finally:
            if started_ray:
                ray.shutdown()
