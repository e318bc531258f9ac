"""A run's speed settings (:mod:`cnnbench.speed.settings`): every option trains the same network as the plain path
(same losses on the first batches), and autotuning picks the fastest candidate."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from cnnbench.run.train import train
from tests.helpers import Probe, compose_fast, fast_overrides, first_losses, is_channels_last


@pytest.fixture(scope="module")
def plain(fake_data, tmp_path_factory) -> Probe:
    """The plain path: fp32, NCHW, torch's own optimizer loop and thread count."""
    return first_losses(fake_data, tmp_path_factory.mktemp("plain"))


def test_the_plain_path_is_fp32_nchw_unfused(plain):
    assert plain.conv_input_channels_last == plain.conv_weight_channels_last == {False}
    assert plain.conv_output_dtype == plain.param_dtype == {torch.float32}
    assert plain.fused == {None} and plain.threads == {torch.get_num_threads()}


@pytest.mark.parametrize("overrides,tol", [
    (["device.channels_last=true"], 1e-5),
    (["device.fused_optimizer=true"], 1e-5),
    (["device.precision=bf16"], 3e-2),  # bf16 autocast keeps ~3 significant digits
    (["device.precision=bf16", "device.channels_last=true"], 3e-2),
], ids=["channels_last", "fused_optimizer", "bf16", "bf16+channels_last"])
def test_speed_option_takes_effect_and_matches_the_plain_path(fake_data, tmp_path, plain, overrides, tol):
    run = first_losses(fake_data, tmp_path, *overrides)
    assert len(run.losses) == len(plain.losses) == 4
    assert run.losses == pytest.approx(plain.losses, rel=tol, abs=tol)
    channels_last = "device.channels_last=true" in overrides
    bf16 = "device.precision=bf16" in overrides
    # The effect inside the steps, not only the summary's word for it:
    assert run.conv_weight_channels_last == run.conv_input_channels_last == {channels_last}
    assert run.conv_output_dtype == {torch.bfloat16 if bf16 else torch.float32}
    assert run.param_dtype == {torch.float32}  # autocast computes in bf16 but keeps fp32 weights
    assert run.fused == {True if "device.fused_optimizer=true" in overrides else None}
    if bf16:
        assert run.losses != plain.losses  # bf16 really ran: fp32 would give the plain numbers exactly
    assert (run.summary["speed"]["channels_last"], run.summary["speed"]["precision"]) == (
        channels_last, "bf16" if bf16 else "fp32")


def test_num_threads_applies_inside_the_run_and_is_given_back(fake_data, tmp_path, plain):
    """device.num_threads sets torch's thread count for the run; the caller gets its own back after."""
    before = torch.get_num_threads()
    wanted = 1 if before > 1 else 2
    run = first_losses(fake_data, tmp_path, f"device.num_threads={wanted}")
    assert run.threads == {wanted}
    assert torch.get_num_threads() == before  # later in-process runs are not changed by this one
    assert run.losses == pytest.approx(plain.losses, rel=1e-5, abs=1e-5)


@pytest.mark.slow
def test_torch_compile_matches_the_plain_path_and_the_next_run_reuses_it(fake_data, tmp_path, plain, monkeypatch):
    """LeNet-BN (BatchNorm in train mode) compiled gives the plain path's losses; its graphs go to the
    cache folder, and the user's next run (a new process, as each command is) loads them instead of
    building them again."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    probe = ("import json, sys; from cnnbench.cli import main; main(sys.argv[1:]); "
             "from torch._dynamo.utils import counters; print(json.dumps(counters))")
    runs = []
    for name in ("first", "next"):
        args = fast_overrides(fake_data, "model=lenet_bn", "trainer.batch_size=32", "trainer.epochs=1",
                              "trainer.limit_train_batches=4", "trainer.logs_per_epoch=4",
                              "trainer.limit_eval_batches=1",
                              "trainer.checkpoint=false", "device.compile=true", f"hydra.run.dir={tmp_path / name}")
        out = subprocess.run([sys.executable, "-c", probe, "train", *args], capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-2000:]
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["speed"]["compile"] is True
        losses = [r["train/loss"] for r in records if r["kind"] == "train"]
        runs.append((losses, json.loads(out.stdout.splitlines()[-1])))
    (first, cold), (again, warm) = runs
    assert first == pytest.approx(plain.losses, rel=1e-4, abs=1e-4) and again == first
    assert cold["inductor"].get("fxgraph_cache_miss", 0) > 0  # built, and written to the folder
    assert any((tmp_path / "inductor").rglob("*.py"))
    assert warm["aot_autograd"].get("autograd_cache_hit", 0) > 0, warm  # the whole graph came from the cache
    assert warm["inductor"].get("fxgraph_cache_miss", 0) == 0, warm


def _fake_timer(seconds_per_step: dict[tuple[str, bool], float]):
    """A stand-in for autotune's step timer: the seconds of each (precision, channels_last) candidate,
    read from the trial model's weights and precision, so the test decides which candidate is fastest."""
    def time_steps(model, x, y, precision, steps, warmup=True):
        channels_last = any(p.dim() == 4 and is_channels_last(p) for p in model.parameters())
        return seconds_per_step[(precision.name, channels_last)]
    return time_steps


