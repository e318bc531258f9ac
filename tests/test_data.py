"""Reading IDX files, finding the data, and device-resident batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cnnbench.config import compose_config
from cnnbench.data import DeviceLoader, find_data_root, load_splits
from cnnbench.data.idx import candidate_roots, load_mini
from cnnbench.errors import DataError

from .conftest import write_fake_dataset


def dataset_cfg(root=None, name="fashion_mnist", download=False):
    cfg = compose_config([f"dataset={name}"]).dataset
    OmegaConf.update(cfg, "root", None if root is None else str(root))
    OmegaConf.update(cfg, "download", download)
    return cfg


def test_reads_the_four_files(fake_data, no_data_env):
    train, test = load_splits(dataset_cfg(fake_data))
    assert train.images.shape == (256, 28, 28) and train.images.dtype == torch.uint8
    assert test.labels.shape == (128,) and test.labels.dtype == torch.int64
    assert set(train.labels.tolist()) == set(range(10))


def test_search_order_root_then_env_then_local(fake_data, no_data_env, monkeypatch):
    assert find_data_root("FashionMNIST", str(fake_data)) == fake_data / "FashionMNIST" / "raw"
    assert find_data_root("FashionMNIST", None) is None
    monkeypatch.setenv("CNNBENCH_DATA", str(fake_data))
    assert find_data_root("FashionMNIST", None) == fake_data / "FashionMNIST" / "raw"
    # the four files directly in the given folder also work
    assert find_data_root("FashionMNIST", str(fake_data / "FashionMNIST" / "raw")) is not None


def _raw(base: Path) -> Path:
    """Where torchvision's layout puts the four IDX files under a data root (absolute, for comparisons)."""
    return (base / "FashionMNIST" / "raw").resolve()


def _found() -> Path | None:
    found = find_data_root("FashionMNIST", None)
    return None if found is None else found.resolve()  # ./data is returned relative to the cwd


def test_local_data_folder_is_found(no_data_env, monkeypatch):
    # no_data_env: cwd = tmp, HOME = tmp/home, no $CNNBENCH_DATA
    write_fake_dataset(no_data_env / "data", n_train=10, n_test=10)
    assert _found() == _raw(no_data_env / "data")
    monkeypatch.chdir(no_data_env / "data" / "FashionMNIST")  # ./data is relative to the cwd, not fixed
    assert _found() is None


def test_user_cache_is_found(no_data_env):
    cache = no_data_env / "home" / ".cache" / "cnnbench" / "data"  # ~/.cache/cnnbench/data
    write_fake_dataset(cache, n_train=10, n_test=10)
    assert _found() == _raw(cache)


def test_search_order_root_env_local_cache(no_data_env, monkeypatch):
    """Four copies of the data: each source wins over every source after it in the search order."""
    cache, local, env, root = (no_data_env / "home" / ".cache" / "cnnbench" / "data", no_data_env / "data",
                               no_data_env / "env", no_data_env / "root")
    for base in (cache, local, env, root):
        write_fake_dataset(base, n_train=10, n_test=10)
    assert _found() == _raw(local)  # ./data before the user cache
    monkeypatch.setenv("CNNBENCH_DATA", str(env))
    assert _found() == _raw(env)  # $CNNBENCH_DATA before ./data
    assert find_data_root("FashionMNIST", str(root)).resolve() == _raw(root)  # dataset.root first
    assert candidate_roots(str(root)) == [root, env, Path("data"), cache]


def test_offline_error_names_folders_files_and_the_fix(no_data_env):
    with pytest.raises(DataError) as err:
        load_splits(dataset_cfg(no_data_env / "nowhere"))
    msg = str(err.value)
    assert str(no_data_env / "nowhere" / "FashionMNIST" / "raw") in msg
    assert "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert "CNNBENCH_DATA" in msg and "dataset.root" in msg and "fashion_mnist_mini" in msg


def test_packaged_mini_dataset_is_stratified():
    train, test = load_mini()
    assert train.images.shape == (6000, 28, 28) and test.images.shape == (1000, 28, 28)
    assert torch.bincount(train.labels).tolist() == [600] * 10
    assert torch.bincount(test.labels).tolist() == [100] * 10
    assert 0.25 < train.images.float().mean().item() / 255 < 0.33  # Fashion-MNIST's mean is 0.286


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
