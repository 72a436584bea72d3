"""ganaug: GAN-based image dataset augmentation on Ray."""

__version__ = "0.1.0"
