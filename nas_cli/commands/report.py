"""``nas-cli report PATH``: every job below PATH as one table, printed and written beside it. It reads run
folders, not a config: the command line's options go straight to the recipe, ``nas_cli.report.recipe.report``."""

from __future__ import annotations

from nas_cli.report.recipe import report as main

__all__ = ["main"]
