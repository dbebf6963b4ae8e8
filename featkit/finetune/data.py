"""Training and validation images from an ImageFolder ``DATA/{train,val}/CLASS/*``, with resumable order.

Random augmentation is a pure function of (seed, epoch, image index), and the sampler's order a pure
function of (seed, epoch): a run resumed mid-epoch sees exactly the batches an uninterrupted one would,
whatever the number of loader workers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from torch.utils.data import Dataset, DistributedSampler

from featkit.backbones.spec import Preprocess
from featkit.data.decode import DecodeError, decode_image
from featkit.data.sources import list_inputs
from featkit.data.transforms import load_crop
from featkit.errors import InputError, check_int

log = logging.getLogger(__name__)

VAL_SPLITS = ("val", "valid", "validation", "test")


@dataclass(frozen=True)
class Split:
    paths: tuple[str, ...]
    targets: tuple[int, ...]


@dataclass(frozen=True)
class FolderData:
    """The images of a run: class names (sorted) and the train and validation splits."""

    root: Path
    classes: tuple[str, ...]
    train: Split
    val: Split


def resolve_data(data: str | Path) -> Path:
    """A folder, or the name of a data card whose dataset ``featkit data prepare NAME`` has written."""
    path = Path(data).expanduser()
    if path.is_dir() or len(path.parts) != 1:
        return path
    from featkit.datasets.cards import card_names
    from featkit.datasets.prepare import images_dir

    if str(data) not in card_names():
        return path
    folder = images_dir(str(data))
    if not folder.is_dir():
        raise InputError(f"Dataset {data} is not prepared yet ({folder} is missing); run "
                         f"`featkit data prepare {data}` first, or pass --data FOLDER.")
    return folder


def read_folder(data: str | Path, *, limit: int | None = None, per_class: int | None = None) -> FolderData:
    """List ``root/train/CLASS/*`` and ``root/val/CLASS/*`` (or valid/validation/test as the second split).

    A smoke run reads the first ``per_class`` images of each class in each split, and/or the first ``limit`` of each
    split (of each split, not overall: a limit that left out the validation split would leave nothing to train on).
    """
    root = resolve_data(data)
    layout = f"{root}/train/CLASS/*.jpg and {root}/val/CLASS/*.jpg"
    if not root.is_dir():
        raise InputError(f"--data {root} is not a folder; fine-tuning reads {layout}.")
    table = list_inputs(root, per_class=per_class).table
    if limit is not None:
        check_int("limit", limit, "finetune", minimum=1, error=InputError)
        table = table[(table.groupby("split", dropna=False).cumcount() < limit).to_numpy()]
    table = table[table["label"].notna()]
    splits = set(table["split"].dropna())
    val_name = next((s for s in VAL_SPLITS if s in splits), None)
    if "train" not in splits or val_name is None:
        raise InputError(f"--data {root} has no train and val folders of classes; fine-tuning reads {layout}.")
    train, val = table[table["split"] == "train"], table[table["split"] == val_name]
    classes = tuple(sorted(set(train["label"])))
    if len(classes) < 2:
        raise InputError(f"{root}/train has {len(classes)} class folder(s); a classifier needs at least 2.")
    extra = sorted(set(val["label"]) - set(classes))
    if extra:
        raise InputError(f"{root}/{val_name} has classes with no training images: {', '.join(extra[:5])}. "
                         f"Add {root}/train/{extra[0]}/ or remove it from {val_name}.")
    index = {c: i for i, c in enumerate(classes)}

    def split(frame) -> Split:
        return Split(tuple(frame["path"]), tuple(index[c] for c in frame["label"]))

    return FolderData(root, classes, split(train), split(val))


def _aug_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch) * 10_000_019 + index


class TrainImages(Dataset):
    """Items are ``(epoch, index)`` pairs from :class:`ResumableSampler`; returns (uint8 crop, target)."""

    def __init__(self, split: Split, crop: int, min_scale: float, hflip: bool, seed: int):
        self.split, self.seed = split, seed
        self.crop = T.RandomResizedCrop(crop, scale=(min_scale, 1.0), antialias=True)
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.split.paths)

    def __getitem__(self, item: tuple[int, int]):
        epoch, index = item
        try:
            image = decode_image(self.split.paths[index])
        except DecodeError as exc:
            log.warning("skipping %s: %s", self.split.paths[index], exc)
            return None
        with torch.random.fork_rng(devices=[]):  # never disturbs the RNG that dropout draws from
            torch.manual_seed(_aug_seed(self.seed, epoch, index))
            image = self.crop(image)
            if self.hflip and torch.rand(()) < 0.5:
                image = TF.hflip(image)
        return TF.pil_to_tensor(image), self.split.targets[index]


class EvalImages(Dataset):
    """Resize + centre crop exactly as ``featkit extract`` does (same decoder, same draft decoding)."""

    def __init__(self, split: Split, pre: Preprocess, indices: list[int] | None = None):
        self.split, self.pre = split, pre
        self.indices = list(range(len(split.paths))) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = self.indices[i]
        try:
            crop, _ = load_crop(self.split.paths[index], self.pre)
        except DecodeError as exc:
            log.warning("skipping %s: %s", self.split.paths[index], exc)
            return None
        return crop, self.split.targets[index]


def collate(items: list) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Stack the items that decoded; None when none did."""
    good = [item for item in items if item is not None]
    if not good:
        return None
    return torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good])


class ResumableSampler(DistributedSampler):
    """torch's DistributedSampler (one shard per process, (seed, epoch) order) that can start mid-epoch.

    Yields ``(epoch, index)`` so the dataset can seed its augmentation per image.
    """

    def __init__(self, size: int, *, num_replicas: int, rank: int, seed: int):
        # torch's stubs want a Dataset, but the sampler only takes len() of it: a range of the size stands in
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=True,  # type: ignore[arg-type]
                         seed=seed)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        """Begin ``epoch`` at this process's ``start``-th sample."""
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        indices = list(super().__iter__())[self.start:]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start
