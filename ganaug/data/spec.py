"""Dataset spec strings (ARCHITECTURE.md §3): `scheme:location` with an optional `[a:b]` row slice."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ganaug import storage
from ganaug.errors import UserError

SCHEMES = ("builtin", "mnist", "imagefolder", "parquet", "paired", "sidebyside")
# What a dataset spec starts with (a URI that does not is a path or URI, not a spec).
SPEC_PREFIXES = tuple(f"{s}:" for s in SCHEMES)
BUILTINS = ("digits",)
SPEC_HELP = ("builtin:digits, mnist:DIR_OR_URI, imagefolder:DIR_OR_URI, parquet:URI, "
             "paired:A_DIR,B_DIR, sidebyside:DIR "
             "(any of them may end with a class filter {classes=NAME,...} and then a row slice [a:b])")

# location, then an optional class filter, then an optional row slice: the filter keeps the rows
# of the named classes first, and [a:b] then slices the rows it kept.
_SPEC_RE = re.compile(r"^(?P<scheme>[A-Za-z0-9_+-]+):(?P<loc>.*?)"
                      r"(?:\{classes=(?P<classes>[^{}]*)\})?"
                      r"(?:\[(?P<a>[^\[\]:]*):(?P<b>[^\[\]]*)\])?$", re.DOTALL)


class DatasetError(UserError):
    """A dataset problem; the message names the spec and the file, URI or row."""


@dataclass(frozen=True)
class DatasetSpec:
    scheme: str
    location: str
    start: int | None = None   # None = from the first row
    stop: int | None = None    # None = to the last row (exclusive)
    # Class filter: only rows of these class names, relabelled 0..len-1 in this order. The row
    # slice then applies to the rows the filter kept.
    classes: tuple[str, ...] | None = None

    def bounds(self, num_rows: int) -> tuple[int, int]:
        """The selected [start, stop) clamped to a dataset of num_rows rows (python slicing)."""
        start = min(self.start or 0, num_rows)
        stop = num_rows if self.stop is None else min(self.stop, num_rows)
        return start, max(start, stop)

    def __str__(self) -> str:
        s = f"{self.scheme}:{self.location}"
        if self.classes:
            s += "{classes=" + ",".join(self.classes) + "}"
        if self.start is not None or self.stop is not None:
            s += f"[{'' if self.start is None else self.start}:{'' if self.stop is None else self.stop}]"
        return s


def parse_spec(spec: str) -> DatasetSpec:
    """Parse 'mnist:../shared/data/mnist[0:5000]' -> DatasetSpec('mnist', '../shared/data/mnist', 0, 5000)."""
    if not isinstance(spec, str) or not spec.strip():
        raise DatasetError(f"empty dataset spec; expected one of: {SPEC_HELP}")
    text = spec.strip()
    m = _SPEC_RE.match(text)
    if not m or m.group("scheme").lower() not in SCHEMES:
        scheme = text.split(":", 1)[0] if ":" in text else None
        what = f"unknown dataset scheme {scheme!r}" if scheme else "missing dataset scheme"
        raise DatasetError(f"bad dataset spec {spec!r}: {what}; expected one of: {SPEC_HELP}")
    scheme, loc = m.group("scheme").lower(), m.group("loc").strip()
    bounds = []
    for part in ("a", "b"):
        raw = m.group(part)
        raw = raw.strip() if raw is not None else ""
        if raw == "":
            bounds.append(None)
        elif raw.isdigit():
            bounds.append(int(raw))
        else:
            raise DatasetError(f"bad dataset spec {spec!r}: row slice [{m.group('a')}:{m.group('b')}] "
                               "must be [a:b] with integers >= 0 (either may be omitted)")
    if not loc:
        raise DatasetError(f"bad dataset spec {spec!r}: missing location after '{scheme}:'; "
                           f"expected one of: {SPEC_HELP}")
    if scheme == "builtin" and loc not in BUILTINS:
        raise DatasetError(f"bad dataset spec {spec!r}: unknown builtin dataset {loc!r}; "
                           f"available: {', '.join('builtin:' + b for b in BUILTINS)}")
    classes = _parse_classes(spec, scheme, m.group("classes"))
    return DatasetSpec(scheme, loc, bounds[0], bounds[1], classes)


def _parse_classes(spec: str, scheme: str, raw: str | None) -> tuple[str, ...] | None:
    if raw is None:
        return None
    names = tuple(n.strip() for n in raw.split(","))
    if not names or any(not n for n in names):
        raise DatasetError(f"bad dataset spec {spec!r}: the class filter {{classes={raw}}} needs class names "
                           "separated by commas, e.g. {classes=cat,dog}")
    if len(set(names)) != len(names):
        raise DatasetError(f"bad dataset spec {spec!r}: the class filter names a class twice")
    if scheme in ("paired", "sidebyside"):
        raise DatasetError(f"bad dataset spec {spec!r}: {scheme}: datasets have no classes to filter")
    return names


def absolute_spec(spec: str) -> str:
    """The spec with its local paths made absolute (against this process's directory).

    The driver resolves them: Ray workers run in directories of their own, so a relative path
    would name another folder there (s3://, file:// and builtin: are left as they are)."""
    parsed = parse_spec(spec)
    if parsed.scheme == "builtin":
        return str(parsed)
    parts = parsed.location.split(",") if parsed.scheme == "paired" else [parsed.location]
    parts = [storage.absolute(p.strip()) for p in parts]
    return str(DatasetSpec(parsed.scheme, ",".join(parts), parsed.start, parsed.stop, parsed.classes))
