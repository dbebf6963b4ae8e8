"""Turning a torchvision dataset (or an unpacked split folder) into an ImageFolder ``SPLIT/CLASS/FILE`` tree.

Datasets that hold image files are hard-linked (copied across filesystems), so not one pixel or byte changes;
datasets that hold arrays (CIFAR, MNIST, SVHN, STL-10) are written as lossless PNGs of exactly the image
torchvision's ``__getitem__`` returns.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featkit.errors import InputError


@dataclass(frozen=True)
class Item:
    """One image of a dataset: its index there, its class index, and its file (None: an array to render)."""

    index: int
    label: int
    path: Path | None


def dataset_items(ds: Any) -> list[Item]:
    """Every image of a torchvision dataset instance with its label, read from the attributes it keeps."""
    if hasattr(ds, "categories") and hasattr(ds, "index") and hasattr(ds, "y"):  # Caltech101's path scheme
        base = Path(ds.root) / "101_ObjectCategories"
        return [Item(i, int(y), base / ds.categories[y] / f"image_{n:04d}.jpg")
                for i, (n, y) in enumerate(zip(ds.index, ds.y, strict=True))]  # fmt: skip
    if hasattr(ds, "samples"):  # ImageFolder (EuroSAT)
        return [Item(i, int(y), Path(p)) for i, (p, y) in enumerate(ds.samples)]
    for files in ("_image_files", "_images"):  # DTD, Flowers102, Food101, FGVCAircraft / OxfordIIITPet
        if hasattr(ds, files):
            return [Item(i, int(y), Path(p))
                    for i, (p, y) in enumerate(zip(getattr(ds, files), ds._labels, strict=True))]
    for labels in ("targets", "labels"):  # CIFAR, MNIST / SVHN, STL10: arrays, rendered through ds[i]
        if getattr(ds, labels, None) is not None:
            return [Item(i, int(y), None) for i, y in enumerate(np.asarray(getattr(ds, labels)).tolist())]
    raise InputError(f"featkit does not know how {type(ds).__name__} keeps its images; pass its folder to extract.")


def class_names(ds: Any, items: Sequence[Item]) -> list[str]:
    """The dataset's class names in class-index order (SVHN has none: its digits)."""
    names = getattr(ds, "classes", None) or getattr(ds, "categories", None)
    if names is None:
        names = [str(i) for i in range(max(item.label for item in items) + 1)] if items else []
    return [str(n) for n in names]


def folder_names(names: Sequence[str]) -> list[str]:
    """Class folder names: the class names made filesystem-safe, index-prefixed where needed for order.

    The extractor labels images by folder name and folders sort by name, so where the names do not already
    sort in class-index order (or clash after cleaning) each gets a zero-padded index prefix, "007_Boeing 737".
    """
    clean = [re.sub(r"[\x00-\x1f/\\:]", "_", n).strip().lstrip(".") or "_" for n in names]
    if clean == sorted(clean) and len(set(clean)) == len(clean):
        return clean
    width = len(str(len(clean) - 1))
    return [f"{i:0{width}d}_{n}" for i, n in enumerate(clean)]


def _per_class_counts(n: int, protocol: Mapping[str, Any]) -> list[tuple[str, int | None]]:
    """(split, how many) in carving order for one class of ``n`` images; None means "the rest"."""
    method = protocol["method"]
    if method == "per-class count":
        return [("train", int(protocol["train_per_class"])), ("test", None)]
    if method == "per-class fraction":
        parts = [("train", protocol["train_fraction"])]
        if "val_fraction" in protocol:
            parts.append(("val", protocol["val_fraction"]))
        # floor, as the cards say; round first so 0.6 * 500 = 299.99999 cannot lose an image
        return [(s, math.floor(round(n * f, 9))) for s, f in parts] + [("test", None)]
    raise InputError(f"Unknown split_protocol method '{method}' in the data card; featkit cannot carve its splits.")


def carve_splits(items: Sequence[Item], protocol: Mapping[str, Any]) -> dict[str, list[Item]]:
    """The card's seeded split of a dataset with no official one.

    For each class in class-index order: its file names sorted, permuted by one shared
    ``numpy.random.default_rng(seed)``, then cut into train[/val]/test by the card's count or fractions.
    """
    rng = np.random.default_rng(protocol["seed"])
    by_class: dict[int, list[Item]] = {}
    for item in items:
        by_class.setdefault(item.label, []).append(item)
    splits: dict[str, list[Item]] = {}
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda it: (it.path.name if it.path else "", it.index))
        order = [members[i] for i in rng.permutation(len(members))]
        start = 0
        for split, count in _per_class_counts(len(members), protocol):
            stop = len(order) if count is None else start + count
            if stop > len(order):
                raise InputError(f"Class {label} has {len(order)} images, too few for the card's split protocol.")
            splits.setdefault(split, []).extend(order[start:stop])
            start = stop
    return splits


def limit_per_class(items: Sequence[Item], per_class: int) -> list[Item]:
    """The first ``per_class`` images of each class, in the given order (smoke runs)."""
    seen: dict[int, int] = {}
    kept = []
    for item in items:
        if seen.get(item.label, 0) < per_class:
            seen[item.label] = seen.get(item.label, 0) + 1
            kept.append(item)
    return kept


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (same bytes, no space); copy where links are impossible (other filesystem)."""
    try:
        os.link(src, dst)
    except FileNotFoundError:
        raise InputError(f"Image {src} listed by the dataset is missing: the copy is incomplete; "
                         f"re-download it.") from None
    except OSError:
        shutil.copy2(src, dst)


def write_split(ds: Any, items: Sequence[Item], folder: Path, classes: Sequence[str], bar: Any) -> None:
    """Write one split's images into ``folder/CLASS/``: links for files, PNGs for arrays."""
    for name in {classes[item.label] for item in items}:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for item in items:
        target = folder / classes[item.label]
        if item.path is not None:
            # names are unique within a class in every card's dataset; the index prefix guards any that are not
            dst = target / item.path.name
            link_or_copy(item.path, dst if not dst.exists() else target / f"{item.index:06d}_{item.path.name}")
        else:
            image = ds[item.index][0]  # the PIL image torchvision itself hands out (transform=None)
            image.save(target / f"{item.index:06d}.png", format="PNG", compress_level=1)
        bar.update(1)
