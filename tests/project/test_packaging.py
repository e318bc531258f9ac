"""What users install: the wheel and sdist built from this tree hold every package and every file the code opens
at run time, and the wheel, installed without ``-e`` into a fresh virtual environment, trains and evaluates from
a folder outside the checkout (slow: it installs torch into that environment)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO

# Ignored top-level folders of a working tree that a build neither needs nor may see (a stale build/ would leak
# old files into the wheel)
NOT_SOURCE = {".venv", ".ci-venv", "venv", "outputs", "multirun", "data", "build", "dist", "cnnbench.egg-info",
              ".pytest_cache", ".device", ".whl", "mlruns", ".check_mutations.lock"}


def copy_tree(dest: Path, with_git: bool) -> Path:
    """The working tree (uncommitted changes included) copied to ``dest``, so a build writes nothing here."""
    skip_top = NOT_SOURCE | (set() if with_git else {".git"})

    def ignore(folder: str, names: list[str]) -> set[str]:
        return {n for n in names if n == "__pycache__" or (Path(folder) == REPO and n in skip_top)}

    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
    return dest


def build(src: Path, out: Path) -> tuple[Path, Path]:
    """``python -m build``: the sdist, then the wheel built from it (as pip builds from an sdist); (wheel, sdist)."""
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "-o", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "!!" not in done.stdout + done.stderr, "setuptools warned: " + (done.stdout + done.stderr)[-3000:]
    return next(out.glob("*.whl")), next(out.glob("*.tar.gz"))


def source_files(top: Path) -> set[str]:
    """Paths, relative to ``top``, of the files an installed cnnbench must have: every package's files under
    cnnbench/ (Python or data: the book's figures, the C kernel source, the packaged sample) and every file of
    the config tree conf/ (shipped as cnnbench/conf/)."""
    found = set()
    for path in (top / "cnnbench").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.name != "build_info.json":
            found.add(path.relative_to(top).as_posix())
    for path in (top / "conf").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            found.add("cnnbench/" + path.relative_to(top).as_posix())
    return found


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(source copy, wheel, sdist) built from a copy of this tree without .git (as from an unpacked sdist)."""
    top = tmp_path_factory.mktemp("packaging")
    src = copy_tree(top / "src", with_git=False)
    wheel, sdist = build(src, top / "dist")
    return src, wheel, sdist


def test_the_wheel_holds_every_package_and_every_file_the_code_opens(built):
    src, wheel, _ = built
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(p.parent.relative_to(src).as_posix() for p in (src / "cnnbench").rglob("__init__.py"))
    assert packages and "cnnbench/tracking" in packages
    assert [p for p in packages if f"{p}/__init__.py" not in names] == []  # no subpackage left out
    assert sorted(source_files(src) - names) == []  # nor a data file: YAML, the C source, the sample
    for needed in ("cnnbench/conf/train.yaml", "cnnbench/conf/model/lenet.yaml", "cnnbench/book/results.yaml",
                   "cnnbench/speed/cpu/fused_cpu.c", "cnnbench/data/fashion_mnist_mini.npz"):
        assert needed in names
    assert not [n for n in names if n.startswith(("conf/", "tests/", "build/"))]  # nothing beside the package


def test_the_sdist_is_a_whole_source_tree(built):
    src, _, sdist = built
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    wanted = {p.relative_to(src).as_posix() for d in ("tests", "docs", "scripts", "conf", "cnnbench", "results")
              for p in (src / d).rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    wanted |= {"pyproject.toml", "setup.py", "README.md", "MANIFEST.in", ".ci/run"}
    assert sorted(wanted - names) == [], f"missing from {top}"


@pytest.mark.slow
def test_the_wheel_installed_in_a_fresh_environment_trains_evaluates_and_says_its_version(tmp_path):
    """The way users install (pip install of the wheel, no -e), run from a folder that is not the checkout."""
    src = copy_tree(tmp_path / "src", with_git=(REPO / ".git").exists())
    wheel, _ = build(src, tmp_path / "dist")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    bin_ = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{bin_}{os.pathsep}{env.get('PATH', '')}"
    install = subprocess.run([str(bin_ / "python"), "-m", "pip", "install", "-q", str(wheel)], env=env,
                             capture_output=True, text=True, timeout=1800)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def cnnbench(*args: str) -> str:
        done = subprocess.run([str(bin_ / "cnnbench"), *args], cwd=elsewhere, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"cnnbench {' '.join(args)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        return done.stdout + done.stderr

    where = subprocess.run([str(bin_ / "python"), "-c", "import cnnbench; print(cnnbench.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv)  # the installed copy, not this checkout
    commit = _built_from(src)
    version = cnnbench("--version")
    assert version.startswith("cnnbench 0.") and "torch " in version
    if commit:  # built from a git checkout: the wheel says which commit
        assert f"built from commit {commit[:12]}" in version
    assert "lenet_bn" in cnnbench("models") and "densenet" in cnnbench("models")
    run = elsewhere / "run"
    log = cnnbench("train", "experiment=quickstart", "trainer.epochs=1", f"hydra.run.dir={run}")
    assert version.strip() in log  # the run header says the same version
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["source_commit"] == commit
    assert summary["machine"]["cnnbench"]["path"] == str(Path(where).parent.parent)
    assert "accuracy" in cnnbench("eval", str(run)) and (run / "eval").is_dir()
    helped = subprocess.run([str(bin_ / "python"), "-m", "cnnbench", "--help"], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=300)
    assert helped.returncode == 0 and "track" in helped.stdout


def _built_from(top: Path) -> str | None:
    """The commit a build of ``top`` records: its git HEAD, else the stamp of the sdist it was unpacked from."""
    done = subprocess.run(["git", "-C", str(top), "rev-parse", "HEAD"], capture_output=True, text=True)
    if done.returncode == 0:
        return done.stdout.strip()
    stamp = top / "cnnbench" / "build_info.json"
    return json.loads(stamp.read_text())["commit"] if stamp.is_file() else None
