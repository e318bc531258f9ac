"""Augmentation on the device, label smoothing, the weights' EMA, flip TTA, one-cycle, target accuracy."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import cnnbench.run.callbacks as callbacks_module
from cnnbench.config import compose_config
from cnnbench.data import DeviceLoader
from cnnbench.data.augment import Augment, erase_boxes, random_crop
from cnnbench.data.idx import Split
from cnnbench.models.configured import init_weights, model_from_config
from cnnbench.run.build import build_run, seed_everything
from cnnbench.run.loop import EvalResult, evaluate
from cnnbench.run.optim import onecycle_factor
from cnnbench.run.train import train
from cnnbench.speed.precision import Precision
from tests.helpers import compose_fast

STRONG = Augment(flip=0.5, crop_padding=3, erase=0.5)


def random_split(n: int = 64, seed: int = 0) -> Split:
    gen = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 28, 28), generator=gen, dtype=torch.uint8), torch.arange(n) % 10)


# --------------------------------------------------------------------------------------- operations


def test_augment_keeps_shape_dtype_device_and_range():
    x = torch.rand(16, 1, 28, 28)
    out = STRONG.apply(x, STRONG.draw(16, 28, Augment.generator(0, 0, 0)))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert 0 <= out.min() and out.max() <= 1
    assert not torch.equal(out, x)


def test_draws_are_fixed_by_seed_epoch_and_batch():
    def draws(seed, epoch, batch):
        return STRONG.draw(32, 28, Augment.generator(seed, epoch, batch))

    a, b = draws(1, 2, 3), draws(1, 2, 3)
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("flip", "crop", "erase", "box"))
    for other in (draws(1, 2, 4), draws(1, 3, 3), draws(2, 2, 3)):
        assert not torch.equal(a.crop, other.crop)


def test_flip_and_crop_move_a_pixel_exactly():
    """One bright pixel at (row 5, column 7) of a 28x28 image: a flip mirrors its column; a crop with
    padding 3 at offset (top 1, left 6) moves it by (3 - 1, 3 - 6)."""
    x = torch.zeros(2, 1, 28, 28)
    x[:, 0, 5, 7] = 1.0
    flipped = Augment(flip=1.0).apply(x, Augment(flip=1.0).draw(2, 28, Augment.generator(0, 0, 0)))
    assert torch.nonzero(flipped[0, 0]).tolist() == [[5, 20]]  # 27 - 7
    cropped = random_crop(x, torch.tensor([[1, 6], [6, 0]]), padding=3)
    assert torch.nonzero(cropped[0, 0]).tolist() == [[7, 4]]
    assert torch.nonzero(cropped[1, 0]).tolist() == [[2, 10]]
    assert cropped[:, 0].sum(dim=(1, 2)).tolist() == [1.0, 1.0]  # nothing else appears: padding is black


def test_erasing_blanks_exactly_its_rectangle():
    x = torch.ones(2, 1, 8, 8)
    out = erase_boxes(x, torch.tensor([[1, 2, 3, 4], [0, 0, 8, 8]]), torch.tensor([True, False]), value=0.0)
    expected = torch.ones(8, 8)
    expected[1:4, 2:6] = 0
    assert torch.equal(out[0, 0], expected) and torch.equal(out[1], x[1])  # the second is not erased


def test_none_leaves_batches_exactly_as_before(fake_data, tmp_path):
    """augment=none builds no augmentation at all: the batches are bit for bit a plain loader's."""
    run = build_run(compose_fast(fake_data, "augment=none", "trainer.batch_size=32"), tmp_path)
    assert run.train_loader.augment is None
    plain = DeviceLoader(Split(run.train_loader.images, run.train_loader.labels), 32, torch.device("cpu"), seed=0)
    for (x, y), (px, py) in zip(run.train_loader.batches(1), plain.batches(1), strict=True):
        assert torch.equal(x, px) and torch.equal(y, py)


