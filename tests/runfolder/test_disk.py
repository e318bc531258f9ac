"""Writes to the run folder (:mod:`cnnbench.runfolder.disk`): atomic replacement, a full disk naming the file and
keeping the last checkpoint, low free space warned about early."""

from __future__ import annotations

import builtins
import errno
import io
import os

import pytest
import torch

from cnnbench.run.train import train
from tests.helpers import BASE, assert_same_weights, cfg_for, final_weights


class FullDisk:
    """Writes to files whose name contains ``target`` fail with ENOSPC once ``after`` checkpoints were written
    (every file opened for writing through ``open``/``io.open``, as pathlib, torch.save's file object and
    TensorBoard's writer do)."""

    def __init__(self, monkeypatch, target: str, after: int) -> None:
        self.target, self.after, self.checkpoints, self.on = target, after, 0, True
        real_open = io.open

        def fake_open(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            if not isinstance(file, (str, bytes, os.PathLike)) or not set(mode) & set("wax+"):
                return handle
            return _DiskFile(handle, os.path.basename(os.fsdecode(file)), self)

        monkeypatch.setattr(io, "open", fake_open)
        monkeypatch.setattr(builtins, "open", fake_open)

    def full_for(self, name: str) -> bool:
        return self.on and self.checkpoints >= self.after and self.target in name


class _DiskFile:
    def __init__(self, handle, name: str, disk: FullDisk) -> None:
        self._handle, self._name, self._disk = handle, name, disk

    def write(self, data):
        if self._disk.full_for(self._name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._handle.write(data)

    def close(self) -> None:
        self._handle.close()
        if self._name.startswith(".last.pt."):
            self._disk.checkpoints += 1

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # TensorBoard's writer thread
@pytest.mark.parametrize("target,failed_file,epochs_kept", [
    ("last.pt", "last.pt", 2),
    ("metrics.jsonl", "metrics.jsonl", 2),
    ("events.out.tfevents", "events.out.tfevents.", 2),
    ("summary.json", "summary.json", 3),
])
def test_a_full_disk_names_the_file_and_keeps_the_last_checkpoint(fake_data, tmp_path, monkeypatch, caplog,
                                                                   target, failed_file, epochs_kept):
    overrides = ["trainer.epochs=3", "trainer.logs_per_epoch=2"]
    FullDisk(monkeypatch, target, after=2)
    summary = train(cfg_for(fake_data, *overrides), tmp_path)
    assert summary["status"] == "failed"
    assert f"cannot write {tmp_path / failed_file}" in summary["error"]
    assert "No space left on device (errno 28)" in summary["error"]
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == epochs_kept
    assert summary["resumable_from_epoch"] == epochs_kept
    assert summary["resume_command"].endswith(f"trainer.resume=auto hydra.run.dir={tmp_path}")
    assert f"continue it ({epochs_kept} epochs done) once the disk has room with: cnnbench train" in caplog.text
    assert (f"run failed: RunFileWriteError: cannot write {tmp_path / failed_file}" in caplog.text
            or target == "summary.json")
    assert "Traceback" not in caplog.text  # one line, not a chained traceback
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_run_stopped_by_a_full_disk_resumes_to_the_same_weights(fake_data, tmp_path, monkeypatch):
    overrides = ["trainer.epochs=3", "model=lenet_bn", *BASE]
    disk = FullDisk(monkeypatch, "last.pt", after=2)
    assert train(cfg_for(fake_data, *overrides), tmp_path / "full")["status"] == "failed"
    disk.on = False  # space is back
    resumed = train(cfg_for(fake_data, *overrides, "trainer.resume=auto"), tmp_path / "full")
    assert resumed["status"] == "completed" and resumed["resumes"][0]["from_epoch"] == 2
    train(cfg_for(fake_data, *overrides), tmp_path / "straight")
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "straight"))


def test_low_free_space_is_warned_about_early(fake_data, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**12, 10**12, 10_000))
    summary = train(cfg_for(fake_data, "trainer.epochs=1"), tmp_path)
    assert summary["status"] == "completed"
    assert any("10kB free on the disk of" in w and "less than 3 checkpoints" in w for w in summary["warnings"])


def test_an_atomic_write_replaces_the_file_whole_or_not_at_all(tmp_path):
    """runfolder.disk's atomic writes (checkpoints, summary.json, the kernel library): the new content
    replaces the old one only when the block ends; an exception or a full disk leaves the old file and no
    temporary file; the full disk is one RunFileWriteError naming the file."""
    from cnnbench.errors import RunFileWriteError
    from cnnbench.runfolder.disk import atomic_path, atomic_write

    target = tmp_path / "summary.json"
    target.write_text("old")
    with atomic_write(target) as f:
        f.write("new")
        assert target.read_text() == "old"  # not yet: the rename comes when the block ends
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise ValueError("the writer failed")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    with pytest.raises(RunFileWriteError, match=f"cannot write {target}"), atomic_write(target) as f:
        f.write("more")
        raise OSError(28, "No space left on device")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]
