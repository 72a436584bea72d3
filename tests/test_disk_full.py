"""Disk full (ENOSPC) on a small tmpfs: the previous complete file/checkpoint stays intact,
no temporary file is left, and the error is one line naming the URI and 'no space left'."""

from __future__ import annotations

import os
import subprocess

import pytest

from ganaug import storage
from ganaug.storage import StorageError


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_enospc_keeps_the_previous_file(tiny_disk):
    uri = str(tiny_disk / "set" / "part-00000.parquet")
    storage.write_bytes(uri, b"complete shard v1")
    with pytest.raises(StorageError) as e:
        storage.write_bytes(uri, os.urandom(2 << 20))
    assert str(e.value) == f"cannot write {uri}: no space left on device"
    assert storage.read_bytes(uri) == b"complete shard v1"
    assert os.listdir(tiny_disk / "set") == ["part-00000.parquet"]  # no temp file left


def test_enospc_during_a_checkpoint_keeps_the_previous_one(tiny_disk):
    from ganaug import checkpoint

    run = str(tiny_disk / "run")
    old = storage.join(checkpoint.checkpoints_root(run), checkpoint.step_dir_name(1))
    storage.publish_folder(old, {"generator_ema.safetensors": b"w1", "model.json": b"{}"}, "model.json")
    new = storage.join(checkpoint.checkpoints_root(run), checkpoint.step_dir_name(2))
    with pytest.raises(StorageError, match="no space left on device"):
        storage.publish_folder(new, {"generator_ema.safetensors": os.urandom(2 << 20), "model.json": b"{}"},
                               "model.json")
    assert not storage.exists(storage.join(new, "model.json"))  # never complete
    assert [u for _, u in checkpoint.list_checkpoints(run)] == [old]
    assert storage.read_bytes(storage.join(old, "generator_ema.safetensors")) == b"w1"
