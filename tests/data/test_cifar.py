"""CIFAR-10/100 (:mod:`cnnbench.data.cifar`) in torchvision's python format, from pickles the tests write (never
downloaded): shapes, channel order, class names, the settled config, and each wrong file's sentence."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnbench.config import compose_config
from cnnbench.data import sources
from cnnbench.data.cifar import CIFAR, load_cifar
from cnnbench.errors import DataError
from tests.helpers import fast_overrides

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def _forget_reads():
    sources._READ.clear()
    yield
    sources._READ.clear()


def write_cifar(root: Path, name: str = "cifar10", per_batch: int = 20, seed: int = 0) -> Path:
    """Python-format batches as torchvision unpacks them (bytes keys, protocol 2), under ``root``."""
    fmt = CIFAR[name]
    folder = root / fmt.folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for file in (*fmt.train, fmt.test):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(i % fmt.classes) for i in range(per_batch)]
        batch = {b"batch_label": file.encode(), b"data": data, fmt.label_key.encode(): labels}
        (folder / file).write_bytes(pickle.dumps(batch, protocol=2))
    names = CIFAR10_NAMES if name == "cifar10" else [f"class{i}" for i in range(100)]
    meta = {fmt.names_key.encode(): [n.encode() for n in names]}
    (folder / fmt.meta).write_bytes(pickle.dumps(meta, protocol=2))
    return root


def test_cifar10_read_by_format(tmp_path):
    write_cifar(tmp_path)
    classes, train, test = load_cifar("cifar10", str(tmp_path), download=False)
    assert classes == CIFAR10_NAMES
    assert train.images.shape == (100, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (20, 3, 32, 32) and len(test.labels) == 20
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes())[b"data"]
    # rows of 1024 red, 1024 green, 1024 blue values, each plane row by row
    assert torch.equal(train.images[0, 1], torch.from_numpy(raw[0, 1024:2048].reshape(32, 32)))


def test_cifar100_fine_labels(tmp_path):
    write_cifar(tmp_path, "cifar100", per_batch=200)
    classes, train, test = load_cifar("cifar100", str(tmp_path), download=False)
    assert len(classes) == 100 and int(train.labels.max()) == 99 and len(test) == 200


def test_settled_config_and_recipe(tmp_path):
    write_cifar(tmp_path)
    cfg = compose_config(fast_overrides(tmp_path, "experiment=cifar10_resnet18"))
    sources.settle_dataset(cfg)
    assert list(cfg.dataset.classes) == CIFAR10_NAMES and cfg.dataset.in_channels == 3
    assert list(cfg.dataset.mean) == [0.4914, 0.4822, 0.4465]  # the book's, kept
    cfg = compose_config(fast_overrides(tmp_path, "dataset=cifar10", "model=lenet_bn"))
    sources.settle_dataset(cfg)
    assert len(cfg.dataset.mean) == 3 and abs(cfg.dataset.mean[0] - 0.5) < 0.02  # uniform noise's mean


@pytest.mark.slow  # a training run (test_settled_config_and_recipe is its fast part)
def test_train_on_cifar_format(tmp_path):
    from cnnbench.run.train import train

    write_cifar(tmp_path)
    cfg = compose_config(fast_overrides(tmp_path, "dataset=cifar10", "model=lenet_bn", "dataset.resize=32",
                                        "trainer.epochs=1", "trainer.batch_size=50", "device.fused_kernels=false"))
    summary = train(cfg, tmp_path / "run")
    assert summary["status"] == "completed", summary["error"]
    assert cfg.dataset.classes[0] == "airplane"


def _rewrite(path: Path, change) -> None:
    batch = pickle.loads(path.read_bytes())
    change(batch)
    path.write_bytes(pickle.dumps(batch, protocol=2))


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


WRONG = {  # name -> (how to break the cifar-10 copy, the sentence's words)
    "cifar-100 file": (lambda f: _rewrite(f / "data_batch_2", lambda b: b.update({b"fine_labels": b.pop(b"labels")})),
                       "data_batch_2: not a CIFAR-10 batch .* it has 'fine_labels': a CIFAR-100 file"),
    "wrong shape": (lambda f: _rewrite(f / "test_batch", lambda b: b.update({b"data": b[b"data"][:, :1024]})),
                    r"test_batch: 'data' is uint8 of shape \(20, 1024\), expected uint8 of shape \(N, 3072\)"),
    "labels out of range": (lambda f: _rewrite(f / "data_batch_1", lambda b: b.update({b"labels": [12] * 20})),
                            "data_batch_1: 20 labels outside 0..9"),
    "not a pickle": (lambda f: (f / "data_batch_3").write_bytes(b"\x00" * 100),
                     "data_batch_3: not a CIFAR python-format file"),
    "code in the pickle": (lambda f: (f / "data_batch_4").write_bytes(pickle.dumps({b"data": Evil()})),
                           r"data_batch_4: not a CIFAR python-format file \(UnpicklingError: it asks to build "
                           r"(posix|nt).system"),
    "meta of another version": (lambda f: (f / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"]})),
                                "batches.meta: no list of 10 'label_names'"),
}


@pytest.mark.parametrize("case", list(WRONG))
def test_wrong_files_named(tmp_path, case):
    import re

    write_cifar(tmp_path)
    breaks, words = WRONG[case]
    breaks(tmp_path / "cifar-10-batches-py")
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", str(tmp_path), download=False)
    assert re.search(words, str(info.value)), str(info.value)


def test_missing_names_the_binary_version(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNBENCH_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "cifar-10-batches-bin").mkdir()
    with pytest.raises(DataError, match="CIFAR-10 not found.* Found the binary version in .*cnnbench reads the python "
                                        "version .*Download is off"):
        load_cifar("cifar10", str(tmp_path), download=False)


def test_dataset_name_of_another_option_refused():
    """The issue's trap: dataset.name=cifar10 renamed Fashion-MNIST and failed after making a run folder."""
    from cnnbench.data.sources import check_data_present
    from cnnbench.errors import ConfigError

    with pytest.raises(ConfigError, match="dataset.name=cifar10 only renames the FashionMNIST IDX dataset; choose "
                                          "the dataset with dataset=cifar10"):
        check_data_present(compose_config(["dataset.name=cifar10"]))


def test_missing_idx_files_refused_by_the_checks(no_data_env):
    from cnnbench.data.sources import check_data_present

    with pytest.raises(DataError, match="fashion_mnist not found.*Download is off"):
        check_data_present(compose_config(["dataset.download=false", f"dataset.root={no_data_env / 'nowhere'}"]))


def test_cli_refuses_missing_data_before_a_run_folder(tmp_path, capsys, no_data_env):
    from cnnbench.cli import main

    run_dir = tmp_path / "run"
    for overrides, words in ((["dataset.name=cifar10"], "dataset.name=cifar10 only renames"),
                             (["dataset=cifar10", "dataset.download=false"], "CIFAR-10 not found"),
                             (["dataset.download=false"], "fashion_mnist not found")):
        assert main(["train", *overrides, "device=cpu", f"hydra.run.dir={run_dir}"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and not run_dir.exists()
