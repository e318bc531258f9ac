"""A step's roofline (cnnbench.speed.roofline): bytes moved op by op, the measured bandwidth, the binding bound."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnbench.models import build_model
from cnnbench.speed.roofline import ByteCounter, Roofline, measure_bandwidth, step_bytes


def test_bytes_are_what_each_op_reads_and_writes():
    a, b = torch.ones(64, 32, device="meta"), torch.ones(32, 16, device="meta")
    with ByteCounter() as counter:
        c = a @ b  # reads a and b, writes c
        c.view(-1)  # a view moves nothing
    assert counter.bytes == 4 * (64 * 32 + 32 * 16 + 64 * 16)


def test_a_step_moves_more_with_a_bigger_batch_and_less_in_bf16():
    model = build_model("lenet_bn", in_channels=1, num_classes=10)
    small, big = step_bytes(model, 64, 1, 28), step_bytes(model, 256, 1, 28)
    weights = 5 * 4 * sum(p.numel() for p in model.parameters())
    # activations grow with the batch; the weights' update does not
    assert big - weights == pytest.approx(4 * (small - weights), rel=0.02)
    assert step_bytes(model, 256, 1, 28, torch.bfloat16) < 0.7 * big
    assert all(p.device.type == "cpu" for p in model.parameters())  # the model itself is untouched


def test_the_binding_bound_and_the_fraction():
    roof = Roofline(flops=2e12, bytes=1e9, peak_flops=1e12, bandwidth=1e10)  # 2 s of arithmetic, 0.1 s of traffic
    assert roof.bound == "compute" and roof.bound_s == pytest.approx(2.0)
    assert roof.fraction(4.0) == pytest.approx(0.5)
    roof = Roofline(flops=1e9, bytes=1e10, peak_flops=1e12, bandwidth=1e10)
    assert roof.bound == "memory" and roof.bound_s == pytest.approx(1.0)


def test_the_bandwidth_is_measured():
    bandwidth = measure_bandwidth("cpu", megabytes=16, repeats=2)
    assert 1e8 < bandwidth < 1e13  # bytes/s: between a slow disk and no machine yet


def test_every_registered_network_has_a_step_to_count():
    from cnnbench.models import get_model_spec, list_models

    for name in list_models():  # at the side the book trains it at
        side = get_model_spec(name).book_resolution
        model = build_model(name, in_channels=1, num_classes=10)
        assert step_bytes(model, 2, 1, side) > sum(p.numel() for p in model.parameters()) * 4, name


def test_a_module_with_inplace_ops_is_counted(monkeypatch):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.LazyLinear(10))
    model(torch.zeros(1, 1, 8, 8))  # materialize the lazy layer
    assert step_bytes(model, 4, 1, 8) > 0
