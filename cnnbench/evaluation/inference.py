"""A finished run, loaded for use: its config, its network with trained weights, its input contract.

``load_run(run_dir, checkpoint)`` reads the run's own ``.hydra/config.yaml``, rebuilds the network with
:func:`cnnbench.models.configured.model_from_config`, loads the weights with ``torch.load(weights_only=True)`` and
returns a :class:`LoadedRun`; ``cnnbench eval``, ``predict`` and ``export`` all start here, so nobody
retypes a model, a resolution or a normalization. Every problem is one :class:`CnnbenchError` sentence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..confusion import class_names
from ..data import DeviceLoader, Split, load_splits
from ..data.loader import normalization
from ..data.sources import data_format
from ..devices import resolve_device
from ..errors import CheckpointError, ConfigError, RunFolderError
from ..models.configured import image_size, model_from_config
from ..models.external import ModelBuildError, use_config_dir
from ..run.checkpoint import check_model_name, load_checkpoint
from ..run.recorded import compose_recorded
from ..runfolder.names import BEST_CHECKPOINT, CHECKPOINT, CONFIG, HYDRA_DIR, read_summary
from ..speed.precision import Precision

logger = logging.getLogger(__name__)

SPLITS = ("test", "val")
CHECKPOINT_NAMES = {"last": CHECKPOINT, "best": BEST_CHECKPOINT}


@dataclass(frozen=True)
class InputContract:
    """What the network expects: (channels, side, side) float images scaled to [0, 1], then optionally
    standardized per channel; light objects on a dark background for the MNIST family (``mnist_style``),
    pictures as they are (RGB order for three channels) for image folders and CIFAR; and what its
    outputs mean."""

    channels: int
    side: int  # pixels
    normalize: tuple[list[float], list[float]] | None  # per-channel (mean, std) applied after scaling to [0, 1]
    classes: list[str]  # output index -> class name
    mnist_style: bool = True  # IDX datasets: light on dark, centred in 28x28 (predict converts pictures so)

    def as_dict(self) -> dict[str, Any]:
        return {
            "input": f"float32 (batch, {self.channels}, {self.side}, {self.side})",
            "scale": "uint8 pixels / 255 -> [0, 1]",
            "normalize": None if self.normalize is None else {"mean": self.normalize[0], "std": self.normalize[1]},
            "channels": "grey" if self.channels == 1 else "RGB",
            "convention": ("light object on a dark background, centred (as the MNIST family's images)"
                           if self.mnist_style else "pictures as they are, resized to the side (as in training)"),
            "output": "logits (batch, classes); softmax gives probabilities",
            "classes": self.classes,
        }


@dataclass
class LoadedRun:
    """A run folder's network, ready to evaluate (eval mode, on ``device``)."""

    run_dir: Path
    cfg: DictConfig
    model: nn.Module
    checkpoint: Path
    step: int  # optimizer steps behind the loaded weights
    device: torch.device
    contract: InputContract
    summary: dict[str, Any]  # the run's summary.json ({} when missing)

    def loader(self, split: Split, batch_size: int | None = None) -> DeviceLoader:
        """Batches of ``split`` prepared exactly as the run's own evaluation prepared them."""
        bs = batch_size or int(self.cfg.trainer.eval_batch_size or self.cfg.trainer.batch_size)
        return DeviceLoader(split, bs, self.device, resize=self.contract.side, shuffle=False,
                            normalize=self.contract.normalize, channels_last=self.speed("channels_last", False))

    @property
    def model_name(self) -> str:
        """The ``model.name`` the run trained (``lenet_bn``)."""
        return str(self.cfg.model.name)

    @property
    def dataset_name(self) -> str:
        return str(self.cfg.dataset.name)

    def split(self, which: str, data_root: str | None = None) -> Split:
        """The run's ``test`` or ``val`` split (:func:`eval_split`), its data read from ``data_root`` when the
        data moved since the run (:func:`with_data_root`), never downloaded."""
        return eval_split(with_data_root(self.cfg, data_root), which)

    def speed(self, key: str, default: Any) -> Any:
        """A speed setting the run trained (and evaluated) with, from its summary."""
        return (self.summary.get("speed") or {}).get(key, default)

    def precision(self) -> Precision:
        """The run's own precision (its test accuracy was measured with it), where this device has it."""
        name = str(self.speed("precision", "fp32"))
        if name == "fp16" and self.device.type != "cuda":
            name = "fp32"
        return Precision.create(name, self.device)


def read_run_config(run_dir: Path) -> DictConfig:
    """The composed config a run was trained with (Hydra's record in the run folder), read through the
    preparation step (:func:`cnnbench.run.recorded.compose_recorded`): keys added since at today's defaults."""
    if not run_dir.exists():
        raise RunFolderError(f"run folder {run_dir} does not exist")
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir} is a file, not a run folder")
    path = run_dir / CONFIG
    if not path.is_file():
        raise RunFolderError(f"{run_dir} is not a cnnbench run folder: {CONFIG} is missing")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # YAML errors come in several types; all mean an unreadable record
        raise RunFolderError(f"{path} cannot be read: {type(exc).__name__}") from None
    if not isinstance(cfg, DictConfig) or "model" not in cfg or "dataset" not in cfg:
        raise RunFolderError(f"{path} is not a cnnbench run config (no model or dataset)")
    cfg = compose_recorded(cfg, run_dir)  # an older cnnbench's record: today's shape, its facts kept
    _anchor_data_root(cfg, run_dir)
    return cfg


