"""The CPU's fast 2x2 average pooling: ATen's numbers bit for bit, swapped in by cnnbench's build only."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cnnbench.cpu_kernels import AvgPool2x2, use_fast_pooling
from cnnbench.models import build_model


@pytest.mark.parametrize("shape,layout,dtype", [
    ((8, 6, 28, 28), torch.contiguous_format, torch.float32),
    ((8, 6, 28, 28), torch.channels_last, torch.float32),
    ((4, 3, 11, 9), torch.contiguous_format, torch.float32),  # odd sides: the last row/column is dropped
    ((4, 16, 10, 10), torch.contiguous_format, torch.float64),
    ((4, 16, 10, 10), torch.contiguous_format, torch.bfloat16),  # ATen's kernel (fp32 accumulation)
])
def test_fast_pool_matches_aten_forward_and_backward_exactly(shape, layout, dtype):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=dtype).contiguous(memory_format=layout)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref, out = nn.AvgPool2d(2, 2)(a), AvgPool2x2(2, 2)(b)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    poison = torch.full(shape, float("nan"), dtype=dtype)  # freed memory the next gradient may reuse:
    del poison  # a dropped row/column left unwritten would then show as NaN, not as a lucky zero
    out.backward(grad)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.equal(out, ref)
    assert torch.equal(b.grad, a.grad)
    assert b.grad.is_contiguous(memory_format=layout)


def test_only_2x2_stride_2_pools_are_swapped():
    model = nn.Sequential(nn.AvgPool2d(2, 2), nn.AvgPool2d(2), nn.AvgPool2d(3, 2), nn.AvgPool2d(2, 2, padding=1),
                          nn.AvgPool2d(2, 2, ceil_mode=True), nn.MaxPool2d(2, 2), nn.AdaptiveAvgPool2d(1))
    assert use_fast_pooling(model) == 2
    assert [type(m) for m in model] == [AvgPool2x2, AvgPool2x2, nn.AvgPool2d, nn.AvgPool2d, nn.AvgPool2d,
                                        nn.MaxPool2d, nn.AdaptiveAvgPool2d]


def test_the_book_models_pool_the_same_after_the_swap():
    for name, swaps in (("lenet", 2), ("lenet_bn", 2), ("densenet", 3)):
        torch.manual_seed(0)
        plain = build_model(name, in_channels=1, num_classes=10, image_size=96 if name == "densenet" else 28)
        fast = build_model(name, in_channels=1, num_classes=10, image_size=96 if name == "densenet" else 28)
        fast.load_state_dict(plain.state_dict())
        keys = set(fast.state_dict())
        assert use_fast_pooling(fast) == swaps, name
        assert set(fast.state_dict()) == keys  # no parameters or buffers: checkpoints are unchanged
        x = torch.randn(4, 1, *(2 * (96 if name == "densenet" else 28,)))
        plain.eval(), fast.eval()
        with torch.no_grad():
            assert torch.equal(fast(x), plain(x)), name


def test_the_run_uses_it_on_the_cpu_and_the_switch_turns_it_off(fake_data, tmp_path):
    """Same losses with and without it (bit for bit); the model trained really holds the fast pools."""
    from cnnbench.build import build_run
    from cnnbench.train import train

    from .conftest import compose_fast

    common = ("model=lenet_bn", "trainer.batch_size=32", "trainer.epochs=1", "trainer.limit_train_batches=4",
              "trainer.logs_per_epoch=4", "trainer.limit_eval_batches=1", "trainer.checkpoint=false")
    runs = {}
    for on in (True, False):
        cfg = compose_fast(fake_data, *common, f"device.fast_pooling={str(on).lower()}")
        pools = {type(m) for m in build_run(cfg, tmp_path / f"b{on}").model.modules() if isinstance(m, nn.AvgPool2d)}
        assert pools == ({AvgPool2x2} if on else {nn.AvgPool2d})
        summary = train(cfg, tmp_path / str(on))
        assert summary["status"] == "completed", summary["error"]
        assert summary["speed"]["fast_pooling"] is on
        lines = (tmp_path / str(on) / "metrics.jsonl").read_text().splitlines()
        runs[on] = [line for line in lines if '"kind": "train"' in line]
    assert len(runs[True]) == 4
    losses = [[json.loads(line)["train/loss"] for line in runs[on]] for on in (True, False)]
    assert losses[0] == losses[1]

