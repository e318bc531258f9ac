"""The pictures of ``cnnbench inspect`` (:mod:`cnnbench.inspection.pictures`): first-layer kernels in colour or
red-blue."""

from __future__ import annotations

import numpy as np
import torch


def test_kernels_are_drawn_in_colour_for_rgb_and_red_blue_for_grey():
    from cnnbench.inspection.pictures import kernels_picture

    green = torch.zeros(1, 3, 5, 5)
    green[0, 1] = 1.0  # a kernel that looks only at the green channel
    centre = np.asarray(kernels_picture(green))[40, 40]
    assert tuple(centre) == (0, 255, 0)
    grey = torch.tensor([[[[1.0, -1.0]]]])  # (1, 1, 1, 2): +1 then -1
    left, right = np.asarray(kernels_picture(grey))[10, [10, 70]].astype(int)  # drawn 80 x 40 pixels
    assert left[0] > left[2] + 50 and right[2] > right[0] + 50  # positive red, negative blue
