"""NiN (:mod:`cnnbench.models.nin`): the number of 1x1 convolutions per block."""

from __future__ import annotations

from torch import nn

from tests.helpers import meta


def test_nin_number_of_1x1_convs():
    for n in (0, 1, 3):
        ones = [m for m in meta("nin", num_1x1=n).modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
        assert len(ones) == 4 * n
