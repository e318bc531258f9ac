"""The book's published results for its eight Fashion-MNIST recipes, and whether a run reproduces them.

``results.yaml`` (beside this module) holds, per recipe, the train loss, train accuracy and test
accuracy printed by two editions of the book (the classic 0.17 series and the Chinese 2.0.0), with their
sources. A run of a ``d2l_*`` recipe on Fashion-MNIST gets a ``book`` entry in its summary:

- train loss within 0.03 and train accuracy within 0.01 of the editions' range reproduce the book;
- test accuracy swings between the book's own runs (NiN: 0.79 in one edition, 0.87 in the other), so
  it is placed ``below``, ``within`` or ``above`` the editions' range; above is not a failure.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

LOSS_TOLERANCE = 0.03  # nats, either side of the editions' train losses
ACC_TOLERANCE = 0.01  # one point of train accuracy either side
# What makes a run the recipe: these config entries equal to the experiment's (device and seed may differ).
RECIPE_KEYS = ("model", "optimizer", "scheduler", "trainer.epochs", "trainer.batch_size", "trainer.init",
               "trainer.limit_train_batches", "trainer.limit_eval_batches", "dataset.name", "dataset.normalize",
               "dataset.val_size")


@functools.cache
def published() -> dict[str, Any]:
    """recipe -> {"section", "editions": {edition: {train_loss, train_acc, test_acc, source, ...}}}."""
    text = resources.files("cnnbench.book").joinpath("results.yaml").read_text()
    return yaml.safe_load(text)


def recipe_of(cfg: DictConfig) -> str | None:
    """The ``d2l_*`` recipe this run is, or None when it is none of them (other settings, other data)."""
    from ..config import compose_config
    from ..models.configured import image_size

    name = f"d2l_{cfg.model.name}"
    if name not in published():
        return None
    recipe = compose_config([f"experiment={name}"])
    for key in RECIPE_KEYS:
        if _setting(cfg, key, recipe) != OmegaConf.select(recipe, key):
            return None
    return name if image_size(cfg) == image_size(recipe) else None


def _setting(cfg: DictConfig, key: str, recipe: DictConfig) -> Any:
    """``cfg``'s value of a recipe key; for ``model``, a knob it does not name (a run recorded before the
    network's knobs existed) is the recipe's, the book's value that the family's factory takes by default."""
    value = OmegaConf.select(cfg, key)
    if key == "model" and isinstance(value, DictConfig):
        return OmegaConf.merge(recipe.model, value)
    return value


def _range(values: list[float]) -> list[float]:
    return [min(values), max(values)]


def compare(recipe: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Where the run's final figures stand against the editions' (see the module docstring)."""
    editions = published()[recipe]["editions"]
    book = {key: _range([e[key] for e in editions.values() if e.get(key) is not None])
            for key in ("train_loss", "train_acc", "test_acc")}
    out: dict[str, Any] = {"recipe": recipe, "section": published()[recipe].get("section"), "editions": editions}
    checked = (("train_loss", "train/loss", LOSS_TOLERANCE), ("train_acc", "train/acc", ACC_TOLERANCE))
    for key, summary_key, tol in checked:
        value, (low, high) = summary[summary_key], book[key]
        out[key] = {"value": value, "book": [low, high], "ok": low - tol <= value <= high + tol}
    test, (low, high) = summary["test/acc"], book["test_acc"]
    out["test_acc"] = {"value": test, "book": [low, high],
                       "position": "below" if test < low else "above" if test > high else "within"}
    out["reproduced"] = out["train_loss"]["ok"] and out["train_acc"]["ok"] and out["test_acc"]["position"] != "below"
    return out


def book_comparison(cfg: DictConfig, summary: dict[str, Any]) -> dict[str, Any] | None:
    """The summary's ``book`` entry: None unless this completed run is one of the book's recipes."""
    if summary.get("status") != "completed" or summary.get("test/acc") is None:
        return None
    recipe = recipe_of(cfg)
    return None if recipe is None else compare(recipe, summary)
