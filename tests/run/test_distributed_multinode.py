"""The multi-node path as one machine can test it: two torchrun agents ("nodes") meeting at a c10d
rendezvous on 127.0.0.1, one gloo worker each.

This is the launch the README gives for two machines (``--nnodes=2 --rdzv_backend=c10d``), with both
agents here: rendezvous through a TCP store, global ranks handed out across agents, one run folder
written by rank 0, and a stop signal reaching the job through one agent only. The rendezvous store is
served by the test process itself (both agents join it with ``is_host=0``): it binds a port the OS picks
and keeps it until the test ends, so no other process can take the port between its choice and its use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from cnnbench.run.train import train
from tests.helpers import HeldStep, compose_fast, fast_overrides, stop_process, text_of, wait_until

COMMON = ["trainer.batch_size=32", "trainer.deterministic=true", "trainer.epochs=2", "model=lenet"]
AGENT_TIMEOUT = 300  # seconds for a whole two-agent job on a shared 2-core machine
pytestmark = pytest.mark.slow  # 20-30 s together on 2 cores: each test starts four interpreters


@pytest.fixture
def rendezvous_port() -> Iterator[int]:
    """The port of a c10d rendezvous store served by this process for the test's duration: bound by the
    server itself on a port the OS picks (0), never released before the agents use it."""
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                                       timeout=timedelta(seconds=AGENT_TIMEOUT))
    yield store.port
    del store  # the agents have ended: the port goes back


def agent_argv(port: int, run_id: str, *overrides: str, program: tuple[str, ...] = ("-m", "cnnbench")) -> list[str]:
    """One torchrun agent of a 2-node job, one worker on this node, joining the store at ``port`` as a
    client (``is_host=0``: the agent neither serves the store nor tries to); ``program``: what the worker
    runs instead of ``-m cnnbench`` (a script path taking cnnbench's command line)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
            "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id={run_id}",
            "--rdzv_conf=is_host=0", "--local_addr=127.0.0.1", "--max_restarts=0",
            *program, "train", *overrides]


def start_agents(port: int, overrides: list[str], logs: Path, held: HeldStep | None = None) -> list[subprocess.Popen]:
    """Two agents meeting at the store on ``port``, each in its own process group (so a failed test can
    kill an agent with its worker); with ``held``, the workers run its script (HeldStep)."""
    run_id = uuid.uuid4().hex[:12]
    env = {**(held.env if held else os.environ), "OMP_NUM_THREADS": "1"}  # two workers on a shared 2-core machine
    program = (str(held.script),) if held else ("-m", "cnnbench")
    logs.mkdir(exist_ok=True)
    agents = []
    for node in range(2):
        with (logs / f"agent{node}.log").open("w") as log:
            agents.append(subprocess.Popen(agent_argv(port, run_id, *overrides, program=program), stdout=log,
                                           stderr=subprocess.STDOUT, env=env, start_new_session=True))
    return agents


def wait_all(agents: list[subprocess.Popen], timeout: float = AGENT_TIMEOUT) -> list[int]:
    deadline = time.time() + timeout
    return [a.wait(timeout=max(1.0, deadline - time.time())) for a in agents]


def logs_of(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(logs.glob("*.log")))


def worker_rank(agent: subprocess.Popen) -> int | None:
    """The global rank of the agent's worker (its child process), from the worker's environment."""
    children = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True).stdout.split()
    for pid in children:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"RANK="):
                return int(item[5:])
    return None


def test_two_agents_train_like_one_process_with_the_same_global_batch(fake_data, tmp_path, rendezvous_port):
    runs, run_dir = tmp_path / "runs", tmp_path / "runs" / "two_nodes"
    agents = start_agents(rendezvous_port, fast_overrides(fake_data, *COMMON, f"hydra.run.dir={run_dir}"),
                          tmp_path / "logs")
    try:
        codes = wait_all(agents)
    finally:
        for agent in agents:
            stop_process(agent)
    assert codes == [0, 0], logs_of(tmp_path / "logs")
    assert [p.name for p in runs.iterdir()] == ["two_nodes"]  # both nodes' ranks share one run folder
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["world_size"] == 2 and summary["backend"] == "gloo"

    single = train(compose_fast(fake_data, *COMMON), tmp_path / "single")
    two = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    one = torch.load(tmp_path / "single" / "last.pt", weights_only=True)["model"]
    assert two.keys() == one.keys()
    for key in one:
        assert torch.allclose(two[key], one[key], atol=1e-5, rtol=0), key
    assert summary["steps"] == single["steps"]


def test_sigterm_to_one_agent_stops_both_nodes_with_one_checkpoint(fake_data, tmp_path, rendezvous_port):
    run_dir = tmp_path / "run"
    overrides = fast_overrides(fake_data, "trainer.batch_size=16", "trainer.epochs=50", "model=lenet",
                               f"hydra.run.dir={run_dir}")
    # Rank 1 holds inside the first step it starts after the first epoch's record (HeldStep) until its
    # worker has taken the signal; rank 0 waits for it in the step's gradient all-reduce.
    held = HeldStep(tmp_path / "gate", run_dir / "metrics.jsonl", '"kind": "epoch"', rank=1)
    logs = tmp_path / "logs"
    agents = start_agents(rendezvous_port, overrides, logs, held)
    try:
        held.wait_held(*agents)
        # The agent of rank 1, which writes nothing: the stop must reach rank 0 through the process group.
        ranks = [worker_rank(a) for a in agents]
        assert sorted(ranks) == [0, 1], ranks
        agents[ranks.index(1)].terminate()  # SIGTERM to the agent; it forwards SIGTERM to its worker
        log = logs / f"agent{ranks.index(1)}.log"  # the worker logs to its agent's output
        wait_until(lambda: "SIGTERM received" in text_of(log), "rank 1's worker handling the SIGTERM", agents)
        held.release()
        wait_all(agents)  # both agents end (non-zero exit codes: the job did not complete)
    finally:
        for agent in agents:
            stop_process(agent)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted", logs_of(tmp_path / "logs")
    assert 1 <= summary["epochs_completed"] < 50
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["step"] == summary["steps"]
    assert [p.name for p in run_dir.rglob("*") if p.suffix == ".pt" or ".tmp" in p.name] == ["last.pt"]
