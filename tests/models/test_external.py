"""Networks from outside the book: a user's factory beside a --config-dir, torchvision's and timm's
classification networks, installed packages' entry points; trained through `cnnbench train`, read back by
eval/export/resume, and every bad input refused in one line before any run folder exists."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnbench.cli import main
from cnnbench.models import build_model, list_models, registry
from cnnbench.models.external import ModelBuildError, adapt_first_conv, check_output, torchvision_names
from tests.helpers import fast_overrides

# A few batches, small: each test trains through the real command line in seconds.
QUICK = ("trainer.epochs=1", "trainer.limit_train_batches=2", "trainer.batch_size=32", "trainer.limit_eval_batches=1",
         "trainer.checkpoint=true")
_NAMES = itertools.count()

NETS = '''
from torch import nn


def small_cnn(in_channels, num_classes, width=8):
    """A convolution, a pooling, a linear head: (batch, C, H, W) -> (batch, classes)."""
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, num_classes))


def raises(in_channels, num_classes):
    raise ValueError("width must be even, got 3")


def seven_outputs(in_channels, num_classes):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(7))


def no_classes(in_channels):
    return nn.Flatten()


class Sized(nn.Module):
    """A class as the target; its signature names image_size, so it gets the input side (pixels)."""

    def __init__(self, in_channels, num_classes, image_size):
        super().__init__()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))

    def forward(self, x):
        return self.head(x)
'''


def user_files(tmp_path: Path) -> tuple[Path, str]:
    """A --config-dir folder holding a Python file of networks under a module name no other test uses
    (imported modules stay in sys.modules for the session)."""
    conf = tmp_path / "myconf"
    conf.mkdir()
    module = f"usernets_{next(_NAMES)}_{tmp_path.name.replace('-', '_')}"
    (conf / f"{module}.py").write_text(NETS)
    return conf, module


def forget_imports(conf: Path, module: str, monkeypatch) -> None:
    """As a new process would start: the module not imported, its folder on no search path, so that what a
    command imports is found by that command alone."""
    from cnnbench.models import external

    monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setattr(external, "_CONFIG_DIRS", [])
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(conf)])


def train(*args: str) -> int:
    return main(["train", *args])


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


# ------------------------------------------------------------------------------------------- a user's file


def test_a_network_from_a_file_beside_the_config_dir_trains_evaluates_and_exports(fake_data, tmp_path, capsys,
                                                                                   monkeypatch):
    conf, module = user_files(tmp_path)
    run = tmp_path / "runs" / "custom"
    forget_imports(conf, module, monkeypatch)
    assert train("--config-dir", str(conf), "model=custom", f"model.target={module}:small_cnn",
                 "+model.kwargs.width=6", *fast_overrides(fake_data, *QUICK), f"hydra.run.dir={run}") == 0
    summary = summary_of(run)
    assert summary["status"] == "completed"
    assert summary["network"]["module_file"] == str(conf / f"{module}.py")
    assert summary["params"] == (1 * 9 + 1) * 6 + 6 * 10 + 10  # width 6 from +model.kwargs.width, 1 channel in
    forget_imports(conf, module, monkeypatch)  # eval finds the module from the run's recorded --config-dir
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    shown = capsys.readouterr()
    assert f"importing module {module} from the environment or {conf}" in shown.out + shown.err  # named
    assert main(["export", str(run), "--format", "torchscript"]) == 0


def test_a_factory_naming_image_size_gets_the_input_side(tmp_path, monkeypatch):
    from cnnbench.config import compose_config
    from cnnbench.models.configured import model_from_config
    from cnnbench.models.external import use_config_dir

    conf, module = user_files(tmp_path)
    forget_imports(conf, module, monkeypatch)
    use_config_dir(conf)
    cfg = compose_config(["model=custom", f"model.target={module}:Sized", "dataset.resize=20"])
    model = model_from_config(cfg)
    assert model.head[1].in_features == 20 * 20 and model.head[1].out_features == 10


def test_a_run_whose_module_is_gone_is_refused_in_one_line(fake_data, tmp_path, capsys):
    conf, module = user_files(tmp_path)
    run = tmp_path / "runs" / "custom"
    assert train("--config-dir", str(conf), "model=custom", f"model.target={module}:small_cnn",
                 *fast_overrides(fake_data, *QUICK), f"hydra.run.dir={run}") == 0
    (conf / f"{module}.py").rename(conf / f"{module}.txt")
    sys.modules.pop(module, None)
    capsys.readouterr()
    commands = (["eval", str(run)], ["export", str(run), "--format", "torchscript"],
                ["predict", str(run), str(tmp_path)])
    for command in commands:
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"cnnbench {command[0]}: error: ") and "Traceback" not in err
        assert f"cannot import module {module!r}" in err and f"No module named '{module}'" in err


def test_a_target_is_not_imported_from_a_run_folder(fake_data, tmp_path, capsys):
    """A module copied into the run folder (where the --config-dir was) is not code eval may run."""
    conf, module = user_files(tmp_path)
    run = conf / "run"  # the run folder inside the config dir: the recorded --config-dir is then its parent
    assert train("--config-dir", str(conf), "model=custom", f"model.target={module}:small_cnn",
                 *fast_overrides(fake_data, *QUICK), f"hydra.run.dir={run}") == 0
    from cnnbench.evaluation.inference import recorded_config_dir

    assert recorded_config_dir(run) == str(conf)
    inside = run / "nested_conf"
    inside.mkdir()
    hydra_yaml = run / ".hydra" / "hydra.yaml"
    hydra_yaml.write_text(hydra_yaml.read_text().replace(str(conf), str(inside)))
    assert recorded_config_dir(run) is None


def test_a_sweep_over_a_factorys_argument_is_reported_by_it(fake_data, tmp_path, capsys):
    conf, module = user_files(tmp_path)
    sweep = tmp_path / "sweep"
    assert train("-m", "--config-dir", str(conf), "model=custom", f"model.target={module}:small_cnn",
                 "+model.kwargs.width=4,8", *fast_overrides(fake_data, *QUICK), f"hydra.sweep.dir={sweep}") == 0
    capsys.readouterr()
    assert main(["report", str(sweep)]) == 0
    table = (sweep / "report.csv").read_text().splitlines()
    header = table[0].split(",")
    assert "model.kwargs.width" in header
    widths = sorted(row.split(",")[header.index("model.kwargs.width")] for row in table[1:])
    assert widths == ["4", "8"]


def test_resume_refuses_a_network_whose_file_changed(fake_data, tmp_path, capsys):
    conf, module = user_files(tmp_path)
    run = tmp_path / "runs" / "custom"
    args = ["--config-dir", str(conf), "model=custom", f"model.target={module}:small_cnn",
            *fast_overrides(fake_data, *QUICK), f"hydra.run.dir={run}"]
    assert train(*args) == 0
    source = conf / f"{module}.py"
    edited = source.read_text().replace("nn.ReLU(), nn.Adaptive", "nn.BatchNorm2d(width), nn.ReLU(), nn.Adaptive")
    source.write_text(edited)  # one BatchNorm more: 16 parameters
    sys.modules.pop(module, None)
    capsys.readouterr()
    assert train(*args, "trainer.resume=auto", "trainer.epochs=2") == 2
    err = capsys.readouterr().err
    assert "other layers than the one it trained" in err and "parameters: 170 -> 186" in err


# --------------------------------------------------------------------------------------- torchvision, timm


def test_a_torchvision_network_takes_the_datas_channels_and_classes():
    model = build_model("torchvision", in_channels=1, num_classes=7, image_size=32, arch="resnet18")
    assert (model.conv1.in_channels, model.conv1.out_channels, model.conv1.kernel_size) == (1, 64, (7, 7))
    assert model.fc.out_features == 7
    check_output(model, 1, 7, 32, "resnet18")


def test_the_first_convolution_is_rebuilt_in_place_of_the_input_one():
    net = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 5, stride=2, padding=2, bias=False)), nn.Conv2d(4, 8, 3))
    adapt_first_conv(net, 1)
    first, second = net[0][0], net[1]
    assert (first.in_channels, first.out_channels, first.kernel_size, first.stride, first.padding) == (1, 4, (5, 5),
                                                                                                       (2, 2), (2, 2))
    assert first.bias is None and second.in_channels == 4


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "googlenet", "squeezenet1_1", "efficientnet_b0",
                                  "shufflenet_v2_x0_5", "vit_b_32"])
def test_torchvision_families_build_for_grey_images(arch):
    side = 64 if arch == "vit_b_32" else 32
    with torch.device("meta"):  # shapes only
        model = build_model("torchvision", in_channels=1, num_classes=5, image_size=side, arch=arch)
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        assert first.in_channels == 1
        out = model.train()(torch.zeros(2, 1, side, side))
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (2, 5)  # googlenet: no auxiliary heads


@pytest.mark.slow
def test_every_torchvision_classification_network_builds_for_grey_images():
    """Every name of torchvision.models.list_models() on the meta device (RegNets, which compute their widths
    from tensors, on the CPU: the smallest one)."""
    for arch in torchvision_names():
        if arch.startswith("regnet") and arch != "regnet_x_400mf":
            continue
        side = 224 if arch.startswith(("vit_", "maxvit", "swin")) else 75 if arch == "inception_v3" else 64
        device = "cpu" if arch.startswith("regnet") else "meta"
        with torch.device(device):
            model = build_model("torchvision", in_channels=1, num_classes=5, image_size=side, arch=arch)
            assert next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels == 1, arch
            assert tuple(model.eval()(torch.zeros(2, 1, side, side)).shape) == (2, 5), arch


def test_a_torchvision_network_trains_through_the_command(fake_data, tmp_path):
    run = tmp_path / "runs" / "tv"
    assert train("model=torchvision", "model.arch=resnet18", "dataset.resize=32", "trainer.init=default",
                 *fast_overrides(fake_data, *QUICK), f"hydra.run.dir={run}") == 0
    summary = summary_of(run)
    assert summary["status"] == "completed" and summary["params"] == 11_175_370  # 1-channel stem, 10 classes
    assert summary["network"]["library"].startswith("torchvision ")


def test_a_timm_network_trains_through_the_command(fake_data, tmp_path):
    pytest.importorskip("timm")
    model = build_model("timm", in_channels=1, num_classes=7, image_size=32, arch="resnet18")
    assert model.conv1.in_channels == 1 and model.fc.out_features == 7  # timm's own in_chans, num_classes
    run = tmp_path / "runs" / "timm"
    assert train("model=timm", "model.arch=resnet10t", "dataset.resize=32", "+model.kwargs.drop_rate=0.1",
                 *fast_overrides(fake_data, *QUICK), f"hydra.run.dir={run}") == 0
    summary = summary_of(run)
    assert summary["status"] == "completed" and summary["network"]["library"].startswith("timm ")


def test_summary_shows_the_blocks_of_a_torchvision_network(capsys):
    assert main(["summary", "model=torchvision", "model.arch=mobilenet_v3_small", "dataset.resize=32"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("torchvision mobilenet_v3_small at 32x32")
    assert "Sequential features output shape:\ttorch.Size([1, 576, 1, 1])" in out
    assert "Sequential classifier output shape:\ttorch.Size([1, 10])" in out


def test_summary_builds_a_network_from_a_config_dir(tmp_path, capsys):
    conf, module = user_files(tmp_path)
    assert main(["summary", "--config-dir", str(conf), "model=custom", f"model.target={module}:small_cnn"]) == 0
    out = capsys.readouterr().out
    assert f"model.target {module}:small_cnn at 28x28" in out and "Linear output shape:\ttorch.Size([1, 10])" in out


def test_models_lists_the_names_a_library_takes(capsys):
    assert main(["models", "--from", "torchvision", "resnet1*"]) == 0
    assert capsys.readouterr().out.split() == ["resnet101", "resnet152", "resnet18"]
    assert not {"custom", "torchvision", "timm"} & set(list_models())  # sources, not networks


# ------------------------------------------------------------------------------------------------ bad input


def _refused(tmp_path: Path, capsys, *args: str) -> str:
    run = tmp_path / "never"
    capsys.readouterr()
    assert train(*args, f"hydra.run.dir={run}") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert not run.exists()  # nothing created
    return err


def test_bad_networks_are_one_line_before_any_folder(fake_data, tmp_path, capsys):
    conf, module = user_files(tmp_path)
    given = ["--config-dir", str(conf), *fast_overrides(fake_data), "model=custom"]
    err = _refused(tmp_path, capsys, *given, "model.target=nosuchpkg.nets:small")
    assert "cannot import module 'nosuchpkg.nets'" in err and "No module named 'nosuchpkg'" in err
    err = _refused(tmp_path, capsys, *given, f"model.target={module}:raises")
    assert err.endswith(f"model.target {module}:raises raised ValueError: width must be even, got 3")
    err = _refused(tmp_path, capsys, *given, f"model.target={module}:seven_outputs")
    assert "gives shape (2, 7) for a (2, 1, 28, 28) input, not (batch, classes) = (2, 10)" in err
    err = _refused(tmp_path, capsys, *given, f"model.target={module}:no_classes")
    assert "must take the keyword argument num_classes" in err
    err = _refused(tmp_path, capsys, *given, "model.target=not-a-target")
    assert "model.target must be package.module:factory" in err
    err = _refused(tmp_path, capsys, *given, f"model.target={module}:small_cnn", "+model.kwargs.depth=3")
    assert "got an unexpected keyword argument 'depth'" in err
    err = _refused(tmp_path, capsys, *given, f"model.target={module}:small_cnn", "+model.width=3")
    assert "takes no keyword argument 'width'" in err


def test_an_unknown_library_name_gives_the_closest_ones(fake_data, tmp_path, capsys):
    err = _refused(tmp_path, capsys, *fast_overrides(fake_data), "model=torchvision", "model.arch=resnet19")
    assert "model.arch='resnet19' is not a classification model of torchvision; closest: resnet18" in err
    err = _refused(tmp_path, capsys, *fast_overrides(fake_data), "model=torchvision", "model.arch=vit_b_16")
    assert "for 28-pixel inputs (dataset.resize sets the side)" in err  # 28 is no multiple of its patch


def test_timm_missing_names_the_install_command(fake_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    err = _refused(tmp_path, capsys, *fast_overrides(fake_data), "model=timm", "model.arch=resnet18")
    assert "model=timm needs timm, which is not installed: pip install 'cnnbench[timm]'" in err


# ---------------------------------------------------------------------------------------------- entry points

PLUGIN = '''
from torch import nn


def tiny_plugin_net(in_channels=1, num_classes=10, image_size=28):
    """A plugin's network: global pooling and a linear layer."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes))
