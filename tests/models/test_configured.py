"""The knobs of the book's families (``model.*``) and the configured network (:mod:`cnnbench.models.configured`):
each knob changes the layers, the configs' values are the book's, and bad settings get one line naming the
knob before anything runs (each family's own knobs: tests/models/test_<family>.py). Driven by the registry (its
declared keyword arguments and their example values) and by ``conf/model/``."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from cnnbench.config import compose_config, config_dir
from cnnbench.errors import CnnbenchError
from cnnbench.models import build_model, get_model_spec, list_models
from cnnbench.models.configured import model_from_config, model_kwargs
from cnnbench.models.registry import ModelArgumentError, models_taking
from tests.helpers import layers, meta

BOOK_FAMILIES = ("lenet", "alexnet", "vgg", "nin", "googlenet", "resnet", "densenet")
KNOBS = [(name, key) for name in list_models() if get_model_spec(name).family in BOOK_FAMILIES
         for key in get_model_spec(name).kwargs]
# Knobs whose example value leaves a network as it is, and why: the knob it depends on is off there.
NO_OP = {("lenet", "bn_position"): "lenet has no BatchNorm (model.batch_norm=false)",
         ("lenet_bn", "batch_norm"): "lenet_bn already has BatchNorm"}


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
    exactly (the same layers as the factory's defaults, which tests/models/test_registry.py pins)."""
    if not (config_dir() / "model" / f"{name}.yaml").exists():
        pytest.skip(f"no conf/model/{name}.yaml")
    cfg = compose_config([f"model={name}"])
    assert set(model_kwargs(cfg)) == set(get_model_spec(name).kwargs)
    with torch.device("meta"):
        configured = model_from_config(cfg)
    assert layers(configured) == layers(meta(name))


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