def test_evaluation_batches_are_never_augmented(fake_data, tmp_path):
    """augment=strong changes training batches only: the validation and test batches of every epoch are
    bit for bit a plain loader's."""
    run = build_run(compose_fast(fake_data, "augment=strong", "dataset.val_size=40", "trainer.batch_size=32"), tmp_path)
    train_x = next(run.train_loader.batches(1))[0]
    plain_train = DeviceLoader(Split(run.train_loader.images, run.train_loader.labels), 32, torch.device("cpu"), seed=0)
    assert not torch.equal(train_x, next(plain_train.batches(1))[0])  # training batches are augmented
    for loader in (run.val_loader, run.test_loader):
        plain = DeviceLoader(Split(loader.images, loader.labels), 32, torch.device("cpu"), shuffle=False)
        for epoch in (0, 1):
            pairs = list(zip(loader.batches(epoch), plain.batches(epoch), strict=True))
            assert pairs and all(torch.equal(x, px) and torch.equal(y, py) for (x, y), (px, py) in pairs)


def test_any_batch_augments_alike_alone_or_in_its_epoch_and_on_any_rank():
    """Exact resume and DDP: batch 2 drawn alone equals batch 2 of a full epoch, and two ranks'
    shards of it put together equal the single process's batch."""
    split = random_split(96)
    one = DeviceLoader(split, 32, torch.device("cpu"), seed=5, augment=STRONG)
    epoch = list(one.batches(epoch=3))
    alone = next(one.batches(epoch=3, start=2))
    assert torch.equal(epoch[2][0], alone[0])
    ranks = [next(DeviceLoader(split, 32, torch.device("cpu"), seed=5, augment=STRONG, rank=r, world_size=2)
                  .batches(epoch=3, start=2))[0] for r in (0, 1)]
    assert torch.equal(torch.cat(ranks), alone[0])
    assert not torch.equal(epoch[0][0], epoch[1][0][: len(epoch[0][0])])


# --------------------------------------------------------------------------------------- the loop


def quick(fake_data, *overrides):
    return compose_fast(fake_data, "model=lenet", "trainer.batch_size=32", "trainer.deterministic=true",
                        "optimizer.lr=0.5", *overrides)


def test_resume_with_augmentation_and_ema_equals_an_uninterrupted_run(fake_data, tmp_path):
    extra = ["augment=strong", "trainer.ema.decay=0.9", "trainer.label_smoothing=0.1"]
    train(quick(fake_data, *extra, "trainer.epochs=3"), tmp_path / "whole")
    train(quick(fake_data, *extra, "trainer.epochs=1"), tmp_path / "parts")
    resumed = train(quick(fake_data, *extra, "trainer.epochs=3", "trainer.resume=auto"), tmp_path / "parts")
    assert resumed["status"] == "completed"
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    parts = torch.load(tmp_path / "parts" / "last.pt", weights_only=True)
    for part in ("model", "ema"):
        assert whole[part] is not None and parts[part] is not None, f"no {part} in the checkpoint"
        assert all(torch.equal(whole[part][k], parts[part][k]) for k in whole[part]), part


def test_ema_is_the_hand_computed_average(fake_data, tmp_path):
    """AveragedModel's EMA: the first step copies the weights, each later one e = d*e + (1-d)*w."""
    decay = 0.8
    weights = []
    for steps in (1, 2, 3):  # the trained weights after 1, 2 and 3 steps (deterministic runs)
        train(quick(fake_data, "trainer.epochs=1", f"trainer.limit_train_batches={steps}"), tmp_path / str(steps))
        weights.append(torch.load(tmp_path / str(steps) / "last.pt", weights_only=True)["model"])
    train(quick(fake_data, "trainer.epochs=1", "trainer.limit_train_batches=3", f"trainer.ema.decay={decay}"),
          tmp_path / "ema")
    ema = torch.load(tmp_path / "ema" / "last.pt", weights_only=True)["ema"]
    for key in weights[0]:
        expected = weights[0][key]
        for w in weights[1:]:
            expected = decay * expected + (1 - decay) * w[key]
        assert torch.allclose(ema[f"module.{key}"], expected, atol=1e-6), key