@pytest.mark.parametrize("fastest", [("bf16", True), ("fp32", False), ("bf16", False), ("fp32", True)])
def test_autotune_uses_the_fastest_candidate(fake_data, tmp_path, plain, monkeypatch, fastest):
    import cnnbench.speed.settings as speed

    times = {(p, c): 1.0 for p in ("fp32", "bf16") for c in (False, True)}
    times[fastest] = 0.5
    monkeypatch.setattr(speed, "time_steps", _fake_timer(times))
    run = first_losses(fake_data, tmp_path, "device=fast", "device.type=cpu", "device.channels_last=auto")
    tuning = run.summary["speed"]["tuning"]
    assert set(tuning) == {"fp32", "fp32+channels_last", "bf16", "bf16+channels_last"}
    assert (run.summary["speed"]["precision"], run.summary["speed"]["channels_last"]) == fastest
    assert run.conv_weight_channels_last == {fastest[1]}  # and the steps ran with it
    assert run.conv_output_dtype == {torch.bfloat16 if fastest[0] == "bf16" else torch.float32}
    assert run.losses == pytest.approx(plain.losses, rel=3e-2, abs=3e-2)


def test_fp16_is_refused_on_the_cpu(fake_data, tmp_path):
    summary = train(compose_fast(fake_data, "device.precision=fp16"), tmp_path)
    assert summary["status"] == "failed" and "fp16 needs CUDA" in summary["error"]


def test_autotune_rounds_take_turns_and_the_median_decides(fake_data, tmp_path, monkeypatch):
    """With several rounds the candidates alternate, only the first round warms up, and one fast round
    does not outvote the rest (each candidate's median counts)."""
    import cnnbench.speed.settings as speed
    from tests.helpers import built

    run = built(compose_fast(fake_data, "model=lenet_bn", "trainer.batch_size=32"), tmp_path)
    calls = []
    per_round = {False: [0.7, 1.0, 1.0, 1.0, 1.0], True: [0.9, 0.9, 0.9, 0.9, 0.9]}  # NCHW: one lucky round

    def fake_time_steps(model, x, y, precision, steps, warmup=True):
        cl = any(p.dim() == 4 and is_channels_last(p) for p in model.parameters())
        calls.append((cl, warmup, x.shape[0], steps))
        return per_round[cl][sum(1 for c in calls if c[0] == cl) - 1]

    monkeypatch.setattr(speed, "time_steps", fake_time_steps)
    best, timings = speed.autotune(run.raw_model, run.train_loader, torch.device("cpu"),
                                   [("fp32", False), ("fp32", True)], steps=2, rounds=5, batch=None)
    assert [c[0] for c in calls] == [False, True] * 5  # taking turns
    assert [c[1] for c in calls] == [True, True] + [False] * 8  # warm-up steps in the first round only
    assert {c[2] for c in calls} == {32} and {c[3] for c in calls} == {2}  # the run's own batch
    assert best == ("fp32", True) and timings["fp32+channels_last"] == pytest.approx(32 / 0.9)
    calls.clear()
    speed.autotune(run.raw_model, run.train_loader, torch.device("cpu"), [("fp32", False)], batch=16)
    assert calls == [(False, True, 16, 3)]  # the defaults: one round of 3 steps at most 16 (here) images