'''


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A package installed the way pip leaves one (a module and a dist-info with entry_points.txt) on
    sys.path, declaring network ``tiny_plugin_net`` in group cnnbench.models; the registry and Hydra's
    ConfigStore as they were afterwards."""
    from hydra.core.config_store import ConfigStore

    site = tmp_path / "site"
    (site / "cnnbench_tiny_plugin").mkdir(parents=True)
    (site / "cnnbench_tiny_plugin" / "__init__.py").write_text(PLUGIN)
    info = site / "cnnbench_tiny_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cnnbench-tiny-plugin\nVersion: 0.1\n")
    entry = "tiny_plugin_net = cnnbench_tiny_plugin:tiny_plugin_net"
    (info / "entry_points.txt").write_text(f"[cnnbench.models]\n{entry}\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ENTRY_POINTS_READ", [])
    registry.load_entry_points(force=True)
    yield "tiny_plugin_net"
    ConfigStore.instance().repo.get("model", {}).pop("tiny_plugin_net.yaml", None)
    monkeypatch.undo()
    registry.load_entry_points(force=True)


def test_an_installed_packages_network_is_listed_and_trains(installed_plugin, fake_data, tmp_path, capsys):
    assert installed_plugin in list_models()
    assert registry.get_model_spec(installed_plugin).family == "cnnbench-tiny-plugin"
    assert main(["models", "tiny_*"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split() == ["tiny_plugin_net", "cnnbench-tiny-plugin", "20", "20",
                                                                 "28", "1"]
    run = tmp_path / "runs" / "plugin"
    assert train(f"model={installed_plugin}", *fast_overrides(fake_data, *QUICK), f"hydra.run.dir={run}") == 0
    assert summary_of(run)["params"] == 1 * 10 + 10


def test_a_broken_plugin_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    site = tmp_path / "site"
    info = site / "broken_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[cnnbench.models]\nbroken_net = not_installed_module:net\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ENTRY_POINTS_READ", [])
    with caplog.at_level("WARNING"):
        assert registry.load_entry_points(force=True) == []
    assert "skipped the networks of entry point broken_net" in caplog.text and "broken-plugin" in caplog.text
    monkeypatch.undo()
    registry.load_entry_points(force=True)


def test_a_source_network_is_checked_but_a_wrong_output_type_named(tmp_path):
    class TwoHeads(nn.Module):
        def forward(self, x):
            return x.mean(), x.sum()

    with pytest.raises(ModelBuildError, match=r"returns a tuple for a \(2, 1, 28, 28\) input"):
        check_output(TwoHeads(), 1, 10, 28, "two heads")
