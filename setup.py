"""Wheel build step: copy the top-level `conf/` (with `sweeps/` behind its `conf/sweep` link) into the package.

Everything else about the build is in pyproject.toml. An editable install reads `conf/` in place.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConfigs(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "oyster_exp" / "conf"
        shutil.copytree(Path(__file__).parent / "conf", target, dirs_exist_ok=True, symlinks=False)


setup(cmdclass={"build_py": BuildPyWithConfigs})
