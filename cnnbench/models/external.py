"""Networks from outside the book: your own factory, torchvision's classification models, timm's.

Three registry *sources* (``source=True``, so ``list_models()`` leaves them out): each builds the network
its ``model.*`` arguments name, for the data's channels and classes.

- ``model=custom model.target=package.module:factory`` (+ ``+model.kwargs.NAME=VALUE``): the module is
  imported from the environment or from the ``--config-dir`` folder of the command (:func:`use_config_dir`),
  never from a run folder; the factory is called as ``factory(in_channels=C, num_classes=K, **kwargs)``
  (plus ``image_size=S`` when its signature names it).
- ``model=torchvision model.arch=NAME``: ``torchvision.models.get_model(NAME, weights=None, num_classes=K)``
  with its first convolution rebuilt for C input channels (nothing is downloaded).
- ``model=timm model.arch=NAME``: ``timm.create_model(NAME, pretrained=False, in_chans=C, num_classes=K)``
  (``pip install 'cnnbench[timm]'``).

Every failure is one :class:`ModelBuildError` sentence: a module that does not import (the module and its
error), a factory that raises (its message), an unknown name (the closest ones), timm missing (the install
command), an output that is not ``(batch, classes)`` (:func:`check_output`).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import logging
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CnnbenchError
from .registry import ModelKwarg, register_model

logger = logging.getLogger(__name__)

__all__ = [
    "ModelBuildError",
    "use_config_dir",
    "config_dirs",
    "import_target",
    "check_output",
    "network_record",
    "torchvision_names",
    "library_names",
    "TIMM_INSTALL",
]

TIMM_INSTALL = "pip install 'cnnbench[timm]' (or pip install timm)"
# A source network gets the data's side, as the book's networks get theirs: Fashion-MNIST's 28 pixels
# unless dataset.resize says otherwise (32 for CIFAR, 224 for ImageNet-sized networks such as ViT).
DEFAULT_SIDE = 28
TARGET_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class ModelBuildError(CnnbenchError, ValueError):
    """A network from outside the book that cannot be imported, built or run on the data's input."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


# ----------------------------------------------------------------------------------------- where imports look

_CONFIG_DIRS: list[str] = []  # --config-dir folders of this command, searched after the environment


def use_config_dir(path: str | Path | None) -> None:
    """Let ``model.target`` modules be imported from ``path`` (the command's ``--config-dir``), searched
    after the environment's own paths so that a file there cannot shadow an installed package."""
    if path is None:
        return
    folder = str(Path(path).resolve())
    if folder not in _CONFIG_DIRS:
        _CONFIG_DIRS.append(folder)


def config_dirs() -> list[str]:
    """The folders ``model.target`` is imported from besides the environment: those given to
    :func:`use_config_dir`, and inside a Hydra job (a launcher's own process) the job's ``--config-dir``."""
    folders = list(_CONFIG_DIRS)
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            for source in HydraConfig.get().runtime.config_sources:
                if source.provider == "command-line" and source.schema == "file":
                    folder = str(Path(source.path).resolve())
                    folders += [] if folder in folders else [folder]
    except Exception:  # noqa: BLE001 - no Hydra job: only the folders given
        pass
    return folders


def _where() -> str:
    dirs = config_dirs()
    return "the environment" + (f" and --config-dir {', '.join(dirs)}" if dirs else " (no --config-dir given)")


