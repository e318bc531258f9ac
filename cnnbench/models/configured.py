"""The configured network: the ``model`` group's name and keyword arguments, sized for the dataset, and its
initialization (``trainer.init``)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..errors import ConfigError
from .external import network_record as _record
from .registry import build_model, check_model_kwargs, input_side

INIT_SCHEMES = ("xavier", "default")  # trainer.init


def image_size(cfg: DictConfig) -> int:
    """The input side (pixels): ``dataset.resize``, or the model's book resolution when it is null."""
    return input_side(cfg.model.name, cfg.dataset.resize)


def model_kwargs(cfg: DictConfig) -> dict:
    """The ``model`` group minus its name: the factory's keyword arguments."""
    return {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "name"}


@dataclass(frozen=True)
class Network:
    """The configured network as plain values: the ``model`` group's name and keyword arguments (no schema:
    each family declares its own, checked by the registry), sized for the data's channels, classes and the
    run's input side (pixels)."""

    name: str
    kwargs: dict
    in_channels: int
    num_classes: int
    side: int

    def build(self) -> nn.Module:
        """The network; a ``model.*`` value its family does not allow is refused in one line."""
        check_model_kwargs(self.name, self.kwargs)
        return build_model(self.name, in_channels=self.in_channels, num_classes=self.num_classes,
                           image_size=self.side, **self.kwargs)

    def label(self) -> str:
        """The network in a few words: ``lenet``, ``torchvision resnet18``, ``model.target mynets:small_cnn``."""
        if self.name == "custom" and self.kwargs.get("target"):
            return f"model.target {self.kwargs['target']}"
        if self.kwargs.get("arch"):
            return f"{self.name} {self.kwargs['arch']}"
        return self.name

    def record(self, model: nn.Module) -> dict:
        """The run's record of its network beyond the config (module file, library version, layer digest)."""
        return _record(self.name, self.kwargs, model)


def network_of(cfg: DictConfig) -> Network:
    """The :class:`Network` a composed config asks for."""
    return Network(str(cfg.model.name), model_kwargs(cfg), int(cfg.dataset.in_channels),
                   int(cfg.dataset.num_classes), image_size(cfg))


def model_from_config(cfg: DictConfig) -> nn.Module:
    """The configured network, sized for the dataset's channels, classes and the run's input side; a
    ``model.*`` value its family does not allow is refused in one line (``cnnbench summary`` too)."""
    return network_of(cfg).build()


def network_label(cfg: DictConfig) -> str:
    """The network in a few words: ``lenet``, ``torchvision resnet18``, ``model.target mynets:small_cnn``."""
    model = cfg.model
    if model.get("name") == "custom" and model.get("target"):
        return f"model.target {model.target}"
    if model.get("arch"):
        return f"{model.name} {model.arch}"
    return str(model.name)


def network_record(cfg: DictConfig, model: nn.Module) -> dict:
    """The run's record of its network beyond the config (module file, library version, layer digest)."""
    return _record(str(cfg.model.name), model_kwargs(cfg), model)


def init_weights(model: nn.Module, scheme: str) -> None:
    """``xavier``: the book's init_weights (Xavier-uniform on every Linear and Conv2d weight);
    ``default``: PyTorch's own initialization, left as it is."""
    if scheme not in INIT_SCHEMES:
        raise ConfigError(f"unknown trainer.init {scheme!r}; use xavier or default")
    if scheme == "default":
        return
    for m in model.modules():
        if type(m) in (nn.Linear, nn.Conv2d):  # exact types, as the book's type(m) == ... test
            nn.init.xavier_uniform_(m.weight)
