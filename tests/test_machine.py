"""What a run records about its machine and source (:mod:`cnnbench.machine`): the thread count, the commit and
whether the checkout had changes."""

from __future__ import annotations

import json
import subprocess

from tests.helpers import compose_fast


def test_the_machine_record_has_the_runs_thread_count(fake_data, tmp_path):
    """device.num_threads is the run's: the summary says it, though the caller gets its own count back."""
    import torch

    from cnnbench.run.train import train

    before = torch.get_num_threads()
    threads = 1 if before != 1 else 2
    summary = train(compose_fast(fake_data, "model=lenet", f"device.num_threads={threads}", "trainer.epochs=1",
                                 "trainer.limit_train_batches=1", "trainer.limit_eval_batches=1",
                                 "trainer.checkpoint=false"), tmp_path)
    assert summary["machine"]["torch_threads"] == threads and torch.get_num_threads() == before


def test_source_info_says_commit_and_local_changes(tmp_path):
    from cnnbench.machine import source_info

    top = tmp_path / "checkout"
    package = top / "cnnbench"
    package.mkdir(parents=True)
    (top / "pyproject.toml").write_text("")
    (package / "a.py").write_text("x = 1\n")

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(top), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "first")
    clean = source_info.__wrapped__(package)
    assert (clean["commit"], clean["dirty"]) == (git("rev-parse", "HEAD"), False)
    (package / "a.py").write_text("x = 2\n")
    assert source_info.__wrapped__(package)["dirty"] is True
    outside = tmp_path / "site" / "cnnbench"  # an installed copy, no git around it
    outside.mkdir(parents=True)
    assert source_info.__wrapped__(outside)["commit"] is None
    # a wheel built from a checkout carries the commit it was built from (setup.py writes build_info.json)
    (outside / "build_info.json").write_text(json.dumps({"commit": "a" * 40, "dirty": False}))
    built = source_info.__wrapped__(outside)
    assert (built["commit"], built["dirty"], built["from"]) == ("a" * 40, False, "build")
