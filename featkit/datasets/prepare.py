"""``featkit data prepare``: a data card's dataset as an ImageFolder that ``featkit extract`` reads directly.

Layout under the data root (``--root``, else ``$FEATKIT_DATA``, else ``~/.cache/featkit/data``)::

    ROOT/NAME/                          what torchvision's root= gets: its downloads and extracted files
    ROOT/NAME/images/SPLIT/CLASS/FILE   the ImageFolder (SPLIT in train, val, test)
    ROOT/NAME/images/.prepared.json     written last, atomically: the copy is complete (hidden, so that
                                        featkit extract still sees a pure train/val/test split layout)
    ROOT/NAME/images-per_class-N/...    a smoke-run copy with at most N images per class per split

A folder without ``.prepared.json`` is an interrupted prepare and is cleared and redone (only if it holds nothing
but split folders: featkit never deletes a folder of yours). A copy you already have, unpacked or as the archive,
is found under ROOT/NAME or taken from ``source`` (``--from``) and linked where torchvision looks (see
:mod:`featkit.datasets.fetch`). A prepare that fails takes back what it made: its partial images folder, its links,
and the folders it created that are left empty. Card splits that are
not train/val/test map as follows: ``trainval`` becomes ``train`` when the card has no ``train`` (Pets);
otherwise it, ``unlabeled`` (STL-10) and ``extra`` (SVHN) are left out, as the probe protocol does not use them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featkit.datasets import fetch, materialise
from featkit.datasets.cards import ALL_SPLITS, DataCard, get_card
from featkit.errors import InputError, check_int

logger = logging.getLogger(__name__)

ENV_VAR = "FEATKIT_DATA"
MARKER = ".prepared.json"  # a visible top-level file would stop the extractor reading split folders
FORMAT = 2  # 2: digits' --per-class copies take the first N of each carved split (1 took them before carving)
FOLDER_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Prepared:
    """A complete prepared copy: the ImageFolder to extract from and its image count per split."""

    name: str
    folder: Path
    counts: dict[str, int]
    per_class: int | None = None
    classes: tuple[str, ...] = ()  # class folder names, in class-index order


def default_root() -> Path:
    """``$FEATKIT_DATA`` if set, else ``~/.cache/featkit/data``."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "featkit" / "data"


def images_dir(name: str, root: str | Path | None = None, per_class: int | None = None) -> Path:
    """Where the ImageFolder of ``name`` lives (full copy, or the per-class smoke copy)."""
    base = (Path(root).expanduser() if root is not None else default_root()) / name
    return base / ("images" if per_class is None else f"images-per_class-{per_class}")


def split_folders(card: DataCard) -> dict[str, str]:
    """Card split -> ImageFolder split folder, for the card splits that are materialised."""
    splits = card.splits or {}
    mapping = {s: s for s in splits if s in FOLDER_SPLITS}
    if "trainval" in splits and "train" not in splits:
        mapping["trainval"] = "train"
    return mapping


def _expected_counts(card: DataCard) -> dict[str, int]:
    return {folder: (card.splits or {})[split] for split, folder in split_folders(card).items()}


def find_prepared(name: str, root: str | Path | None = None, *, per_class: int | None = None) -> Prepared | None:
    """The complete prepared copy of ``name`` under ``root`` (for this ``per_class``), or None."""
    folder = images_dir(name, root, per_class)
    try:
        meta = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("format") != FORMAT or meta.get("card") != name or meta.get("per_class") != per_class:
        return None
    counts = {str(k): int(v) for k, v in meta.get("counts", {}).items()}
    if per_class is None and counts != _expected_counts(get_card(name)):
        return None  # the card changed since: redo
    return Prepared(name, folder, counts, per_class, tuple(meta.get("classes", ())))