def test_ema_weights_are_what_is_evaluated(fake_data, tmp_path):
    """test/acc is the EMA's, raw/test/acc the trained weights': each recomputed here from last.pt, on a
    run that learns (LeNet-BN), so that the two really differ."""
    from cnnbench.evaluation.inference import reported_weights

    cfg = compose_fast("/nonexistent", "dataset=fashion_mnist_mini", "model=lenet_bn", "trainer.batch_size=64",
                       "optimizer.lr=0.9", "trainer.epochs=2",
                       "trainer.limit_train_batches=20", "trainer.ema.decay=0.9")
    summary = train(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["kind"] == "epoch"][-1]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    test_loader = build_run(cfg, tmp_path / "probe").test_loader
    scores = {}
    for name, weights in (("ema", reported_weights(state)), ("raw", state["model"])):
        model = model_from_config(cfg)
        model.load_state_dict(weights)
        scores[name] = evaluate(model.eval(), test_loader, Precision.create("fp32", torch.device("cpu")))
    assert summary["test/acc"] == last["test/acc"] == pytest.approx(scores["ema"].acc, abs=1e-12)
    assert last["raw/test/acc"] == pytest.approx(scores["raw"].acc, abs=1e-12)
    assert last["test/loss"] == pytest.approx(scores["ema"].loss, rel=1e-5)
    assert abs(scores["ema"].acc - scores["raw"].acc) > 0.01 and min(scores["ema"].acc, scores["raw"].acc) > 0.3


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
    x, y = next(build_run(cfg, tmp_path / "probe").train_loader.batches(0))
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


def test_target_accuracy_stops_at_the_epoch_that_reaches_it(fake_data, tmp_path, monkeypatch):
    scripted = iter([0.5, 0.7, 0.93, 0.99, 0.99])
    real = callbacks_module.evaluate

    def evaluate_scripted(model, loader, *args, **kwargs):
        result = real(model, loader, *args, **kwargs)
        return EvalResult(acc=next(scripted), loss=result.loss, examples=result.examples)

    monkeypatch.setattr(callbacks_module, "evaluate", evaluate_scripted)
    summary = train(quick(fake_data, "trainer.epochs=5", "trainer.target_acc=0.9"), tmp_path)
    assert summary["status"] == "completed" and summary["epochs_completed"] == 3
    assert summary["stop_reason"].startswith("reached trainer.target_acc=0.9: test/acc 0.9300 at epoch 3")
    assert 0 < summary["time_to_target_s"] <= summary["wall_time_s"]


def test_new_options_compose():
    cfg = compose_config(["augment=strong", "optimizer=sgd_nesterov", "scheduler=onecycle"])
    assert cfg.augment.flip == 0.5 and cfg.augment.erase == 0.5 and cfg.optimizer.nesterov is True
    assert Augment.from_config(compose_config([]).augment) is None  # the default is the book's: none
    assert math.isclose(cfg.scheduler.pct_start, 0.25)


def test_bench_times_recipes_to_an_accuracy_beside_the_books_loop(fake_data, tmp_path):
    from cnnbench.commands.bench import cmd_bench

    out = tmp_path / "bench"
    assert cmd_bench(["d2l_lenet_bn", "--to-accuracy", "0.3", "--data-root", str(fake_data), "--device", "cpu",
                      "--book-workers", "0", "--out", str(out), "--override", "trainer.epochs=4",
                      "--override", "trainer.batch_size=32", "--override", "optimizer.lr=0.5"]) == 0
    result = json.loads((out / "bench_accuracy.json").read_text())
    ours, book = result["rows"]
    assert ours["recipe"] == "d2l_lenet_bn" and book["pipeline"] == "book" and result["target"] == 0.3
    for row in (ours, book):
        if row["reached"]:
            assert 0 < row["time_to_target_s"] <= row["wall_time_s"] and 1 <= row["epochs"] <= row["max_epochs"]
        else:
            assert row["time_to_target_s"] is None and row["test/acc"] < 0.3
    assert ours["reached"] and ours["epochs"] < 4  # the bars are easy: well before the last epoch
    assert "| d2l_lenet_bn | yes |" in (out / "bench_accuracy.md").read_text()
