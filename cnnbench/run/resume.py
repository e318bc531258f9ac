"""Resuming without mixing two runs: compare the checkpoint's config with the new one, record each start.

``MEANING_KEYS`` is the one table of settings that change what a checkpoint's finished epochs mean;
``check_resume`` refuses a resume that changes any of them (one line listing each ``key: old -> new``),
unless ``trainer.resume_force=true``; every other change (more epochs, logging, device speed options,
evaluation settings) is allowed and logged. ``resume_run`` restores the checkpoint and appends a record
of this start (time, overrides, changes) to the run's ``resumes``, which summary.json shows.

``write_hydra_record`` keeps the first start's ``.hydra/`` and puts the config and overrides of every
later start in ``.hydra/resumes/TIME/`` (``cnnbench train`` turns Hydra's own writing off with
``hydra.output_subdir=null`` so that it happens here, under the run folder's lock).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from ..errors import ResumeRefused
from ..runfolder.names import CONFIG, HYDRA_DIR, RESUMES_DIR
from ..tracking.registry import GROUP, logger_sections

if TYPE_CHECKING:
    from .build import Run

logger = logging.getLogger(__name__)

# Settings that change what the finished epochs mean: a key listed here covers everything under it.
MEANING_KEYS: tuple[str, ...] = (
    "model",  # the network and its keyword arguments
    "dataset.name", "dataset.folder", "dataset.resize", "dataset.in_channels", "dataset.num_classes",
    "dataset.normalize", "dataset.mean", "dataset.std",
    "dataset.format", "dataset.classes", "dataset.channels", "dataset.image_size",  # what the images are
    "dataset.val_size", "dataset.val_seed",  # which training images are held out
    "trainer.monitor",  # the metric best.pt's kept state was chosen by
    "trainer.batch_size",  # an epoch's order is drawn per batch index: another batch neither repeats nor continues it
    "trainer.limit_train_batches",  # the length of an epoch
    "trainer.seed", "trainer.init",
    "trainer.grad_clip_norm", "trainer.label_smoothing",  # the steps' arithmetic
    "trainer.ema",  # the averaged weights the run evaluates and reports
    # Every optimizer and schedule setting: a restored optimizer takes lr, momentum, betas and weight
    # decay from the checkpoint, so a changed value would otherwise be silently ignored.
    "optimizer", "scheduler",
    "augment",  # the augmentation group
)
# What a key absent from an older checkpoint meant, for keys added since: an old run is not refused for
# settings it simply predates (absent on both sides compares equal anyway).
ABSENT_MEANS: dict[str, Any] = {
    "augment.name": "none", "trainer.label_smoothing": 0.0, "trainer.ema.decay": None,
    "dataset.val_size": 0, "dataset.val_seed": 0, "trainer.monitor": "auto", "dataset.format": "idx",
}
# Optimizer param_group entries that say how the step runs on this device, not what it computes: always
# the new run's (a fused or foreach step taken on another device must not come back from the checkpoint).
IMPLEMENTATION_FLAGS = ("fused", "foreach", "capturable", "differentiable")
_ABSENT = "(absent)"


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any
    meaning: bool  # in MEANING_KEYS: refused unless forced

    def __str__(self) -> str:
        return f"{self.key}: {_show(self.old)} -> {_show(self.new)}"


@dataclass
class ResumePlan:
    """A resume that passed the checks: from which checkpoint, with which changes."""

    checkpoint: Path
    epoch: int
    changes: list[Change] = field(default_factory=list)
    forced: bool = False

    def record(self, overrides: list[str], step: int, record_dir: str | None) -> dict[str, Any]:
        """This start, as summary.json's ``resumes`` lists it."""
        return {
            "time": datetime.now().isoformat(timespec="seconds"),
            "checkpoint": str(self.checkpoint),
            "from_epoch": self.epoch,
            "from_step": step,
            "overrides": list(overrides),
            "changes": {c.key: [c.old, c.new] for c in self.changes},
            "forced": self.forced and any(c.meaning for c in self.changes),
            "hydra_record": record_dir,
        }


def is_meaning_key(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in MEANING_KEYS)


