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



def __getattr__(name: str):
    # mixed_dataset is Ray glue (ganaug/mixed.py): imported only when asked for, so reading
    # datasets never imports Ray.
    if name == "mixed_dataset":
        from ganaug.mixed import mixed_dataset

        return mixed_dataset
    raise AttributeError(f"module 'ganaug.data' has no attribute {name!r}")


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
    "mixed_dataset",
    "open_reader",
    "parse_spec",
]
