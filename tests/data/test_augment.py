"""Augmentation on the device (:mod:`cnnbench.data.augment`): exact flips, crops and erasing, fixed by seed,
epoch and batch, never on evaluation batches."""

from __future__ import annotations

import math

import torch

from cnnbench.config import compose_config
from cnnbench.data import DeviceLoader
from cnnbench.data.augment import Augment, erase_boxes, random_crop
from cnnbench.data.idx import Split
from tests.helpers import built, compose_fast, random_split

STRONG = Augment(flip=0.5, crop_padding=3, erase=0.5)


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
    run = built(compose_fast(fake_data, "augment=none", "trainer.batch_size=32"), tmp_path)
    assert run.train_loader.augment is None
    plain = DeviceLoader(Split(run.train_loader.images, run.train_loader.labels), 32, torch.device("cpu"), seed=0)
    for (x, y), (px, py) in zip(run.train_loader.batches(1), plain.batches(1), strict=True):
        assert torch.equal(x, px) and torch.equal(y, py)


def test_evaluation_batches_are_never_augmented(fake_data, tmp_path):
    """augment=strong changes training batches only: the validation and test batches of every epoch are
    bit for bit a plain loader's."""
    run = built(compose_fast(fake_data, "augment=strong", "dataset.val_size=40", "trainer.batch_size=32"), tmp_path)
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


def test_new_options_compose():
    cfg = compose_config(["augment=strong", "optimizer=sgd_nesterov", "scheduler=onecycle"])
    assert cfg.augment.flip == 0.5 and cfg.augment.erase == 0.5 and cfg.optimizer.nesterov is True
    assert Augment.from_config(compose_config([]).augment) is None  # the default is the book's: none
    assert math.isclose(cfg.scheduler.pct_start, 0.25)
