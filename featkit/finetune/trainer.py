"""The training loop: one process on a CPU or GPU, or one process per GPU under ``torchrun`` (DDP).

Under torchrun (``WORLD_SIZE`` > 1 in the environment) every process trains on its shard of each global
batch (``recipe.batch_size`` split evenly), DDP averages the gradients, and rank 0 alone writes the run
directory. A run resumed from ``last.pt`` continues bitwise-identically on the CPU: model, optimiser,
schedule, grad scaler, EMA, RNG states, sampler position and epoch all come back.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from featkit._device import (
    Runtime,
    distributed_backend,
    rng_state,
    set_rng_state,
    training_runtime,
)
from featkit._versions import library_versions
from featkit.backbones.card import WeightsCard
from featkit.backbones.registry import describe
from featkit.data.transforms import normalize_batch
from featkit.errors import FeatkitError, Interrupted
from featkit.finetune import checkpoint as ckpt
from featkit.finetune import groups, rundir
from featkit.finetune.data import (
    EvalImages,
    FolderData,
    ResumableSampler,
    TrainImages,
    collate,
    read_folder,
)
from featkit.finetune.model import build_model, eval_preprocess, train_crop
from featkit.finetune.recipe import Recipe
from featkit.finetune.schedule import EarlyStopping, LRSchedule

log = logging.getLogger(__name__)

BatchCallback = Callable[[int, int, int, float, float], None]  # epoch, step, steps, mean loss, images/s
EpochCallback = Callable[[dict], None]


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class FitResult:
    run: Path
    history: list[dict]
    best_val_acc: float
    stopped_early: bool


def distributed_from_env() -> Dist:
    """Torchrun's RANK/WORLD_SIZE/LOCAL_RANK; joins the process group (NCCL on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(distributed_backend(local_rank))
    return Dist(dist.get_rank(), world, local_rank)


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, runtime: Runtime, pre) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits and targets of every image the loader yields (the trainer's eval step)."""
    model.eval()
    logits, targets = [], []
    for batch in loader:
        if batch is None:
            continue
        x, y = batch
        x = normalize_batch(x.to(runtime.device, non_blocking=True), pre)
        if runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            logits.append(model(x).float().cpu())
        targets.append(y)
    if not logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(targets)


def _all_sum(values: list[float], d: Dist, device: torch.device) -> list[float]:
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class Trainer:
    """Trains ``recipe`` on ``data`` into the run directory ``output`` (``resume``: continue from last.pt)."""

    def __init__(self, recipe: Recipe, data: str | Path, output: str | Path, *, device: str = "auto",
                 workers: int | None = None, resume: bool = False, limit: int | None = None,
                 per_class: int | None = None):
        self.recipe, self.run, self.d = recipe, rundir.RunDir(Path(output)), distributed_from_env()
        if recipe.batch_size % self.d.world:
            raise FeatkitError(f"batch_size {recipe.batch_size} does not split over {self.d.world} processes; "
                               f"pass --set batch_size=N with N a multiple of {self.d.world}.")
        if not resume and self.run.manifest.exists():
            raise FeatkitError(f"{output} already holds a fine-tuning run; continue it with "
                               f"`featkit finetune --resume {output}`, or pass another -o.")
        if resume and not self.run.manifest.exists():
            raise FeatkitError(f"{output} holds no fine-tuning run to resume; start one with --recipe/--data/-o.")
        # killed before its first checkpoint: the run starts again from its first step, in the same directory
        restoring = resume and self.run.last.exists()
        self.runtime = training_runtime(device, recipe.amp, local_rank=self.d.local_rank, world=self.d.world)
        self.subset = {k: v for k, v in (("limit", limit), ("per_class", per_class)) if v is not None}
        self.folder: FolderData = read_folder(data, limit=limit, per_class=per_class)
        # A resumed run's checkpoint holds every weight: the initial ones need not exist (or download) any more.
        built = dataclasses.replace(recipe, weights="random") if restoring else recipe
        self.model, self.init_weights = build_model(built, len(self.folder.classes))
        self.model.to(self.runtime.device)
        if self.runtime.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.stages = groups.find_stages(self.model, describe(recipe.model).logits_module)
        self.pre = eval_preprocess(recipe)
        self.per_rank_batch = recipe.batch_size // self.d.world
        self._make_loaders(workers)
        self.optimizer = self._make_optimizer()
        self.schedule = LRSchedule(recipe, self.steps_per_epoch)
        self.early = EarlyStopping(recipe)
        self.scaler = torch.amp.GradScaler(self.runtime.device.type, enabled=self.runtime.precision == "fp16")
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema.decay), use_buffers=True)
                    if recipe.ema.decay else None)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
        self.history: list[dict] = []
        self.epoch, self.step, self.loss_sum, self.seen, self.seconds = 0, 0, 0.0, 0, 0.0
        self.stopped_early = False
        self.saved: tuple[int, int] | None = None  # (epoch, step) of the newest last.pt
        if restoring:
            self._restore(ckpt.load_checkpoint(self.run.last))
            self.saved = (self.epoch, self.step)
        else:
            torch.manual_seed(recipe.seed + self.d.rank)  # dropout masks: reproducible, and distinct per process
            if self.d.is_main:
                self._write_manifest()

    # ---- setup -------------------------------------------------------------------------------------------
    def _make_loaders(self, workers: int | None) -> None:
        if workers is None:
            workers = min(8, max(0, (os.cpu_count() or 1) // self.d.world - 1)) if self.runtime.is_cuda else 0
        # its own generator: creating an iterator never draws from the global RNG
        common: dict[str, Any] = {"num_workers": workers, "collate_fn": collate, "pin_memory": self.runtime.is_cuda,
                                  "generator": torch.Generator()}
        r = self.recipe
        train = TrainImages(self.folder.train, train_crop(r), r.data.min_scale, r.data.hflip, r.seed)
        self.sampler = ResumableSampler(len(train), num_replicas=self.d.world, rank=self.d.rank, seed=r.seed)
        self.train_loader = DataLoader(train, batch_size=self.per_rank_batch, sampler=self.sampler, **common)
        self.steps_per_epoch = -(-self.sampler.num_samples // self.per_rank_batch)
        shard = list(range(self.d.rank, len(self.folder.val.paths), self.d.world))
        self.val_loader = DataLoader(EvalImages(self.folder.val, self.pre, shard), batch_size=self.per_rank_batch,
                                     **common)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        o = self.recipe.optim
        params = groups.param_groups(self.model, self.stages, self.recipe)
        if o.name == "sgd":
            return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
        return torch.optim.AdamW(params, lr=o.lr, betas=o.betas)

    def _write_manifest(self) -> None:
        self.run.root.mkdir(parents=True, exist_ok=True)
        rundir.write_manifest(self.run, {
            "recipe": self.recipe.as_dict(),
            "data": str(self.folder.root.resolve()),
            "subset": self.subset,  # a smoke run's --limit / --per-class: resumed with the same images
            "classes": list(self.folder.classes),
            "images": {"train": len(self.folder.train.paths), "val": len(self.folder.val.paths)},
            "init_weights": self.init_weights.as_dict(),
            "eval_preprocess": self.pre.as_dict(),
            "train_crop": train_crop(self.recipe),
            "stages": [list(s) for s in self.stages.backbone],
            "world_size": self.d.world,
            "device": self.runtime.describe(),
            "versions": library_versions(),
        })

    # ---- checkpoints -------------------------------------------------------------------------------------
    def _rng_states(self) -> list[dict]:
        mine = rng_state()
        if self.d.world == 1:
            return [mine]
        states: list = [None] * self.d.world
        dist.all_gather_object(states, mine)
        return states

    def _save_last(self) -> None:
        rng = self._rng_states()  # collective: every rank takes part
        if not self.d.is_main:
            return
        ckpt.save_checkpoint(self.run.last, {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "early_stop": self.early.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rng,
            "progress": {"epoch": self.epoch, "step": self.step, "loss_sum": self.loss_sum, "seen": self.seen,
                         "seconds": self.seconds, "stopped_early": self.stopped_early, "world_size": self.d.world},
            "history": self.history,
        })
        self.saved = (self.epoch, self.step)

    def _restore(self, state: dict) -> None:
        progress = state["progress"]
        if progress["world_size"] != self.d.world:
            raise FeatkitError(f"{self.run.root} was trained by {progress['world_size']} process(es); resume it "
                               f"with the same number (this is {self.d.world}).")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.early.load_state_dict(state["early_stop"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"][self.d.rank])
        self.epoch, self.step = progress["epoch"], progress["step"]
        self.loss_sum, self.seen, self.seconds = progress["loss_sum"], progress["seen"], progress["seconds"]
        self.stopped_early, self.history = progress["stopped_early"], list(state["history"])

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    # ---- the loop ----------------------------------------------------------------------------------------
    def _wrapped(self, active: set[int]) -> nn.Module:
        groups.set_trainable(self.model, self.stages, active)
        if self.d.world == 1:
            return self.model
        # DDP registers the parameters that require grad when it is built, so it is rebuilt on unfreezing.
        ids = [self.runtime.device.index] if self.runtime.is_cuda else None
        return DistributedDataParallel(self.model, device_ids=ids)

    def _train_epoch(self, net: nn.Module, active: set[int], on_batch: BatchCallback | None) -> None:
        self.model.train()
        for module in groups.frozen_modules(self.model, self.stages, active):
            module.eval()
        self.sampler.set_position(self.epoch, self.step * self.per_rank_batch)
        started = time.perf_counter() - self.seconds
        for batch in self.train_loader:
            if ckpt.kill_point("step"):
                ckpt.die()
            if batch is not None:
                x, y = batch
                self.schedule.apply(self.optimizer, self.epoch, self.step)
                x = normalize_batch(x.to(self.runtime.device, non_blocking=True), self.pre)
                if self.runtime.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = y.to(self.runtime.device, non_blocking=True)
                with self.runtime.autocast():
                    loss = self.criterion(net(x), y)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
                value = loss.item()
                # Without a grad scaler the step above has made the weights NaN, and every loader refuses them. With
                # one (fp16), a non-finite loss is an overflow whose step the scaler skipped: training goes on.
                if not math.isfinite(value) and not self.scaler.is_enabled():
                    raise FeatkitError(
                        f"Training diverged in epoch {self.epoch + 1}, step {self.step + 1}: the loss is {value}. "
                        f"No final weights were written. Start again in a new -o with a lower learning rate "
                        f"(--set optim.lr=..., now {self.recipe.optim.lr:g}) or another recipe.")
                if math.isfinite(value):  # a skipped fp16 step would make the epoch's mean loss NaN
                    self.loss_sum += value * len(y)
                    self.seen += len(y)
            self.step += 1
            self.seconds = time.perf_counter() - started
            if on_batch is not None and self.d.is_main:
                on_batch(self.epoch, self.step, self.steps_per_epoch, self.loss_sum / max(1, self.seen),
                         self.seen * self.d.world / max(self.seconds, 1e-9))
            every = self.recipe.checkpoint_every
            if every and self.step % every == 0 and self.step < self.steps_per_epoch:
                self._save_last()

    def _evaluate(self) -> tuple[float, float]:
        logits, targets = predict_logits(self.eval_model, self.val_loader, self.runtime, self.pre)
        loss = nn.functional.cross_entropy(logits, targets, reduction="sum").item() if len(targets) else 0.0
        correct = (logits.argmax(1) == targets).sum().item() if len(targets) else 0
        loss, correct, count = _all_sum([loss, float(correct), float(len(targets))], self.d, self.runtime.device)
        if count == 0:
            raise FeatkitError(f"No validation image of {self.folder.root} could be decoded.")
        return loss / count, correct / count

    def _end_epoch(self, on_epoch: EpochCallback | None) -> None:
        train_loss, seen = _all_sum([self.loss_sum, float(self.seen)], self.d, self.runtime.device)
        val_loss, val_acc = self._evaluate()
        row = {"epoch": self.epoch + 1, "train_loss": train_loss / max(1.0, seen), "val_loss": val_loss,
               "val_acc": val_acc, "lr": self.schedule.lr_at(self.epoch, self.steps_per_epoch - 1),
               "images_per_s": seen / max(self.seconds, 1e-9)}
        self.history.append(row)
        self.schedule.end_epoch(self.epoch, val_loss)
        improved = self.early.improved(row)
        self.stopped_early = self.early.should_stop
        if improved and self.d.is_main:
            ckpt.save_checkpoint(self.run.best, {"model": self.eval_model.state_dict(), "epoch": row["epoch"],
                                                 "val_acc": val_acc, "val_loss": val_loss})
        self.epoch, self.step, self.loss_sum, self.seen, self.seconds = self.epoch + 1, 0, 0.0, 0, 0.0
        self._save_last()
        if self.d.is_main:
            self._write_reports()
            if on_epoch is not None:
                on_epoch(row)

    def _write_reports(self) -> None:
        rundir.write_metrics(self.run, self.history)
        if self.history:
            rundir.write_curves(self.run, self.history, f"{self.recipe.name}: {self.recipe.model} on "
                                                        f"{self.folder.root.name}")

    def _finish(self) -> None:
        if not self.d.is_main:
            return
        rundir.write_weights(self.run.weights, self.eval_model.state_dict(), WeightsCard(
            model=self.recipe.model, classes=self.folder.classes, preprocess=self.pre, recipe=self.recipe.name,
            epochs=len(self.history), val_acc=self.history[-1]["val_acc"] if self.history else None))

    def fit(self, on_batch: BatchCallback | None = None, on_epoch: EpochCallback | None = None) -> FitResult:
        """Train to the recipe's last epoch (or an early stop), then write the final weights."""
        if self.d.is_main:
            self._write_reports()  # a run killed between its checkpoint and its reports gets them back
        net: nn.Module | None = None
        active = None
        try:
            while self.epoch < self.recipe.epochs and not self.stopped_early:
                wanted = groups.trainable_stages(self.recipe, len(self.stages.backbone), self.epoch)
                if net is None or wanted != active:  # net is None exactly when active is (the first epoch)
                    net, active = self._wrapped(wanted), wanted
                self._train_epoch(net, active, on_batch)
                self._end_epoch(on_epoch)
        except KeyboardInterrupt:
            where = (f"the last checkpoint resumes at epoch {self.saved[0] + 1}, step {self.saved[1]}" if self.saved
                     else "no checkpoint was written yet: resuming starts again from the first step")
            raise Interrupted(f"Interrupted in epoch {self.epoch + 1}, step {self.step}: {where}; continue with "
                              f"featkit finetune --resume {self.run.root}") from None
        self._finish()
        best = max((r["val_acc"] for r in self.history), default=0.0)
        return FitResult(self.run.root, list(self.history), best, self.stopped_early)
