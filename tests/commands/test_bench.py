"""``cnnbench bench`` (:mod:`cnnbench.commands.bench`): both pipelines on generated or real (gzipped) data, the data
flag's spelling, and the default recipes."""

from __future__ import annotations

import json

import pytest

from cnnbench.commands.bench import cmd_bench
from tests.helpers import gzip_dataset


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
    # each ratio is made of the figures printed beside it: a wrong or swapped ratio shows here
    assert row["speedup/steady"] == pytest.approx(row["cnnbench/examples_per_sec"] / row["book/examples_per_sec"])
    assert row["speedup/e2e"] == pytest.approx(row["cnnbench/e2e_examples_per_sec"] / row["book/e2e_examples_per_sec"])
    assert row["cnnbench/tflops"] == pytest.approx(
        3 * row["cnnbench/flops_per_image"] * row["cnnbench/examples_per_sec"] / 1e12)
    assert result["peaks"]["fp32"] > 1e9 and result["bandwidth"] > 1e8
    # the roofline: the bound's speed from the same figures, and the measured speed's share of it
    assert row["roofline/bound"] in ("compute", "memory") and row["cnnbench/bytes_per_step"] > 0
    assert row["roofline/fraction"] == pytest.approx(
        row["cnnbench/examples_per_sec"] / row["roofline/bound_examples_per_sec"])
    assert "| d2l_lenet | 28 | 256 |" in (out / "bench.md").read_text()
    assert "| d2l_lenet | 28 | 256 |" in capsys.readouterr().out


def test_bench_keeps_the_best_peak_measured_around_its_recipes(tmp_path, monkeypatch):
    """The peaks and the bandwidth are measured before the first recipe and after each one, each peak the best of
    several matrix sizes, and the best is what every row's "% peak" and roofline are read against: one slow
    moment of the machine (here the first measurement) does not lower them, nor a size too small for the
    matrix units."""
    import torch

    import cnnbench.commands.bench as bench
    import cnnbench.speed.roofline as roofline
    import cnnbench.speed.settings as settings

    # before, after the 1st recipe, after the 2nd: (fp32, bf16) at the best size, bandwidth; other sizes half
    rounds = [(1e9, 2e9, 1e9), (6e9, 8e9, 5e9), (3e9, 4e9, 2e9)]
    done, sizes = [], []

    def peak(device, dtype=torch.float32, n=None, iters=None):
        sizes.append((dtype, n))
        fp32, bf16, _ = rounds[len(done)]
        best = n == (2048 if dtype == torch.float32 else 4096)
        return (fp32 if dtype == torch.float32 else bf16) / (1 if best else 2)

    monkeypatch.setattr(settings, "peak_matmul_flops", peak)
    monkeypatch.setattr(roofline, "measure_bandwidth", lambda device: done.append(1) or rounds[len(done) - 1][2])
    rows = iter([{"recipe": r, "cnnbench/examples_per_sec": 100.0, "cnnbench/flops_per_image": 1e6,
                  "cnnbench/precision": "bf16", "batch_size": 8, "cnnbench/bytes_per_step": 1e6} for r in "ab"])
    monkeypatch.setattr(bench, "measure_recipe", lambda *a: next(rows))
    monkeypatch.setattr(bench, "table", lambda *a: "")
    out = tmp_path / "bench"
    assert cmd_bench(["a", "b", "--fake-data", "--no-book", "--out", str(out)]) == 0
    result = json.loads((out / "bench.json").read_text())
    assert result["peaks"] == {"fp32": 6e9, "bf16": 8e9} and result["bandwidth"] == 5e9
    assert sizes[:5] == [(torch.float32, 1024), (torch.float32, 2048), (torch.bfloat16, 1024),
                         (torch.bfloat16, 2048), (torch.bfloat16, 4096)] and len(sizes) == 15
    for row in result["rows"]:
        assert row["cnnbench/peak_fraction"] == pytest.approx(3 * 1e6 * 100 / 8e9)


