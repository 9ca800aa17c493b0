"""Build hook: the top-level ``conf/`` ships inside the wheel as ``nas_cli/conf``.

A source checkout reads ``conf/`` in place; an installed wheel has no checkout, so
the build copies the configs next to the package (see ``nas_cli.config_files.config_dir``).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConf(build_py):
    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            shutil.copytree(Path("conf"), Path(self.build_lib) / "nas_cli" / "conf", dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPyWithConf})
