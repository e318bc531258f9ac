"""GoogLeNet (:mod:`cnnbench.models.googlenet`): batch norm and the factorized 5x5 branch."""

from __future__ import annotations

from torch import nn

from cnnbench.models.stats import count_parameters
from tests.helpers import meta, types


def test_googlenet_batch_norm_and_factorized_5x5():
    bn = meta("googlenet", batch_norm=True)
    convs = [m for m in bn.modules() if isinstance(m, nn.Conv2d)]
    assert types(bn).count(nn.BatchNorm2d) == len(convs) == 57  # one after every conv (Inception-BN)
    fact = meta("googlenet", factorize=True)
    kernels = [m.kernel_size for m in fact.modules() if isinstance(m, nn.Conv2d)]
    assert (5, 5) not in kernels and kernels.count((3, 3)) == 1 + 9 + 2 * 9  # b2, path 2, path 3's pair
    assert count_parameters(fact) < count_parameters(meta("googlenet"))
