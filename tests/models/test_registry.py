"""The registry (:mod:`cnnbench.models.registry`), driven by itself: every registered network, forward and backward
at its smallest input (and at its book resolution in the slow set), its parameter count and the operations its
forward pass calls."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.overrides import TorchFunctionMode

from cnnbench.config import compose_config
from cnnbench.models import (
    InputTooSmallError,
    UnknownModelError,
    build_model,
    get_model_spec,
    list_models,
    register_model,
)
from cnnbench.models.stats import count_parameters

BOOK_MODELS = ["lenet", "lenet_bn", "alexnet", "vgg11", "nin", "googlenet", "resnet18", "densenet"]

# Parameter counts at the book's resolution, 1 input channel, 10 classes: pins every architecture.
PARAMS = {
    "lenet": 61_706,
    "lenet_bn": 44_878,
    "alexnet": 46_764_746,
    "vgg11": 43_093_322,
    "vgg11_full": 128_806_154,
    "vgg13": 43_104_890,
    "vgg16": 43_436_986,
    "vgg19": 43_769_082,
    "nin": 1_992_166,
    "googlenet": 5_977_530,
    "resnet18": 11_178_378,
    "resnet34": 21_290_250,
    "densenet": 758_226,
    "fastnet_s": 116_602,
    "fastnet_m": 463_594,
    "fastnet_l": 6_571_978,
}

# The layers each forward pass calls (at the smallest input, batch 2), counted by torch function: pins what
# parameter counts cannot see (an activation or a pooling swapped, a residual addition or a concatenation
# dropped), the functional calls inside blocks included.
OPS = ("conv2d", "linear", "batch_norm", "sigmoid", "relu", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
       "adaptive_max_pool2d", "dropout", "cat", "add", "mul", "flatten")
FORWARD_OPS = {
    "lenet": {"avg_pool2d": 2, "conv2d": 2, "flatten": 1, "linear": 3, "sigmoid": 4},
    "lenet_bn": {"avg_pool2d": 2, "batch_norm": 4, "conv2d": 2, "flatten": 1, "linear": 3, "sigmoid": 4},
    "alexnet": {"conv2d": 5, "dropout": 2, "flatten": 1, "linear": 3, "max_pool2d": 3, "relu": 7},
    "vgg11": {"conv2d": 8, "dropout": 2, "flatten": 1, "linear": 3, "max_pool2d": 5, "relu": 10},
    "vgg11_full": {"conv2d": 8, "dropout": 2, "flatten": 1, "linear": 3, "max_pool2d": 5, "relu": 10},
    "vgg13": {"conv2d": 10, "dropout": 2, "flatten": 1, "linear": 3, "max_pool2d": 5, "relu": 12},
    "vgg16": {"conv2d": 13, "dropout": 2, "flatten": 1, "linear": 3, "max_pool2d": 5, "relu": 15},
    "vgg19": {"conv2d": 16, "dropout": 2, "flatten": 1, "linear": 3, "max_pool2d": 5, "relu": 18},
    "nin": {"adaptive_avg_pool2d": 1, "conv2d": 12, "dropout": 1, "flatten": 1, "max_pool2d": 3, "relu": 12},
    "googlenet": {"adaptive_avg_pool2d": 1, "cat": 9, "conv2d": 57, "flatten": 1, "linear": 1, "max_pool2d": 13,
                  "relu": 57},
    "resnet18": {"adaptive_avg_pool2d": 1, "add": 8, "batch_norm": 17, "conv2d": 20, "flatten": 1, "linear": 1,
                 "max_pool2d": 1, "relu": 17},
    "resnet34": {"adaptive_avg_pool2d": 1, "add": 16, "batch_norm": 33, "conv2d": 36, "flatten": 1, "linear": 1,
                 "max_pool2d": 1, "relu": 33},
    "densenet": {"adaptive_max_pool2d": 1, "avg_pool2d": 3, "batch_norm": 21, "cat": 16, "conv2d": 20,
                 "flatten": 1, "linear": 1, "max_pool2d": 1, "relu": 21},
    "fastnet_s": {"adaptive_max_pool2d": 1, "add": 2, "batch_norm": 7, "conv2d": 7, "flatten": 1, "linear": 1,
                  "max_pool2d": 3, "mul": 1, "relu": 7},
    "fastnet_m": {"adaptive_max_pool2d": 1, "add": 2, "batch_norm": 7, "conv2d": 7, "flatten": 1, "linear": 1,
                  "max_pool2d": 3, "mul": 1, "relu": 7},
    "fastnet_l": {"adaptive_max_pool2d": 1, "add": 2, "batch_norm": 8, "conv2d": 8, "flatten": 1, "linear": 1,
                  "max_pool2d": 3, "mul": 1, "relu": 8},
}


class CountCalls(TorchFunctionMode):
    """Counts the torch functions called inside the ``with`` block, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls[getattr(func, "__name__", str(func))] += 1
        return func(*args, **(kwargs or {}))


