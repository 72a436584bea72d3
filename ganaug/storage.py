"""One small storage API over local paths, file:// URIs and s3:// URIs.

Everything goes through pyarrow filesystems, so Parquet readers/writers can use the same
`resolve()` result. pyarrow ignores AWS_ENDPOINT_URL*, so S3-compatible endpoints (MinIO,
moto) are passed through here. Every failure is re-raised as `StorageError`, whose message
names the URI and what went wrong, so the CLI can print it on one line.

Publishing is atomic (ARCHITECTURE.md §3 "Storage URIs"): a local file is written under a temporary
name in the same folder and renamed; an S3 object appears only when its upload completes;
a folder counts as complete only once its marker file, written last, exists.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlparse

import pyarrow.fs as pafs

from ganaug.errors import UserError

# Marker files that make a folder "complete" (generated set, checkpoint). copy_tree copies
# them last so a copied folder is never seen complete before its contents are.
MARKERS = ("_manifest.json", "model.json")

def _umask_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _umask_file_mode()
_COPY_CHUNK = 8 << 20


T = TypeVar("T")


class StorageError(UserError):
    """A storage operation failed; the message names the URI and the reason."""


# ---------------------------------------------------------------------------- URIs

def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def absolute(uri: str) -> str:
    """A plain path made absolute against this process's directory; URIs unchanged. For URIs
    handed to Ray workers, whose working directories are their own."""
    return uri if "://" in str(uri) else os.path.abspath(os.path.expanduser(uri))


def _is_file_uri(uri: str) -> bool:
    return str(uri).startswith("file://")


def join(uri: str, *parts: str) -> str:
    """Join with '/', keeping the scheme: join('s3://b/p', 'x', 'y.json') -> 's3://b/p/x/y.json'."""
    out = str(uri)
    for p in parts:
        p = str(p).strip("/")
        if not p:
            continue
        out = p if not out else out.rstrip("/") + "/" + p
    return out


def basename(uri: str) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


def parent(uri: str) -> str:
    uri = str(uri).rstrip("/")
    if is_s3(uri) and uri.count("/") <= 2:
        return uri  # a bucket is its own parent
    head, _, _ = uri.rpartition("/")
    if not head:
        return "."
    if head.endswith(":/") or head == "file:/":
        return head + "/"
    return head


# ---------------------------------------------------------------------------- filesystems

S3_RETRY_ATTEMPTS = int(os.environ.get("GANAUG_S3_RETRY_ATTEMPTS", "6"))
S3_TIMEOUT_S = float(os.environ.get("GANAUG_S3_TIMEOUT_S", "30"))
_S3_CACHE: dict[tuple, pafs.S3FileSystem] = {}
_S3_LOCK = threading.Lock()
_LOCAL = pafs.LocalFileSystem()


def _s3_endpoint() -> tuple[str | None, str | None]:
    """(endpoint_override 'host:port', scheme) from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL."""
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not url:
        return None, None
    if "://" not in url:
        return url.rstrip("/"), "https"
    p = urlparse(url)
    return p.netloc, (p.scheme or "https")


def _s3_region() -> str:
    return os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"


def s3_filesystem() -> pafs.S3FileSystem:
    """The S3 filesystem for the current environment, cached per (endpoint, region, key id)."""
    endpoint, scheme = _s3_endpoint()
    region = _s3_region()
    key = (endpoint, scheme, region, os.environ.get("AWS_ACCESS_KEY_ID"))
    with _S3_LOCK:
        fs = _S3_CACHE.get(key)
        if fs is None:
            # Transient faults (503 SlowDown, resets, timeouts) are retried with the SDK's
            # exponential backoff; persistent ones surface after S3_RETRY_ATTEMPTS tries.
            kwargs: dict[str, Any] = {"region": region, "connect_timeout": S3_TIMEOUT_S,
                                      "request_timeout": S3_TIMEOUT_S,
                                      "retry_strategy": pafs.AwsStandardS3RetryStrategy(
                                          max_attempts=S3_RETRY_ATTEMPTS)}
            if endpoint:
                kwargs["endpoint_override"] = endpoint
                kwargs["scheme"] = scheme
            # Credentials: pyarrow reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
            # AWS_SESSION_TOKEN / profiles / instance roles itself (the AWS SDK chain).
            fs = pafs.S3FileSystem(**kwargs)
            _S3_CACHE[key] = fs
        return fs


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """URI -> (pyarrow filesystem, path inside it)."""
    uri = str(uri)
    if is_s3(uri):
        path = uri[len("s3://"):].strip("/")
        if not path:
            raise StorageError(f"bad URI {uri!r}: no bucket name")
        return s3_filesystem(), path
    if _is_file_uri(uri):
        p = urlparse(uri)
        path = (p.netloc + p.path) if p.netloc not in ("", "localhost") else p.path
        return _LOCAL, os.path.abspath(path or "/")
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise StorageError(f"unsupported URI scheme {scheme!r} in {uri!r}; use a path, file:// or s3://")
    return _LOCAL, os.path.abspath(os.path.expanduser(uri))


# ---------------------------------------------------------------------------- errors

def _status(code: str, text: str) -> bool:
    """An HTTP status code as a whole number: "403" inside a key such as 6ae3040403f is not one."""
    return re.search(rf"(?<![0-9A-Za-z]){code}(?![0-9A-Za-z])", text) is not None


def _without_paths(uri: str, text: str) -> str:
    # Error texts echo the path; a path's own characters must not decide the reason.
    try:
        spellings = {uri, resolve(uri)[1]}
    except StorageError:
        spellings = {uri}
    for spelled in sorted(spellings, key=len, reverse=True):
        text = text.replace(spelled, "<path>")
    return text


def _reason(uri: str, exc: BaseException) -> str:
    text = _without_paths(uri, str(exc))
    up = text.upper()
    if "NO_SUCH_BUCKET" in up or "NOSUCHBUCKET" in up or "BUCKET DOES NOT EXIST" in up:
        return "no such bucket"
    if "ACCESS_DENIED" in up or "ACCESSDENIED" in up or "FORBIDDEN" in up or _status("403", text):
        return "access denied"
    if "INVALIDACCESSKEYID" in up or "SIGNATUREDOESNOTMATCH" in up or "CREDENTIALS" in up:
        return "invalid or missing AWS credentials"
    if "SLOWDOWN" in up or "SLOW DOWN" in up or _status("503", text) or "SERVICE UNAVAILABLE" in up:
        return f"S3 kept answering 503 SlowDown (gave up after {S3_RETRY_ATTEMPTS} tries)"
    if "TIMEOUT" in up or "TIMED OUT" in up:
        return f"S3 request timed out (after {S3_RETRY_ATTEMPTS} tries)"
    if "CONNECTION RESET" in up or "RESET BY PEER" in up or "RECV FAILURE" in up or "CONNECTION WAS CLOSED" in up:
        return f"connection reset by the S3 endpoint (after {S3_RETRY_ATTEMPTS} tries)"
    if "NETWORK_CONNECTION" in up or "COULD NOT CONNECT" in up or "CURLCODE" in up:
        endpoint, _ = _s3_endpoint()
        return f"cannot connect to the S3 endpoint ({endpoint or 'AWS default'})"
    if isinstance(exc, IsADirectoryError) or "IS A DIRECTORY" in up:
        return "is a directory, not a file"
    if isinstance(exc, NotADirectoryError) or "NOT A DIRECTORY" in up:
        return "a parent path is a file, not a directory"
    if isinstance(exc, PermissionError) or "PERMISSION DENIED" in up or "READ-ONLY" in up:
        return "not writable (permission denied)" if not is_s3(uri) else "access denied"
    if isinstance(exc, FileNotFoundError) or "PATH DOES NOT EXIST" in up or "NO SUCH FILE" in up \
            or "NOSUCHKEY" in up or "NOT_FOUND" in up:
        return "not found"
    if "NO SPACE" in up:
        return "no space left on device"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"{type(exc).__name__}: {first}"


def _bucket_missing(uri: str) -> bool:
    if not is_s3(uri):
        return False
    try:
        fs, path = resolve(uri)
        return fs.get_file_info(path.split("/", 1)[0]).type == pafs.FileType.NotFound
    except (OSError, StorageError):
        return False


def missing_reason(uri: str) -> str:
    """Why a URI that does not exist is missing: 'no such bucket' or 'not found'."""
    return "no such bucket" if _bucket_missing(uri) else "not found"


def _fail(uri: str, op: str, exc: BaseException) -> StorageError:
    reason = _reason(uri, exc)
    if reason == "not found" and _bucket_missing(uri):
        reason = "no such bucket"
    return StorageError(f"cannot {op} {uri}: {reason}")


# ---------------------------------------------------------------------------- info

def _info(uri: str, op: str = "stat") -> pafs.FileInfo:
    fs, path = resolve(uri)
    try:
        return fs.get_file_info(path)
    except Exception as e:
        raise _fail(uri, op, e) from e


def exists(uri: str) -> bool:
    return _info(uri).type != pafs.FileType.NotFound


def isdir(uri: str) -> bool:
    return _info(uri).type == pafs.FileType.Directory


def isfile(uri: str) -> bool:
    return _info(uri).type == pafs.FileType.File


def size(uri: str) -> int:
    info = _info(uri)
    if info.type != pafs.FileType.File:
        raise StorageError(f"cannot stat {uri}: not found" if info.type == pafs.FileType.NotFound
                           else f"cannot stat {uri}: is a directory, not a file")
    return int(info.size)


def listdir(uri: str) -> list[str]:
    """Sorted basenames of the direct children of a folder; [] when it does not exist."""
    fs, path = resolve(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    except NotADirectoryError:
        return []
    except Exception as e:
        if "not a directory" in str(e).lower():
            return []
        raise _fail(uri, "list", e) from e
    return sorted(i.base_name for i in infos)


def list_files(uri: str, recursive: bool = True) -> list[str]:
    """Sorted '/'-separated paths (relative to uri) of every file below a folder; [] if missing."""
    fs, path = resolve(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=recursive))
    except Exception as e:
        if "not a directory" in str(e).lower():
            return []
        raise _fail(uri, "list", e) from e
    base = path.rstrip("/") + "/"
    out = []
    for i in infos:
        if i.type == pafs.FileType.File and i.path.startswith(base):
            out.append(i.path[len(base):].replace(os.sep, "/"))
    return sorted(out)


# ---------------------------------------------------------------------------- read / write

def open_input(uri: str):
    """A pyarrow random-access file (seekable; usable by pyarrow.parquet.ParquetFile)."""
    fs, path = resolve(uri)
    try:
        return fs.open_input_file(path)
    except Exception as e:
        raise _fail(uri, "open", e) from e


def open_output(uri: str):
    """A pyarrow output stream. Not atomic on local disk: prefer write_bytes / publish_folder."""
    fs, path = resolve(uri)
    try:
        if not is_s3(uri):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        return fs.open_output_stream(path, compression=None)
    except Exception as e:
        raise _fail(uri, "write", e) from e


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path, compression=None) as f:
            return f.read()
    except Exception as e:
        raise _fail(uri, "read", e) from e


def _write_atomic(uri: str, fs: pafs.FileSystem, path: str, fill: Callable[[Any], None]) -> None:
    """Create the file `uri` (resolved to fs, path) atomically with `fill(f)` writing its bytes.

    S3: one upload, visible only when it completes. Local: a temp file in the same folder,
    renamed over the target. Any failure (in `fill` too) is a StorageError for a write of `uri`.
    """
    if is_s3(uri):
        _write_s3_atomic(uri, fs, path, fill)
        return
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise _fail(uri, "write", e) from e

    def write(name: str) -> None:
        with open(name, "wb") as f:
            fill(f)
        os.chmod(name, _FILE_MODE)  # mkstemp makes 0600; published files follow the umask

    _publish_through_temporary(uri, tmp, write, publish=lambda name: os.replace(name, path), discard=os.unlink)


# Streams are opened with compression=None: pyarrow would otherwise (de)compress by file
# name (".gz"), so bytes would change between write and read, or under a temporary name.
def _write_s3_atomic(uri: str, fs: pafs.FileSystem, path: str, fill: Callable[[Any], None]) -> None:
    """Upload to a hidden temporary key beside the target, then server-side move it in place.

    pyarrow's S3 stream *completes* the upload when it is closed, even after a failure in
    `fill`, so writing the target key directly could publish a truncated object. A failed
    write deletes its temporary key; one killed outright leaves an incomplete multipart upload
    (aborted by the bucket's AbortIncompleteMultipartUpload lifecycle rule, docs/reliability.md)
    or a `.NAME.*.tmp` object, which no reader counts (names starting with '.' are skipped).
    """
    folder, name = path.rsplit("/", 1) if "/" in path else ("", path)
    tmp = f"{folder}/.{name}.{uuid.uuid4().hex[:12]}.tmp" if folder else f".{name}.{uuid.uuid4().hex[:12]}.tmp"

    def write(key: str) -> None:
        with fs.open_output_stream(key, compression=None) as f:
            fill(f)

    _publish_through_temporary(uri, tmp, write, publish=lambda key: fs.move(key, path), discard=fs.delete_file)


def _publish_through_temporary(uri: str, tmp: str, write: Callable[[str], None], *,
                               publish: Callable[[str], None], discard: Callable[[str], None]) -> None:
    """Write `tmp`, then publish it as the target; on any failure discard `tmp` (best effort:
    a hidden temporary is never read) and raise a StorageError for a write of `uri`."""
    try:
        write(tmp)
        publish(tmp)
    except Exception as e:
        with contextlib.suppress(Exception):
            discard(tmp)
        raise _fail(uri, "write", e) from e


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file atomically: readers see the old file or the new one, never a part."""
    fs, path = resolve(uri)
    _write_atomic(uri, fs, path, lambda f: f.write(data))


def write_stream(uri: str, fill: Callable[[Any], T]) -> T:
    """Create the file `uri` from what `fill(f)` writes to the writable file `f`, streamed:
    the bytes never need to be in memory at once. Atomic like write_bytes (a local temporary
    renamed into place; on S3 a hidden temporary key moved into place once its upload
    completed), so a half-written file is never visible under its name. Returns fill's result.
    """
    fs, path = resolve(uri)
    result: list[T] = []
    _write_atomic(uri, fs, path, lambda f: result.append(fill(f)))
    return result[0]


def read_text(uri: str) -> str:
    data = read_bytes(uri)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StorageError(f"cannot read {uri}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_json(uri: str) -> Any:
    text = read_text(uri)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise StorageError(f"cannot read {uri}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def dumps_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def write_json(uri: str, obj: Any) -> None:
    write_text(uri, dumps_json(obj))


# ---------------------------------------------------------------------------- folders

def makedirs(uri: str) -> None:
    """Create a local folder (and parents). S3 has no folders: a no-op there."""
    if is_s3(uri):
        return
    fs, path = resolve(uri)
    try:
        fs.create_dir(path, recursive=True)
    except Exception as e:
        raise _fail(uri, "create folder", e) from e


def delete(uri: str, recursive: bool = False, missing_ok: bool = True) -> None:
    """Delete a file, or a folder (recursive=True for a non-empty one)."""
    info = _info(uri, "delete")
    fs, path = resolve(uri)
    try:
        if info.type == pafs.FileType.NotFound:
            if missing_ok:
                return
            raise FileNotFoundError(path)
        if info.type == pafs.FileType.Directory:
            if not recursive and fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
                raise StorageError(f"cannot delete {uri}: folder is not empty (pass recursive=True)")
            fs.delete_dir(path)
        else:
            fs.delete_file(path)
    except StorageError:
        raise
    except Exception as e:
        raise _fail(uri, "delete", e) from e


def publish_folder(uri: str, files: dict[str, bytes], marker: str) -> None:
    """Write every file of `files` (name -> bytes, names may contain '/'), the marker LAST.

    A reader that treats the folder as complete only when `marker` exists never sees a
    half-written folder. An existing marker is removed first, so a folder being rewritten
    is not complete while its files change.
    """
    if marker not in files:
        raise StorageError(f"cannot publish {uri}: marker file {marker!r} is not among the files")
    delete(join(uri, marker), missing_ok=True)
    for name in sorted(files):
        if name != marker:
            write_bytes(join(uri, name), files[name])
    write_bytes(join(uri, marker), files[marker])


def is_complete(uri: str, marker: str) -> bool:
    return isfile(join(uri, marker))


def _copy_file(src: str, dst: str) -> None:
    sfs, spath = resolve(src)
    dfs, dpath = resolve(dst)
    try:
        inp = sfs.open_input_stream(spath, compression=None)
    except Exception as e:
        raise _fail(src, "read", e) from e

    def fill(out) -> None:
        while chunk := inp.read(_COPY_CHUNK):
            out.write(chunk)

    with inp:
        _write_atomic(dst, dfs, dpath, fill)


def copy_tree(src_uri: str, dst_uri: str) -> list[str]:
    """Copy a file or a folder (recursively) between any two URIs; returns the copied paths.

    Marker files (`_manifest.json`, `model.json`) are copied after everything else.
    """
    info = _info(src_uri, "copy")
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"cannot copy {src_uri}: not found")
    if info.type == pafs.FileType.File:
        _copy_file(src_uri, dst_uri)
        return [basename(src_uri)]
    rels = list_files(src_uri, recursive=True)
    def order(rel: str) -> tuple:
        marker = basename(rel) in MARKERS
        # markers last, and deeper markers before shallower ones (a step's model.json
        # before the run's manifest)
        return (marker, -rel.count("/") if marker else 0, rel)

    rels.sort(key=order)
    for rel in rels:
        _copy_file(join(src_uri, rel), join(dst_uri, rel))
    return rels
