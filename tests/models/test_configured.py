"""The knobs of the book's families (``model.*``): each changes the layers it names, the configs' values are the
book's, and bad settings get one line naming the knob before anything runs. Driven by the registry (its
declared keyword arguments and their example values) and by ``conf/model/``."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from cnnbench.config import compose_config, config_dir
from cnnbench.errors import CnnbenchError
from cnnbench.models import build_model, get_model_spec, list_models
from cnnbench.models.configured import model_from_config, model_kwargs
from cnnbench.models.registry import ModelArgumentError, models_taking
from cnnbench.models.stats import count_parameters

BOOK_FAMILIES = ("lenet", "alexnet", "vgg", "nin", "googlenet", "resnet", "densenet")
KNOBS = [(name, key) for name in list_models() if get_model_spec(name).family in BOOK_FAMILIES
         for key in get_model_spec(name).kwargs]
# Knobs whose example value leaves a network as it is, and why: the knob it depends on is off there.
NO_OP = {("lenet", "bn_position"): "lenet has no BatchNorm (model.batch_norm=false)",
         ("lenet_bn", "batch_norm"): "lenet_bn already has BatchNorm"}


def layers(model: nn.Module) -> list[str]:
    """Every leaf layer with its settings and shapes (``Conv2d(6, 16, kernel_size=(5, 5), ...)``), in order."""
    return [f"{type(m).__name__}({m.extra_repr()})" for m in model.modules() if not list(m.children())]


def types(model: nn.Module) -> list[type]:
    return [type(m) for m in model.modules() if not list(m.children())]


def meta(name: str, **kw) -> nn.Module:
    with torch.device("meta"):  # shapes only: VGG's 129M parameters take no memory
        return build_model(name, **kw)


@pytest.mark.parametrize("name,key", KNOBS)
def test_every_knob_changes_the_layers_and_its_example_builds_and_runs(name, key):
    """The registry's example value of each knob gives other layers than the book's (types, widths, kernels,
    probabilities), and a network that runs forward to (batch, classes) on the meta device."""
    spec = get_model_spec(name)
    example = spec.kwargs[key].example
    assert spec.kwargs[key].valid(example)
    side = max(spec.min_resolution, 32)
    changed = meta(name, image_size=side, **{key: example})
    if (name, key) in NO_OP:
        assert layers(changed) == layers(meta(name, image_size=side)), NO_OP[(name, key)]
        return
    assert layers(changed) != layers(meta(name, image_size=side)), f"{name}: model.{key}={example!r} changed nothing"
    assert changed(torch.empty(2, 1, side, side, device="meta")).shape == (2, 10)


@pytest.mark.parametrize("name", [n for n in list_models() if get_model_spec(n).family in BOOK_FAMILIES])
def test_the_model_configs_hold_the_books_values(name):
    """conf/model/NAME.yaml names every knob its family declares, with values that build the book's network
    exactly (the same layers as the factory's defaults, which tests/test_models.py pins)."""
    if not (config_dir() / "model" / f"{name}.yaml").exists():
        pytest.skip(f"no conf/model/{name}.yaml")
    cfg = compose_config([f"model={name}"])
    assert set(model_kwargs(cfg)) == set(get_model_spec(name).kwargs)
    with torch.device("meta"):
        configured = model_from_config(cfg)
    assert layers(configured) == layers(meta(name))


# ------------------------------------------------------------------------------------------------ LeNet


def test_lenet_pooling_and_activation_swap_the_layers_they_name():
    model = build_model("lenet", pooling="max", activation="relu")
    kinds = types(model)
    assert kinds.count(nn.MaxPool2d) == 2 and nn.AvgPool2d not in kinds
    assert kinds.count(nn.ReLU) == 4 and nn.Sigmoid not in kinds
    assert types(build_model("lenet", activation="tanh")).count(nn.Tanh) == 4


def test_lenet_channels_kernels_and_hidden_set_the_shapes():
    model = build_model("lenet", channels=[16, 32, 64], kernel_sizes=[3], hidden=[256])
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [tuple(c.weight.shape) for c in convs] == [(16, 1, 3, 3), (32, 16, 3, 3), (64, 32, 3, 3)]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    # 28 (padded by 2) -> conv3 30 -> pool 15 -> conv3 13 -> pool 6 -> conv3 4 -> pool 2: 64 * 2 * 2 features
    assert [(m.in_features, m.out_features) for m in linears] == [(256, 256), (256, 10)]
    assert [m.out_features for m in build_model("lenet", hidden=[]) if isinstance(m, nn.Linear)] == [10]


def test_lenet_batch_norm_place_bias_and_dropout():
    after = build_model("lenet_bn", bn_position="after")
    assert [type(m) for m in after][:4] == [nn.Conv2d, nn.Sigmoid, nn.BatchNorm2d, nn.AvgPool2d]
    before = build_model("lenet_bn")
    assert [type(m) for m in before][:4] == [nn.Conv2d, nn.BatchNorm2d, nn.Sigmoid, nn.AvgPool2d]
    no_bias = build_model("lenet_bn", bias=False)
    weighted = [m for m in no_bias if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(m.bias is None for m in weighted[:-1]) and weighted[-1].bias is not None  # the classifier keeps its
    assert count_parameters(before) - count_parameters(no_bias) == 6 + 16 + 120 + 84
    drop = [m for m in build_model("lenet", dropout=0.3) if isinstance(m, nn.Dropout)]
    assert [m.p for m in drop] == [0.3, 0.3]  # after each hidden layer's activation
    assert nn.Dropout not in types(build_model("lenet"))  # the book's: no dropout layer at all


# ------------------------------------------------------------------------------------- AlexNet, VGG, NiN


def test_alexnet_widths_lrn_and_dropout():
    model = meta("alexnet", channels=[48, 128, 192, 192, 128], hidden=[1024], lrn=True, dropout=0.0)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [48, 128, 192, 192, 128]
    kinds = [type(m) for m in model]
    assert kinds.count(nn.LocalResponseNorm) == 2
    assert kinds[:4] == [nn.Conv2d, nn.ReLU, nn.LocalResponseNorm, nn.MaxPool2d]  # after the ReLU, before the pool
    assert [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)] == [(128 * 25, 1024),
                                                                                            (1024, 10)]
    assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.0]


