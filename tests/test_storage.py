"""ganaug.storage on local paths, file:// URIs and S3 (moto server over real HTTP)."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ganaug import storage
from ganaug.errors import UserError
from ganaug.storage import StorageError


@pytest.fixture(params=["local", "file", "s3"])
def root(request, tmp_path):
    """The same tests against a plain path, a file:// URI and an s3:// prefix."""
    if request.param == "local":
        return str(tmp_path / "store")
    if request.param == "file":
        return "file://" + str(tmp_path / "store")
    return request.getfixturevalue("s3").new_prefix()


def test_join_and_is_s3():
    assert storage.join("s3://b/p/", "x", "/y.json") == "s3://b/p/x/y.json"
    assert storage.join("file:///a", "b") == "file:///a/b"
    assert storage.join("rel/dir", "", "f") == "rel/dir/f"
    assert storage.is_s3("s3://b/k") and not storage.is_s3("/tmp/x") and not storage.is_s3("file:///x")


def test_resolve_local_and_file_uri(tmp_path):
    fs, path = storage.resolve(str(tmp_path / "a"))
    assert fs.type_name == "local" and path == str(tmp_path / "a")
    fs, path = storage.resolve("file://" + str(tmp_path / "a"))
    assert fs.type_name == "local" and path == str(tmp_path / "a")
    fs, path = storage.resolve("relative/x")
    assert os.path.isabs(path)
    with pytest.raises(StorageError, match="unsupported URI scheme 'gs'"):
        storage.resolve("gs://b/k")


def test_resolve_s3_uses_endpoint_env(s3):
    fs, path = storage.resolve(f"s3://{s3.bucket}/a/b")
    assert fs.type_name == "s3" and path == f"{s3.bucket}/a/b"
    assert fs is storage.resolve(f"s3://{s3.bucket}/other")[0]  # cached per endpoint/region


def test_roundtrips(root):
    f = storage.join(root, "sub", "blob.bin")
    assert not storage.exists(f)
    storage.write_bytes(f, b"\x00\x01abc")
    assert storage.exists(f) and storage.isfile(f) and not storage.isdir(f)
    assert storage.isdir(storage.join(root, "sub"))
    assert storage.read_bytes(f) == b"\x00\x01abc"
    assert storage.size(f) == 5
    storage.write_bytes(f, b"new")  # overwrite
    assert storage.read_bytes(f) == b"new"

    storage.write_text(storage.join(root, "t.txt"), "héllo")
    assert storage.read_text(storage.join(root, "t.txt")) == "héllo"
    storage.write_json(storage.join(root, "j.json"), {"b": 1, "a": [1, 2]})
    assert storage.read_json(storage.join(root, "j.json")) == {"a": [1, 2], "b": 1}
    text = storage.read_text(storage.join(root, "j.json"))
    assert text.index('"a"') < text.index('"b"') and "\n  " in text  # sorted, indented

    assert storage.listdir(root) == ["j.json", "sub", "t.txt"]
    assert storage.listdir(storage.join(root, "missing")) == []
    assert storage.list_files(root) == ["j.json", "sub/blob.bin", "t.txt"]

    with storage.open_input(f) as fh:
        fh.seek(1)
        assert fh.read() == b"ew"

    storage.delete(storage.join(root, "t.txt"))
    assert not storage.exists(storage.join(root, "t.txt"))
    storage.delete(storage.join(root, "t.txt"))  # missing_ok by default
    with pytest.raises(StorageError, match="not found"):
        storage.delete(storage.join(root, "t.txt"), missing_ok=False)
    with pytest.raises(StorageError, match="not empty"):
        storage.delete(storage.join(root, "sub"))
    storage.delete(storage.join(root, "sub"), recursive=True)
    assert not storage.exists(f)
    assert storage.listdir(root) == ["j.json"]


def test_reason_ignores_status_codes_spelled_in_the_path(root):
    # CI once drew the random prefix 6ae30b40403f: the "403" inside it read as Forbidden.
    missing = storage.join(root, "run-403", "503", "t.txt")
    with pytest.raises(StorageError, match="not found"):
        storage.delete(missing, missing_ok=False)
    with pytest.raises(StorageError, match=f"cannot read {missing}: not found"):
        storage.read_bytes(missing)


def test_local_write_is_atomic_and_leaves_no_temp(tmp_path):
    f = tmp_path / "d" / "x.bin"
    storage.write_bytes(str(f), b"1" * 1000)
    assert os.listdir(f.parent) == ["x.bin"]
    # A failed write (target is a folder) leaves the old state and no temp file behind.
    (tmp_path / "d" / "adir").mkdir()
    with pytest.raises(StorageError, match="adir"):
        storage.write_bytes(str(tmp_path / "d" / "adir"), b"x")
    assert sorted(os.listdir(f.parent)) == ["adir", "x.bin"]


