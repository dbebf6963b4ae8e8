"""The run directory: what a fine-tune writes, and how a later command finds it again.

```
RUN/
  recipe.json    resolved recipe + model, initial weights, data, classes, versions (the run's manifest)
  metrics.csv    one row per epoch: epoch, train_loss, val_loss, val_acc, lr, images_per_s
  curves.png     learning curves
  last.pt        training checkpoint (model, optimiser, schedule, scaler, EMA, RNG, sampler position)
  best.pt        the weights of the best epoch so far (by the recipe's early_stop.monitor)
  model.pth      final weights: a plain state_dict of the model with its new head (a valid --weights)
  model.json     what model.pth is: model name, class names, eval preprocessing, its sha256
```
Every file is written atomically (temp file, fsync, rename).
"""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path

import torch

from featkit._atomic import write_bytes, write_json
from featkit._files import Recorded, Verified, not_a_file, read_json, verify_files
from featkit.backbones.card import (
    RUN_BEST,
    RUN_MANIFEST,
    RUN_WEIGHTS,
    WeightsCard,
    card_path,
    read_card,
    write_card,
)
from featkit.errors import FeatkitError
from featkit.finetune.recipe import Recipe, recipe_from_dict

RUN_FORMAT = "featkit-finetune-run"
VERSION = 1
METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc", "lr", "images_per_s")


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / RUN_MANIFEST

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def last(self) -> Path:
        return self.root / "last.pt"

    @property
    def best(self) -> Path:
        return self.root / RUN_BEST

    @property
    def weights(self) -> Path:
        return self.root / RUN_WEIGHTS

    @property
    def weights_card(self) -> Path:
        return card_path(self.weights)


def write_manifest(run: RunDir, manifest: dict) -> None:
    write_json(run.manifest, {"format": RUN_FORMAT, "version": VERSION, **manifest})


@dataclass(frozen=True)
class RunManifest:
    """What ``--resume`` takes from a run's manifest: the resolved recipe, the data, a smoke run's subset."""

    recipe: Recipe
    data: Path
    limit: int | None = None
    per_class: int | None = None


def read_manifest(root: Path) -> RunManifest:
    """The manifest of a run directory, for ``--resume``.

    Raises:
        FeatkitError: ``root`` is not a run directory, or its manifest is damaged (one line naming the file and
            the field).
    """
    path = RunDir(root).manifest
    try:
        manifest = read_json(path)
    except FileNotFoundError:
        raise FeatkitError(f"{root} is not a fine-tuning run (no recipe.json). Pass the -o folder of a "
                           f"`featkit finetune` run.") from None
    except ValueError as exc:
        raise FeatkitError(f"{path} {exc}; restore it, or start the run again in a new -o folder.") from None
    if not isinstance(manifest, dict):
        raise FeatkitError(f"{path} is not a featkit fine-tuning run manifest (it holds a JSON "
                           f"{type(manifest).__name__}, not an object).")
    if manifest.get("format") != RUN_FORMAT or manifest.get("version") != VERSION:
        raise FeatkitError(f"{path} is not a version {VERSION} featkit fine-tuning run manifest.")

    def damaged(field: str, wanted: str) -> FeatkitError:
        return FeatkitError(f"{path} is damaged: {field} must be {wanted}. Restore it, or start the run again "
                            "in a new -o folder.")

    recipe, data, subset = manifest.get("recipe"), manifest.get("data"), manifest.get("subset") or {}
    if not isinstance(recipe, dict):
        raise damaged("recipe", "an object (the resolved recipe)")
    if not isinstance(data, str) or "\0" in data or not Path(data).is_absolute():
        raise damaged("data", "the absolute path of the training images")
    if (not isinstance(subset, dict) or not set(subset) <= {"limit", "per_class"}
            or not all(type(n) is int and n >= 1 for n in subset.values())):
        raise damaged("subset", "an object of limit and per_class, each an integer >= 1")
    return RunManifest(recipe_from_dict(recipe, f"{path}, recipe"), Path(data), subset.get("limit"),
                       subset.get("per_class"))


def write_metrics(run: RunDir, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in METRIC_COLUMNS})
    write_bytes(run.metrics, buf.getvalue().encode())


def write_curves(run: RunDir, rows: list[dict], title: str) -> None:
    """Loss and accuracy per epoch as a PNG (matplotlib's Agg backend: no display needed)."""
    buf = io.BytesIO()
    curves_figure(rows, title).savefig(buf, format="png", dpi=100)
    write_bytes(run.curves, buf.getvalue())


def curves_figure(rows: list[dict], title: str):
    """The figure of :func:`write_curves`: loss (train, val) and validation accuracy against whole epochs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    loss, acc = fig.subplots(1, 2)
    loss.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    loss.plot(epochs, [r["val_loss"] for r in rows], "o-", label="val")
    loss.set(xlabel="epoch", ylabel="loss", title="loss")
    loss.legend()
    acc.plot(epochs, [r["val_acc"] for r in rows], "o-", color="C2")
    acc.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy", ylim=(0, 1))
    for ax in (loss, acc):
        ax.grid(alpha=0.3)
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)  # one epoch is a visible point, not a collapsed axis
        if len(epochs) <= 20:  # epochs are whole numbers
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    return fig


def write_weights(path: Path, state: dict[str, torch.Tensor], card: WeightsCard) -> None:
    """A plain state_dict at ``path`` and its card (model, classes, preprocessing, the file's sha256) beside it."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, buf)
    sha256 = write_bytes(path, buf.getvalue())
    write_card(path, dataclasses.replace(card, sha256=sha256))


def verify_run(root: Path, *, progress: bool = False) -> Verified:
    """Re-hash the run's final weights against the sha256 their card recorded (``featkit verify RUN``).

    ``model.pth`` is the one file of a run with a checksum (in ``model.json``, since featkit recorded it); the
    run's other files are listed as unchecked.

    Raises:
        FeatkitError: ``root`` is not a fine-tuning run. WeightsError: its weights card is damaged.
    """
    read_manifest(root)
    run = RunDir(root)
    card = read_card(run.weights)
    recorded = [Recorded(run.weights, card.sha256)] if card is not None and card.sha256 else []
    unchecked = [p for p in sorted(root.iterdir()) if not_a_file(p) is None and p not in {r.path for r in recorded}]
    return verify_files(root, "fine-tuning run", recorded, unchecked=unchecked, progress=progress)
