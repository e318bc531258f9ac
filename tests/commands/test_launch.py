"""``cnnbench train``'s preparation step (:mod:`cnnbench.commands.launch`, :mod:`cnnbench.run.spec`): the data is
settled once, each folder listed once, the config checked once, and the checked spec reaches the run."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnbench.cli import main
from cnnbench.data import sources
from cnnbench.run import validate
from tests.helpers import fast_overrides


def _pictures(root: Path, n_train: int = 12, n_test: int = 6, classes: int = 3) -> Path:
    """ROOT/{train,test}/c<k>/<i>.png: 12x12 grey pictures, a band whose row depends on the class."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = rng.integers(0, 50, (12, 12), dtype=np.uint8)
                a[1 + 3 * c: 3 + 3 * c] = 220
                Image.fromarray(a).save(folder / f"{i:03d}.png")
    return root


class _Calls:
    """Calls of some functions (by code object: imported-by-name copies count too) until ``stop_at`` runs."""

    def __init__(self, functions: dict[str, object], stop_at) -> None:
        self.codes = {fn.__code__: name for name, fn in functions.items()}
        self.stop = stop_at.__code__
        self.counts = dict.fromkeys(functions, 0)
        self.stopped = False

    def __call__(self, frame, event, arg) -> None:
        if event != "call" or self.stopped:
            return
        if frame.f_code is self.stop:
            self.stopped = True
        elif frame.f_code in self.codes:
            self.counts[self.codes[frame.f_code]] += 1


def test_one_settle_one_listing_one_validation(tmp_path, monkeypatch):
    """One ``cnnbench train`` on an image folder, up to its first step: the data settled (and read) once,
    ROOT/train and ROOT/test listed once each, every check run once, the normalization logged once."""
    from cnnbench.run.loop import train_one_epoch

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = _pictures(tmp_path / "pics")
    calls = _Calls({"settle": sources.settle_dataset, "read": sources.read_dataset,
                    "validate": validate.validate_config, "check_values": validate.check_values}, train_one_epoch)
    listings = {str(root / "train"): 0, str(root / "test"): 0}
    real_scandir, real_listdir = os.scandir, os.listdir

    def counting(real):
        def wrapper(path=".", *args, **kwargs):
            key = os.path.abspath(os.fspath(path)) if not isinstance(path, int) else None
            if key in listings and not calls.stopped:
                listings[key] += 1
            return real(path, *args, **kwargs)
        return wrapper

    lines: list[str] = []

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("normalization from"):
                lines.append(record.getMessage())

    handler = Lines()
    package = logging.getLogger("cnnbench")
    package.addHandler(handler)  # Hydra's job logging replaces the root's handlers
    monkeypatch.setattr(package, "level", logging.INFO)  # under pytest the root's level may be WARNING
    monkeypatch.setattr(os, "scandir", counting(real_scandir))
    monkeypatch.setattr(os, "listdir", counting(real_listdir))
    sys.setprofile(calls)
    try:
        code = main(["train", *fast_overrides("/nonexistent", "dataset=image_folder", f"dataset.path={root}",
                                              "model=lenet_bn", "trainer.epochs=1", "trainer.batch_size=8",
                                              "trainer.limit_train_batches=1", f"hydra.run.dir={tmp_path / 'run'}")])
    finally:
        sys.setprofile(None)
        package.removeHandler(handler)
    assert code == 0
    assert calls.stopped, "the run never reached its first step"
    assert calls.counts == {"settle": 1, "read": 1, "validate": 1, "check_values": 1}
    assert list(listings.values()) == [1, 1]
    assert len(lines) == 1, lines


def test_the_checked_spec_reaches_the_run(tmp_path, fake_data, monkeypatch):
    """``train`` given the pre-launch check's spec checks nothing again; without one it checks itself."""
    import cnnbench.run.train as train_module
    from cnnbench.config import compose_config
    from cnnbench.run.train import train

    checked = []
    real = validate.validate_config
    monkeypatch.setattr(train_module, "validate_config", lambda *a, **k: checked.append(1) or real(*a, **k))
    overrides = fast_overrides(fake_data, "model=lenet", "trainer.epochs=1", "trainer.batch_size=32",
                               "trainer.limit_train_batches=1", "trainer.limit_eval_batches=1")
    cfg = compose_config(overrides)
    spec = real(cfg)
    assert spec.trainer.epochs == 1 and spec.data.num_classes == 10 and spec.data.side == 28
    assert train(cfg, tmp_path / "a", spec=spec)["status"] == "completed"
    assert checked == []
    assert train(compose_config(overrides), tmp_path / "b")["status"] == "completed"
    assert checked == [1]


def test_settled_data_is_frozen_and_recorded(tmp_path, monkeypatch):
    """The settled facts: a frozen DataSpec, and the same facts written into an equal config composed again."""
    import dataclasses

    from cnnbench.config import compose_config
    from cnnbench.run.spec import config_key

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = _pictures(tmp_path / "pics")
    overrides = fast_overrides("/nonexistent", "dataset=image_folder", f"dataset.path={root}", "model=lenet_bn",
                               "trainer.batch_size=8")
    cfg, again = compose_config(overrides), compose_config(overrides)
    assert config_key(cfg) == config_key(again)
    spec = validate.validate_config(cfg)
    data = spec.data
    assert (data.channels, data.num_classes, data.classes, data.train_size, data.test_size) == (
        1, 3, ("c0", "c1", "c2"), 36, 18)
    assert data.bytes == (36 + 18) * (12 * 12 + 8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.channels = 3
    spec.for_config(again)
    assert again.dataset == cfg.dataset  # name, classes, channels, normalization: as settled
    assert list(again.dataset.mean) == list(data.mean)


def test_a_run_folder_with_spaces_or_commas_reaches_hydra_quoted():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from cnnbench.commands.launch import override_value

    for path in ("outputs/2026-01-01/10-00-00-000001_lenet", "/tmp/my runs/a,b", "/tmp/it's [1]"):
        (parsed,) = OverridesParser.create().parse_overrides([f"hydra.run.dir={override_value(path)}"])
        assert parsed.value() == path
