"""Optimizers and schedules (:mod:`cnnbench.run.optim`): the name tables, and the schedules' per-step factors against
their formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cnnbench.config import compose_config, config_dir
from cnnbench.errors import ConfigError
from cnnbench.run.optim import (
    OPTIMIZERS,
    SCHEDULES,
    build_optimizer,
    build_scheduler,
    cosine_factor,
    onecycle_factor,
    step_factor,
)


def test_cosine_factor_warms_up_linearly_then_decays_to_the_floor():
    # 10 warm-up steps of 100: 0.1, 0.2, ..., 1.0; then half a cosine from 1 down to the floor 0.2
    assert [cosine_factor(s, 10, 100, 0.2) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert cosine_factor(10, 10, 100, 0.2) == pytest.approx(1.0)
    assert cosine_factor(55, 10, 100, 0.2) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cosine_factor(100, 10, 100, 0.2) == pytest.approx(0.2)
    assert cosine_factor(500, 10, 100, 0.2) == pytest.approx(0.2)  # past the end it stays at the floor
    assert cosine_factor(0, 0, 100, 0.0) == pytest.approx(1.0)  # no warm-up: starts at the full rate


def test_step_factor_multiplies_by_gamma_each_period():
    assert [step_factor(s, 10, 0.1) for s in (0, 9, 10, 19, 20, 35)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.001])


def test_scheduler_reaches_the_optimizer_rate_per_step():
    cfg = compose_config(["optimizer=sgd_momentum", "optimizer.lr=0.4", "scheduler=step", "scheduler.step_epochs=1",
                          "scheduler.gamma=0.5"])
    opt = build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(1))])
    sched = build_scheduler(cfg.scheduler, opt, steps_per_epoch=3, epochs=2)
    rates = []
    for _ in range(6):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates == pytest.approx([0.4, 0.4, 0.4, 0.2, 0.2, 0.2])


def test_constant_rate_has_no_scheduler():
    cfg = compose_config([])
    opt = build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(1))])
    assert build_scheduler(cfg.scheduler, opt, 10, 2) is None


OPTIMIZER_CLASSES = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


@pytest.mark.parametrize("option", sorted(p.stem for p in (config_dir() / "optimizer").glob("*.yaml")))
def test_every_optimizer_config_builds_what_it_names(option):
    """The class the file names, with every hyperparameter it sets on the parameter group; again with
    each number changed to one no optimizer has as its default, so a dropped setting cannot hide behind
    torch's default (AdamW's weight decay is 0.01 in both)."""
    defaults = compose_config([f"optimizer={option}"]).optimizer
    # Nesterov momentum takes no dampening (torch refuses it; so does the schema's check)
    fixed = {"dampening"} if defaults.get("nesterov") else set()
    unusual = [f"optimizer.{key}={float(value) * 0.37 + 0.0123}" for key, value in defaults.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in fixed]
    for overrides in ([], unusual):
        cfg = compose_config([f"optimizer={option}", *overrides]).optimizer
        opt = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
        # torch's class, its step not importing the compiler (cnnbench.speed.dynamo)
        assert type(opt).__bases__ == (OPTIMIZER_CLASSES[cfg.name],)
        group = opt.param_groups[0]
        for key, value in cfg.items():
            if key != "name":
                assert group[key] == (tuple(value) if key == "betas" else value), f"{option}: {key}"
    assert set(OPTIMIZERS) == set(OPTIMIZER_CLASSES)


@pytest.mark.parametrize("option", ["cosine", "step", "onecycle"])
def test_every_schedule_config_follows_its_formula(option):
    """The rate at each of 16 steps (4 per epoch, 4 epochs) is the base rate times the schedule's
    formula with the file's own parameters."""
    cfg = compose_config([f"scheduler={option}"]).scheduler
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4)
    sched = build_scheduler(cfg, opt, 4, 4)
    formula = {
        "cosine": lambda s: cosine_factor(s, int(cfg.warmup_epochs * 4), 16, cfg.eta_min / 0.4),
        "step": lambda s: step_factor(s, int(cfg.step_epochs * 4), cfg.gamma),
        "onecycle": lambda s: onecycle_factor(s, 16, cfg.pct_start, cfg.div_factor, cfg.final_div_factor, cfg.anneal),
    }[option]
    rates = []
    for _ in range(16):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates == pytest.approx([0.4 * formula(s) for s in range(16)], rel=1e-12)
    assert len(set(rates)) > 1  # it moves: a constant rate would not be this schedule
    assert set(SCHEDULES) == {"none", "cosine", "step", "onecycle"}


@pytest.mark.parametrize("key,value,message", [
    ("optimizer.name", "sgdd", "unknown optimizer.name 'sgdd'; use sgd, adam, adamw"),
    ("scheduler.name", "cosin", "unknown scheduler.name 'cosin'; use none, cosine, step"),
])
def test_unknown_names_are_refused_before_the_run(key, value, message, tmp_path, capsys):
    """The tables are the validation's too: a typo stops the command before any folder exists."""
    from cnnbench.cli import main

    out = tmp_path / "run"
    assert main(["train", f"{key}={value}", f"hydra.run.dir={out}"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    cfg = compose_config([f"{key}={value}"])
    with pytest.raises(ConfigError, match=message):
        (build_optimizer(cfg.optimizer, []) if key.startswith("optimizer") else
         build_scheduler(cfg.scheduler, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), 1, 1))


@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_onecycle_is_torchs_one_cycle_curve(anneal):
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.4)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.4, total_steps=40, pct_start=0.3, div_factor=20,
                                              final_div_factor=100, cycle_momentum=False, anneal_strategy=anneal)
    expected = []
    for _ in range(40):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    got = [0.4 * onecycle_factor(s, 40, 0.3, 20, 100, anneal) for s in range(40)]
    assert got == pytest.approx(expected, abs=1e-12)
