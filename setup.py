"""What pyproject.toml cannot say.

- Packages are found, not listed: every package under cnnbench/ (``find_packages``), plus the top-level conf/
  tree shipped as ``cnnbench.conf`` (mapped in pyproject.toml) with each of its option folders, so a new
  subpackage or config group ships without an edit here.
- A wheel or sdist built from a git checkout carries ``cnnbench/build_info.json`` (the commit it was built from
  and whether the tree had uncommitted changes): an installed copy has no .git, and ``cnnbench --version``,
  the run header and summary.json read the commit from this file. A wheel built from that sdist keeps the file.
"""

import json
import subprocess
from pathlib import Path

from setuptools import find_namespace_packages, find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

BUILD_INFO = "build_info.json"
HERE = Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(HERE), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _checkout_info() -> dict | None:
    """The commit of the checkout being built and whether its tracked files differ from it; None outside one
    (an unpacked sdist: its own build_info.json, copied as package data, then stands)."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != HERE:
        return None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": _git("rev-parse", "HEAD"), "dirty": bool(status)}


def _write_info(package_dir: Path) -> None:
    info = _checkout_info()
    if info is not None and package_dir.is_dir():
        (package_dir / BUILD_INFO).write_text(json.dumps(info) + "\n")


class BuildPy(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:  # an editable install reads git itself
            _write_info(Path(self.build_lib) / "cnnbench")


class SDist(sdist):
    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        _write_info(Path(base_dir) / "cnnbench")


# conf/'s option folders hold YAML only (no __init__.py): namespace packages of cnnbench.conf, their data included
CONF_PACKAGES = ["cnnbench.conf"] + [f"cnnbench.conf.{name}" for name in find_namespace_packages(where="conf")]

setup(packages=find_packages(include=["cnnbench", "cnnbench.*"]) + CONF_PACKAGES,
      cmdclass={"build_py": BuildPy, "sdist": SDist})
