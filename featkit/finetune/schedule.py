"""Learning rate per step (warmup, cosine, one-cycle, divide-on-plateau) and early stopping.

The rate is a pure function of the step within the current phase and of the plateau scale, so the whole
state is a few plain numbers (what a checkpoint saves). A phase is the head-only epochs of a recipe with
``freeze.head_epochs``, then the rest; the schedule restarts at the phase change, as fastai's fine_tune does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from featkit.finetune.recipe import Recipe


@dataclass(frozen=True)
class Phase:
    first_epoch: int
    epochs: int
    lr: float  # peak learning rate of the head in this phase


def phases(recipe: Recipe) -> list[Phase]:
    e = recipe.freeze.head_epochs
    if e == 0:
        return [Phase(0, recipe.epochs, recipe.optim.lr)]
    return [Phase(0, e, recipe.optim.lr),
            Phase(e, recipe.epochs - e, recipe.optim.lr * recipe.freeze.unfrozen_lr_scale)]


def phase_of(recipe: Recipe, epoch: int) -> Phase:
    return [p for p in phases(recipe) if p.first_epoch <= epoch][-1]


def _multiplier(recipe: Recipe, step: int, total: int, steps_per_epoch: int) -> float:
    s = recipe.schedule
    if s.name == "one_cycle":  # torch's OneCycleLR with cosine annealing (its own warm-up; warmup_epochs adds none)
        t = step / max(1, total - 1)  # as OneCycleLR: the last step is at the final rate
        lo, end = 1 / s.one_cycle_div, 1 / (s.one_cycle_div * 1e4)
        if t < s.one_cycle_pct:
            u = t / s.one_cycle_pct
            return lo + (1 - lo) * (1 - math.cos(math.pi * u)) / 2
        u = (t - s.one_cycle_pct) / (1 - s.one_cycle_pct)
        return end + (1 - end) * (1 + math.cos(math.pi * u)) / 2
    warm = s.warmup_epochs * steps_per_epoch
    factor = min(1.0, (step + 1) / warm) if warm and step < warm else 1.0
    if s.name == "cosine":
        u = max(0.0, (step - warm) / max(1, total - warm))
        factor *= s.min_lr_ratio + (1 - s.min_lr_ratio) * (1 + math.cos(math.pi * u)) / 2
    return factor


class LRSchedule:
    """Sets each parameter group's lr = phase lr × group ``lr_mult`` × schedule multiplier × plateau scale."""

    def __init__(self, recipe: Recipe, steps_per_epoch: int):
        self.recipe, self.steps_per_epoch = recipe, steps_per_epoch
        self.plateau_scale, self.bad_epochs = 1.0, 0
        self.best: float | None = None

    def lr_at(self, epoch: int, step_in_epoch: int) -> float:
        phase = phase_of(self.recipe, epoch)
        step = (epoch - phase.first_epoch) * self.steps_per_epoch + step_in_epoch
        total = phase.epochs * self.steps_per_epoch
        return phase.lr * _multiplier(self.recipe, step, total, self.steps_per_epoch) * self.plateau_scale

    def apply(self, optimizer, epoch: int, step_in_epoch: int) -> float:
        lr = self.lr_at(epoch, step_in_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        return lr

    def end_epoch(self, epoch: int, val_loss: float) -> None:
        """Divide the rate by ``1 / plateau_factor`` after ``plateau_patience`` epochs without a lower val loss."""
        if self.recipe.schedule.name != "plateau":
            return
        if epoch + 1 in {p.first_epoch for p in phases(self.recipe)}:
            self.plateau_scale, self.best, self.bad_epochs = 1.0, None, 0  # a new phase starts afresh
            return
        if self.best is None or val_loss < self.best:
            self.best, self.bad_epochs = val_loss, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.recipe.schedule.plateau_patience:
            self.plateau_scale *= self.recipe.schedule.plateau_factor
            self.bad_epochs = 0

    def state_dict(self) -> dict:
        return {"plateau_scale": self.plateau_scale, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_scale, self.best, self.bad_epochs = state["plateau_scale"], state["best"], state["bad_epochs"]


class EarlyStopping:
    """Stop after ``patience`` epochs without a better ``monitor`` (val_acc up, val_loss down)."""

    def __init__(self, recipe: Recipe):
        self.patience, self.monitor = recipe.early_stop.patience, recipe.early_stop.monitor
        self.best, self.bad_epochs = None, 0

    def improved(self, metrics: dict) -> bool:
        """Record an epoch's metrics; True when ``monitor`` is the best so far."""
        value = metrics[self.monitor] if self.monitor == "val_acc" else -metrics[self.monitor]
        if self.best is None or value > self.best:
            self.best, self.bad_epochs = value, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