def _show(value: Any) -> str:
    if value is None:
        return "null"
    return str(value)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        flat.update(flatten(value, full) if isinstance(value, dict) and value else {full: value})
    return flat


def _as_plain(cfg: DictConfig) -> dict:
    """The config as plain data, resolved where it can be (``${hydra:job.num}`` only exists in a job)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - an unresolvable interpolation: compare the rest as written
        return OmegaConf.to_container(cfg, resolve=False)


def config_changes(saved: dict, cfg: DictConfig) -> list[Change]:
    """Every setting that differs between a checkpoint's config and ``cfg``, sorted by key."""
    plain = _as_plain(cfg)
    old, new = flatten(saved), flatten(plain)
    # A knob absent from either side (a run from before knobs existed, a user's model file naming only the
    # network) is the book's value, which the family's factory takes by default
    old.update({k: v for k, v in book_knobs(saved).items() if k not in old})
    new.update({k: v for k, v in book_knobs(plain).items() if k not in new})
    changes = []
    for key in sorted(set(old) | set(new)):
        before = old.get(key, ABSENT_MEANS.get(key, _ABSENT))
        after = new.get(key, ABSENT_MEANS.get(key, _ABSENT))
        if before != after:
            changes.append(Change(key, before, after, is_meaning_key(key)))
    return changes


def book_knobs(saved: dict) -> dict[str, Any]:
    """The ``model.*`` knobs a config that names none was built with: its network's packaged option file's
    values (the book's network), as flat keys; none when the file is gone or names another network."""
    from ..config import config_dir

    name = (saved.get("model") or {}).get("name")
    path = config_dir() / "model" / f"{name}.yaml"
    if not name or not path.is_file():
        return {}
    option = OmegaConf.to_container(OmegaConf.load(path))
    if not isinstance(option, dict) or option.get("name") != name:
        return {}
    return {f"model.{k}": v for k, v in option.items() if k != "name"}


