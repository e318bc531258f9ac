"""Who reads the raw config: the command-line edge and the preparation step compose, settle and check it
into a typed run spec (:mod:`cnnbench.run.spec`); everything downstream reads the spec's typed sections
(the schema's dataclasses), whose defaults live in one place. An AST scan finds each module that takes a
``DictConfig`` parameter, reads ``run.cfg``/``spec.cfg``, or calls ``cfg.get(key, default)``; a module
outside the lists below fails the test, and a module that stopped reading the config must leave them."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "cnnbench"
CONFIG_NAMES = {"cfg", "config", "section", "logger_cfg"}  # names a config object goes by

# The command-line edge and the preparation step: they compose, settle, check and type the config.
EDGE = {
    "cnnbench/cli.py", "cnnbench/config.py", "cnnbench/schema.py",
    "cnnbench/commands/launch.py", "cnnbench/commands/sweeps.py", "cnnbench/commands/plain_logs.py",
    "cnnbench/run/validate.py", "cnnbench/run/spec.py", "cnnbench/run/recorded.py", "cnnbench/data/sources.py",
    "cnnbench/tracking/registry.py", "cnnbench/tracking/trackers.py",
    # a recorded run's preparation: its config composed onto today's (run/recorded.py) into a LoadedRun,
    # which eval, predict, export and inspect read (its contract, names and splits)
    "cnnbench/evaluation/inference.py",
    # train(cfg) is the in-process entry (tests, notebooks, Hydra's task function): without a spec it settles
    # the data itself (the preparation step), and it hands cfg to the run folder's records and the trackers
    "cnnbench/run/train.py",
    # the model group has no schema (each family declares its own kwargs, checked by the registry):
    # network_of types it into a Network, which the spec, the memory estimate and the build read
    "cnnbench/models/configured.py",
}
# The config as a record, whole: written into the run folder, a checkpoint, a tracker's params; compared
# between a checkpoint and a resume. They read no setting by key to decide what to do.
RECORDS = {
    "cnnbench/runfolder/log.py", "cnnbench/tracking/record.py", "cnnbench/tracking/live.py",
    "cnnbench/tracking/wandb_tracker.py", "cnnbench/run/resume.py", "cnnbench/run/checkpoint.py",
    # a finished run's whole config compared with the book's recipes (summary.json's "book"), key by key
    "cnnbench/book/results.py",
}
# Still reading settings from the raw config (none now; a module added here says why it is not done yet).
NOT_YET: dict[str, str] = {}


def _root(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def raw_reads(source: str) -> list[str]:
    """Each place the module reads a raw config, as ``line: code``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for arg in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs):
                if arg.annotation is not None and "DictConfig" in ast.unparse(arg.annotation):
                    found.append(f"{node.lineno}: {node.name}({arg.arg}: {ast.unparse(arg.annotation)})")
        elif isinstance(node, ast.Attribute) and node.attr == "cfg":
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and len(node.args) >= 2 and _root(node.func.value) in CONFIG_NAMES):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def readers(root: Path = PACKAGE) -> dict[str, list[str]]:
    return {str(p.relative_to(root.parent)): reads for p in sorted(root.rglob("*.py"))
            if (reads := raw_reads(p.read_text()))}


def test_only_the_edge_and_the_preparation_step_read_the_raw_config():
    found = readers()
    outside = {m: r[:3] for m, r in found.items() if m not in EDGE | RECORDS | set(NOT_YET)}
    assert outside == {}, "read the run spec's typed sections instead (cnnbench.run.spec.RunSpec)"


def test_a_module_that_stopped_reading_the_raw_config_leaves_the_list():
    found = readers()
    assert sorted(m for m in NOT_YET if m not in found) == []


def test_the_scan_sees_each_kind_of_read():
    source = ("from omegaconf import DictConfig\n"
              "def a(cfg: DictConfig | None): pass\n"
              "def b(run): return run.cfg.trainer.epochs\n"
              "def c(cfg): return cfg.trainer.get('ema', None)\n"
              "def d(spec): return spec.trainer.epochs, {}.get('x', 1)\n")
    assert sorted(r.split(":")[0] for r in raw_reads(source)) == ["2", "3", "4"]
