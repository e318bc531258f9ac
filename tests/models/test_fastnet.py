"""FastNet (:mod:`cnnbench.models.fastnet`): listed after the book's families and said not to be from the book;
its block shapes at 28."""

from __future__ import annotations

from cnnbench.models import build_model, get_model_spec, list_models
from cnnbench.models.stats import block_shapes

FASTNET = ["fastnet_s", "fastnet_m", "fastnet_l"]  # beyond the book, registered after its families


def test_fastnet_comes_after_the_books_families_and_says_it_is_not_from_the_book():
    assert list_models()[-len(FASTNET):] == FASTNET == list_models("fastnet*")
    for name in FASTNET:
        spec = get_model_spec(name)
        assert (spec.family, spec.book_resolution, spec.min_resolution) == ("fastnet", 28, 8)
        assert "Not from the book" in spec.description


def test_fastnet_s_block_shapes_at_28():
    shapes = [b.shape for b in block_shapes(build_model("fastnet_s"), 1, 28)]
    assert shapes == [(1, 16, 14, 14), (1, 32, 7, 7), (1, 64, 3, 3), (1, 64, 1, 1), (1, 64), (1, 10), (1, 10)]
