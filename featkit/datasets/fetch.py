"""Getting a data card's files onto disk: torchvision's own download code, archive checksums, offline errors.

The download code is torchvision's (``download=True`` on the dataset class, or ``download_and_extract_archive``
for folder cards), kept as is so a network run goes through the real path; tests exercise it offline by
making urllib's opener fail, and by laying out tiny fake copies where torchvision looks for them.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, cast
from urllib.error import URLError

from featkit.datasets.cards import DataCard
from featkit.errors import InputError

logger = logging.getLogger(__name__)

# Where each torchvision class downloads its archives to and looks for them, relative to the root it is
# given (ROOT/NAME). Read from torchvision 0.29's dataset sources; a user copying archives by hand needs it.
ARCHIVE_DIRS: dict[str, str] = {
    "CIFAR10": "", "CIFAR100": "", "SVHN": "", "STL10": "", "Food101": "", "FGVCAircraft": "",
    "Caltech101": "caltech101", "DTD": "dtd", "Flowers102": "flowers-102", "OxfordIIITPet": "oxford-iiit-pet",
    "EuroSAT": "eurosat", "MNIST": "MNIST/raw", "FashionMNIST": "FashionMNIST/raw",
}  # fmt: skip
_CHUNK = 1 << 20


def archive_dir(card: DataCard, dataset_root: Path) -> Path:
    """The folder the card's archives go in for torchvision (or for featkit, with folder cards)."""
    return dataset_root / ARCHIVE_DIRS.get(card.loader.torchvision_class or "", "")


def md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def check_archives(card: DataCard, dataset_root: Path) -> None:
    """Every archive of the card that is on disk and has an md5 in the card must match it.

    Absent archives are fine: torchvision deletes some after extracting, and an extracted copy needs none.
    Checked before torchvision sees them, because torchvision quietly re-downloads a bad archive (and offline
    that surfaces as a confusing download error).
    """
    folder = archive_dir(card, dataset_root)
    for archive in card.archives:
        path = folder / archive.file
        if archive.md5 is None or not path.is_file():
            continue
        found = md5_file(path)
        if found != archive.md5:
            raise InputError(
                f"Archive {path} has md5 {found}, the {card.name} card expects {archive.md5}: it is truncated or "
                f"a different file. Delete it and rerun to download it again, or replace it with a good copy."
            )


def offline_error(card: DataCard, dataset_root: Path, download: bool, cause: BaseException) -> InputError:
    """The one-line error for "the data is not here and could not be fetched", saying what to download where."""
    folder = archive_dir(card, dataset_root)
    urls = [a.url or a.file for a in card.archives] or [f"the dataset from {card.source or 'its source'}"]
    how = f"Download {', '.join(urls)} into {folder}/ and rerun"
    reason = str(cause).splitlines()[0] if str(cause).strip() else type(cause).__name__
    if not download:
        return InputError(
            f"{card.name} is not under {dataset_root} and --no-download was given ({reason}). {how} without "
            f"--no-download, or pass --root to a folder that already holds it."
        )
    return InputError(
        f"Cannot download {card.name} (no network?): {reason}. {how}, or pass --root to a folder that already "
        f"holds it."
    )


def open_torchvision(card: DataCard, dataset_root: Path, args: dict[str, Any], download: bool) -> Any:
    """``torchvision.datasets.<class>(root=ROOT/NAME, download=..., **args)``, with failures as one line.

    torchvision reports a missing dataset as RuntimeError("Dataset not found ...") and a failed download as
    URLError/OSError (or RuntimeError from MNIST's mirror loop); all of them mean "not here, not fetchable".
    """
    import torchvision.datasets

    # cards validates that a torchvision loader names its class
    cls = getattr(torchvision.datasets, cast(str, card.loader.torchvision_class))
    dataset_root.mkdir(parents=True, exist_ok=True)
    try:
        return cls(root=str(dataset_root), download=download, **args)
    except (URLError, OSError, RuntimeError) as exc:
        raise offline_error(card, dataset_root, download, exc) from exc
    except ImportError as exc:  # SVHN needs scipy
        raise InputError(f"Reading {card.name} needs the '{exc.name}' package: pip install {exc.name}") from None


def fetch_folder_archive(card: DataCard, dataset_root: Path, download: bool) -> None:
    """Download and unpack a folder card's archives into ROOT/NAME (torchvision's downloader, md5 if known)."""
    from torchvision.datasets import utils as tv_utils

    if not download:
        raise offline_error(card, dataset_root, download, FileNotFoundError("no copy found"))
    for archive in card.archives:
        if archive.url is None:
            continue
        logger.info("downloading %s", archive.url)
        try:
            tv_utils.download_and_extract_archive(
                archive.url, download_root=str(dataset_root), filename=archive.file, md5=archive.md5
            )
        except (URLError, OSError, RuntimeError) as exc:
            raise offline_error(card, dataset_root, download, exc) from exc