def test_vgg_conv_arch_batch_norm_and_width():
    model = meta("vgg11", conv_arch=[[1, 64], [1, 128], [2, 256]], batch_norm=True, image_size=28)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 64]  # the book's divisor 4
    assert types(model).count(nn.BatchNorm2d) == 4 and types(model).count(nn.MaxPool2d) == 3
    assert next(m for m in model if isinstance(m, nn.Linear)).in_features == 64 * 3 * 3  # 28 -> 14 -> 7 -> 3
    wide = meta("vgg11", width_div=1)
    assert [m.out_channels for m in wide.modules() if isinstance(m, nn.Conv2d)][0] == 64


def test_nin_number_of_1x1_convs():
    for n in (0, 1, 3):
        ones = [m for m in meta("nin", num_1x1=n).modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
        assert len(ones) == 4 * n


# ------------------------------------------------------------------------------ GoogLeNet, ResNet, DenseNet


def test_googlenet_batch_norm_and_factorized_5x5():
    bn = meta("googlenet", batch_norm=True)
    convs = [m for m in bn.modules() if isinstance(m, nn.Conv2d)]
    assert types(bn).count(nn.BatchNorm2d) == len(convs) == 57  # one after every conv (Inception-BN)
    fact = meta("googlenet", factorize=True)
    kernels = [m.kernel_size for m in fact.modules() if isinstance(m, nn.Conv2d)]
    assert (5, 5) not in kernels and kernels.count((3, 3)) == 1 + 9 + 2 * 9  # b2, path 2, path 3's pair
    assert count_parameters(fact) < count_parameters(meta("googlenet"))


def test_resnet_block_order_stages_and_shortcut():
    from cnnbench.models.resnet import Bottleneck, Residual, ZeroPadShortcut

    bottleneck = meta("resnet18", block="bottleneck", stages=[[256, 1], [512, 1]])
    blocks = [m for m in bottleneck.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 2 and not any(isinstance(m, Residual) for m in bottleneck.modules())
    assert [tuple(c.weight.shape) for c in (blocks[0].conv1, blocks[0].conv2, blocks[0].conv3)] == [
        (64, 64, 1, 1), (64, 64, 3, 3), (256, 64, 1, 1)]  # the stem gives 256 / 4 channels
    pre = meta("resnet18", order="pre")
    first = next(m for m in pre.modules() if isinstance(m, Residual))
    assert first.pre and types(pre)[-5:-3] == [nn.BatchNorm2d, nn.ReLU]  # BN-ReLU once after the last sum
    x = torch.rand(2, 64, 8, 8)
    block = Residual(64, 64, order="pre").eval()
    # pre-activation: the output is conv2(relu(bn2(conv1(relu(bn1(x)))))) + x, no ReLU after the sum
    expected = block.conv2(torch.relu(block.bn2(block.conv1(torch.relu(block.bn1(x)))))) + x
    assert torch.allclose(block(x), expected)
    assert (block(x) < 0).any()
    zero = meta("resnet18", shortcut="zero_pad")
    assert types(zero).count(ZeroPadShortcut) == 3
    assert count_parameters(zero) < count_parameters(meta("resnet18"))
    assert types(meta("resnet18", shortcut="conv_bn")).count(nn.BatchNorm2d) == 17 + 3
    assert len([m for m in meta("resnet18", stages=[[64, 1], [128, 3]]).modules() if isinstance(m, Residual)]) == 4


def test_zero_pad_shortcut_keeps_the_input_and_adds_zero_channels():
    from cnnbench.models.resnet import ZeroPadShortcut

    x = torch.rand(1, 2, 4, 4)
    y = ZeroPadShortcut(2, 5, stride=2)(x)
    assert y.shape == (1, 5, 2, 2)
    assert torch.equal(y[:, :2], x[:, :, ::2, ::2]) and not y[:, 2:].any()


def test_densenet_growth_compression_pool_and_bottleneck():
    from cnnbench.models.densenet import DenseBlock

    model = meta("densenet", growth_rate=16, compression=0.25, transition_pool="max", bottleneck=True)
    transitions = [m for m in model if isinstance(m, nn.Sequential) and any(isinstance(k, nn.MaxPool2d) for k in m)
                   and any(isinstance(k, nn.Conv2d) and k.kernel_size == (1, 1) for k in m)]
    assert len(transitions) == 3 and nn.AvgPool2d not in types(model)
    first_block = next(m for m in model if isinstance(m, DenseBlock))
    assert first_block.out_channels == 64 + 4 * 16
    assert transitions[0][2].out_channels == int((64 + 4 * 16) * 0.25)
    kernels = [k.kernel_size for k in first_block.modules() if isinstance(k, nn.Conv2d)]
    assert kernels == [(1, 1), (3, 3)] * 4  # DenseNet-B: a 1x1 to 4 x growth before each 3x3
    assert first_block.net[0][2].out_channels == 4 * 16


# ------------------------------------------------------------------------------------------ bad settings


@pytest.mark.parametrize("overrides,words", [
    (["model.kernel_sizes=[5,5,5]", "model.channels=[6,16,32]"],
     "lenet cannot take 28x28 inputs with model.channels=[6, 16, 32], model.kernel_sizes=[5, 5, 5]"),
    (["model.kernel_sizes=[5,3,3]"], "model.kernel_sizes has 3 entries but model.channels has 2"),
    (["model=vgg11", "model.width_div=8", "model.conv_arch=[[1,12]]"], "model.width_div=8 does not divide"),
    (["model=vgg11", "dataset.resize=32", "model.conv_arch=[[1,64],[1,64],[1,64],[1,64],[1,64],[1,64]]"],
     "vgg11 cannot take 32x32 inputs with model.conv_arch=[[1, 64], [1, 64]"),
    (["model=resnet18", "model.shortcut=zero_pad", "model.stages=[[64,1],[32,1]]"], "model.shortcut=zero_pad"),
    (["model=densenet", "model.compression=0.001"], "model.compression=0.001 keeps no channel"),
    (["model.pooling=mean"], "model.pooling must be one of avg, max for lenet, got 'mean'"),
    (["model.dropout=1.0"], "model.dropout must be a number in [0, 1)"),
    (["model=resnet18", "model.block=wide"], "model.block must be one of basic, bottleneck"),
    (["model=vgg11", "model.conv_arch=[[1,64,3]]"], "model.conv_arch must be a non-empty list of"),
    (["+model.conv_arch=[[1,64]]"], "model lenet takes no keyword argument 'conv_arch'"),
])
def test_impossible_or_foreign_settings_are_one_line_naming_the_knob(fake_data, overrides, words):
    from cnnbench.run.validate import validate_config
    from tests.helpers import compose_fast

    with pytest.raises(CnnbenchError) as err:
        validate_config(compose_fast(fake_data, *overrides))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_knob_of_another_family_names_the_networks_that_take_it(fake_data, tmp_path):
    """``model.conv_arch=...`` on LeNet is not Hydra's bare "no such key": it says which networks take it,
    and no run folder is made."""
    from cnnbench.commands.launch import parse_command_line, preflight
    from tests.helpers import fast_overrides

    assert models_taking("conv_arch") == ["vgg11", "vgg11_full", "vgg13", "vgg16", "vgg19"]
    out = tmp_path / "run"
    line = parse_command_line([*fast_overrides(fake_data), "model.conv_arch=[[1,64]]", f"hydra.run.dir={out}"])
    with pytest.raises(CnnbenchError, match="it is a knob of vgg11, vgg11_full, vgg13, vgg16, vgg19"):
        preflight(line)
    assert not out.exists()


def test_model_argument_errors_are_cnnbench_errors():
    with pytest.raises(ModelArgumentError):
        build_model("lenet", channels=[6], kernel_sizes=[5, 5])
    assert OmegaConf.is_list(compose_config(["model=vgg16"]).model.conv_arch)


def test_summary_shows_the_layers_and_counts_of_any_setting(capsys):
    """``cnnbench summary NAME model.KNOB=...``: the layer table, parameters and FLOPs of that variant; a value
    the family does not allow is one line, exit 2."""
    from cnnbench.cli import main

    assert main(["summary", "lenet", "model.pooling=max", "model.activation=relu", "model.channels=[16,32]"]) == 0
    out = capsys.readouterr().out
    assert "MaxPool2d output shape:\ttorch.Size([1, 16, 14, 14])" in out and "Sigmoid" not in out
    assert "parameters: 120,382" in out and "forward FLOPs per image: 3,401,040" in out
    assert main(["summary", "lenet", "model.pooling=mean"]) == 2
    err = capsys.readouterr().err
    assert err == "cnnbench summary: error: model.pooling must be one of avg, max for lenet, got 'mean'\n"


def test_a_run_from_before_the_knobs_resumes_as_the_same_network():
    """A checkpoint whose model section has only ``name`` (written before the knobs existed) compares equal to
    today's config of that network: its absent knobs were the book's values. A changed knob is still a change."""
    from cnnbench.run.resume import config_changes

    cfg = compose_config(["model=lenet_bn"])
    saved = OmegaConf.to_container(cfg, resolve=True)
    saved["model"] = {"name": "lenet_bn"}
    assert config_changes(saved, cfg) == []
    changed = [str(c) for c in config_changes(saved, compose_config(["model=lenet_bn", "model.pooling=max"]))]
    assert changed == ["model.pooling: avg -> max"]
