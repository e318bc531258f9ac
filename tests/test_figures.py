"""The confusion and mistakes pictures (:mod:`cnnbench.figures`)."""

from __future__ import annotations

import numpy as np


def test_the_confusion_picture_colours_each_cell_by_its_share_of_the_true_class():
    from PIL import Image

    from cnnbench.figures import _blue, confusion_image

    counts = np.array([[9, 1, 0], [0, 0, 10], [5, 0, 5]])  # rows: true class
    image = confusion_image(counts, ["a", "b", "c"], title="t")
    grid = np.asarray(image.convert("RGB"))  # (H, W, 3)
    # the matrix's cells are squares of one colour each; find them as the pixels of each cell's colour
    for (i, j), share in {(0, 0): 0.9, (1, 2): 1.0, (2, 0): 0.5, (0, 2): 0.0}.items():
        assert (grid == np.array(_blue(share), dtype=np.uint8)).all(axis=2).sum() > 300, (i, j)
    assert _blue(0.0) == (247, 251, 255) and _blue(1.0) == (8, 48, 107)
    assert isinstance(image, Image.Image)
