"""Dataset readers: a spec string -> uint8 N x H x W x C images, int64 labels, class names.

Specs (ARCHITECTURE.md §3): `builtin:digits`, `mnist:DIR_OR_URI`, `imagefolder:DIR_OR_URI`,
`parquet:URI`, each optionally ending with a row slice `[a:b]`. Locations go through
ganaug.storage, so local paths, file:// and s3:// all work.
"""

from ganaug.data.images import ImageSet, conform
from ganaug.data.loader import (
    dataset_summary,
    iter_dataset,
    label_histogram,
    load_dataset,
    open_reader,
)
from ganaug.data.spec import SCHEMES, DatasetError, DatasetSpec, parse_spec

__all__ = [
    "SCHEMES",
    "DatasetError",
    "DatasetSpec",
    "ImageSet",
    "conform",
    "dataset_summary",
    "iter_dataset",
    "label_histogram",
    "load_dataset",
    "open_reader",
    "parse_spec",
]
