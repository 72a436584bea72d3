"""Shared pytest fixtures.

- `s3`: a real S3 endpoint (moto's standalone server on 127.0.0.1) for the whole session,
  reached over HTTP by boto3 and by pyarrow through ganaug.storage. The AWS variables are
  set in os.environ so subprocesses and Ray workers started afterwards inherit them.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"   # ../shared next to the repo (real MNIST lives there)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    endpoint: str        # http://127.0.0.1:PORT
    bucket: str

    def new_prefix(self, name: str = "") -> str:
        """A fresh, unique s3://bucket/<uuid>[-name] prefix (nothing exists under it)."""
        tag = uuid.uuid4().hex[:12]
        return f"s3://{self.bucket}/{tag}{'-' + name if name else ''}"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")


@pytest.fixture(scope="session")
def s3():
    """A moto S3 server for the session, with one bucket, and the AWS env pointing at it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",  # no slow instance-metadata probing
    }
    saved = {k: os.environ.get(k) for k in list(env) + ["AWS_SESSION_TOKEN", "AWS_PROFILE"]}
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    os.environ.update(env)
    info = S3Server(endpoint=endpoint, bucket="ganaug-test")
    info.client().create_bucket(Bucket=info.bucket)
    try:
        yield info
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_prefix(s3) -> str:
    """A fresh s3://bucket/<uuid> prefix for one test."""
    return s3.new_prefix()


@pytest.fixture
def cli_error(capsys):
    """Run `ganaug ARGV...` in-process; assert exit 2 with ONE stderr line, and return it."""
    from ganaug.cli import main

    def run(argv: list[str]) -> str:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        return err[0]

    return run


# One Ray per session (ARCHITECTURE.md §5: startup costs); defined in ray_fixtures.py.
from ray_fixtures import ray_session  # noqa: F401


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on small shared machines: more torch threads only add contention. A module
    opts in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
