"""``cnnbench report``'s reading and tables (:mod:`cnnbench.report.runs`, ``tables``) on fake run folders: no
training, only the files ``cnnbench train`` writes."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from cnnbench.report import build_report, cmd_report, read_metrics, write_report
from tests.helpers import FAKE_RUN_EPOCHS as EPOCHS
from tests.helpers import fake_run


def grid_sweep(root: Path) -> dict[str, float]:
    """The 2x2 sweep model x optimizer.lr; returns test acc by folder name."""
    accs = {}
    job = 0
    for model, speed in (("lenet", 9000.0), ("lenet_bn", 6000.0)):
        for lr in ("0.3", "0.9"):
            name = f"{job}_model={model},optimizer.lr={lr}"
            accs[name] = round(0.70 + 0.03 * job + (0.05 if model == "lenet_bn" and lr == "0.3" else 0), 4)
            fake_run(root / name, [f"model={model}", f"optimizer.lr={lr}", f"trainer.epochs={EPOCHS}"],
                     accs[name], examples_per_sec=speed + 100 * job)
            job += 1
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return accs


def test_grid_sweep_table_csv_and_files(tmp_path: Path) -> None:
    accs = grid_sweep(tmp_path)
    report = build_report(tmp_path)
    assert len(report.runs) == 4
    assert report.columns == ["model", "lr"]  # by meaning; trainer.epochs is the same everywhere
    assert not report.groups
    assert [r.name for r in report.runs] == sorted(accs, key=accs.get, reverse=True)

    paths = write_report(report)
    assert {p.name for p in paths.values()} == {"report.md", "report.csv", "report.png"}
    assert all(p.parent == tmp_path for p in paths.values())
    assert paths["png"].stat().st_size > 10_000
    md = paths["md"].read_text()
    header = [cell.strip() for cell in md.split("## Runs")[1].strip().splitlines()[0].strip("|").split("|")]
    assert header[:5] == ["run", "started", "model", "lr", "status"]  # epochs (3 in every run): no column

    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == [r.name for r in report.runs]
    for row in rows:
        summary = json.loads((tmp_path / row["run"] / "summary.json").read_text())
        assert float(row["test/acc"]) == summary["test/acc"]
        assert float(row["train/loss"]) == summary["train/loss"]
        assert float(row["examples_per_sec"]) == summary["examples_per_sec"]
        assert int(row["params"]) == summary["params"]
        assert row["model"] == summary["model"] and row["status"] == "completed"
        assert Path(row["path"]) == tmp_path / row["run"]


def test_failed_and_missing_runs_come_last(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    grid_sweep(tmp_path)
    fake_run(tmp_path / "4_model=lenet,optimizer.lr=9", ["model=lenet", "optimizer.lr=9"], None,
             status="failed", error="loss is nan\nsecond line")
    fake_run(tmp_path / "5_model=lenet,optimizer.lr=5", ["model=lenet", "optimizer.lr=5"], None, summary=False)
    report = build_report(tmp_path)
    assert [r.status for r in report.runs[-2:]] == ["failed", "missing"]
    assert report.runs[-2].error == "loss is nan\nsecond line"
    assert report.runs[-1].error == "no summary"

    assert cmd_report([str(tmp_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    failed_line = next(line for line in table if "| failed" in line)
    assert "loss is nan" in failed_line and "second line" not in failed_line
    assert "missing" in table[-1] and "no summary" in table[-1]
    with (tmp_path / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows[-2]["error"] == "loss is nan\nsecond line" and rows[-2]["test/acc"] == ""


def test_seed_groups_mean_and_sample_std(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    accs: dict[str, list[float]] = {"0.1": [0.81, 0.83, 0.86], "0.5": [0.71, 0.70, 0.74]}
    job = 0
    for lr, values in accs.items():
        for seed, acc in enumerate(values):
            fake_run(tmp_path / f"{job}_lr={lr},seed={seed}", [f"optimizer.lr={lr}", f"trainer.seed={seed}"], acc)
            job += 1
    report = build_report(tmp_path)
    assert len(report.groups) == 2
    for group, lr in zip(report.groups, ("0.1", "0.5"), strict=True):  # best mean first
        assert group.settings == {"lr": lr}
        assert len(group.finished) == 3
        assert group.mean == pytest.approx(statistics.mean(accs[lr]))
        assert group.std == pytest.approx(statistics.stdev(accs[lr]))
    assert cmd_report([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    group_table = out.split("seed groups")[1]
    assert group_table.splitlines()[2].startswith("| lr  | seeds |")  # the group table's header: no seed
    assert f"{statistics.stdev(accs['0.1']):.4f}" in group_table
    assert (tmp_path / "out" / "report.png").stat().st_size > 0


def test_single_run_folder(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "2026-01-01" / "12-00-00_lenet", ["model=lenet"], 0.8)
    report = build_report(run)
    assert len(report.runs) == 1 and report.runs[0].test_acc == 0.8
    assert report.columns == []  # nothing differs: the run's name tells the row


def test_running_job_uses_metrics(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "0_model=lenet", ["model=lenet"], 0.8, summary=False)
    (run / "summary.json").write_text(json.dumps({"status": "running", "model": "lenet"}))
    (r,) = build_report(tmp_path).runs
    assert r.status == "running" and r.test_acc == pytest.approx(0.8)
    assert r.summary["epochs_completed"] == EPOCHS and r.summary["epochs"] == EPOCHS
    assert len(r.curve) == EPOCHS


def test_malformed_metrics_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "epoch", "epoch": 1}\nnot json\n[1, 2]\n{"kind": "ep')
    assert read_metrics(path) == [{"kind": "epoch", "epoch": 1}]


def test_csv_header_has_no_duplicates(tmp_path: Path) -> None:
    grid_sweep(tmp_path)
    paths = write_report(build_report(tmp_path), plot=False)
    header = paths["csv"].read_text().splitlines()[0].split(",")
    assert len(header) == len(set(header)) and "model" in header and "seed" in header
    assert "report.png" not in paths["md"].read_text()


def test_runs_with_a_validation_split_are_ranked_and_selected_by_it(tmp_path: Path, capsys) -> None:
    """The sweep's pick is the best validation accuracy, never the best test accuracy; the report
    shows the pick's test accuracy (of its selected checkpoint) beside it."""
    figures = {"0_lr=0.1": (0.91, 0.88), "1_lr=0.3": (0.95, 0.86), "2_lr=0.9": (0.89, 0.90)}  # (val, test)
    for name, (val, test) in figures.items():
        folder = fake_run(tmp_path / name, [f"optimizer.lr={name.split('=')[1]}"], test)
        summary = json.loads((folder / "summary.json").read_text())
        summary.update({"monitor": "val/acc", "best/val_acc": val, "best/test_acc": test - 0.01, "best/epoch": 2})
        (folder / "summary.json").write_text(json.dumps(summary))
    report = build_report(tmp_path)
    assert [r.name for r in report.runs] == ["1_lr=0.3", "0_lr=0.1", "2_lr=0.9"]  # by validation accuracy
    assert report.selected.name == "1_lr=0.3"  # not 2_lr=0.9, the best on the test set
    assert cmd_report([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert ("selected by validation accuracy: lr=0.3 (val acc 0.9500; test acc of that checkpoint "
            "0.8500, epoch 2)") in out
    selected_row = next(line for line in out.splitlines() if "(selected)" in line)
    assert "0.3" in selected_row and "0.9500" in selected_row and "0.8500" in selected_row
    assert "## Runs" in (tmp_path / "report.md").read_text() and "selected by validation" in (
        tmp_path / "report.md").read_text()


def test_book_column_for_book_recipes(tmp_path: Path, capsys) -> None:
    book = {"recipe": "d2l_lenet", "section": "6.6", "editions": {}, "reproduced": True,
            "train_loss": {"value": 0.473, "book": [0.469, 0.469], "ok": True},
            "train_acc": {"value": 0.822, "book": [0.823, 0.824], "ok": True},
            "test_acc": {"value": 0.819, "book": [0.776, 0.779], "position": "above"}}
    missed = {**book, "reproduced": False, "train_loss": {"value": 0.61, "book": [0.469, 0.469], "ok": False}}
    for name, entry in (("0_model=lenet", book), ("1_model=lenet_bn", missed), ("2_model=nin", None)):
        folder = fake_run(tmp_path / name, [f"model={name.split('=')[1]}"], 0.8)
        summary = json.loads((folder / "summary.json").read_text())
        summary["book"] = entry
        (folder / "summary.json").write_text(json.dumps(summary))
    assert cmd_report([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("| run "))
    assert "| book" in header
    row = {name: next(line for line in lines if f"| {name} " in line) for name in ("lenet", "lenet_bn", "nin")}
    assert "yes (test above 0.776-0.779)" in row["lenet"]
    assert "no: train loss 0.610 vs 0.469-0.469" in row["lenet_bn"]
    assert row["nin"].rstrip(" |").endswith("-")


def test_time_to_target_column_when_a_run_reached_its_target(tmp_path: Path, capsys) -> None:
    for name, reached in (("0_model=lenet", 41.5), ("1_model=lenet_bn", None)):
        folder = fake_run(tmp_path / name, [f"model={name.split('=')[1]}"], 0.9)
        summary = json.loads((folder / "summary.json").read_text())
        summary["time_to_target_s"] = reached
        (folder / "summary.json").write_text(json.dumps(summary))
    assert cmd_report([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "time to target (s)" in next(line for line in lines if line.startswith("| run "))
    assert next(line for line in lines if "| lenet " in line).rstrip(" |").endswith("41.5")
    assert next(line for line in lines if "| lenet_bn " in line).rstrip(" |").endswith("-")


def real_run(folder: Path, overrides: list[str], test_acc: float) -> Path:
    """A run folder whose .hydra/config.yaml is the config ``cnnbench train OVERRIDES`` really composes."""
    from omegaconf import OmegaConf

    from cnnbench.config import compose_config

    fake_run(folder, overrides, test_acc)
    (folder / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(compose_config(overrides)))
    return folder


def test_columns_come_from_the_resolved_config_not_the_overrides(tmp_path: Path, capsys) -> None:
    """A default run, a quickstart (experiment=) run and a resumed run started with bookkeeping overrides:
    columns are what the runs are (model, dataset, optimizer, lr, ...), never dataset.root or trainer.resume."""
    real_run(tmp_path / "default", [], 0.80)
    real_run(tmp_path / "quickstart", ["experiment=quickstart"], 0.85)
    real_run(tmp_path / "moved", ["dataset.root=/elsewhere", "trainer.resume=auto", "resume_sweep=true",
                                  "trainer.progress_bar=false", "dataset.download=false"], 0.81)
    report = build_report(tmp_path)
    assert report.columns == ["model", "dataset", "lr", "momentum", "weight_decay", "scheduler", "batch_size",
                              "epochs", "optimizer.nesterov"]  # quickstart's sgd_nesterov is an sgd too
    rows = {r.name: r.settings for r in report.runs}
    assert [rows[n]["model"] for n in ("default", "quickstart", "moved")] == ["lenet", "lenet_bn", "lenet"]
    assert rows["quickstart"]["dataset"] == "fashion_mnist_mini" and rows["quickstart"]["scheduler"] == "onecycle"
    assert rows["quickstart"]["lr"] == "0.1" and rows["default"]["lr"] == "0.9"
    assert cmd_report([str(tmp_path), "--no-plot"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| run "))
    for bookkeeping in ("dataset.root", "trainer.resume", "resume_sweep", "progress_bar", "download"):
        assert bookkeeping not in header
    assert "| quickstart | " in out and "| lenet_bn | fashion_mnist_mini | 0.1 " in out
    with (tmp_path / "report.csv").open() as f:
        assert next(csv.DictReader(f))["model"] == "lenet_bn"  # best first


def test_an_options_own_keys_only_when_they_differ_within_that_option(tmp_path: Path) -> None:
    """scheduler.pct_start is a column when two onecycle runs differ in it; across schedulers the scheduler
    column says it all (a cosine run has no pct_start)."""
    real_run(tmp_path / "same" / "a", ["scheduler=onecycle", "scheduler.pct_start=0.1"], 0.8)
    real_run(tmp_path / "same" / "b", ["scheduler=onecycle", "scheduler.pct_start=0.3"], 0.8)
    assert build_report(tmp_path / "same").columns == ["scheduler.pct_start"]
    real_run(tmp_path / "other" / "c", ["scheduler=cosine"], 0.8)
    assert build_report(tmp_path).columns == ["scheduler", "scheduler.pct_start"]
    real_run(tmp_path / "other" / "d", ["scheduler=onecycle"], 0.8)
    assert build_report(tmp_path / "other").columns == ["scheduler"]  # their own keys differ anyway
    # Two datasets differ in folder, mean, std and classes: the dataset column says it all
    real_run(tmp_path / "data" / "fashion", [], 0.8)
    real_run(tmp_path / "data" / "mnist", ["dataset=mnist"], 0.9)
    assert build_report(tmp_path / "data").columns == ["dataset"]


def test_run_name_and_start_time_columns(tmp_path: Path, capsys) -> None:
    """The start time is the first time stamp of the run's log (a resume appends later ones), else the time
    its .hydra/config.yaml was written."""
    import os
    from datetime import datetime

    logged = fake_run(tmp_path / "2026-01-02" / "03-04-05_lenet", ["model=lenet"], 0.8)
    (logged / "train.log").write_text("[2026-01-02 03:04:05,678][cnnbench.run.train][INFO] - start\n"
                                      "[2026-03-04 05:06:07,000][cnnbench.run.train][INFO] - resumed\n")
    unlogged = fake_run(tmp_path / "0_model=lenet_bn", ["model=lenet_bn"], 0.7)
    written = datetime(2025, 5, 6, 7, 8).timestamp()
    os.utime(unlogged / ".hydra" / "config.yaml", (written, written))
    report = build_report(tmp_path)
    assert {r.name: r.started for r in report.runs} == {"03-04-05_lenet": "2026-01-02 03:04",
                                                        "0_model=lenet_bn": "2025-05-06 07:08"}
    assert cmd_report([str(tmp_path), "--no-plot"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert next(line for line in lines if line.startswith("| run ")).split("|")[1:3] == [
        " run              ", " started          "]
    assert "| 03-04-05_lenet   | 2026-01-02 03:04 | lenet " in "\n".join(lines)


def test_a_run_without_its_config_shows_its_summarys_settings(tmp_path: Path) -> None:
    fake_run(tmp_path / "a", ["model=lenet"], 0.8)
    b = fake_run(tmp_path / "b", ["model=nin"], 0.7)
    (b / ".hydra" / "config.yaml").unlink()
    report = build_report(tmp_path)
    assert report.columns == ["model"]
    assert [r.settings["model"] for r in report.runs] == ["lenet", "nin"]


def test_run_names_are_the_shortest_unique_tails_of_their_paths(tmp_path: Path) -> None:
    for sweep in ("multirun/2026-01-01/10-00-00", "multirun/2026-01-02/11-00-00"):
        fake_run(tmp_path / sweep / "0_model=lenet", ["model=lenet"], 0.8)
    fake_run(tmp_path / "multirun/2026-01-02/11-00-00/1_model=nin", ["model=nin"], 0.7)
    fake_run(tmp_path / "2026-01-03/12-00-00_lenet", ["model=lenet"], 0.6)
    assert sorted(r.name for r in build_report(tmp_path).runs) == [
        "10-00-00/0_model=lenet", "11-00-00/0_model=lenet", "12-00-00_lenet", "1_model=nin"]
