"""Composing conf/ (:mod:`cnnbench.config`): every option of every config group composes, and the experiments
hold the book's recipes."""

from __future__ import annotations

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

from cnnbench.config import compose_config, config_dir
from cnnbench.models import list_models
from cnnbench.models.configured import image_size
from cnnbench.models.registry import list_sources
from tests.helpers import GROUPS, options


def leaves(node, prefix: str = "") -> dict[str, object]:
    """Every leaf of a config as {"dotted.key": value} (lists are leaves)."""
    if not isinstance(node, DictConfig):
        return {prefix: OmegaConf.to_container(node) if isinstance(node, ListConfig) else node}
    out: dict[str, object] = {}
    for key in node:
        full = f"{prefix}.{key}" if prefix else str(key)
        if OmegaConf.is_missing(node, key):  # "???": given on the command line (model.target, model.arch)
            out[full] = "???"
            continue
        out.update(leaves(node[key], full))
    return out


def expected_values(group: str, option: str) -> dict[str, object]:
    """What ``group=option`` promises, as dotted keys of the whole config: its file's own values (under
    the group's package, or at the top with ``# @package _global_``), over those of the files its
    ``defaults`` list names (``override /model: lenet``, or an option of its own group)."""
    path = config_dir() / group / f"{option}.yaml"
    node = OmegaConf.load(path)
    is_global = "# @package _global_" in path.read_text()
    expected: dict[str, object] = {}
    for entry in node.get("defaults", []):
        if entry == "_self_" or not isinstance(entry, (str, DictConfig)):
            continue
        if isinstance(entry, str) and entry.startswith("/schema/"):  # its schema: types, no values
            continue
        if isinstance(entry, str):  # another option of the same group, e.g. device/fast's "auto"
            expected.update(expected_values(group, entry))
            continue
        for key, value in entry.items():
            other = key.removeprefix("override ").strip("/")
            expected.update(expected_values(other, str(value)))
    own = OmegaConf.masked_copy(node, [k for k in node if k != "defaults"])  # "???" values stay unread
    expected.update(leaves(own, "" if is_global else group))
    return expected


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_to_what_it_names(group, option):
    cfg = compose_config([f"{group}={option}"])
    expected = expected_values(group, option)
    assert expected, f"{group}/{option}.yaml sets nothing"
    for key, value in expected.items():
        if value == "???":
            parent, _, leaf = key.rpartition(".")
            assert OmegaConf.is_missing(OmegaConf.select(cfg, parent), leaf), f"{group}={option}: {key}"
            continue
        assert OmegaConf.select(cfg, key) == value, f"{group}={option}: {key}"
    assert cfg.model.name in list_models() + list_sources()


def test_every_model_has_a_config_and_every_config_a_model():
    assert set(options("model")) == set(list_models()) | set(list_sources())
    for name in options("model"):
        assert compose_config([f"model={name}"]).model.name == name


RECIPES = {  # D2L chapters 6-8: model, lr, batch size, resize
    "d2l_lenet": ("lenet", 0.9, 256, 28),
    "d2l_lenet_bn": ("lenet_bn", 1.0, 256, 28),
    "d2l_alexnet": ("alexnet", 0.01, 128, 224),
    "d2l_vgg11": ("vgg11", 0.05, 128, 224),
    "d2l_nin": ("nin", 0.1, 128, 224),
    "d2l_googlenet": ("googlenet", 0.1, 128, 96),
    "d2l_resnet18": ("resnet18", 0.05, 256, 96),
    "d2l_densenet": ("densenet", 0.1, 256, 96),
}


@pytest.mark.parametrize("experiment", sorted(RECIPES))
def test_experiments_are_the_books_recipes(experiment):
    cfg = compose_config([f"experiment={experiment}"])
    model, lr, batch, resize = RECIPES[experiment]
    assert (cfg.model.name, cfg.optimizer.lr, cfg.trainer.batch_size, image_size(cfg)) == (model, lr, batch, resize)
    assert cfg.optimizer.name == "sgd" and cfg.optimizer.momentum == 0 and cfg.optimizer.weight_decay == 0
    assert cfg.trainer.epochs == 10 and cfg.trainer.init == "xavier" and cfg.scheduler.name == "none"


# Recipes beyond the book (issue 14): each says in its YAML what it reached, where and in how long.
BEYOND_THE_BOOK = {"quickstart", "fast_cpu", "fast_gpu", "best"}


