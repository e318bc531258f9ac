"""CUDA paths: speed options, fp16 with the gradient scaler, data on the GPU, resume, NCCL DDP with
SyncBatchNorm, device.index, out-of-memory. Marked ``gpu`` and skipped without CUDA, so CI (CPU only)
stays green; ``scripts/device_check.sh`` runs them on a machine with a GPU (``pytest -m gpu``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from cnnbench.config import compose_config
from cnnbench.run.train import train
from tests.helpers import Probe, built, stop_process
from tests.helpers import first_losses as cpu_first_losses

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def cuda_overrides(data, *extra: str) -> list[str]:
    """The tests' small data on the GPU, with the layout fixed (no autotuning unless a test asks)."""
    return [f"dataset.root={data}", "dataset.download=false", "device=cuda", "device.channels_last=false",
            "device.precision=fp32", "trainer.progress_bar=false", *extra]


def first_losses(data, tmp_path, *overrides: str) -> Probe:
    """helpers.first_losses (losses of the first 4 steps, what the steps ran with), on the GPU."""
    return cpu_first_losses(data, tmp_path, "device.type=cuda", *overrides)


@pytest.fixture(scope="module")
def plain_cuda(fake_data, tmp_path_factory) -> Probe:
    return first_losses(fake_data, tmp_path_factory.mktemp("plain_cuda"))


@pytest.mark.parametrize("overrides,tol", [
    (["device.channels_last=true"], 1e-4),
    (["device.fused_optimizer=true"], 1e-4),
    (["device.cudnn_benchmark=false"], 1e-4),
    (["device.precision=bf16"], 3e-2),
    (["device.precision=fp16"], 1e-2),
    (["device.precision=bf16", "device.channels_last=true", "device.fused_optimizer=true"], 3e-2),
], ids=["channels_last", "fused", "no_cudnn_benchmark", "bf16", "fp16", "bf16+cl+fused"])
def test_speed_options_on_cuda_match_the_plain_path(fake_data, tmp_path, plain_cuda, overrides, tol):
    run = first_losses(fake_data, tmp_path, *overrides)
    assert run.losses == pytest.approx(plain_cuda.losses, rel=tol, abs=tol)
    assert run.summary["device"].startswith("cuda")
    half = {"device.precision=bf16": torch.bfloat16, "device.precision=fp16": torch.float16}
    dtype = next((d for o, d in half.items() if o in overrides), torch.float32)
    assert run.conv_output_dtype == {dtype} and run.param_dtype == {torch.float32}
    assert run.conv_weight_channels_last == {"device.channels_last=true" in overrides}
    assert run.fused == {True if "device.fused_optimizer=true" in overrides else None}


def test_fast_preset_autotunes_on_cuda(fake_data, tmp_path, plain_cuda):
    run = first_losses(fake_data, tmp_path, "device.channels_last=auto", "device.precision=auto",
                       "device.fused_optimizer=auto")
    assert set(run.summary["speed"]["tuning"]) == {"fp32", "fp32+channels_last", "bf16", "bf16+channels_last"}
    assert run.summary["speed"]["fused_optimizer"] is True  # auto: fused steps on CUDA (device=fast's setting)
    assert run.losses == pytest.approx(plain_cuda.losses, rel=3e-2, abs=3e-2)


def test_fp16_with_scaler_and_clipping(fake_data, tmp_path):
    """fp16 autocast with the GradScaler and clipping: the step moves the weights by lr * clip at most
    (the scaler unscales before clipping), and no step is skipped for inf/NaN after the first few."""
    def weights(name: str, *extra: str) -> torch.Tensor:
        cfg = compose_config(cuda_overrides(fake_data, "trainer.batch_size=32", "trainer.epochs=1",
                                            "trainer.limit_train_batches=1", "trainer.deterministic=true", *extra))
        summary = train(cfg, tmp_path / name)
        assert summary["status"] == "completed", summary["error"]
        state = torch.load(tmp_path / name / "last.pt", weights_only=True)
        return torch.cat([v.flatten().double() for v in state["model"].values()]), state

    start, _ = weights("start", "optimizer.lr=1e-30", "device.precision=fp32")
    clipped, state = weights("clipped", "optimizer.lr=1.0", "trainer.grad_clip_norm=0.05", "device.precision=fp16")
    assert state["scaler"] is not None and state["scaler"]["scale"] > 0
    moved = float(torch.linalg.vector_norm(clipped - start))
    # GradScaler skips a step whose gradients overflowed; the first step at scale 65536 may: then 0.
    assert moved == pytest.approx(0.05, rel=1e-2) or moved == 0.0