def test_publish_folder_marker_last(root):
    folder = storage.join(root, "set")
    files = {"part-00000.parquet": b"a", "part-00001.parquet": b"bb", "sub/x.txt": b"c",
             "_manifest.json": b"{}"}
    assert not storage.is_complete(folder, "_manifest.json")
    storage.publish_folder(folder, files, "_manifest.json")
    assert storage.is_complete(folder, "_manifest.json")
    assert storage.list_files(folder) == sorted(files)

    # The marker is written after every other file: its mtime is the newest.
    fs, path = storage.resolve(folder)
    infos = {i.path.rsplit("/", 1)[-1]: i.mtime for i in fs.get_file_info(
        [f"{path}/{n}" for n in files])}
    assert infos["_manifest.json"] >= max(v for k, v in infos.items() if k != "_manifest.json")

    # The marker must be one of the files.
    with pytest.raises(StorageError, match="marker"):
        storage.publish_folder(folder, {"a": b""}, "_manifest.json")


def test_publish_folder_interrupted_is_incomplete(tmp_path):
    """A (re)publish that fails half way leaves a folder without its marker."""
    folder = tmp_path / "set"
    storage.publish_folder(str(folder), {"a.bin": b"0", "_manifest.json": b"{}"}, "_manifest.json")
    assert storage.is_complete(str(folder), "_manifest.json")
    (folder / "z-blocker").mkdir()  # writing the file 'z-blocker' fails: it is a folder
    with pytest.raises(StorageError, match="z-blocker"):
        storage.publish_folder(str(folder), {"a.bin": b"1", "z-blocker": b"2", "_manifest.json": b"{}"},
                               "_manifest.json")
    assert (folder / "a.bin").exists()
    assert not storage.is_complete(str(folder), "_manifest.json")


def test_boto3_interop(s3):
    prefix = s3.new_prefix()
    bucket_key = prefix[len("s3://"):].split("/", 1)
    client = s3.client()
    storage.write_bytes(storage.join(prefix, "from-storage.bin"), b"written by storage")
    got = client.get_object(Bucket=s3.bucket, Key=f"{bucket_key[1]}/from-storage.bin")["Body"].read()
    assert got == b"written by storage"
    client.put_object(Bucket=s3.bucket, Key=f"{bucket_key[1]}/from-boto3.json", Body=b'{"x": 1}')
    assert storage.read_json(storage.join(prefix, "from-boto3.json")) == {"x": 1}
    assert storage.listdir(prefix) == ["from-boto3.json", "from-storage.bin"]


def test_pyarrow_parquet_through_resolve(s3):
    table = pa.table({"label": pa.array([1, 2, 3], pa.int64()), "name": ["a", "b", "c"]})
    uri = storage.join(s3.new_prefix(), "t.parquet")
    fs, path = storage.resolve(uri)
    pq.write_table(table, path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).equals(table)
    with storage.open_input(uri) as f:
        assert pq.ParquetFile(f).metadata.num_rows == 3
    # and boto3 sees a valid Parquet file
    body = s3.client().get_object(Bucket=s3.bucket, Key=path.split("/", 1)[1])["Body"].read()
    assert body[:4] == b"PAR1" and body[-4:] == b"PAR1"


def test_copy_tree_local_s3_local(tmp_path, s3):
    src = tmp_path / "src"
    (src / "step-1").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"a" * 10)
    (src / "step-1" / "model.json").write_text("{}")
    (src / "_manifest.json").write_text("{}")
    dst = s3.new_prefix()
    copied = storage.copy_tree(str(src), dst)
    assert copied[-2:] == ["step-1/model.json", "_manifest.json"]  # markers last, deepest first
    assert storage.list_files(dst) == ["_manifest.json", "a.bin", "step-1/model.json"]
    back = tmp_path / "back"
    storage.copy_tree(dst, str(back))
    assert (back / "a.bin").read_bytes() == b"a" * 10
    assert (back / "step-1" / "model.json").read_text() == "{}"
    storage.copy_tree(str(src / "a.bin"), str(tmp_path / "single.bin"))
    assert (tmp_path / "single.bin").read_bytes() == b"a" * 10


def test_errors_name_the_uri(s3, tmp_path):
    missing_bucket = "s3://no-such-bucket-ganaug/x/y.bin"
    with pytest.raises(StorageError, match=r"cannot read s3://no-such-bucket-ganaug/x/y.bin: no such bucket"):
        storage.read_bytes(missing_bucket)
    with pytest.raises(StorageError, match=r"cannot write s3://no-such-bucket-ganaug/x/y.bin: no such bucket"):
        storage.write_bytes(missing_bucket, b"x")
    missing_key = storage.join(s3.new_prefix(), "nope.json")
    with pytest.raises(StorageError, match=f"cannot read {missing_key}: not found"):
        storage.read_json(missing_key)
    local = str(tmp_path / "nope" / "x.bin")
    with pytest.raises(StorageError, match=f"cannot read {local}: not found"):
        storage.read_bytes(local)
    with pytest.raises(StorageError, match="is a directory"):
        storage.read_bytes(str(tmp_path))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{nope")
    with pytest.raises(StorageError, match=f"{bad_json}: invalid JSON"):
        storage.read_json(str(bad_json))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StorageError, match=f"cannot write {tmp_path}/afile/sub/x: a parent path is a file"):
        storage.write_bytes(str(tmp_path / "afile" / "sub" / "x"), b"1")
    assert issubclass(StorageError, UserError)
    assert storage.exists(missing_bucket) is False


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_local_not_writable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(StorageError, match=f"cannot write {ro}/f.bin: not writable"):
            storage.write_bytes(str(ro / "f.bin"), b"x")
    finally:
        ro.chmod(0o700)
