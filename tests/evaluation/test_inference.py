"""Loading a finished run (:mod:`cnnbench.evaluation.inference`): a relative data root is read from the folder the run
started in."""

from __future__ import annotations

import shutil


def test_a_relative_data_root_is_read_from_the_folder_the_run_started_in(trained_run, tmp_path):
    from cnnbench.evaluation.inference import read_run_config

    run = tmp_path / "run"
    shutil.copytree(trained_run / ".hydra", run / ".hydra")
    config = run / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("  root: /nonexistent\n", "  root: ../shared/data\n"))
    assert read_run_config(run).dataset.root == "../shared/data"  # no Hydra record: left as it is
    (run / ".hydra" / "hydra.yaml").write_text("hydra:\n  runtime:\n    cwd: /work/project\n")
    assert read_run_config(run).dataset.root == "/work/project/../shared/data"
