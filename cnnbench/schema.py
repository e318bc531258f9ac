"""The config's schema: one dataclass per section and per group option, registered in Hydra's ConfigStore.

The YAML files under ``conf/`` keep the values; each names its schema first in its defaults list
(``defaults: [/schema/optimizer/sgd@_here_, _self_]``), as Hydra's structured-config schema tutorial
does, so that OmegaConf checks every value's type when the config is composed (``trainer.epochs=1.5``,
``device.fast_pooling=maybe`` fail there, with the key named) and refuses a key the schema does not have
(``optimizer.momentum`` on Adam).
Fields are ``MISSING`` unless a value is optional: the value lives in one place, the YAML file.

What a type cannot say (a learning rate above 0, a probability below 1) is checked by each section's
``check()`` (:func:`check_sections`), beside its fields; checks that need two sections or the data stay in
:mod:`cnnbench.run.validate`. The ``model`` group is not typed here: each family's factory declares its
keyword arguments, and :mod:`cnnbench.models.registry` checks them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional  # noqa: UP035 - OmegaConf reads Optional[...] annotations

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, ValidationError

from .errors import ConfigError


@dataclass(frozen=True)
class Range:
    """Allowed values of a number: ``low`` to ``high``, each end open or closed."""

    low: float = 0.0
    high: float = math.inf
    low_open: bool = False
    high_open: bool = True
    integer: bool = False  # the words only: the field's type makes it an integer

    def contains(self, v: float) -> bool:
        above = v > self.low if self.low_open else v >= self.low
        below = v < self.high if self.high_open else v <= self.high
        return above and below

    def words(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.high == math.inf and self.low == (0 if self.low_open else 1 if self.integer else None):
            return f"a positive {'integer' if self.integer else 'number'}"
        if self.high == math.inf:
            return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        low, high = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"{kind} in {low}{self.low:g}, {self.high:g}{high}"


POSITIVE = Range(0.0, low_open=True)
NON_NEGATIVE = Range(0.0)
COUNT = Range(1.0, integer=True)  # a positive integer
NON_NEGATIVE_INT = Range(0.0, integer=True)
UNIT = Range(0.0, 1.0)  # [0, 1): momentum-like decays and probabilities where 1 means "never moves"
PROBABILITY = Range(0.0, 1.0, high_open=False)


class Section:
    """A schema with ranges: ``RANGES`` maps a field to its :class:`Range` (lists: each item), checked
    by :meth:`check` on the section's values (a None value is not checked: off). Finiteness is checked
    for the whole tree at once (:func:`cnnbench.run.validate.check_finite`)."""

    RANGES: dict[str, Range] = {}

    def check(self, prefix: str) -> None:
        for name, allowed in self.RANGES.items():
            value = getattr(self, name)
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            for v in values:
                if v is not None and not allowed.contains(v):
                    shown = value if isinstance(value, (list, tuple)) else v
                    raise ConfigError(f"{prefix}.{name} must be {allowed.words()}, got {shown!r}")


# ------------------------------------------------------------------------------------------------ trainer


@dataclass
class EmaConfig(Section):
    decay: Optional[float] = MISSING  # noqa: UP045
    RANGES = {"decay": UNIT}


@dataclass
class EarlyStoppingConfig(Section):
    patience: Optional[int] = MISSING  # noqa: UP045
    min_delta: float = MISSING
    RANGES = {"patience": COUNT, "min_delta": NON_NEGATIVE}


@dataclass
class TrainerConfig(Section):
    epochs: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: Optional[int] = MISSING  # noqa: UP045
    seed: int = MISSING
    init: str = MISSING
    eval_every: int = MISSING
    logs_per_epoch: int = MISSING
    limit_train_batches: Optional[int] = MISSING  # noqa: UP045
    limit_eval_batches: Optional[int] = MISSING  # noqa: UP045
    checkpoint: bool = MISSING
    resume: Optional[str] = MISSING  # noqa: UP045
    resume_force: bool = MISSING
    deterministic: bool = MISSING
    grad_clip_norm: Optional[float] = MISSING  # noqa: UP045
    label_smoothing: float = MISSING
    ema: EmaConfig = field(default_factory=EmaConfig)
    tta: bool = MISSING
    target_acc: Optional[float] = MISSING  # noqa: UP045
    chance_patience: int = MISSING
    sync_batchnorm: bool = MISSING
    divergence_loss: Optional[float] = MISSING  # noqa: UP045 - null: never stop as diverged
    progress_bar: Any = MISSING  # auto | true | false
    monitor: Optional[str] = MISSING  # noqa: UP045
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    objective: str = MISSING  # checked by cnnbench.run.selection.objective_name
    RANGES = {
        "epochs": COUNT, "batch_size": COUNT, "eval_batch_size": COUNT,
        "limit_train_batches": COUNT, "limit_eval_batches": COUNT, "grad_clip_norm": POSITIVE,
        "eval_every": NON_NEGATIVE_INT,  # 0: only after the last epoch
        "logs_per_epoch": NON_NEGATIVE_INT, "chance_patience": NON_NEGATIVE_INT,  # 0: never warn
        "label_smoothing": UNIT, "target_acc": Range(0.0, 1.0, low_open=True, high_open=False),
        "divergence_loss": POSITIVE,  # nats
    }

    def check(self, prefix: str) -> None:
        from .models.configured import INIT_SCHEMES

        super().check(prefix)
        if self.init not in INIT_SCHEMES:
            raise ConfigError(f"{prefix}.init must be {' or '.join(INIT_SCHEMES)}, got {self.init!r}")
        self.ema.check(f"{prefix}.ema")
        self.early_stopping.check(f"{prefix}.early_stopping")


# ------------------------------------------------------------------------------------------------- groups


DATA_FORMATS = ("idx", "image_folder", "cifar")


@dataclass
class DatasetConfig(Section):
    """A dataset; ``in_channels``, ``num_classes`` and ``classes`` null: read from the data (image folders,
    CIFAR) and written into the run's config before its folder exists (:func:`cnnbench.data.settle_dataset`);
    ``mean``/``std`` a number, one per channel, or null: computed from the training images."""

    name: str = MISSING
    format: str = "idx"  # idx (MNIST family) | image_folder | cifar
    folder: Optional[str] = MISSING  # noqa: UP045 - idx: torchvision's layout <root>/<folder>/raw/<four IDX files>
    root: Optional[str] = MISSING  # noqa: UP045
    download: bool = MISSING
    resize: Optional[int] = MISSING  # noqa: UP045
    val_size: int = MISSING
    val_seed: int = MISSING
    in_channels: Optional[int] = MISSING  # noqa: UP045
    num_classes: Optional[int] = MISSING  # noqa: UP045
    normalize: bool = MISSING
    mean: Any = MISSING  # float | list[float] (one per channel) | null (computed from the training images)
    std: Any = MISSING
    classes: Optional[list[str]] = MISSING  # noqa: UP045
    RANGES = {"resize": COUNT, "val_size": NON_NEGATIVE_INT, "in_channels": COUNT,
              "num_classes": Range(2.0, integer=True)}

    def check(self, prefix: str) -> None:
        super().check(prefix)
        if self.format not in DATA_FORMATS:
            raise ConfigError(f"{prefix}.format must be {' or '.join(DATA_FORMATS)}, got {self.format!r}")
        for key, allowed in (("mean", Range(0.0, 1.0, high_open=False)), ("std", POSITIVE)):
            value = getattr(self, key)
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            if value is None:
                continue
            if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ConfigError(f"{prefix}.{key} must be a number, a list of one number per channel, or null "
                                  f"(computed from the training images), got {value!r}")
            for v in values:
                if not allowed.contains(v):
                    raise ConfigError(f"{prefix}.{key} must be {allowed.words()} (per channel), got {value!r}")
            if len(values) > 1 and self.in_channels is not None and len(values) != self.in_channels:
                raise ConfigError(f"{prefix}.{key} has {len(values)} values for {self.in_channels} channels")
        if self.classes is not None and self.num_classes is not None and len(self.classes) != self.num_classes:
            raise ConfigError(f"{prefix}.classes has {len(self.classes)} names for {self.num_classes} classes")


@dataclass
class ImageFolderConfig(DatasetConfig):
    path: Optional[str] = MISSING  # noqa: UP045 - ROOT holding train/<class>/, test/<class>/, optionally val/<class>/
    channels: Any = MISSING  # auto (3 when any image has colour, else 1) | 1 | 3
    image_size: Optional[int] = MISSING  # noqa: UP045 - stored side when sizes differ or exceed it (null: the run's)
    on_bad_image: str = MISSING  # skip (a warning naming them) | error
    decode_workers: Optional[int] = MISSING  # noqa: UP045 - processes decoding (null: one per CPU, at most 16)
    RANGES = {**DatasetConfig.RANGES, "image_size": COUNT, "decode_workers": COUNT}

    def check(self, prefix: str) -> None:
        super().check(prefix)
        if self.channels not in ("auto", 1, 3):
            raise ConfigError(f"{prefix}.channels must be auto, 1 or 3, got {self.channels!r}")
        if self.on_bad_image not in ("skip", "error"):
            raise ConfigError(f"{prefix}.on_bad_image must be skip or error, got {self.on_bad_image!r}")
        if not self.path:
            raise ConfigError(f"{prefix}.path is not set: dataset=image_folder needs {prefix}.path=ROOT, a folder "
                              "holding train/<class>/ and test/<class>/ sub-folders of images")


@dataclass
class SGDConfig(Section):
    name: str = MISSING
    lr: float = MISSING
    momentum: float = MISSING
    weight_decay: float = MISSING
    nesterov: bool = MISSING
    dampening: float = 0.0  # torch's default, which no recipe changes
    RANGES = {"lr": POSITIVE, "momentum": UNIT, "weight_decay": NON_NEGATIVE, "dampening": UNIT}

    def check(self, prefix: str) -> None:
        super().check(prefix)
        if self.nesterov and (not self.momentum or self.dampening):
            raise ConfigError(f"{prefix}.nesterov=true needs {prefix}.momentum > 0 and no dampening, "
                              f"got momentum {self.momentum}")


@dataclass
class AdamConfig(Section):
    name: str = MISSING
    lr: float = MISSING
    betas: list[float] = MISSING
    weight_decay: float = MISSING
    RANGES = {"lr": POSITIVE, "betas": UNIT, "weight_decay": NON_NEGATIVE}

    def check(self, prefix: str) -> None:
        if len(self.betas) != 2:
            raise ConfigError(f"{prefix}.betas must be two numbers in [0, 1), got {list(self.betas)}")
        try:
            super().check(prefix)
        except ConfigError as exc:
            if ".betas " not in str(exc):
                raise
            raise ConfigError(f"{prefix}.betas must be two numbers in [0, 1), got {list(self.betas)}") from None


@dataclass
class NoScheduleConfig(Section):
    name: str = MISSING


@dataclass
class CosineConfig(Section):
    name: str = MISSING
    warmup_epochs: float = MISSING
    eta_min: float = MISSING
    RANGES = {"warmup_epochs": NON_NEGATIVE, "eta_min": NON_NEGATIVE}


@dataclass
class StepConfig(Section):
    name: str = MISSING
    step_epochs: float = MISSING
    gamma: float = MISSING
    RANGES = {"step_epochs": POSITIVE, "gamma": POSITIVE}


ANNEALS = ("cos", "linear")  # how OneCycle's rate moves between its ends


@dataclass
class OneCycleConfig(Section):
    name: str = MISSING
    pct_start: float = MISSING
    div_factor: float = MISSING
    final_div_factor: float = MISSING
    anneal: str = MISSING  # cos | linear
    RANGES = {"pct_start": Range(0.0, 1.0, low_open=True), "div_factor": POSITIVE, "final_div_factor": POSITIVE}

    def check(self, prefix: str) -> None:
        super().check(prefix)
        if self.anneal not in ANNEALS:
            raise ConfigError(f"{prefix}.anneal must be {' or '.join(ANNEALS)}, got {self.anneal!r}")


@dataclass
class DeviceConfig(Section):
    type: str = MISSING
    precision: str = MISSING
    channels_last: Any = MISSING  # true | false | auto
    compile: Any = MISSING  # true | false | auto
    cudnn_benchmark: bool = MISSING
    num_threads: Any = MISSING  # auto (follow the load: cnnbench.speed.load) | null (torch's default) | N
    fused_optimizer: Any = MISSING  # true | false | auto
    fast_pooling: bool = MISSING
    fused_kernels: bool = MISSING
    conv_weight_grad: str = MISSING
    autotune: str = MISSING  # cached | refresh | always (cnnbench.speed.decisions)
    malloc_tuning: bool = MISSING
    index: Optional[int] = MISSING  # noqa: UP045


@dataclass
class NoAugmentConfig(Section):
    name: str = MISSING


@dataclass
class FlipCropConfig(Section):
    name: str = MISSING
    flip: float = MISSING  # probability of a horizontal flip
    crop_padding: int = MISSING  # pixels
    RANGES = {"flip": PROBABILITY, "crop_padding": NON_NEGATIVE_INT}


@dataclass
class StrongAugmentConfig(FlipCropConfig):
    erase: float = MISSING
    erase_scale: list[float] = MISSING
    erase_ratio: list[float] = MISSING
    erase_value: float = MISSING
    RANGES = {**FlipCropConfig.RANGES, "erase": PROBABILITY}


@dataclass
class TrainSchema:
    """The primary config (``train.yaml``): the groups' nodes take their options' schemas."""

    model: Any = MISSING  # each family's own keyword arguments (models.registry checks them)
    dataset: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    device: Any = MISSING
    augment: Any = MISSING
    logger: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    resume_sweep: bool = MISSING


# group -> {schema name: dataclass}; a YAML option lists its schema first in its defaults
# (kept under schema/GROUP, not in the group itself, so that they are not offered as options). The logger
# group's schemas live beside their trackers (cnnbench.tracking.registry).
GROUP_SCHEMAS: dict[str, dict[str, type]] = {
    "dataset": {"dataset": DatasetConfig, "image_folder": ImageFolderConfig},
    "optimizer": {"sgd": SGDConfig, "adam": AdamConfig},
    "scheduler": {"none": NoScheduleConfig, "cosine": CosineConfig, "step": StepConfig, "onecycle": OneCycleConfig},
    "device": {"device": DeviceConfig},
    "augment": {"none": NoAugmentConfig, "flip_crop": FlipCropConfig, "strong": StrongAugmentConfig},
}
PRIMARY_SCHEMA = "train_schema"
SECTIONS = ("dataset", "optimizer", "scheduler", "device", "augment", "logger", "trainer")


def register_schemas() -> None:
    """Put the schemas in Hydra's ConfigStore (a process-wide singleton; storing again replaces)."""
    store = ConfigStore.instance()
    store.store(name=PRIMARY_SCHEMA, node=TrainSchema)
    for group, schemas in GROUP_SCHEMAS.items():
        for name, node in schemas.items():
            store.store(group=f"schema/{group}", name=name, node=node)
    from .models.registry import load_entry_points

    for name in load_entry_points():  # an installed package's network: model=NAME, as a file in conf/model/ would
        store.store(group="model", name=name, node={"name": name})


