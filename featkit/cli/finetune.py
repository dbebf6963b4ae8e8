"""``featkit recipes`` and ``featkit finetune``: train a new head (and more) with a named recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from featkit.cli._console import console as make_console
from featkit.cli._options import DeviceOpt, PerClassOpt
from featkit.errors import FeatkitError


def recipes() -> None:
    """List the fine-tuning recipes with one-line descriptions.

    Example: featkit finetune --recipe transfer-fastai --model resnet50 --data PHOTOS/ -o runs/pets
    """
    from featkit.finetune.recipe import load_recipe, recipe_dirs, recipe_paths

    console = make_console()
    paths = recipe_paths()
    if not paths:
        raise FeatkitError("No recipes found (looked in $FEATKIT_RECIPES and featkit/recipes/ in the package).")
    width = max(map(len, paths))
    for name, path in paths.items():
        r = load_recipe(path)
        console.print(f"{name:<{width}}  {r.description}  [dim]({r.model}, {r.epochs} epochs)[/]")
    console.print(f"[dim]from {', '.join(map(str, recipe_dirs()))}[/]")


def finetune(
    recipe: Annotated[str | None, typer.Option(
        "--recipe", "-r", help="Recipe name (featkit recipes) or a .toml file.")] = None,
    data: Annotated[Path | None, typer.Option(
        "--data", "-d", help="Folder DATA/{train,val}/CLASS/* (val may be valid/validation/test), or a dataset "
                             "prepared with featkit data prepare NAME.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Run directory to create.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Backbone (default: the recipe's).")] = None,
    weights: Annotated[str | None, typer.Option(
        "--weights", "-w", help="imagenet | random | a file | a run directory (default: the recipe's).")] = None,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a recipe key, e.g. --set optim.lr=0.05 (repeatable).")] = None,
    resume: Annotated[Path | None, typer.Option(
        "--resume", help="Continue the run in this directory after a crash or Ctrl-C.")] = None,
    device: DeviceOpt = "auto",
    workers: Annotated[int | None, typer.Option(
        min=0, help="Loader processes (default: 0 on a CPU, spare cores on a GPU).")] = None,
    limit: Annotated[int | None, typer.Option(
        "--limit", min=1, help="Only the first N images of each split: a smoke run.")] = None,
    per_class: PerClassOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar; the per-epoch lines stay.")] = False,
) -> None:
    """Fine-tune a backbone on an image folder with a recipe; the run directory is a valid --weights.

    Example: featkit finetune --recipe last-stage --model squeezenet1_1 --data PHOTOS/ -o runs/x
    """
    from featkit.finetune.recipe import resolve_recipe, with_overrides
    from featkit.finetune.rundir import read_manifest
    from featkit.finetune.trainer import Trainer

    if resume is not None:
        if recipe or data or output or model or weights or overrides or limit or per_class:
            raise FeatkitError("--resume RUN takes the recipe, data and settings from RUN; drop the other options.")
        run = read_manifest(resume)
        r, data, output, limit, per_class = run.recipe, run.data, resume, run.limit, run.per_class
    else:
        if recipe is None or data is None or output is None:
            raise FeatkitError("Pass --recipe NAME --data DATA -o RUN (or --resume RUN). See: featkit recipes")
        sets = list(overrides or [])
        sets += [f"model={model}"] if model else []
        sets += [f"weights={weights}"] if weights else []
        r = with_overrides(resolve_recipe(recipe), sets)
    trainer = Trainer(r, data, output, device=device, workers=workers, resume=resume is not None, limit=limit,
                      per_class=per_class)
    main = trainer.d.is_main
    console = make_console(stderr=True)
    if main:
        what = "resuming" if resume else "fine-tuning"
        console.print(f"{what} {r.model} ({r.weights}) with recipe {r.name} on {trainer.folder.root}: "
                      f"{len(trainer.folder.classes)} classes, {len(trainer.folder.train.paths)} train / "
                      f"{len(trainer.folder.val.paths)} val images, {trainer.runtime.describe()}"
                      + (f", {trainer.d.world} processes" if trainer.d.world > 1 else ""))
    result = _fit(trainer, console, progress=main and not quiet, report=main)
    if main:
        note = " (stopped early)" if result.stopped_early else ""
        console.print(f"[bold green]done[/]{note}: best val acc {result.best_val_acc:.3f}; "
                      f"weights {trainer.run.weights}")
        console.print(f"Use it: featkit extract --model {r.model} --weights {output} --layer logits "
                      f"IMAGES/ -o feats/")


def _fit(trainer, console, *, progress: bool, report: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
    )

    epochs = trainer.recipe.epochs

    def on_epoch(row: dict) -> None:
        if report:
            console.print(f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  "
                          f"val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}  lr {row['lr']:.3g}  "
                          f"{row['images_per_s']:.1f} img/s")

    if not progress:
        return trainer.fit(on_epoch=on_epoch)
    bar = Progress(TextColumn("epoch {task.fields[epoch]}/" + str(epochs)), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}  {task.fields[speed]:.1f} img/s"), TimeRemainingColumn(),
                   console=console, transient=True)
    tasks: dict[int, TaskID] = {}

    def on_batch(epoch: int, step: int, steps: int, loss: float, speed: float) -> None:
        if epoch not in tasks:
            tasks[epoch] = bar.add_task("", total=steps, epoch=epoch + 1, loss=loss, speed=speed)
        bar.update(tasks[epoch], completed=step, loss=loss, speed=speed)

    def on_epoch_done(row: dict) -> None:
        if row["epoch"] - 1 in tasks:
            bar.remove_task(tasks.pop(row["epoch"] - 1))
        on_epoch(row)

    with bar:
        return trainer.fit(on_batch=on_batch, on_epoch=on_epoch_done)
