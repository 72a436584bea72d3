"""Keep dataset reads inside the dataset's own folder or S3 prefix.

A dataset made by someone else can name files: a Parquet image stored by `path`, or a
symlink in an image folder. Read as given, such a name makes the workers read anything their
credentials reach (`/var/run/secrets/...`, `~/.ray/auth_token`, another tenant's bucket).
So a name may only point inside the dataset's location; `..`, absolute paths, other schemes
and other buckets are refused, unless the user opts in with GANAUG_ALLOW_OUTSIDE_READS=1.
"""

from __future__ import annotations

import os

from ganaug import storage

ALLOW_OUTSIDE_ENV = "GANAUG_ALLOW_OUTSIDE_READS"


class OutsideRead(Exception):
    """A name that points outside the dataset's location (the caller names the row/file)."""


def outside_reads_allowed() -> bool:
    return os.environ.get(ALLOW_OUTSIDE_ENV, "").strip().lower() in ("1", "true", "yes")


def _hint() -> str:
    return f"set {ALLOW_OUTSIDE_ENV}=1 to allow reads outside the dataset"


def _inside(base: str, uri: str) -> bool:
    """Whether `uri` lies at or below `base` (same scheme and bucket; local paths after
    resolving symlinks)."""
    if storage.is_s3(base) or storage.is_s3(uri):
        if not (storage.is_s3(base) and storage.is_s3(uri)):
            return False
        b = base.rstrip("/") + "/"
        return uri.startswith(b)
    _, bpath = storage.resolve(base)
    _, upath = storage.resolve(uri)
    root = os.path.realpath(bpath)
    real = os.path.realpath(upath)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def confined_uri(base: str, name: str, what: str) -> str:
    """The URI a dataset-supplied `name` stands for, relative to the folder `base`; raises
    OutsideRead when it would leave `base` (and outside reads are not allowed)."""
    allowed = outside_reads_allowed()
    has_scheme = "://" in name
    absolute = has_scheme or name.startswith(("/", "\\", "~")) or os.path.isabs(name)
    if allowed:
        return name if absolute else storage.join(base, name)
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise OutsideRead(f"{what} {name!r} contains '..' ({_hint()})")
    uri = name if absolute else storage.join(base, name)
    if name.startswith("~") or (has_scheme and not (storage.is_s3(name) or name.startswith("file://"))):
        raise OutsideRead(f"{what} {name!r} is outside the dataset {base} ({_hint()})")
    if not _inside(base, uri):
        kind = "another bucket or prefix" if storage.is_s3(name) else \
            "an absolute path" if absolute else "a link"
        raise OutsideRead(f"{what} {name!r} is {kind} outside the dataset {base} ({_hint()})")
    return uri


def check_inside(base: str, uri: str, what: str) -> None:
    """Refuse a listed file (e.g. a symlink) whose real location is outside `base`."""
    if not outside_reads_allowed() and not storage.is_s3(uri) and not _inside(base, uri):
        target = os.path.realpath(storage.resolve(uri)[1])
        raise OutsideRead(f"{what} is a symlink to {target}, outside the dataset {base} ({_hint()})")
