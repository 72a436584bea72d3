"""Model families: one self-contained module per family, named by its FamilyConfig in
ganaug/families.py (which also declares its config keys); `get_family` imports it on use.
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
