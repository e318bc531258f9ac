"""The book's exercises as sweeps (``cnnbench train -m +exercise=NAME``): every file states its question, every
job it makes composes to the values it names and passes the checks run before any folder exists, and a sweep's
report shows the varied knobs as columns."""

from __future__ import annotations

import math
import subprocess

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from cnnbench.commands.launch import parse_command_line, preflight
from cnnbench.config import compose_config, config_dir
from tests.helpers import cli, fast_overrides

EXERCISES = sorted(p.stem for p in (config_dir() / "exercise").glob("*.yaml"))


def sweep_params(name: str) -> dict[str, str]:
    return dict(OmegaConf.load(config_dir() / "exercise" / f"{name}.yaml").hydra.sweeper.params)


def test_there_is_an_exercise_for_every_family_of_the_book():
    families = {"lenet", "alexnet", "vgg", "nin", "googlenet", "bn", "resnet", "densenet"}
    assert families <= {name.split("_")[0] for name in EXERCISES}
    assert len(EXERCISES) >= 25


@pytest.mark.parametrize("name", EXERCISES)
def test_each_file_states_the_books_question_first(name):
    lines = (config_dir() / "exercise" / f"{name}.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_"  # Hydra reads the package only from the file's first lines
    question = lines[1].removeprefix("# ")
    assert question.startswith("D2L ") and ("exercise" in question or "variant" in question), question
    assert question.rstrip().endswith(("?", ".")), question
    assert sweep_params(name), f"{name} sweeps nothing"


def covering(jobs: list[list[str]], swept: set[str]) -> list[list[str]]:
    """The first job holding each swept ``key=value``: every value of the sweep, in fewer compositions than
    the whole product (8 runs of 2 x 2 x 2 values: at most 6)."""
    chosen, seen = [], set()
    for job in jobs:
        new = {o for o in job if o.split("=", 1)[0] in swept} - seen
        if new:
            chosen.append(job)
            seen |= new
    return chosen


@pytest.mark.parametrize("name", EXERCISES)
def test_every_job_composes_to_the_values_it_names_and_passes_the_checks(name, fake_data):
    """The jobs are the product of the file's sweep lists; the jobs holding each swept value compose to their
    values (a group override picks that option) and pass the value checks (the knobs' ranges, and that they
    build together)."""
    from cnnbench.commands.launch import _jobs
    from cnnbench.run.validate import check_values

    jobs = _jobs(parse_command_line(["-m", f"+exercise={name}", *fast_overrides(fake_data)]))
    params = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in sweep_params(name).items()])
    assert len(jobs) == math.prod(len(list(p.sweep_iterator())) for p in params)
    swept = set(sweep_params(name))
    for job in covering(jobs, swept):
        cfg = compose_config(job)
        items = OverridesParser.create().parse_overrides([o for o in job if not o.startswith("+")])
        for item in (i for i in items if i.get_key_element() in swept):
            key, value = item.get_key_element(), item.value()
            if key in ("model", "dataset"):  # a group: the option's name
                assert cfg[key].name == value, (name, key)
            else:
                got = OmegaConf.select(cfg, key)
                got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
                assert got == value, (name, key, got, value)
        check_values(cfg)  # each value's range, the knobs together (the network built on the meta device)


def test_preflight_checks_every_job_of_an_exercise_before_any_folder(fake_data, tmp_path):
    """``cnnbench train -m +exercise=NAME`` checks each job the file's sweep makes (not only the file's fixed
    values) before Hydra creates the sweep folder: a knob value the sweep adds that cannot build is refused."""
    from cnnbench.errors import CnnbenchError

    sweep = tmp_path / "sweep"
    line = parse_command_line(["-m", "+exercise=lenet_conv_layers", *fast_overrides(fake_data),
                               f"hydra.sweep.dir={sweep}"])
    assert preflight(line)[0] == str(sweep)
    # 5x5 kernels with three stages do not fit 28 px: only the sweep's third job has three stages
    bad = parse_command_line(["-m", "+exercise=lenet_conv_layers", "model.kernel_sizes=[5]",
                              *fast_overrides(fake_data), f"hydra.sweep.dir={sweep}"])
    with pytest.raises(CnnbenchError, match=r"model.channels=\[16, 32, 64\], model.kernel_sizes=\[5\]"):
        preflight(bad)
    assert not sweep.exists()


def test_the_exercise_values_reach_the_network(fake_data):
    """A swept knob is a knob of the built network, not only a config value."""
    from torch import nn

    from cnnbench.models.configured import model_from_config

    cfg = compose_config(["+exercise=lenet_pooling", "model.pooling=max", "model.activation=relu",
                          *fast_overrides(fake_data)])
    kinds = {type(m) for m in model_from_config(cfg).modules()}
    assert nn.MaxPool2d in kinds and nn.ReLU in kinds and nn.Sigmoid not in kinds
    assert cfg.optimizer.lr == 0.9 and cfg.trainer.epochs == 10 and cfg.trainer.batch_size == 256


@pytest.mark.slow
def test_an_exercise_sweep_runs_and_its_report_shows_the_knob(fake_data, tmp_path):
    """``cnnbench train -m +exercise=lenet_kernels`` on a little data, then ``cnnbench report``: one row per
    kernel size, the varied knob as a column."""
    sweep = tmp_path / "sweep"
    run = subprocess.run(cli("train", "-m", "+exercise=lenet_kernels", *fast_overrides(fake_data),
                             "trainer.epochs=1", "trainer.limit_train_batches=1", "trainer.limit_eval_batches=1",
                             "trainer.checkpoint=false", f"hydra.sweep.dir={sweep}"),
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    report = subprocess.run(cli("report", str(sweep)), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    header = next(line for line in report.stdout.splitlines() if line.startswith("| run"))
    assert "model.kernel_sizes" in header
    rows = [line for line in report.stdout.splitlines() if "model.kernel_sizes=" in line]
    assert len(rows) == 3 and all("completed" in r for r in rows)
