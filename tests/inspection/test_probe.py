"""Stage maps and Grad-CAM (:mod:`cnnbench.inspection.probe`): stages named and shaped as ``cnnbench summary`` prints
them, and the layer Grad-CAM looks at."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnbench.inspection.probe import InspectError, cam_layer, grad_cam, probe
from cnnbench.models import build_model, get_model_spec, list_models
from cnnbench.models.stats import block_shapes

SIDE = 28


@pytest.mark.parametrize("name", list_models())
def test_each_stage_map_is_named_and_shaped_as_summary_prints_it(name):
    """Every registered network: one map per summary block whose output is (C, H, W), in order, with its
    name; the Grad-CAM layer found and its map as large as the input."""
    spec = get_model_spec(name)
    side = spec.min_resolution
    model = build_model(name, in_channels=1, num_classes=10, image_size=side).eval()
    x = torch.rand(2, 1, side, side)
    seen = probe(model, x)
    summary = [(b.name, b.shape[1:]) for b in block_shapes(model, 1, side) if len(b.shape) == 4]
    assert [(s.name.split(". ", 1)[1], tuple(s.output.shape[1:])) for s in seen.stages] == summary
    assert all(s.output.shape[0] == 2 for s in seen.stages)
    assert seen.first_response is not None and seen.first_response.shape[0] == 2
    layer = cam_layer(model, seen.shapes)
    assert len(seen.shapes[layer]) == 4
    assert grad_cam(model, layer, x, [0, 3]).shape == (2, side, side)


def test_the_stages_of_a_wrapped_network_are_its_own():
    """A network held by a wrapper (one child: a custom model around a torchvision one) shows the inner blocks."""
    inner = build_model("lenet").eval()
    wrapped = nn.Sequential(inner).eval()
    x = torch.rand(1, 1, SIDE, SIDE)
    assert [(s.name, s.path.split(".")[-1]) for s in probe(wrapped, x).stages] == \
        [(s.name, s.path) for s in probe(inner, x).stages]


def test_the_cam_layer_is_the_last_conv_block_after_its_activation():
    """LeNet's second conv is read after its sigmoid (a conv's raw output can be all negative); ResNet's last
    residual stage; GoogLeNet's last Inception, inside the stage that pools and flattens."""
    expected = {"lenet": "4", "lenet_bn": "6", "resnet18": "4", "googlenet": "4.1", "alexnet": "11"}
    for name, layer in expected.items():
        side = get_model_spec(name).min_resolution
        model = build_model(name, image_size=side).eval()
        assert cam_layer(model, probe(model, torch.rand(1, 1, side, side)).shapes) == layer, name


def test_a_network_without_a_convolution_has_no_grad_cam():
    model = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 10)).eval()
    with pytest.raises(InspectError, match="has no convolution layer"):
        cam_layer(model, probe(model, torch.rand(1, 1, SIDE, SIDE)).shapes)
