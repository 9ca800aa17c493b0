"""Where the shipped configs are: ``nas_cli/conf`` in an installed wheel, ``conf/`` in a source checkout.

Its own module so that any layer can read the project's configs (the closed set of model and data
targets a saved run may name, for instance) without importing the command-line bridge.
"""

from __future__ import annotations

from pathlib import Path


def config_dir() -> Path:
    """The configs: ``nas_cli/conf`` in an installed wheel, ``conf/`` in a source checkout."""
    package = Path(__file__).resolve().parent
    packaged = package / "conf"
    return packaged if packaged.is_dir() else package.parent / "conf"
