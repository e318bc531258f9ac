"""One epoch's training steps and one evaluation (:mod:`cnnbench.run.loop`): the loss with label smoothing,
flip test-time augmentation, and how often a step is logged."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cnnbench.data import DeviceLoader
from cnnbench.models.configured import init_weights, model_from_config
from cnnbench.run.build import seed_everything
from cnnbench.run.loop import evaluate, log_points
from cnnbench.run.train import train
from cnnbench.speed.precision import Precision
from tests.helpers import built, quick, random_split


def test_label_smoothing_loss_is_the_hand_computed_one(fake_data, tmp_path):
    """The first logged loss is the smoothed cross-entropy of the initial network on the first batch:
    (1 - e) * CE + e * mean over classes of -log p."""
    eps = 0.2
    cfg = quick(fake_data, "trainer.epochs=1", "trainer.limit_train_batches=1", f"trainer.label_smoothing={eps}")
    train(cfg, tmp_path)
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][0]["train/loss"]
    seed_everything(0, True)  # the run's own order of draws: seed, build, initialize
    model = model_from_config(cfg)
    init_weights(model, "xavier")
    x, y = next(built(cfg, tmp_path / "probe").train_loader.batches(0))
    log_p = torch.log_softmax(model(x), dim=1).double()  # (B, 10)
    expected = ((1 - eps) * -log_p.gather(1, y[:, None]).squeeze(1) + eps * -log_p.mean(dim=1)).mean()
    assert logged == pytest.approx(float(expected), rel=1e-5)


def test_tta_is_the_mean_of_the_two_passes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    split = random_split(48)
    loader = DeviceLoader(split, 16, torch.device("cpu"), shuffle=False)
    result = evaluate(model, loader, Precision.create("fp32", torch.device("cpu")), tta=True)
    x = torch.cat([b[0] for b in loader.batches(0)])
    logits = (model(x) + model(x.flip(-1))) / 2
    assert result.acc == pytest.approx(float((logits.argmax(1) == split.labels).double().mean()))
    assert result.loss == pytest.approx(float(nn.functional.cross_entropy(logits, split.labels)), rel=1e-5)
    plain = evaluate(model, loader, Precision.create("fp32", torch.device("cpu")))
    assert plain.loss != pytest.approx(result.loss)


def test_logging_points_are_few_per_epoch():
    """Host syncs happen only at these batch indices: logs_per_epoch of them, plus the epoch's last."""
    assert log_points(235, 5) == {46, 93, 140, 187, 234}
    assert log_points(10, 0) == {9}
