"""What a reader needs to repeat a run: the machine, the source and the installed versions (summary.json's
``machine``), and the hardware part of the key under which start-up timing decisions are kept
(:mod:`cnnbench.speed.decisions`).

Standard library only: ``platform`` and ``socket`` for the host, ``/proc/cpuinfo`` for the CPU's name (Linux),
``importlib.metadata`` for versions, ``git`` (when cnnbench runs from a git checkout) for the source commit;
the GPU's name and driver come from :func:`cnnbench.devices.gpu_info`. Everything is read once per process,
when the summary is written, not at start-up: a git call costs a few milliseconds, the versions about 1 ms each.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from . import __version__
from .devices import gpu_info

PACKAGES = ("torch", "torchvision", "hydra-core", "omegaconf", "numpy")  # their installed versions are recorded
CPUINFO = Path("/proc/cpuinfo")
CPU_NAME_KEYS = ("model name", "Model", "Hardware", "cpu model")  # x86, then what ARM / MIPS kernels print
GIT_TIMEOUT_S = 5.0
PACKAGE_DIR = Path(__file__).resolve().parent
BUILD_INFO = "build_info.json"  # written into a wheel or sdist by setup.py: the commit it was built from


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """'AMD EPYC 7B13', from /proc/cpuinfo's first ``model name`` line (or the like) on Linux; elsewhere
    ``platform.processor()`` (macOS: 'arm' or 'i386'), else the architecture."""
    try:
        for line in CPUINFO.read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() in CPU_NAME_KEYS and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask where the OS has one: a SLURM or docker limit)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def hardware_key(device: torch.device) -> dict:
    """The machine as start-up timing sees it: CPU name, usable CPUs, torch's threads, the GPU's name when
    the run uses one. No host name: identical nodes sharing a cache folder share their decisions."""
    key = {"cpu": cpu_name(), "cpus": usable_cpus(), "threads": torch.get_num_threads(), "device": device.type}
    gpu = gpu_info(device)
    if gpu is not None:
        key["gpu"] = gpu["name"]
    return key


@lru_cache(maxsize=1)
def installed_versions() -> dict[str, str | None]:
    """{distribution: installed version, None when it is not installed} for :data:`PACKAGES`."""
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _git(checkout: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return None
    return done.stdout if done.returncode == 0 else None


@lru_cache(maxsize=1)
def source_info(package_dir: Path = PACKAGE_DIR) -> dict:
    """cnnbench's source: its version, the commit and whether files differed from it (``dirty``), and where
    those two come from (``from``): ``git`` when it runs from a checkout (the checkout's top holds
    pyproject.toml and this package; dirty = modified, staged or untracked files, ignored ones not counted),
    ``build`` for an installed wheel built from a checkout (its ``build_info.json``: the commit at build time,
    dirty = tracked files changed then), None when neither says (commit and dirty None)."""
    info: dict = {"version": __version__, "path": str(package_dir.parent), "commit": None, "dirty": None,
                  "from": None}
    top = _git(package_dir, "rev-parse", "--show-toplevel")
    if not top or not (Path(top.strip()) / "pyproject.toml").is_file() \
            or Path(top.strip()).resolve() / package_dir.name != package_dir:
        return {**info, **_build_info(package_dir)}  # not a checkout of cnnbench: an installed copy
    commit = _git(package_dir, "rev-parse", "HEAD")
    status = _git(package_dir, "status", "--porcelain")
    info["commit"] = commit.strip() if commit else None
    info["dirty"] = None if status is None else bool(status.strip())
    info["from"] = "git" if info["commit"] else None
    return info


def _build_info(package_dir: Path) -> dict:
    """The commit an installed wheel was built from, from its build_info.json; {} when it has none."""
    try:
        recorded = json.loads((package_dir / BUILD_INFO).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(recorded, dict) or not isinstance(recorded.get("commit"), str):
        return {}
    return {"commit": recorded["commit"], "dirty": bool(recorded.get("dirty")), "from": "build"}


def version_line() -> str:
    """'cnnbench 0.1.0 (commit 68947eb, local changes; torch 2.14.1)': what ``cnnbench --version`` prints and
    the run header starts with. The commit is the checkout's, or the one an installed wheel was built from."""
    info = source_info()
    where = "no source commit recorded"
    if info["commit"]:
        built = "built from " if info["from"] == "build" else ""
        where = f"{built}commit {info['commit'][:12]}" + (", local changes" if info["dirty"] else "")
    return f"cnnbench {info['version']} ({where}; torch {torch.__version__.split('+')[0]})"


def machine_info(device: torch.device, threads: int | None = None) -> dict:
    """summary.json's ``machine``: host, OS, CPU, the GPU when ``device`` is one, torch's CPU threads (``threads``:
    the run's count; the process's own after the run may differ), cnnbench's source and the installed versions
    of the packages whose code computes the numbers."""
    return {
        "host": socket.gethostname(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable_cpus(),
        "torch_threads": torch.get_num_threads() if threads is None else threads,  # the run's, when given
        "gpu": gpu_info(device),
        "cnnbench": source_info(),
        "packages": installed_versions(),
    }