@pytest.mark.parametrize("model,closely", [("lenet_bn", True), ("resnet18", False)])
def test_small_networks_are_autotuned_at_their_own_batch_in_rounds(fake_data, tmp_path, monkeypatch, model,
                                                                    closely):
    import cnnbench.speed.settings as speed

    seen = {}

    def fake_autotune(model, loader, device, candidates, **kwargs):
        seen.update(kwargs)
        return candidates[0], {}

    monkeypatch.setattr(speed, "autotune", fake_autotune)
    cfg = compose_fast(fake_data, f"model={model}", "device.channels_last=auto", "dataset.resize=32")
    from tests.helpers import built
    built(cfg, tmp_path)
    assert seen == (dict(steps=2, rounds=5, batch=None) if closely else {})


def test_every_rank_trains_with_rank_0s_convolution_choice(fake_data, tmp_path, monkeypatch):
    """Under DDP the weight-gradient layers come from rank 0's timing, like the other speed settings."""
    import dataclasses

    import cnnbench.run.build as build
    from cnnbench.speed.cpu.kernels import Conv2dNHWCWeightGrad

    monkeypatch.setattr(build, "broadcast_object",
                        lambda obj, ctx: dataclasses.replace(obj, nhwc_weight_grads=["4"]))  # rank 0 chose conv 4
    from tests.helpers import built

    run = built(compose_fast(fake_data, "model=lenet_bn", "device.conv_weight_grad=native"), tmp_path)
    assert type(run.raw_model[4]) is Conv2dNHWCWeightGrad and type(run.raw_model[0]) is not Conv2dNHWCWeightGrad


def test_every_rank_trains_with_rank_0s_gemm_choice(fake_data, tmp_path, monkeypatch):
    """The same for the bigger networks' GEMM weight gradients."""
    import dataclasses

    import cnnbench.run.build as build
    from cnnbench.speed.cpu.kernels import Conv2dGemmWeightGrad

    monkeypatch.setattr(build, "broadcast_object",
                        lambda obj, ctx: dataclasses.replace(obj, gemm_weight_grads=["4.0.conv2"]))
    from tests.helpers import built

    run = built(compose_fast(fake_data, "model=resnet18", "dataset.resize=32", "device.conv_weight_grad=native"),
                tmp_path)
    swapped = [name for name, m in run.raw_model.named_modules() if type(m) is Conv2dGemmWeightGrad]
    assert swapped == ["4.0.conv2"]


def test_autotune_stops_timing_a_candidate_far_behind(fake_data, tmp_path, monkeypatch):
    import cnnbench.speed.settings as speed
    from tests.helpers import built

    run = built(compose_fast(fake_data, "model=lenet_bn", "trainer.batch_size=32"), tmp_path)
    calls = []

    def fake_time_steps(model, x, y, precision, steps, warmup=True):
        cl = any(p.dim() == 4 and is_channels_last(p) for p in model.parameters())
        calls.append((precision.name, cl))
        return {("fp32", False): 1.0, ("fp32", True): 2.0, ("bf16", False): 1.1, ("bf16", True): 1.2}[calls[-1]]

    monkeypatch.setattr(speed, "time_steps", fake_time_steps)
    candidates = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
    best, timings = speed.autotune(run.raw_model, run.train_loader, torch.device("cpu"), candidates, steps=2,
                                   rounds=5, batch=None)
    assert best == ("fp32", False) and set(timings) == {"fp32", "fp32+channels_last", "bf16", "bf16+channels_last"}
    assert calls.count(("fp32", True)) == 1 and calls.count(("fp32", False)) == 5  # 2x behind: one round only
    calls.clear()
    speed.autotune(run.raw_model, run.train_loader, torch.device("cpu"), candidates[:2], steps=2, rounds=5, batch=None)
    assert calls == [("fp32", False), ("fp32", True)]  # one candidate left: the timing stops


def test_peak_matmul_flops_positive() -> None:
    from cnnbench.speed.settings import peak_matmul_flops

    flops = peak_matmul_flops(torch.device("cpu"), n=256, iters=2, repeats=2)
    assert flops > 0 and math.isfinite(flops)