def prepare(
    name: str,
    root: str | Path | None = None,
    *,
    download: bool = True,
    per_class: int | None = None,
    progress: bool = False,
    source: str | Path | None = None,
) -> Prepared:
    """Download (or find) the dataset of card ``name``, verify it against the card, and write its ImageFolder.

    Idempotent: a complete prepared copy is returned at once. ``per_class`` keeps at most that many images per
    class per split, in a folder of its own (smoke runs only; never mixed with the full copy). ``source``: the
    unpacked folder (or the archive) you already have, anywhere; it is linked under ROOT/NAME where torchvision
    looks for it, not copied. Without it, such a copy under ROOT/NAME (or two folders down) is found and linked.

    Raises:
        InputError: unknown card, the ``imagefolder`` card, offline with no copy, wrong counts or checksums.
    """
    card = get_card(name)
    if card.splits is None:
        raise InputError(
            f"'{name}' is any folder of yours: there is nothing to prepare. Pass the folder itself to "
            f"featkit extract (or featkit bench)."
        )
    if per_class is not None:
        check_int("per_class", per_class, "prepare", minimum=1, error=InputError)
    done = find_prepared(name, root, per_class=per_class)
    if done is not None:
        return done
    folder = images_dir(name, root, per_class)
    dataset_root = folder.parent
    from_path = None if source is None else Path(source).expanduser()
    if from_path is not None and card.loader.kind == "embedded":
        raise InputError(f"'{name}' ships with featkit: there is nothing to take --from. Drop --from.")
    new_dirs = _new_dirs(card, dataset_root)
    _clear_incomplete(folder)
    made: list[Path] = []
    try:
        if card.loader.kind == "embedded":
            counts, classes = _write_embedded(card, folder, per_class)
        else:
            fetch.check_archives(card, dataset_root)
            counts, classes = _write_sources(card, dataset_root, folder, download, per_class, progress,
                                             from_path, made)
        _write_marker(card, folder, counts, classes, per_class)
    except BaseException:
        _undo(folder, made, new_dirs)
        raise
    return Prepared(name, folder, counts, per_class, tuple(classes))


def _clear_incomplete(folder: Path) -> None:
    """Remove an interrupted prepare's images folder; refuse (never delete) one that holds anything else."""
    if not (folder.exists() or folder.is_symlink()):
        return
    foreign = [folder.name] if folder.is_symlink() or not folder.is_dir() else sorted(
        p.name for p in folder.iterdir() if p.name not in FOLDER_SPLITS and not p.name.startswith(MARKER))
    if foreign:
        raise InputError(
            f"{folder} is not an interrupted featkit copy (it holds {', '.join(foreign[:3])}), and featkit writes "
            f"its prepared copy there: move it away and rerun. featkit does not delete it."
        )
    logger.info("clearing the incomplete %s", folder)
    shutil.rmtree(folder)


def _new_dirs(card: DataCard, dataset_root: Path) -> list[Path]:
    """The folders a prepare (or torchvision) may create that do not exist yet, deepest first.

    ROOT/NAME and its missing parents, and the folders from ROOT/NAME down to each place torchvision reads or
    unpacks into.
    """
    paths = {dataset_root, *dataset_root.parents}
    for target in [fetch.archive_dir(card, dataset_root), *(p.where(dataset_root) for p in fetch.parts(card))]:
        for path in [target, *target.parents]:
            if path == dataset_root:
                break
            paths.add(path)
    return sorted((p for p in paths if not (p.exists() or p.is_symlink())), key=lambda p: -len(p.parts))


def _undo(folder: Path, made: Sequence[Path], new_dirs: Sequence[Path]) -> None:
    """After a failed prepare: remove its partial images folder, its links, and the folders it created, if empty.

    Nothing else is touched: not a file of the user's, nor a folder that holds one.
    """
    try:
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
        for path in reversed(made):
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)  # a folder of links (or hard-linked files) that place() made
        for path in new_dirs:  # deepest first
            if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
                path.rmdir()
    except OSError as exc:
        logger.warning("could not remove everything a failed prepare made: %s", exc)


def _write_embedded(card: DataCard, folder: Path, per_class: int | None) -> tuple[dict[str, int], list[str]]:
    if card.name != "digits":
        raise InputError(f"featkit has no embedded data for card '{card.name}'.")
    from featkit.datasets.digits import digit_items, write_digit_splits

    splits = materialise.carve_splits(digit_items(), card.split_protocol or {})
    if per_class is not None:
        splits = {s: materialise.limit_per_class(items, per_class) for s, items in splits.items()}
    counts = write_digit_splits(folder, splits)
    if per_class is None:
        _check_counts(card, counts)
    return counts, [str(d) for d in range(10)]