# CIFAR-10 recipes (issue 26): the book's chapter 14.13 and the FastNet recipes at 32 pixels
CIFAR_RECIPES = {"cifar10_resnet18", "cifar10_fast_cpu", "cifar10_fast_gpu"}


def test_experiment_list_is_complete():
    assert set(options("experiment")) == set(RECIPES) | BEYOND_THE_BOOK | CIFAR_RECIPES


def test_cifar10_resnet18_is_the_books_chapter_14_13():
    """D2L 14.13 sums the loss (lr 2e-4, wd 5e-4 at batch 128); averaged here: lr x128, wd /128."""
    cfg = compose_config(["experiment=cifar10_resnet18"])
    assert (cfg.dataset.name, cfg.model.name, cfg.model.stem, image_size(cfg)) == ("cifar10", "resnet18", "cifar", 32)
    assert cfg.trainer.batch_size == 128 and cfg.trainer.epochs == 20 and cfg.trainer.init == "default"
    assert cfg.optimizer.lr == pytest.approx(2e-4 * 128) and cfg.optimizer.weight_decay == pytest.approx(5e-4 / 128)
    assert cfg.optimizer.momentum == 0.9 and (cfg.scheduler.name, cfg.scheduler.step_epochs, cfg.scheduler.gamma) == (
        "step", 4, 0.9)
    assert list(cfg.dataset.mean) == [0.4914, 0.4822, 0.4465] and list(cfg.dataset.std) == [0.2023, 0.1994, 0.2010]
    for fast in ("cifar10_fast_cpu", "cifar10_fast_gpu"):
        cfg = compose_config([f"experiment={fast}"])
        assert cfg.dataset.name == "cifar10" and image_size(cfg) == 32 and cfg.augment.crop_padding == 4


def test_defaults_are_the_lenet_recipe():
    default, lenet = compose_config([]), compose_config(["experiment=d2l_lenet"])
    for key in ("model", "optimizer", "scheduler"):
        assert default[key] == lenet[key]
    assert default.trainer == lenet.trainer
    assert image_size(default) == image_size(lenet) == 28


def test_vgg11_divides_widths_by_four():
    assert compose_config(["model=vgg11"]).model.width_div == 4
    assert compose_config(["model=vgg11_full"]).model.width_div == 1


def test_a_list_of_overrides_is_composed_once_and_every_caller_gets_its_own_copy(monkeypatch) -> None:
    """One command composes the same overrides three times (checks, folder claim, Hydra's run): 0.2-0.3 s
    each, so compose_config keeps the result; a caller changing its copy changes nobody else's."""
    from collections import OrderedDict

    import cnnbench.config as config

    calls = []
    real = config._compose
    monkeypatch.setattr(config, "_COMPOSED", OrderedDict())
    monkeypatch.setattr(config, "_compose",
                        lambda overrides, source: calls.append(overrides) or real(overrides, source))
    first = compose_config(["optimizer.lr=0.3"], return_hydra_config=True)
    second = compose_config(["optimizer.lr=0.3"])
    assert calls == [["optimizer.lr=0.3"]]
    assert "hydra" in first and "hydra" not in second
    second.optimizer.lr = 5.0
    assert compose_config(["optimizer.lr=0.3"]).optimizer.lr == 0.3
    assert compose_config(["optimizer.lr=0.4"]).optimizer.lr == 0.4 and len(calls) == 2
    for k in range(config.COMPOSED_KEPT):  # a long sweep: the cache keeps only the latest compositions
        compose_config([f"trainer.seed={k}"])
    assert len(config._COMPOSED) == config.COMPOSED_KEPT
    compose_config(["optimizer.lr=0.3"])
    assert len(calls) == 3 + config.COMPOSED_KEPT  # composed again: it had been dropped


@pytest.mark.parametrize("item,expected", [
    ("optimizer.lr=0.1", ("optimizer.lr", "0.1")),
    ("+trainer.ema.decay=0.99", ("trainer.ema.decay", "0.99")),
    ("++trainer.seed=3", ("trainer.seed", "3")),
    ("~trainer.grad_clip_norm", ("trainer.grad_clip_norm", None)),
    ("~trainer.seed=0", ("trainer.seed", "0")),
    ("model@pkg=lenet", ("model", "lenet")),
    ("hydra.run.dir=a=b", ("hydra.run.dir", "a=b")),  # only the first '=' separates
])
def test_an_override_splits_into_its_key_and_value(item, expected):
    from cnnbench.config import override_key, split_override

    assert split_override(item) == expected and override_key(item) == expected[0]
