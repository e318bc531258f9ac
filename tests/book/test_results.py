"""The book's published figures (:mod:`cnnbench.book.results`): beside a book recipe's run, both editions and their
sources for every recipe."""

from __future__ import annotations

from omegaconf import OmegaConf

from cnnbench.config import compose_config


def test_a_book_recipe_gets_the_books_figures_beside_it():
    from cnnbench.book.results import book_comparison, published

    cfg = compose_config(["experiment=d2l_lenet"])
    editions = published()["d2l_lenet"]["editions"]
    losses = [e["train_loss"] for e in editions.values()]
    accs = [e["train_acc"] for e in editions.values()]
    tests = [e["test_acc"] for e in editions.values()]
    summary = {"status": "completed", "train/loss": min(losses) - 0.02, "train/acc": max(accs) + 0.005,
               "test/acc": max(tests) + 0.02}
    book = book_comparison(cfg, summary)
    assert book["recipe"] == "d2l_lenet" and book["reproduced"] is True
    assert book["test_acc"]["position"] == "above" and book["test_acc"]["book"] == [min(tests), max(tests)]
    worse = book_comparison(cfg, {**summary, "train/loss": max(losses) + 0.05, "test/acc": min(tests) - 0.01})
    assert worse["reproduced"] is False and worse["train_loss"]["ok"] is False
    assert worse["test_acc"]["position"] == "below"
    # Not the recipe any more (another rate, a validation split, another dataset): no comparison
    for change in ("optimizer.lr=0.5", "dataset.val_size=5000", "dataset=mnist", "trainer.epochs=3"):
        assert book_comparison(compose_config(["experiment=d2l_lenet", change]), summary) is None, change
    assert book_comparison(compose_config(["experiment=d2l_lenet", "device=fast", "trainer.seed=3"]),
                           summary) is not None  # device and seed are not part of the recipe
    # A run recorded before the network's knobs existed is the book's network; a knob set otherwise is not
    old = compose_config(["experiment=d2l_lenet"])
    old.model = OmegaConf.create({"name": "lenet"})
    assert book_comparison(old, summary)["recipe"] == "d2l_lenet"
    assert book_comparison(compose_config(["experiment=d2l_lenet", "model.pooling=max"]), summary) is None


def test_every_book_recipe_has_both_editions_and_sources():
    from cnnbench.book.results import published
    from cnnbench.commands.bench import book_recipes

    assert sorted(published()) == sorted(book_recipes())
    for recipe, entry in published().items():
        assert set(entry["editions"]) == {"classic_v0.17", "zh_v2.0.0"}, recipe
        for edition in entry["editions"].values():
            assert edition["source"].startswith("http"), recipe
            assert 0 < edition["train_loss"] < 2.5
            assert 0.1 < edition["train_acc"] <= 1 and 0.1 < edition["test_acc"] <= 1
