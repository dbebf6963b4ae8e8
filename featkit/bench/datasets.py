"""What a benchmark's ``--datasets`` entries name: a data card (prepared on demand) or a user's ImageFolder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from featkit.data.sources import list_inputs
from featkit.errors import InputError


@dataclass(frozen=True)
class BenchDataset:
    """A dataset as the benchmark uses it: an ImageFolder with split folders and the metric its card reports."""

    name: str
    folder: Path
    metric: str  # the probe metric: "accuracy" or "mean_per_class"
    card: str  # the data card it follows ("imagefolder" for a user folder)
    per_class: int | None = None  # read only the first N of each class and split (a user folder's smoke run)
    limit: int | None = None  # read only the first N images


def _check_split_folders(path: Path) -> None:
    """Refuse a benchmark folder without train/ and test/ (or val/) folders of class folders.

    Checked before any extraction, so a wrong folder costs no time.
    """
    entries = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
    try:  # the listing's own layout rules: what extract will read from this folder
        listed = list_inputs(path, layout="splits").table
    except InputError:
        listed = None
    splits = set() if listed is None else set(listed.loc[listed["label"].notna(), "split"])
    if "train" not in splits or not splits & {"test", "val", "valid", "validation"}:
        shown = ", ".join(entries[:6]) + (" ..." if len(entries) > 6 else "") or "nothing"
        raise InputError(f"--datasets {path}: bench reads {path}/train/CLASS/* and {path}/test/CLASS/* (or val/); "
                         f"{path} holds {shown}.")


def resolve_dataset(entry: str, *, data_root: Path | None, per_class: int | None, download: bool,
                    progress: bool = False, limit: int | None = None) -> BenchDataset:
    """A card name is prepared (rendered, downloaded or verified) under ``data_root``; a folder is used as is."""
    from featkit.datasets.cards import get_card

    path = Path(entry).expanduser()
    if path.is_dir():
        _check_split_folders(path)
        return BenchDataset(path.name, path.absolute(), "accuracy", "imagefolder", per_class, limit)
    if "/" in entry or entry.startswith("."):
        raise InputError(f"Dataset folder {entry} does not exist. Give a folder with train/ [val/] test/ sub-folders "
                         "or a data card name (featkit data list).")
    card = get_card(entry)
    if card.loader.kind == "folder" and card.name == "imagefolder":
        raise InputError("'imagefolder' stands for your own folder: pass its path to --datasets.")
    from featkit.datasets.prepare import prepare

    prepared = prepare(card.name, data_root, download=download, per_class=per_class, progress=progress)
    metric = "mean_per_class" if card.metric == "mean_per_class" else "accuracy"
    return BenchDataset(card.name, prepared.folder, metric, card.name, None, limit)  # per_class: in the copy
