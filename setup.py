"""Package discovery, the one thing pyproject.toml cannot say: every package under cnnbench/ is found (none
listed by hand), plus the top-level conf/ tree shipped as ``cnnbench.conf`` (mapped in pyproject.toml)."""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["cnnbench", "cnnbench.*"]) + ["cnnbench.conf"])
