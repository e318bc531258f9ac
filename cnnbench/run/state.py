"""A run's progress: what a checkpoint must carry to resume exactly (plain values only)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class RunState:
    """Progress of a run that a checkpoint must carry to resume exactly."""

    epoch: int = 0  # epochs fully done
    step: int = 0  # optimizer steps done
    last_eval: dict = field(default_factory=dict)  # the latest evaluation: val/acc, val/loss, test/acc, test/loss
    last_train: dict = field(default_factory=dict)  # last epoch's train/loss, train/acc
    best_epoch: int | None = None  # epoch of best.pt: the best value of the monitored metric so far
    best_value: float | None = None  # that value
    best_eval: dict = field(default_factory=dict)  # the whole evaluation of that epoch
    evals_since_best: int = 0  # evaluations without an improvement above early_stopping.min_delta
    stop_reason: str | None = None  # why the run ended before its last epoch (early stopping, target)
    wall_time_s: float = 0.0  # wall seconds from the run's first start to its last epoch's end
    time_to_target_s: float | None = None  # when trainer.target_acc was reached
    train_time_s: float = 0.0  # seconds inside train_one_epoch, summed over epochs
    train_examples: int = 0
    chance_epochs: int = 0  # consecutive epochs at chance level
    warnings: list[str] = field(default_factory=list)
    resumes: list[dict] = field(default_factory=list)  # one record per resume (cnnbench.run.resume)
    partial: dict | None = None  # sums of an epoch stopped part-way (signal), to continue from
    test_confusion: list | None = None  # (C, C) counts of the run's last test evaluation

    def as_dict(self) -> dict:
        """The fields as a dict of plain values (what ``torch.load(weights_only=True)`` reads back)."""
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, saved: dict) -> RunState:
        """The state a checkpoint holds; fields of older cnnbench versions that no longer exist are
        dropped (their meaning is gone), missing ones take their defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in known})