@pytest.mark.slow  # a whole bench (~11 s); test_bench_data_without_data_warns_naming_the_flag is its fast part
def test_bench_falls_back_to_generated_data(no_data_env, tmp_path, caplog, capsys):
    """No Fashion-MNIST anywhere and no --fake-data: bench still runs, on generated data, and says so in a
    warning naming --data-root and in its table."""
    out = tmp_path / "bench"
    with caplog.at_level("INFO"):
        assert cmd_bench(["d2l_lenet", "--warmup", "1", "--steps", "1", "--epoch-batches", "1", "--eval-batches",
                          "1", "--book-workers", "0", "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads((out / "bench.json").read_text())["data"] == "generated"
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING" and "Fashion-MNIST" in r.getMessage()]
    assert "timing on GENERATED data" in warning.getMessage() and "--data-root DIR" in warning.getMessage()
    assert "; data: generated" in capsys.readouterr().out.splitlines()[0]


def test_bench_data_without_data_warns_naming_the_flag(no_data_env, tmp_path, fake_data, caplog):
    from cnnbench.commands.bench import GENERATED, bench_data

    with caplog.at_level("INFO"):
        root, source = bench_data(None, False, tmp_path / "none")
    assert source == GENERATED and (root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "timing on GENERATED data" in warning and "--data-root DIR" in warning and "--fake-data" in warning
    caplog.clear()
    with caplog.at_level("INFO"):
        assert bench_data(None, True, tmp_path / "asked")[1] == GENERATED  # asked for: no warning
        assert bench_data(str(fake_data), False, tmp_path / "real")[1] == str(fake_data / "FashionMNIST" / "raw")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_bench_data_root_is_spelled_like_eval_and_export_with_data_as_an_alias():
    from cnnbench.commands.bench import _parser

    for flag in ("--data-root", "--data"):
        assert _parser().parse_args([flag, "/d"]).data_root == "/d"
    assert "--data-root DIR, --data DIR" in _parser().format_help()  # the old name, kept and shown


def test_bench_reads_gzipped_data_in_both_pipelines(fake_data, no_data_env, tmp_path, caplog):
    """Only .gz files (as packed for a device machine): the book's torchvision reader gets plain copies."""
    gz = gzip_dataset(fake_data, tmp_path / "gz")
    out = tmp_path / "bench"
    with caplog.at_level("INFO"):
        assert cmd_bench(["d2l_lenet", "--data-root", str(gz), "--warmup", "1", "--steps", "1", "--epoch-batches", "1",
                          "--eval-batches", "1", "--book-workers", "0", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads((out / "bench.json").read_text())
    assert result["data"] == str(gz / "FashionMNIST" / "raw")
    assert result["rows"][0]["book/examples_per_sec"] > 0
    assert "plain copies of the IDX files" in caplog.text


def test_bench_defaults_to_the_eight_book_recipes_in_chapter_order():
    from cnnbench.commands.bench import book_recipes

    assert book_recipes() == ["d2l_lenet", "d2l_lenet_bn", "d2l_alexnet", "d2l_vgg11", "d2l_nin", "d2l_googlenet",
                              "d2l_resnet18", "d2l_densenet"]


def test_bench_times_every_recipe_with_one_fixed_thread_count(tmp_path, monkeypatch):
    """Even on a machine that looks busy, each recipe is timed with the count the peaks were measured with
    (a count that follows the load would time each with another), and the caller keeps its own count."""
    import torch

    from cnnbench.speed import load

    real, start = load.cpu_sample, load.cpu_sample()

    def busy(cpus=None):  # others on every usable core but one
        now = real(cpus)
        return load.CpuSample(now.own_s + (len(load.usable_cpu_ids()) - 1) * (now.wall_s - start.wall_s), now.own_s,
                              now.wall_s)

    monkeypatch.setattr(load, "cpu_sample", busy)
    torch.set_num_threads(len(load.usable_cpu_ids()))
    before = torch.get_num_threads()
    out = tmp_path / "bench"
    assert cmd_bench(["d2l_lenet", "d2l_lenet_bn", "--fake-data", "--warmup", "1", "--steps", "1", "--epoch-batches",
                      "1", "--eval-batches", "1", "--no-book", "--device", "cpu", "--out", str(out)]) == 0
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert [r["cnnbench/threads"] for r in rows] == [before, before]
    assert torch.get_num_threads() == before