def _anchor_data_root(cfg: DictConfig, run_dir: Path) -> None:
    """A relative ``dataset.root`` (``../shared/data``) or image-folder ``dataset.path`` was relative to the
    folder the run was started from, which Hydra records (``hydra.runtime.cwd``): make it absolute, so any
    folder can read the run."""
    relative = [k for k in ("root", "path") if cfg.dataset.get(k) and not Path(str(cfg.dataset.get(k))).is_absolute()]
    if not relative:
        return
    try:
        cwd = OmegaConf.load(run_dir / HYDRA_DIR / "hydra.yaml").hydra.runtime.cwd
    except Exception:  # no Hydra record (a run made by train() directly): the paths stay as they are
        return
    for key in relative:
        cfg.dataset[key] = str(Path(str(cwd)) / str(cfg.dataset[key]))


def checkpoint_path(run_dir: Path, which: str) -> Path:
    """``last`` (last.pt), ``best`` (best.pt, written only by runs with a validation split) or a path."""
    if which not in CHECKPOINT_NAMES:
        path = Path(which).expanduser()
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        return path
    path = run_dir / CHECKPOINT_NAMES[which]
    if path.is_file():
        return path
    if which == "best":
        raise CheckpointError(f"{run_dir} has no {BEST_CHECKPOINT}: it is written only by runs with a validation "
                              "split (dataset.val_size > 0); use --checkpoint last")
    raise CheckpointError(f"{run_dir} has no {CHECKPOINT} (the run saved no checkpoint: trainer.checkpoint=false, "
                          "or it failed before its first epoch ended)")


def reported_weights(state: dict) -> dict:
    """The weights a run evaluated and reported: the EMA's when the run kept one (trainer.ema.decay;
    AveragedModel's ``module.*`` entries), else the trained weights."""
    ema = state.get("ema")
    if not ema:
        return state["model"]
    return {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}


def load_weights(model: nn.Module, cfg: DictConfig, path: Path) -> int:
    """Load a checkpoint's model weights into ``model`` (CPU); returns the checkpoint's step."""
    state = load_checkpoint(path)  # weights_only; refuses corrupt and foreign files, naming them
    check_model_name(state, path, str(cfg.model.name))
    try:
        model.load_state_dict(reported_weights(state))
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this run's {cfg.model.name} network: "
                              f"{str(exc).splitlines()[0]}") from None
    return int(state["step"])


def load_run(run_dir: Path | str, checkpoint: str = "last", device: str = "auto") -> LoadedRun:
    """The run's network with the weights of ``checkpoint`` (``last``, ``best`` or a path), eval mode."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    path = checkpoint_path(run_dir, checkpoint)
    model = network_of(cfg, run_dir)
    step = load_weights(model, cfg, path)
    target = resolve_device(device)
    contract = InputContract(int(cfg.dataset.in_channels), image_size(cfg), normalization(cfg.dataset),
                             class_names(cfg.dataset),
                             mnist_style=data_format(cfg.dataset) == "idx")
    summary, _ = read_summary(run_dir)  # {} when missing or unreadable
    if (summary.get("speed") or {}).get("channels_last"):
        model.to(memory_format=torch.channels_last)
    logger.info("loaded %s (%s, step %d) from %s", cfg.model.name, path.name, step, run_dir)
    return LoadedRun(run_dir, cfg, model.to(target).eval(), path, step, target, contract, summary)


def network_of(cfg: DictConfig, run_dir: Path) -> nn.Module:
    """The run's network, built from its config. A custom ``model.target`` is code: it is imported from the
    environment or the ``--config-dir`` the run was started with (where it still is, and never a folder inside
    the run folder), and the module is named; one that no longer imports is one sentence, not a traceback."""
    target = cfg.model.get("target") if cfg.model.get("name") == "custom" else None
    if target is None:
        return model_from_config(cfg)
    config_dir = recorded_config_dir(run_dir)
    use_config_dir(config_dir)
    module = str(target).partition(":")[0]
    logger.info("model.target %s: importing module %s from the environment%s", target, module,
                f" or {config_dir}" if config_dir else "")
    try:
        return model_from_config(cfg)
    except ModelBuildError as exc:
        raise ModelBuildError(f"{run_dir} trained a network from model.target {target}: {exc}") from None


def recorded_config_dir(run_dir: Path) -> str | None:
    """The ``--config-dir`` of the run's first start (Hydra's record), if that folder still exists and is not
    inside the run folder itself (a run folder holds results, never code to import)."""
    try:
        sources = OmegaConf.load(run_dir / HYDRA_DIR / "hydra.yaml").hydra.runtime.config_sources
    except Exception:  # noqa: BLE001 - no Hydra record (train() called directly): the environment alone
        return None
    run = run_dir.resolve()
    for source in sources:
        if source.provider == "command-line" and source.schema == "file":
            folder = Path(str(source.path)).resolve()
            if folder.is_dir() and run not in (folder, *folder.parents):
                return str(folder)
    return None


def with_data_root(cfg: DictConfig, root: str | None) -> DictConfig:
    """The config with ``dataset.root`` (an image folder's ``dataset.path``) replaced, for data that moved
    since the run, and downloads off, so evaluation never fetches data by surprise."""
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    if root is not None:
        cfg.dataset["path" if data_format(cfg.dataset) == "image_folder" else "root"] = root
    cfg.dataset.download = False
    return cfg


def eval_split(cfg: DictConfig, split: str) -> Split:
    """The images a run is evaluated on: its test split, or its validation split rebuilt from the config
    (``dataset.val_size`` examples held out of the training split, stratified, seeded by ``dataset.val_seed``)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use test or val")
    if split == "val" and not cfg.dataset.get("val_size", 0):
        raise ConfigError(f"the run has no validation split (dataset.val_size is {cfg.dataset.get('val_size') or 0}); "
                          "evaluate it with --split test")
    splits = load_splits(cfg)
    return splits.test if split == "test" else splits.val
