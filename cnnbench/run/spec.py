"""The checked run spec: what the preparation step hands to everything downstream.

A command line is prepared once (:func:`cnnbench.run.validate.validate_config`): the config is composed,
its data settled into a frozen :class:`~cnnbench.data.sources.DataSpec` (the facts also written into the
config the run folder records), every value checked once, and the typed sections built from the schema's
dataclasses (``OmegaConf.to_object``). The result is a :class:`RunSpec`; the pre-launch check returns it,
and ``train``/``build_run`` take it instead of checking and reading the data again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from omegaconf import DictConfig, OmegaConf

from ..data.sources import DataSpec, DataSplits, SettledData
from ..models.configured import Network, network_of
from ..schema import DeviceConfig, Section, TrainerConfig, typed_sections


@dataclass(frozen=True)
class RunSpec:
    """A checked run: its config as the run folder records it (data facts included), its settled data,
    and its sections as typed objects (``trainer`` always; the others where their group has a schema)."""

    cfg: DictConfig
    settled: SettledData
    trainer: TrainerConfig
    sections: dict[str, Section] = field(default_factory=dict)

    @property
    def data(self) -> DataSpec:
        return self.settled.spec

    @property
    def device(self) -> DeviceConfig:
        """The ``device`` section (its schema's object: every option, defaults from conf/device/)."""
        return self.sections["device"]

    @property
    def record(self) -> DictConfig:
        """The composed config as the run records it (a checkpoint's ``config``, the network record): read whole,
        never for a setting (the typed sections say those)."""
        return self.cfg

    @property
    def network(self) -> Network:
        """The configured network (the ``model`` group, sized for the data): what it builds, as values."""
        return network_of(self.cfg)

    @property
    def trackers(self) -> dict[str, Section]:
        """Each ``logger`` option's checked settings by its name (``mlflow``, ``wandb``; ``tensorboard``)."""
        return {key.partition(".")[2]: section for key, section in self.sections.items() if key.startswith("logger.")}

    @property
    def splits(self) -> DataSplits | None:
        """The splits read to settle the data (image folders, CIFAR), or None (IDX files: the build reads them)."""
        return self.settled.splits

    def load_splits(self) -> DataSplits:
        """Train, validation and test splits: those the settling read, else read now (IDX files)."""
        from ..data.sources import load_splits

        return load_splits(self.cfg, self.settled)

    def for_config(self, cfg: DictConfig) -> RunSpec:
        """This spec for ``cfg``, an equal config composed again (a Hydra job's own): its data facts written
        in, nothing read or checked again."""
        from ..data.sources import record_settled

        record_settled(cfg, self.settled)
        return replace(self, cfg=cfg)


def run_spec(cfg: DictConfig, settled: SettledData) -> RunSpec:
    """The typed spec of a checked, settled ``cfg``."""
    sections = typed_sections(cfg)
    return RunSpec(cfg=cfg, settled=settled, trainer=trainer_section(cfg, sections), sections=sections)


def trainer_section(cfg: DictConfig, sections: dict[str, Section] | None = None) -> TrainerConfig:
    """The ``trainer`` section as its schema's object (``sections``: the config's typed sections, if built)."""
    trainer = (sections if sections is not None else typed_sections(cfg)).get("trainer")
    if not isinstance(trainer, TrainerConfig):  # a config without the schema (an older run folder's)
        trainer = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainerConfig), cfg.trainer))
    return trainer


def config_key(cfg: DictConfig) -> str:
    """What identifies a composed config (before its data is settled): two jobs with equal keys are one run
    spec. Interpolations are kept as written (``${hydra:job.num}`` resolves only inside a job)."""
    plain = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"}
    return OmegaConf.to_yaml(OmegaConf.create(plain))
