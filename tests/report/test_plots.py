"""``cnnbench report``'s picture (:mod:`cnnbench.report.plots`) on fake run folders: the panels it draws, the
x values of their points, their labels."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from PIL import Image

from cnnbench.report import build_report, cmd_report
from cnnbench.report.plots import AXES, plot_report
from tests.helpers import fake_run

# Three networks that differ in every quantity a panel shows: (model, lr, test acc, examples/sec, params,
# FLOPs per image, the run's own wall time in seconds).
NETWORKS = (("lenet", "0.9", 0.82, 21848.0, 61_706, 833_000, 31.0),
            ("lenet_bn", "1.0", 0.89, 27510.0, 44_878, 563_000, 24.4),
            ("densenet", "0.1", 0.92, 103.2, 758_226, 258_154_336, 6049.9))


def book_like(root: Path, resize: dict[str, int] | None = None) -> dict[str, dict]:
    """One run folder per :data:`NETWORKS` entry; returns each one's summary.json by model."""
    summaries = {}
    for model, lr, acc, speed, params, flops, wall in NETWORKS:
        folder = fake_run(root / f"d2l_{model}", [f"model={model}", f"optimizer.lr={lr}"], acc,
                          examples_per_sec=speed, params=params, flops_per_image=flops, wall_time_s=wall,
                          resize=(resize or {}).get(model, 28))
        summaries[model] = json.loads((folder / "summary.json").read_text())
    return summaries


def test_each_against_key_draws_final_accuracy_against_its_quantity(tmp_path: Path) -> None:
    """Every --against key has its panel, each run's point at its summary's value: examples/sec, the whole
    wall time (the sum of command_times.jsonl's starts where the command was timed), parameters, FLOPs."""
    summaries = book_like(tmp_path)
    # densenet ran in two starts (stopped and continued): 1,000 s + 500 s; a cut-off third line is skipped.
    (tmp_path / "d2l_densenet" / "command_times.jsonl").write_text(
        '{"start": 100.0, "end": 1100.0, "exit_code": 1}\n{"start": 5000.0, "end": 5500.0, "exit_code": 0}\n'
        '{"start": 9000.0, "en')
    expected = {"throughput": {m: s["examples_per_sec"] for m, s in summaries.items()},
                "time": {"lenet": 31.0, "lenet_bn": 24.4, "densenet": 1500.0},
                "params": {m: s["params"] for m, s in summaries.items()},
                "flops": {m: s["flops_per_image"] for m, s in summaries.items()}}
    assert set(expected) == set(AXES)
    panels = plot_report(build_report(tmp_path), tmp_path / "report.png", against=list(AXES))
    assert list(panels) == list(AXES)
    for key, panel in panels.items():
        drawn = {p.text.split(",")[0]: (p.x, p.y) for p in panel.points}
        assert drawn == {m: (pytest.approx(x), summaries[m]["test/acc"]) for m, x in expected[key].items()}, key
    # Some runs timed as whole commands, others by their own clock: the axis says both.
    assert "whole command" in panels["time"].xlabel and "the run's" in panels["time"].xlabel
    assert Image.open(tmp_path / "report.png").size == (1430, 3 * 572)  # 5 panels: 3 rows of 2


def test_time_axis_says_which_clock(tmp_path: Path) -> None:
    book_like(tmp_path)
    assert "wall_time_s" in plot_report(build_report(tmp_path), tmp_path / "a.png", ["time"])["time"].xlabel
    for model in ("lenet", "lenet_bn", "densenet"):
        (tmp_path / f"d2l_{model}" / "command_times.jsonl").write_text('{"start": 1.0, "end": 61.0}\n')
    panel = plot_report(build_report(tmp_path), tmp_path / "b.png", ["time"])["time"]
    assert panel.xlabel.startswith("whole-command wall time")
    assert [p.x for p in panel.points] == [60.0] * 3


