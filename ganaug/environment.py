"""The software and device environment that decides a generated image's bytes.

A set is deterministic per seed only within one environment: another torch, Pillow or
pyarrow, another GPU model or cuDNN may change a pixel or an encoded byte. So a generated set
records where its shards were made (`environment` in _manifest.json and _intent.json), and a
resume in another environment refuses to mix shards unless told to (--allow-env-change).
"""

from __future__ import annotations

import platform
from typing import Any

# The keys compared on resume. `python` is recorded but not compared: it changes no bytes
# that the libraries above it do not already pin.
COMPARED = ("torch", "torchvision", "pyarrow", "pillow", "numpy", "device_type", "gpu_name", "cuda", "cudnn")


def current(device_type: str = "cpu") -> dict[str, Any]:
    """This process's fingerprint; `device_type` is where sampling runs ("cpu" or "cuda")."""
    import numpy
    import PIL
    import pyarrow
    import torch
    import torchvision

    cuda = device_type == "cuda" and torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pyarrow": pyarrow.__version__,
        "pillow": PIL.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "device_type": "cuda" if cuda else "cpu",
        "gpu_name": torch.cuda.get_device_name(0) if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
    }


def differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """'torch 2.14.1 -> 2.15.0' for every compared key that changed."""
    return [f"{k} {recorded.get(k)} -> {now.get(k)}" for k in COMPARED if recorded.get(k) != now.get(k)]
