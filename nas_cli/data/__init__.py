"""Datasets as ready-made loaders: each builder returns a ``DataBundle``."""

from nas_cli.data.bundle import DataBundle, TensorLoader

__all__ = ["DataBundle", "TensorLoader"]
