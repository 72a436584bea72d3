"""Shared fixtures of the serving tests: one real Serve app on 127.0.0.1 for the whole session.

The app serves a cgan, a dcgan and a pix2pix (tiny, untrained). Its token reaches the ingress
replica the way it does in production: through the environment of the Ray node, never as an
argument. So the variable is set here, at import (collection), before the shared Ray starts;
its name has no GANAUG_ prefix, so tests/ray_fixtures.py does not copy it into a runtime_env.
"""

from __future__ import annotations

import os
import socket
import sys

import base64

import httpx
import numpy as np
import pytest

if not hasattr(sys.modules.get("conftest"), "ray_session"):  # until conftest provides it
    from ray_fixtures import ray_session  # noqa: F401

TOKEN = "test-token-5f1d0c-" + "q7Zr"
TOKEN_ENV = "SERVE_TEST_API_TOKEN"
os.environ.setdefault(TOKEN_ENV, TOKEN)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RES, CH, K = 16, 1, 10
NATIVE = (12, 14)  # the cgan checkpoint's recorded native_size (H, W)
LIMITS = {"max_n": 32, "max_body_bytes": 2048, "max_upload_bytes": 8192, "max_upload_pixels": 256 * 256,
          "min_truncation": 0.0, "max_truncation": 2.0}
# ----------------------------------------------------------------------------- fixtures

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_checkpoint(uri: str, family: str, seed: int = 0, width: int = 8) -> str:
    from tiny import tiny_checkpoint

    names = [f"c{i}" for i in range(K)] if family == "cgan" else []
    # The cgan says what size its training data had ('size': 'native'); the dcgan does not.
    native = {"native_size": list(NATIVE)} if family == "cgan" else {}
    return tiny_checkpoint(uri, family, names, RES, CH, seed=seed, width=width, **native)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("serve-ckpts")
    return {name: make_checkpoint(str(root / name), name) for name in ("cgan", "dcgan", "pix2pix")}


@pytest.fixture(scope="module")
def samplers(ckpts):
    from ganaug.sampling import Sampler

    return {k: Sampler.from_checkpoint(v, device="cpu") for k, v in ckpts.items()}


@pytest.fixture(scope="module")
def service(ray_session, ckpts):
    from ray import serve

    from serve.app import ServeArgs, app_builder

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = ServeArgs(models=ckpts, token_env=TOKEN_ENV, expose_stats=True, num_cpus=0.5, ingress_num_cpus=0.1,
                     max_batch_size=16, batch_wait_timeout_s=0.05, max_ongoing_requests=64,
                     max_queued_requests=256, max_models_per_replica=3, **LIMITS)
    serve.run(app_builder(args), name="ganaug-test", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=60) as http:
        assert http.get("/healthz").status_code == 200, "Serve did not come up on our port"
        yield http
    serve.shutdown()  # every app of the serving tests goes with it


def png(image: np.ndarray) -> bytes:
    from serve.app import encode_png

    return encode_png(image)


def b64s(answer: dict) -> list[bytes]:
    return [base64.b64decode(im["data"]) for im in answer["images"]]