def test_registry_holds_the_books_networks_in_chapter_order():
    names = list_models()
    assert [n for n in names if n in BOOK_MODELS] == BOOK_MODELS
    assert set(PARAMS) == set(names)
    assert list_models("vgg*") == ["vgg11", "vgg11_full", "vgg13", "vgg16", "vgg19"]


def forward_backward(model: torch.nn.Module, side: int, in_channels: int = 1) -> torch.Tensor:
    """Logits of a batch of 2 random images, after checking that every parameter gets a gradient."""
    out = model(torch.rand(2, in_channels, side, side))  # (B, C, H, W) -> (B, classes)
    assert torch.isfinite(out).all()
    out.sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
    return out


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_at_the_smallest_input_calls_the_books_layers(name):
    side = get_model_spec(name).min_resolution
    model = build_model(name, image_size=side)
    x = torch.rand(2, 1, side, side)  # (B, C, H, W)
    with CountCalls() as counter:
        out = model(x)
    assert {op: n for op, n in counter.calls.items() if op in OPS} == FORWARD_OPS[name]
    assert out.shape == (2, 10)
    forward_backward(model, side)


@pytest.mark.parametrize("name", list_models())
def test_parameter_count_at_book_resolution(name):
    with torch.device("meta"):  # counts shapes only: vgg11_full's 129M parameters take no memory
        model = build_model(name)
    assert count_parameters(model) == PARAMS[name]
    assert set(FORWARD_OPS) == set(list_models())


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_forward_backward_at_book_resolution(name):
    spec = get_model_spec(name)
    model = build_model(name)
    assert count_parameters(model) == PARAMS[name]
    x = torch.rand(2, 1, spec.book_resolution, spec.book_resolution)  # (B, C, H, W)
    out = model(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    out.sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("size", [28, 96])
def test_builds_at_other_resolutions_or_refuses_clearly(name, size):
    spec = get_model_spec(name)
    if size < spec.min_resolution:
        with pytest.raises(InputTooSmallError, match=f"smallest size that works is {spec.min_resolution}"):
            build_model(name, image_size=size)
        return
    model = build_model(name, image_size=size, in_channels=3, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, size, size)).shape == (1, 7)


@pytest.mark.parametrize("name", [n for n in list_models() if get_model_spec(n).min_resolution > 1])
def test_min_resolution_is_tight(name):
    """The smallest size named in the error really builds and runs; one pixel less really fails."""
    m = get_model_spec(name).min_resolution
    with torch.no_grad():
        assert build_model(name, image_size=m).eval()(torch.rand(1, 1, m, m)).shape == (1, 10)
    with pytest.raises(InputTooSmallError):
        build_model(name, image_size=m - 1)


def test_unknown_name_lists_valid_names_and_closest_match():
    with pytest.raises(UnknownModelError) as err:
        build_model("resnet81")
    msg = str(err.value)
    assert "unknown model 'resnet81'" in msg
    assert "Did you mean 'resnet18'?" in msg
    for name in list_models():
        assert name in msg


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_model("lenet", family="lenet", book_resolution=28)(lambda **kw: None)


def test_every_declared_model_argument_is_taken_by_its_factory():
    from cnnbench.models import build_model, get_model_spec, list_models

    for name in list_models():
        spec = get_model_spec(name)
        with torch.device("meta"):
            build_model(name, **{k: v.example for k, v in spec.kwargs.items()})
        for key, value in compose_config([f"model={name}"]).model.items():
            assert key == "name" or spec.kwargs[key].valid(value), (name, key, value)
