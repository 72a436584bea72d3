"""Model families. Importing this package registers every built-in family (@register).

One self-contained module per family; add a new one to the import list below.
"""

from ganaug.models import cgan, cyclegan, dcgan, pix2pix, stylegan2  # noqa: F401
from ganaug.models.registry import (
    DataInfo,
    GANFamily,
    family_names,
    get_family,
    register,
)

__all__ = ["DataInfo", "GANFamily", "family_names", "get_family", "register"]
