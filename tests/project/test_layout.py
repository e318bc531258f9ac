"""The package's shape: imports go one way (no circle, counting imports inside functions and TYPE_CHECKING
blocks), few modules flat at the top, no private name imported from another module, no sys.exit inside a
job. (That the commands import without POSIX-only modules is tests/runfolder/test_lock.py's.)"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "cnnbench"
MAX_FLAT_MODULES = 12


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its ``__init__``)."""
    found = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, str]]:
    """(module imported, name imported from it or "") for every import statement in the file, relative
    ones resolved; only modules of the package."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((a.name, "") for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in known:
                    yield full, ""
                elif base in known:
                    yield base, alias.name


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    known = modules(root)
    return {name: {m for m, _ in imports_of(name, path, known) if m != name} for name, path in known.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circle():
    graph = import_graph()
    assert "cnnbench.run.build" in graph["cnnbench.run.train"]  # the graph sees relative imports
    assert circles(graph) == []


def test_circles_are_found(tmp_path):
    """The check above can fail: a package whose two modules import each other inside functions."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import f\n")
    assert circles(import_graph(pkg)) == [["pkg.a", "pkg.sub.b"]]


def test_few_modules_flat_at_the_top():
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(flat) <= MAX_FLAT_MODULES, flat


def test_no_private_name_is_imported_from_another_module():
    known = modules()
    taken = [f"{name}: {module}.{imported}" for name, path in known.items()
             for module, imported in imports_of(name, path, known)
             if imported.startswith("_") and not imported.startswith("__")]
    assert taken == []


def test_no_sys_exit_inside_a_job():
    """sys.exit inside a job would end a whole sweep: only the command-line entry points may call it."""
    package = REPO / "cnnbench"
    offenders = [p.name for p in package.rglob("*.py")
                 if "sys.exit(" in p.read_text()
                 and p.relative_to(package).as_posix() not in ("cli.py", "__main__.py", "book/pipeline.py")]
    assert offenders == []


# ------------------------------------------------------------------------------------ the tests' shape

TESTS = REPO / "tests"
# Test folders that mirror no package: whole command paths across packages, and the repository itself.
CROSS_PACKAGE = {"flows": "whole command paths across packages", "project": "the repository: docs, layout, packaging"}
SHARED = {"conftest", "helpers"}  # the one place for fixtures and for helpers


def misplaced_tests(tests: Path = TESTS, package: Path = PACKAGE) -> list[str]:
    """Test files not at the path of the module they test: ``tests/A/B/test_M.py`` (or ``test_M_TOPIC.py``)
    needs ``cnnbench/A/B/M.py``; files right under a cross-package folder need nothing; every folder a package."""
    found = []
    for path in sorted(tests.rglob("test_*.py")):
        rel = path.relative_to(tests)
        folders, stem = rel.parts[:-1], path.stem.removeprefix("test_")
        if folders and folders[0] in CROSS_PACKAGE:
            if len(folders) > 1:
                found.append(f"{rel}: a cross-package folder has no sub-folders")
            continue
        mirror = package.joinpath(*folders)
        names = {p.stem for p in mirror.glob("*.py") if p.stem != "__init__"}
        if not any(stem == m or stem.startswith(f"{m}_") for m in names):
            found.append(f"{rel}: no cnnbench/{'/'.join([*folders, stem])}.py")
    for folder in sorted(p for p in tests.rglob("*") if p.is_dir() and p.name != "__pycache__"):
        if not (folder / "__init__.py").is_file():
            found.append(f"{folder.relative_to(tests)}/: no __init__.py (test modules of one basename would clash)")
    return found


def imports_across_tests(tests: Path = TESTS) -> list[str]:
    """Imports of one test module (or of conftest) by another: helpers come from tests/helpers.py only."""
    helpers = f"{tests.name}.helpers"
    found = []
    for path in sorted(tests.rglob("*.py")):
        rel = path.relative_to(tests.parent)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                here = rel.parent.parts
                base = ".".join([*here[: len(here) - node.level + 1], *([node.module] if node.module else [])]) \
                    if node.level else node.module
                # ``from tests.run import test_train`` imports a module of a package; ``from x import name``
                # imports from module x
                is_package = (tests.parent / base.replace(".", "/")).is_dir()
                names = [f"{base}.{a.name}" for a in node.names] if is_package else [base]
            else:
                continue
            found += [f"{rel.as_posix()}: {name}" for name in names
                      if name.split(".")[0] == tests.name and name != helpers]
    return found


def test_each_test_file_sits_at_the_path_of_its_module():
    """A newcomer finds the tests of cnnbench/data/folder.py in tests/data/test_folder.py."""
    assert misplaced_tests() == []


def test_no_test_module_imports_another():
    assert imports_across_tests() == []
    assert (TESTS / "helpers.py").is_file() and (TESTS / "conftest.py").is_file()


def test_a_misplaced_test_and_an_import_across_are_found(tmp_path):
    """The two checks above can fail: a test of a module that does not exist, a folder without __init__.py,
    a cross-package folder with a sub-folder, and test modules importing each other."""
    package, tests = tmp_path / "cnnbench", tmp_path / "tests"
    for path in ("cnnbench/run/train.py", "tests/__init__.py", "tests/helpers.py", "tests/run/__init__.py",
                 "tests/run/test_train.py", "tests/run/test_train_resume.py", "tests/flows/__init__.py",
                 "tests/flows/test_anything.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")
    assert misplaced_tests(tests, package) == [] and imports_across_tests(tests) == []
    (tests / "run" / "test_trainer.py").write_text("from tests.helpers import REPO\nfrom .test_train import x\n")
    (tests / "data").mkdir()
    (tests / "data" / "test_train.py").write_text("from ..run import test_train\nimport tests.conftest\n")
    (tests / "flows" / "deep").mkdir()
    (tests / "flows" / "deep" / "__init__.py").write_text("")
    (tests / "flows" / "deep" / "test_x.py").write_text("from tests.run.test_train import x\n")
    assert misplaced_tests(tests, package) == [
        "data/test_train.py: no cnnbench/data/train.py",
        "flows/deep/test_x.py: a cross-package folder has no sub-folders",
        "run/test_trainer.py: no cnnbench/run/trainer.py",
        "data/: no __init__.py (test modules of one basename would clash)"]
    assert imports_across_tests(tests) == [
        "tests/data/test_train.py: tests.run.test_train", "tests/data/test_train.py: tests.conftest",
        "tests/flows/deep/test_x.py: tests.run.test_train", "tests/run/test_trainer.py: tests.run.test_train"]