def test_data_stays_on_the_gpu(fake_data, tmp_path):
    """The split is copied to the GPU once; an epoch copies only its permutation host-to-device, never
    a batch (the book's loader copies every batch)."""
    from torch.profiler import ProfilerActivity, profile

    from cnnbench.run.loop import LoopHooks, train_one_epoch

    run = built(compose_config(cuda_overrides(fake_data, "trainer.batch_size=16")), tmp_path)
    assert run.train_loader.images.is_cuda and run.test_loader.images.is_cuda
    train_one_epoch(run.model, run.train_loader, run.optimizer, None, run.precision, epoch=0, global_step=0,
                    hooks=LoopHooks())  # warm-up
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        train_one_epoch(run.model, run.train_loader, run.optimizer, None, run.precision, epoch=1, global_step=0,
                        hooks=LoopHooks(log_points={len(run.train_loader) - 1}))
        torch.cuda.synchronize()
    h2d = [e for e in prof.events() if "Memcpy HtoD" in e.name]
    assert len(run.train_loader) == 16 and len(h2d) <= 3, [e.name for e in h2d]


def test_resume_on_cuda_equals_an_uninterrupted_run(fake_data, tmp_path):
    common = cuda_overrides(fake_data, "trainer.batch_size=32", "trainer.deterministic=true", "model=lenet_bn",
                            "optimizer=sgd_momentum", "scheduler=step", "scheduler.step_epochs=1")
    train(compose_config([*common, "trainer.epochs=2"]), tmp_path / "whole")
    train(compose_config([*common, "trainer.epochs=1"]), tmp_path / "parts")
    resumed = train(compose_config([*common, "trainer.epochs=2", "trainer.resume=auto"]), tmp_path / "parts")
    assert resumed["status"] == "completed"
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "parts" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nccl_ddp_with_sync_batchnorm_matches_one_process(fake_data, tmp_path):
    """torchrun with one process: NCCL, SyncBatchNorm (a no-op reduction over one rank), the same weights
    as the plain run."""
    common = cuda_overrides(fake_data, "trainer.batch_size=32", "trainer.deterministic=true", "model=lenet_bn",
                            "trainer.epochs=2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "cnnbench",
           "train", *common, "trainer.sync_batchnorm=true", f"hydra.run.dir={tmp_path / 'ddp'}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        stop_process(proc)
    assert proc.returncode == 0, out
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["backend"] == "nccl" and summary["status"] == "completed"
    single = train(compose_config(common), tmp_path / "single")
    a = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "single" / "last.pt", weights_only=True)["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in b)
    assert summary["test/acc"] == pytest.approx(single["test/acc"], abs=1e-6)


def test_device_index_picks_the_gpu(fake_data, tmp_path):
    count = torch.cuda.device_count()
    index = count  # taken modulo the count: the first GPU again (a parallel sweep's job number)
    run = built(compose_config(cuda_overrides(fake_data, f"device.index={index}")), tmp_path)
    assert run.device == torch.device("cuda", index % count)
    assert next(run.raw_model.parameters()).device == run.device and run.train_loader.images.device == run.device


def test_out_of_memory_fails_cleanly_and_names_the_batch(fake_data, tmp_path, capsys):
    """A step that cannot fit the card: refused before training, or failed at run time, with one line
    naming the batch size and suggesting a smaller one; never a hang or a raw allocator message."""
    from cnnbench.cli import main

    free, total = torch.cuda.mem_get_info()
    side = 2048  # ResNet-18 at 2048 px: ~2 GB of activations per image; 256 images > any card's memory
    args = cuda_overrides(fake_data, "model=resnet18", f"dataset.resize={side}", "trainer.batch_size=256",
                          "trainer.epochs=1", "trainer.limit_train_batches=1", "trainer.limit_eval_batches=1",
                          f"hydra.run.dir={tmp_path / 'oom'}")
    code = main(["train", *args])
    err = capsys.readouterr().err
    summary_path = tmp_path / "oom" / "summary.json"
    if code == 2:  # refused before training by the memory estimate
        assert len(err.strip().splitlines()) == 1 and "256" in err
    else:
        summary = json.loads(summary_path.read_text())
        assert summary["status"] == "failed"
        assert "256" in summary["error"] and "batch" in summary["error"]
        assert "Tried to allocate" not in summary["error"].splitlines()[0] or "batch" in summary["error"]
    assert total > 0 and free >= 0
