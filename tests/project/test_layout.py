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