def import_target(target: str) -> Callable[..., Any]:
    """The callable ``package.module:attribute`` names, imported from the environment or a config dir."""
    if target in (None, "", "???"):
        raise ModelBuildError("model.target is not set: model=custom needs model.target=package.module:factory")
    if not isinstance(target, str) or not TARGET_PATTERN.match(target):
        raise ModelBuildError(f"model.target must be package.module:factory (e.g. mynets:small_cnn), got {target!r}")
    module_name, _, attribute = target.partition(":")
    for folder in config_dirs():
        if folder not in sys.path:
            sys.path.append(folder)
    importlib.invalidate_caches()  # a file written since the last import (tests, notebooks)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - ImportError, SyntaxError, anything its top level raises
        raise ModelBuildError(f"model.target {target}: cannot import module {module_name!r} from {_where()}: "
                              f"{_first_line(exc)}") from None
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ModelBuildError(f"model.target {target}: module {module_name} ({getattr(module, '__file__', '?')}) "
                                  f"has no {attribute!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelBuildError(f"model.target {target} is a {type(obj).__name__}, not a function or class")
    return obj


def _call(what: str, build: Callable[[], Any]) -> nn.Module:
    """``build()``, its exception as one sentence naming ``what``, its result checked to be a module."""
    try:
        model = build()
    except CnnbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code may raise anything: its message, one line
        raise ModelBuildError(f"{what} raised {_first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ModelBuildError(f"{what} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


# ---------------------------------------------------------------------------------------------- the sources

TARGET = ModelKwarg("package.module:factory (a callable returning an nn.Module)",
                    lambda v: isinstance(v, str) and bool(TARGET_PATTERN.match(v)), "mynets:small_cnn")
KWARGS = ModelKwarg("a mapping of keyword arguments (+model.kwargs.NAME=VALUE)",
                    lambda v: isinstance(v, Mapping) and all(isinstance(k, str) for k in v), {})
ARCH = ModelKwarg("a model name (a non-empty string)", lambda v: isinstance(v, str) and bool(v.strip()), "resnet18")


def _takes(factory: Callable[..., Any], name: str) -> bool:
    """Whether ``factory`` accepts keyword ``name`` (named in its signature, or through ``**kwargs``)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature: assume it does
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


@register_model("custom", family="custom", book_resolution=DEFAULT_SIDE, source=True,
                description="your own network: model.target=package.module:factory",
                kwargs={"target": TARGET, "kwargs": KWARGS})
def custom_network(in_channels: int = 1, num_classes: int = 10, image_size: int = DEFAULT_SIDE, target: str = "",
                   kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """The network ``factory(in_channels=C, num_classes=K, **kwargs)`` of ``target`` returns."""
    factory = import_target(target)
    args = dict(kwargs or {})
    for name in ("in_channels", "num_classes"):
        if not _takes(factory, name):
            raise ModelBuildError(f"model.target {target} must take the keyword argument {name} (cnnbench passes "
                                  "in_channels and num_classes from the data)")
    params = _signature_names(factory)
    if "image_size" in params and "image_size" not in args:
        args["image_size"] = image_size  # pixels, square inputs
    return _call(f"model.target {target}",
                 lambda: factory(in_channels=in_channels, num_classes=num_classes, **args))


def _signature_names(factory: Callable[..., Any]) -> set[str]:
    try:
        return set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return set()


def torchvision_names() -> list[str]:
    """Every classification network of ``torchvision.models`` (not detection, segmentation, video...)."""
    import torchvision.models as tvm

    return list(tvm.list_models(module=tvm))


def library_names(library: str, pattern: str | None = None) -> list[str]:
    """The names ``model=torchvision`` or ``model=timm`` take as ``model.arch``, filtered by a shell pattern."""
    import fnmatch

    if library == "timm":
        try:
            import timm as timm_lib
        except ImportError:
            raise ModelBuildError(f"model=timm needs timm, which is not installed: {TIMM_INSTALL}") from None
        names = timm_lib.list_models()
    else:
        names = torchvision_names()
    return [n for n in names if not pattern or fnmatch.fnmatch(n, pattern)]


def _check_arch_given(library: str, arch: str) -> None:
    if arch in (None, "", "???"):
        raise ModelBuildError(f"model.arch is not set: model={library} needs model.arch=NAME "
                              f"(cnnbench models --from {library} lists the names)")


def _unknown(library: str, arch: str, names: list[str]) -> ModelBuildError:
    close = difflib.get_close_matches(arch, names, n=5, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    return ModelBuildError(f"model.arch={arch!r} is not a classification model of {library}{hint} "
                           f"({len(names)} names; cnnbench models --from {library} lists them)")


@register_model("torchvision", family="torchvision", book_resolution=DEFAULT_SIDE, source=True,
                description="a classification network of torchvision.models: model.arch=NAME",
                kwargs={"arch": ARCH, "kwargs": KWARGS})
def torchvision_network(in_channels: int = 1, num_classes: int = 10, image_size: int = DEFAULT_SIDE, arch: str = "",
                        kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """``torchvision.models.get_model(arch)`` untrained, its first convolution taking ``in_channels``."""
    import torchvision.models as tvm

    _check_arch_given("torchvision", arch)
    names = torchvision_names()
    if arch not in names:
        raise _unknown("torchvision", arch, names)
    args: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if arch in ("googlenet", "inception_v3"):
        # No auxiliary heads: in training they return a tuple, not (batch, classes) logits; init_weights
        # silences torchvision's warning about its default changing.
        args.update(aux_logits=False, init_weights=True)
    if arch.startswith("vit_"):
        args["image_size"] = image_size  # ViT's position embeddings are sized for the input (pixels)
    if arch.startswith("maxvit"):
        args["input_size"] = (image_size, image_size)
    args.update(kwargs or {})
    model = _call(f"torchvision.models.get_model({arch!r}) for {image_size}-pixel inputs "
                  "(dataset.resize sets the side)", lambda: tvm.get_model(arch, **args))
    return adapt_first_conv(model, in_channels)


def adapt_first_conv(model: nn.Module, in_channels: int) -> nn.Module:
    """Rebuild the first ``nn.Conv2d`` (in registration order, the input's) for ``in_channels`` channels,
    keeping its kernel, stride, padding and width; torchvision's networks all take 3."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return model
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            groups = module.groups if module.groups == 1 else 1  # a depthwise first layer cannot keep its groups
            setattr(parent, child, nn.Conv2d(in_channels, module.out_channels, module.kernel_size, module.stride,
                                             module.padding, module.dilation, groups, module.bias is not None,
                                             module.padding_mode))
            return model
    return model


@register_model("timm", family="timm", book_resolution=DEFAULT_SIDE, source=True,
                description="a network of timm (pytorch-image-models): model.arch=NAME",
                kwargs={"arch": ARCH, "kwargs": KWARGS})
def timm_network(in_channels: int = 1, num_classes: int = 10, image_size: int = DEFAULT_SIDE, arch: str = "",
                 kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """``timm.create_model(arch)`` untrained, with timm's own ``in_chans`` and ``num_classes``."""
    try:
        import timm as timm_lib
    except ImportError:
        raise ModelBuildError(f"model=timm needs timm, which is not installed: {TIMM_INSTALL}") from None
    _check_arch_given("timm", arch)
    names = timm_lib.list_models()
    if arch not in names:
        raise _unknown("timm", arch, names)
    args = {"pretrained": False, "in_chans": in_channels, "num_classes": num_classes}
    pretrained_cfg = timm_lib.models.get_pretrained_cfg(arch)
    if pretrained_cfg is not None and getattr(pretrained_cfg, "fixed_input_size", False):
        args["img_size"] = image_size  # ViT-like: position embeddings sized for the input (pixels)
    args.update(kwargs or {})
    return _call(f"timm.create_model({arch!r}) for {image_size}-pixel inputs (dataset.resize sets the side)",
                 lambda: timm_lib.create_model(arch, **args))


# ------------------------------------------------------------------------------------------- checks, records


def check_output(model: nn.Module, in_channels: int, num_classes: int, image_size: int, what: str) -> None:
    """Run a batch of two zero images (2, C, S, S) through ``model`` in training mode (as the trainer
    will) and refuse anything but a (2, classes) tensor, saying what it gave."""
    x = torch.zeros(2, in_channels, image_size, image_size)
    was_training = model.training
    model.train()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - the network's own forward: its message, one line
        raise ModelBuildError(f"{what} fails on a {tuple(x.shape)} input ({in_channels} channel(s), {image_size} "
                              f"pixels; dataset.resize sets the side): {_first_line(exc)}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ModelBuildError(f"{what} returns a {type(out).__name__} for a {tuple(x.shape)} input, not a "
                              f"(batch, classes) = (2, {num_classes}) tensor of logits")
    if tuple(out.shape) != (2, num_classes):
        raise ModelBuildError(f"{what} gives shape {tuple(out.shape)} for a {tuple(x.shape)} input, not "
                              f"(batch, classes) = (2, {num_classes})")


def network_record(name: str, kwargs: Mapping[str, Any], model: nn.Module) -> dict[str, Any]:
    """What a run records about its network beyond its config (checkpoint and summary.json): the module file
    a custom target came from, the torchvision/timm version, and a digest of the parameter and buffer names
    and shapes, which a resume compares (the same config builds another network once the file changed)."""
    layers = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    record: dict[str, Any] = {
        "name": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers_digest": hashlib.sha256(layers.encode()).hexdigest()[:16],
    }
    if name == "custom":
        module = sys.modules.get(str(kwargs.get("target", "")).partition(":")[0])
        record["target"] = kwargs.get("target")
        record["module_file"] = getattr(module, "__file__", None)
    elif name in ("torchvision", "timm"):
        record["arch"] = kwargs.get("arch")
        record["library"] = f"{name} {getattr(sys.modules.get(name), '__version__', '?')}"
    return record
