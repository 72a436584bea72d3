"""Storage on a failing S3: a fault-injecting proxy (tests/faultproxy.py) in front of moto.

Transient faults (a reset mid-answer, 503 SlowDown, a stalled request, an upload cut short)
are retried with backoff by pyarrow's S3 retry strategy and the operation succeeds, with the
same bytes; persistent faults fail with one line naming the URI and the failure kind.
"""

from __future__ import annotations

import hashlib
import time

import pytest

from faultproxy import FaultProxy
from ganaug import storage
from ganaug.storage import StorageError


@pytest.fixture
def faulty(s3, monkeypatch):
    port = int(s3.endpoint.rsplit(":", 1)[1])
    proxy = FaultProxy(port)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
    monkeypatch.setattr(storage, "S3_TIMEOUT_S", 2.0)
    storage._S3_CACHE.clear()
    yield proxy
    proxy.close()
    storage._S3_CACHE.clear()


DATA = bytes(range(256)) * 4096  # 1 MiB


@pytest.mark.parametrize("fault", ["reset", "slowdown", "stall", "cut_upload"])
def test_transient_faults_are_retried(faulty, s3, fault):
    uri = s3.new_prefix(fault) + "/blob.bin"
    faulty.arm(fault, count=2, stall_s=2.5)
    t0 = time.monotonic()
    storage.write_bytes(uri, DATA)
    faulty.arm(fault, count=2, stall_s=2.5)
    back = storage.read_bytes(uri)
    took = time.monotonic() - t0
    assert hashlib.sha256(back).digest() == hashlib.sha256(DATA).digest()
    assert faulty.seen == 4, f"{fault}: {faulty.seen} faults injected"
    print(f"{fault}: {faulty.seen} faults retried, recovered in {took:.2f}s, {len(back)} bytes equal")


@pytest.mark.parametrize("fault,kind", [("slowdown", "503 SlowDown"), ("reset", "connection reset")])
def test_persistent_faults_fail_in_one_line(faulty, s3, fault, kind, monkeypatch):
    monkeypatch.setattr(storage, "S3_RETRY_ATTEMPTS", 3)  # give up sooner
    storage._S3_CACHE.clear()
    uri = s3.new_prefix(fault) + "/blob.bin"
    storage.write_bytes(uri, b"x")
    faulty.arm(fault, count=None)
    with pytest.raises(StorageError) as e:
        storage.read_bytes(uri)
    msg = str(e.value)
    assert uri in msg and kind in msg and "\n" not in msg, msg


def test_failed_upload_publishes_nothing(s3):
    """A write that fails half way (here: the producer raises after 12 MiB, i.e. during a
    multipart upload) leaves neither the target nor a temporary object nor an open upload."""
    uri = s3.new_prefix() + "/part-00000.parquet"
    storage.write_bytes(uri, b"old complete shard")

    def fill(f):
        f.write(b"a" * (12 << 20))
        raise OSError("killed mid-upload")

    fs, path = storage.resolve(uri)
    with pytest.raises(StorageError, match=f"cannot write {uri}"):
        storage._write_atomic(uri, fs, path, fill)
    assert storage.read_bytes(uri) == b"old complete shard"  # the previous object is intact
    assert storage.listdir(storage.parent(uri)) == ["part-00000.parquet"]
    uploads = s3.client().list_multipart_uploads(Bucket=s3.bucket, Prefix=path.split("/", 1)[1])
    assert not uploads.get("Uploads"), uploads.get("Uploads")


def test_cut_upload_of_a_big_object_is_retried(faulty, s3):
    big = bytes(range(256)) * (40 << 12)  # 10 MiB: a multipart upload
    uri = s3.new_prefix() + "/big.bin"
    faulty.arm("cut_upload", count=3)
    storage.write_bytes(uri, big)
    assert storage.read_bytes(uri) == big and faulty.seen == 3
