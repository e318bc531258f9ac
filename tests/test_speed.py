"""Every speed option trains the same network as the plain path: same losses on the first batches."""

from __future__ import annotations

import json

import pytest

from cnnbench.bench import cmd_bench
from cnnbench.config import compose_config
from cnnbench.engine import log_points
from cnnbench.train import train


def first_losses(data, tmp_path, *overrides: str) -> tuple[list[float], dict]:
    """Losses after each of the first 4 steps (the running mean the loop logs) and the summary."""
    cfg = compose_config([f"dataset.root={data}", "dataset.download=false", "device=cpu", "model=lenet_bn",
                          "trainer.batch_size=32", "trainer.epochs=1", "trainer.limit_train_batches=4",
                          "trainer.logs_per_epoch=4", "trainer.deterministic=false", "device.channels_last=false",
                          *overrides])
    summary = train(cfg, tmp_path)
    assert summary["status"] == "completed", summary["error"]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in records if r["kind"] == "train"], summary


@pytest.fixture(scope="module")
def plain(fake_data, tmp_path_factory):
    return first_losses(fake_data, tmp_path_factory.mktemp("plain"))[0]


@pytest.mark.parametrize("overrides,tol", [
    (["device.channels_last=true"], 1e-5),
    (["device.fused_optimizer=true"], 1e-5),
    (["device.num_threads=1"], 1e-5),
    (["device.precision=bf16"], 3e-2),  # bf16 autocast keeps ~3 significant digits
    (["device.precision=bf16", "device.channels_last=true"], 3e-2),
])
def test_speed_option_matches_the_plain_path(fake_data, tmp_path, plain, overrides, tol):
    losses, summary = first_losses(fake_data, tmp_path, *overrides)
    assert len(losses) == len(plain) == 4
    assert losses == pytest.approx(plain, rel=tol, abs=tol)
    speed = summary["speed"]
    assert speed["channels_last"] == ("device.channels_last=true" in overrides)
    assert speed["precision"] == ("bf16" if "device.precision=bf16" in overrides else "fp32")


@pytest.mark.slow
def test_torch_compile_matches_the_plain_path(fake_data, tmp_path, plain):
    losses, summary = first_losses(fake_data, tmp_path, "device.compile=true")
    assert summary["speed"]["compile"] is True
    assert losses == pytest.approx(plain, rel=1e-4, abs=1e-4)


def test_fast_preset_autotunes_and_keeps_the_losses(fake_data, tmp_path, plain):
    losses, summary = first_losses(fake_data, tmp_path, "device=fast", "device.type=cpu", "device.channels_last=auto")
    tuning = summary["speed"]["tuning"]
    assert set(tuning) == {"fp32", "fp32+channels_last", "bf16", "bf16+channels_last"}
    chosen = summary["speed"]["precision"] + ("+channels_last" if summary["speed"]["channels_last"] else "")
    assert tuning[chosen] == max(tuning.values())  # the fastest candidate is the one used
    assert losses == pytest.approx(plain, rel=3e-2, abs=3e-2)


def test_fp16_is_refused_on_the_cpu(fake_data, tmp_path):
    _, summary = None, train(compose_config([f"dataset.root={fake_data}", "device=cpu", "device.precision=fp16"]),
                             tmp_path)
    assert summary["status"] == "failed" and "fp16 needs CUDA" in summary["error"]


def test_logging_points_are_few_per_epoch():
    """Host syncs happen only at these batch indices: logs_per_epoch of them, plus the epoch's last."""
    assert log_points(235, 5) == {46, 93, 140, 187, 234}
    assert log_points(10, 0) == {9}


def test_bench_runs_both_pipelines_on_generated_data(tmp_path, capsys):
    out = tmp_path / "bench"
    assert cmd_bench(["d2l_lenet", "--fake-data", "--warmup", "1", "--steps", "2", "--epoch-batches", "2",
                      "--eval-batches", "1", "--book-workers", "0", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads((out / "bench.json").read_text())
    (row,) = result["rows"]
    assert row["recipe"] == "d2l_lenet" and row["resize"] == 28
    for key in ("cnnbench/examples_per_sec", "book/examples_per_sec", "speedup/steady", "speedup/e2e",
                "cnnbench/tflops", "cnnbench/peak_fraction"):
        assert row[key] > 0, key
    assert result["peaks"]["fp32"] > 1e9
    assert "| d2l_lenet | 28 | 256 |" in (out / "bench.md").read_text()
    assert "| d2l_lenet | 28 | 256 |" in capsys.readouterr().out


def test_num_threads_is_given_back_after_the_run(fake_data, tmp_path):
    """A run with device.num_threads must not change later in-process runs (their numerics depend on it)."""
    import torch

    before = torch.get_num_threads()
    first_losses(fake_data, tmp_path, "device.num_threads=1")
    assert torch.get_num_threads() == before


def test_bench_defaults_to_the_eight_book_recipes_in_chapter_order():
    from cnnbench.bench import book_recipes

    assert book_recipes() == ["d2l_lenet", "d2l_lenet_bn", "d2l_alexnet", "d2l_vgg11", "d2l_nin", "d2l_googlenet",
                              "d2l_resnet18", "d2l_densenet"]
