"""Optimizers and schedules: the name tables, and the schedules' per-step factors against their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from cnnbench.config import compose_config
from cnnbench.errors import ConfigError
from cnnbench.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_scheduler, cosine_factor, step_factor


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


def test_every_optimizer_and_schedule_config_builds():
    for name in ("sgd", "sgd_momentum", "adam", "adamw"):
        cfg = compose_config([f"optimizer={name}"])
        assert isinstance(build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(1))]), torch.optim.Optimizer)
        assert cfg.optimizer.name in OPTIMIZERS
    for name in ("none", "cosine", "step"):
        assert compose_config([f"scheduler={name}"]).scheduler.name in SCHEDULES


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
