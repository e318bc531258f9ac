"""The device-resident loader (:mod:`cnnbench.data.loader`): batches that cover an epoch once, a seeded order,
the pixels scaled exactly, normalization."""

from __future__ import annotations

import torch

from cnnbench.data import DeviceLoader
from cnnbench.data.idx import load_splits
from tests.helpers import dataset_cfg


def test_loader_batches_cover_the_epoch_once_and_resize(fake_data, no_data_env):
    train, _ = load_splits(dataset_cfg(fake_data))
    loader = DeviceLoader(train, batch_size=100, device=torch.device("cpu"), resize=96, seed=3)
    batches = list(loader.batches(epoch=0))
    assert len(loader) == len(batches) == 3  # 100 + 100 + 56, the last one partial as in the book
    x, y = batches[0]
    assert x.shape == (100, 1, 96, 96) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    labels = torch.cat([b[1] for b in batches])
    assert sorted(labels.tolist()) == sorted(train.labels.tolist())


def test_permutation_is_seeded_per_epoch(fake_data, no_data_env):
    train, _ = load_splits(dataset_cfg(fake_data))
    a = DeviceLoader(train, 32, torch.device("cpu"), seed=1)
    b = DeviceLoader(train, 32, torch.device("cpu"), seed=1)
    assert torch.equal(a.permutation(4), b.permutation(4))
    assert not torch.equal(a.permutation(4), a.permutation(5))
    # batch k of an epoch is the same whether or not the earlier batches were drawn (exact resume)
    third = list(a.batches(epoch=2))[2]
    resumed = next(b.batches(epoch=2, start=2))
    assert torch.equal(third[0], resumed[0]) and torch.equal(third[1], resumed[1])


def test_native_size_is_bitwise_the_pixels_over_255(fake_data, no_data_env):
    train, _ = load_splits(dataset_cfg(fake_data))
    loader = DeviceLoader(train, 8, torch.device("cpu"), shuffle=False)
    x, _ = next(loader.batches(0))
    assert torch.equal(x[:, 0], train.images[:8].float() / 255)


def test_normalize_option(fake_data, no_data_env):
    train, _ = load_splits(dataset_cfg(fake_data))
    plain = next(DeviceLoader(train, 8, torch.device("cpu"), shuffle=False).batches(0))[0]
    normed = next(DeviceLoader(train, 8, torch.device("cpu"), shuffle=False, normalize=(0.5, 0.25)).batches(0))[0]
    assert torch.allclose(normed, (plain - 0.5) / 0.25)