def typed_sections(cfg: DictConfig) -> dict[str, Section]:
    """The config's sections that have a schema, as the schema's objects (``OmegaConf.to_object``), by key:
    ``trainer``, ``dataset``, ...; each option of the logger group by its own key (``logger.mlflow``)."""
    sections = {}
    for name in SECTIONS:
        node = cfg.get(name)
        if not isinstance(node, DictConfig):
            continue
        # a group whose options compose side by side (logger=[mlflow,wandb]): each option its own section
        nodes = {name: node} if OmegaConf.get_type(node) not in (dict, None) else {
            f"{name}.{key}": child for key, child in node.items() if isinstance(child, DictConfig)}
        for key, child in nodes.items():
            if OmegaConf.get_type(child) not in (dict, None):
                section = OmegaConf.to_object(child)
                if isinstance(section, Section):
                    sections[key] = section
    return sections


def check_sections(cfg: DictConfig) -> dict[str, Section]:
    """Every section's ranges (its ``check()``), on the typed objects OmegaConf builds from the config;
    returns them (:func:`typed_sections`)."""
    sections = typed_sections(cfg)
    for name, section in sections.items():
        section.check(name)
    return sections


def type_error_sentence(exc: BaseException) -> str | None:
    """One sentence for OmegaConf's refusal of a value of the wrong type (the cause of Hydra's "Error
    merging override ..."), naming the key: ``trainer.epochs must be an integer, got 1.5``."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    key = getattr(cause, "full_key", None)
    if not isinstance(cause, ValidationError) or not key:
        return None
    first = str(cause).splitlines()[0]
    converted = re.match(r"Value '(.*)' of type '\w+' could not be converted to (Integer|Float)$", first)
    if converted:
        return f"{key} must be {'an integer' if converted[2] == 'Integer' else 'a number'}, got {converted[1]}"
    boolean = re.match(r"Value '(.*)' is not a valid bool", first)
    if boolean:
        return f"{key} must be true or false, got {boolean[1]}"
    return f"{key}: {first}"