def peek_checkpoint(path: Path) -> dict | None:
    """A checkpoint's config and epoch without reading its weights (mmap); None when unreadable
    (restoring it then reports the problem, naming the file)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        config = dict(state["config"])
        if GROUP in config:  # an older cnnbench's flat logger section, in today's shape
            config[GROUP] = logger_sections(config[GROUP])
        return {"config": config, "epoch": int(state["epoch"]), "network": state.get("network")}
    except Exception:  # noqa: BLE001 - see the docstring
        return None


def check_resume(cfg: DictConfig, checkpoint: Path | None, announce: bool = True) -> ResumePlan | None:
    """Refuse a resume from ``checkpoint`` whose config differs in a MEANING_KEYS setting (unless
    ``trainer.resume_force``); log the allowed changes. None when there is nothing to compare."""
    if checkpoint is None or not checkpoint.is_file():
        return None
    saved = peek_checkpoint(checkpoint)
    if saved is None:
        return None
    changes = [c for c in config_changes(saved["config"], cfg) if not c.key.startswith("trainer.resume")]
    meaning = [c for c in changes if c.meaning]
    forced = bool(cfg.trainer.get("resume_force", False))
    if meaning and not forced:
        raise ResumeRefused(
            f"cannot resume from {checkpoint}: it was written with other settings that change what its "
            f"{saved['epoch']} finished epochs mean: {', '.join(map(str, meaning))}; resume with the same "
            "settings, start a new run folder, or set trainer.resume_force=true to continue anyway "
            "(the changes are then recorded in summary.json)")
    if not meaning:
        check_network(cfg, checkpoint, saved.get("network"))
    if announce and meaning:
        logger.warning("trainer.resume_force=true: resuming despite changed settings (recorded in "
                       "summary.json): %s", ", ".join(map(str, meaning)))
    allowed = [c for c in changes if not c.meaning]
    if announce and allowed:
        logger.info("resuming with changed settings: %s", ", ".join(map(str, allowed)))
    return ResumePlan(checkpoint, saved["epoch"], changes, forced)


def check_network(cfg: DictConfig, checkpoint: Path, saved: dict | None) -> None:
    """The same config may build another network than the checkpoint's: a custom target's file edited since,
    another torchvision or timm release. Refuse when the layers differ (their names and shapes, built on the
    meta device: nothing allocated), naming what changed; a file that moved with the same layers is logged."""
    from ..models.configured import network_of, network_record
    from .memory import meta_model

    if not saved or not saved.get("layers_digest"):
        return  # a checkpoint from before the record: restoring compares the weights' shapes
    now = network_record(cfg, meta_model(network_of(cfg)))
    if now["layers_digest"] != saved["layers_digest"]:
        where = [f"{k}: {_show(saved.get(k))} -> {_show(now.get(k))}" for k in ("module_file", "library", "parameters")
                 if saved.get(k) != now.get(k)]
        raise ResumeRefused(
            f"cannot resume from {checkpoint}: the {cfg.model.name} network built now has other layers than the "
            f"one it trained ({', '.join(where) or 'same parameter count, other layer names or shapes'}); restore "
            "the network's code or start a new run folder")
    if saved.get("module_file") != now.get("module_file"):
        logger.info("model.target now comes from %s (the run trained it from %s); same layers",
                    now.get("module_file"), saved.get("module_file"))


def resume_run(run: Run, plan_or_path: ResumePlan | Path, overrides: list[str], record_dir: str | None) -> None:
    """Restore the checkpoint into ``run``, keep this device's optimizer implementation (and, when forced,
    the new optimizer settings), and append this start to ``run.state.resumes``."""
    from .checkpoint import restore

    plan = plan_or_path if isinstance(plan_or_path, ResumePlan) else None
    path = plan.checkpoint if plan else Path(plan_or_path)
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in run.optimizer.param_groups]
    restore(run, path)
    forced_optimizer = plan is not None and plan.forced and any(
        c.key.startswith(("optimizer.", "scheduler.")) for c in plan.changes)
    _keep_fresh_settings(run, fresh, hyperparameters=forced_optimizer)
    if plan is not None:
        run.state.resumes.append(plan.record(overrides, run.state.step, record_dir))


def _keep_fresh_settings(run: Run, fresh: list[dict], hyperparameters: bool) -> None:
    """Put back what the new optimizer was built with: always its implementation flags; with
    ``hyperparameters`` (a forced resume) also lr, momentum, betas, weight decay and the schedule's base."""
    groups = run.optimizer.param_groups
    for group, new in zip(groups, fresh, strict=True):
        keep = [k for k in new if k in IMPLEMENTATION_FLAGS or (hyperparameters and k not in ("lr", "initial_lr"))]
        group.update({k: new[k] for k in keep})
    if not hyperparameters:
        return
    if run.scheduler is None:
        for group, new in zip(groups, fresh, strict=True):
            group["lr"] = new["lr"]
        return
    base = [new.get("initial_lr", new["lr"]) for new in fresh]
    run.scheduler.base_lrs = base
    for group, base_lr, factor in zip(groups, base, run.scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = base_lr
        group["lr"] = base_lr * factor(run.scheduler.last_epoch)


# ------------------------------------------------------------------------------ Hydra's record of a start


def write_hydra_record(run_dir: Path, job_cfg: DictConfig | None = None) -> str | None:
    """Hydra's record of this start (config.yaml, hydra.yaml, overrides.yaml): in ``.hydra/`` for the
    first start of a folder, in ``.hydra/resumes/TIME/`` for every later one. Returns that folder
    (relative to ``run_dir``), or None when Hydra is not running or wrote its record itself."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.output_subdir is not None:
        return None  # hydra.output_subdir given on the command line: Hydra wrote it there
    first = not (run_dir / CONFIG).exists()
    relative = Path(HYDRA_DIR) if first else RESUMES_DIR / datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    folder = run_dir / relative
    folder.mkdir(parents=True, exist_ok=True)
    task = job_cfg if job_cfg is not None else OmegaConf.create({})
    for name, content in (("config.yaml", task), ("hydra.yaml", OmegaConf.create({"hydra": hydra_cfg})),
                          ("overrides.yaml", hydra_cfg.overrides.task)):
        (folder / name).write_text(OmegaConf.to_yaml(content), encoding="utf-8")
    return str(relative)