def _write_sources(
    card: DataCard, dataset_root: Path, folder: Path, download: bool, per_class: int | None, progress: bool,
    source: Path | None = None, made: list[Path] | None = None,
) -> tuple[dict[str, int], list[str]]:
    """Torchvision or folder cards: collect each split's items, verify the counts, then link/render them."""
    made = [] if made is None else made
    where = fetch.gather(card, dataset_root, source=source, download=download, made=made)
    if card.loader.kind == "folder":
        splits, classes, datasets = _folder_splits(card, dataset_root, download, next(iter(where.values()), None))
    else:
        splits, classes, datasets = _torchvision_splits(card, dataset_root, download)
    if per_class is not None:
        splits = {s: materialise.limit_per_class(items, per_class) for s, items in splits.items()}
    counts = {s: len(items) for s, items in splits.items()}
    if per_class is None:
        _check_counts(card, counts)
    names = materialise.folder_names(classes)
    from tqdm import tqdm

    with tqdm(total=sum(counts.values()), unit="img", disable=not progress, desc=f"prepare {card.name}") as bar:
        for split, items in splits.items():
            materialise.write_split(datasets.get(split), items, folder / split, names, bar)
    return counts, names


def _torchvision_splits(card: DataCard, dataset_root: Path, download: bool):
    args = card.loader.args
    splits: dict[str, list[materialise.Item]] = {}
    datasets: dict[str, Any] = {}
    if ALL_SPLITS in args:
        ds = fetch.open_torchvision(card, dataset_root, dict(args[ALL_SPLITS]), download)
        items = materialise.dataset_items(ds)
        splits = materialise.carve_splits(items, card.split_protocol or {})
        datasets = dict.fromkeys(splits, ds)
    else:
        for split, folder_split in split_folders(card).items():
            ds = fetch.open_torchvision(card, dataset_root, dict(args[split]), download)
            items = materialise.dataset_items(ds)
            splits[folder_split], datasets[folder_split] = items, ds
    return splits, materialise.class_names(ds, items), datasets


def _folder_splits(card: DataCard, dataset_root: Path, download: bool, base: Path | None):
    """A folder card (hymenoptera): its split folders, read where they are.

    ``base``: where :func:`fetch.gather` found them; None: in ROOT/NAME or one folder below, once the card's
    archive is downloaded and unpacked there.
    """
    wanted = list(split_folders(card))
    if base is None:
        fetch.fetch_folder_archive(card, dataset_root, download)
        base = _find_split_parent(dataset_root, wanted)
        if base is None:
            raise InputError(
                f"The {card.name} archive did not unpack to {'/, '.join(wanted)}/ folders under {dataset_root}; "
                f"unpack it there by hand and rerun."
            )
    classes = sorted({p.name for s in wanted for p in (base / s).iterdir()
                      if p.is_dir() and not p.name.startswith(".")})
    index = {c: i for i, c in enumerate(classes)}
    splits = {}
    for split in wanted:
        files = sorted(p for c in classes if (base / split / c).is_dir() for p in (base / split / c).iterdir()
                       if p.is_file() and not p.name.startswith("."))  # fmt: skip
        splits[split] = [materialise.Item(i, index[p.parent.name], p) for i, p in enumerate(files)]
    return splits, classes, {}


def _find_split_parent(dataset_root: Path, splits: Sequence[str]) -> Path | None:
    candidates = [dataset_root]
    if dataset_root.is_dir():
        candidates += sorted(p for p in dataset_root.iterdir() if p.is_dir() and not p.name.startswith("images"))
    return next((c for c in candidates if all((c / s).is_dir() for s in splits)), None)


def _check_counts(card: DataCard, counts: Mapping[str, int]) -> None:
    """Images per split must be the card's numbers: anything else is a partial or different copy."""
    expected = _expected_counts(card)
    for split, want in expected.items():
        got = counts.get(split, 0)
        if got != want:
            raise InputError(
                f"{card.name} split '{split}' has {got:,} images, the card expects {want:,}: the copy under the data "
                f"root is partial or a different version. Delete it and rerun to download it again."
            )


def _write_marker(card: DataCard, folder: Path, counts, classes, per_class) -> None:
    from featkit import __version__
    from featkit._atomic import write_json

    meta = {
        "format": FORMAT,
        "card": card.name,
        "counts": dict(counts),
        "per_class": per_class,
        "featkit_version": __version__,
        "classes": list(classes),
        "card_splits": {folder_split: split for split, folder_split in split_folders(card).items()},
    }
    write_json(folder / MARKER, meta, indent=2)