def test_default_picture_is_the_curves_and_throughput(tmp_path: Path) -> None:
    """Without --against the picture is as before: two panels side by side, the second against throughput."""
    book_like(tmp_path)
    assert cmd_report([str(tmp_path), "--out", str(tmp_path / "plain")]) == 0
    assert Image.open(tmp_path / "plain" / "report.png").size == (1430, 572)
    assert list(plot_report(build_report(tmp_path), tmp_path / "p.png")) == ["throughput"]
    assert cmd_report([str(tmp_path), "--out", str(tmp_path / "three"), "--against", "time", "params"]) == 0
    assert Image.open(tmp_path / "three" / "report.png").size == (1430, 2 * 572)


def test_unknown_against_key_is_refused_naming_the_valid_ones(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    book_like(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cmd_report([str(tmp_path), "--against", "time", "speed"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "'speed'" in error and all(f"'{key}'" in error for key in AXES)
    assert not (tmp_path / "report.png").exists()
    with pytest.raises(ValueError, match="unknown --against speed: choose from throughput, time, params, flops"):
        plot_report(build_report(tmp_path), tmp_path / "report.png", ["speed"])


def test_runs_of_different_networks_go_by_network_and_input_size(tmp_path: Path) -> None:
    """The book's recipes differ in many settings (model, input size, learning rate, ...): each is named by
    its network and input side, 'densenet, 96 px', not by a list of settings."""
    book_like(tmp_path, resize={"densenet": 96})
    report = build_report(tmp_path)
    assert report.columns == ["model", "resize", "lr"]
    panel = plot_report(report, tmp_path / "report.png", ["params"])["params"]
    assert sorted(p.text for p in panel.points) == ["densenet, 96 px", "lenet, 28 px", "lenet_bn, 28 px"]


def test_picture_labels_stay_apart_and_equal_curves_differ_in_style(tmp_path: Path) -> None:
    """The sweep of issue 36: two runs with the same accuracy and close throughput printed their labels
    on top of each other, and their equal curves hid each other. The labels' boxes, as matplotlib drew
    them, do not overlap; every series has its own dash pattern and marker. A sweep of two settings keeps
    its labels by setting."""
    import matplotlib.pyplot as plt

    from cnnbench.report.plots import series_of

    for i, (model, lr, acc, speed) in enumerate((("lenet", "0.3", 0.1, 11850.0), ("lenet", "0.9", 0.1, 12359.0),
                                                 ("lenet_bn", "0.3", 0.703, 19680.0),
                                                 ("lenet_bn", "0.9", 0.685, 8241.0))):
        fake_run(tmp_path / f"{i}_model={model},optimizer.lr={lr}", [f"model={model}", f"optimizer.lr={lr}"], acc,
                 examples_per_sec=speed)
    report = build_report(tmp_path)
    for against in (["throughput"], list(AXES)):
        panels = plot_report(report, tmp_path / "report.png", against)
        for panel in panels.values():
            boxes = [p.box for p in panel.points]
            assert len(boxes) == 4 and None not in boxes
            for a, b in itertools.combinations(boxes, 2):
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    assert sorted(p.text for p in panels["throughput"].points) == [
        "lenet, lr=0.3", "lenet, lr=0.9", "lenet_bn, lr=0.3", "lenet_bn, lr=0.9"]
    styles = [(s.linestyle, s.marker) for s in series_of(report, plt.get_cmap("tab20")).values()]
    assert len(set(styles)) == len(styles) == 4


def test_seed_groups_are_drawn_at_their_seeds_mean(tmp_path: Path) -> None:
    """Runs equal but for the seed are one point: the mean accuracy at the mean of the seeds' quantity."""
    for model, times in (("lenet", (30.0, 40.0)), ("lenet_bn", (20.0, 22.0))):
        for seed, wall in enumerate(times):
            fake_run(tmp_path / f"{model}_{seed}", [f"model={model}", f"trainer.seed={seed}"], 0.8 + 0.01 * seed,
                     wall_time_s=wall, seed=seed)
    report = build_report(tmp_path)
    assert len(report.groups) == 2
    panel = plot_report(report, tmp_path / "report.png", ["time"])["time"]
    assert sorted((p.text, p.x, p.y) for p in panel.points) == [
        ("lenet (n=2)", 35.0, pytest.approx(0.805)), ("lenet_bn (n=2)", 21.0, pytest.approx(0.805))]
