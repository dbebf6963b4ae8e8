"""Getting a data card's files onto disk: a copy you already have, torchvision's own download code, checksums.

torchvision reads each dataset from fixed places under the root it is given (ROOT/NAME): :data:`PARTS` lists
them per class, read from torchvision 0.29's sources (what ``_check_integrity``/``_check_exists`` accept with
``download=False``). Before torchvision is asked, :func:`gather` makes every part present there:

* a part already in its place is left to torchvision to judge;
* an unpacked copy found under ROOT/NAME (itself, or one or two folders down: ``ROOT/NAME/X/101_ObjectCategories``)
  or in the folder ``--from`` names is linked into the place (a symlink; hard links or copies where symlinks
  are impossible), so not an image byte is copied;
* an archive found there (or in torchvision's download folder, :data:`ARCHIVE_DIRS`) is verified and unpacked
  into the place with torchvision's ``extract_archive``, exactly as its download would, without the network.

Only what is still missing after that is downloaded (``download=True`` on the dataset class, or
``download_and_extract_archive`` for folder cards), so a network run goes through torchvision's real path; tests
exercise it offline by making urllib's opener fail, and by laying out tiny fake copies.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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
SEARCH_DEPTH = 2  # folders below ROOT/NAME (and below --from) searched for an unpacked copy


@dataclass(frozen=True)
class Part:
    """One thing torchvision reads, at ``path`` under ROOT/NAME: a folder (``path`` ends in "/") or a file.

    ``holds``: entries that identify the folder wherever it is found ("x/" is a folder); ``archives``: the
    archives it unpacks from (into the card's archive folder), preferred first; none for a file torchvision
    reads as downloaded. ``md5``: torchvision checks the md5 of the files, so only the original bytes pass.
    """

    path: str
    holds: tuple[str, ...] = ()
    archives: tuple[str, ...] = ()
    md5: bool = False

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def is_dir(self) -> bool:
        return self.path.endswith("/")

    def where(self, dataset_root: Path) -> Path:
        return dataset_root / self.path.rstrip("/")


def _mnist(folder: str) -> tuple[Part, ...]:
    files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return tuple(Part(f"{folder}/raw/{f}", archives=(f"{f}.gz",)) for f in files)


# What each torchvision class reads with download=False, relative to ROOT/NAME (torchvision 0.29). No class
# insists on an archive: every one accepts the unpacked folder (or, SVHN and Flowers' .mat files, the file as
# downloaded); CIFAR, STL-10, SVHN and Flowers' .mat files must have their original md5s.
PARTS: dict[str, tuple[Part, ...]] = {
    # the zip holds caltech-101/101_ObjectCategories.tar.gz, which torchvision unpacks into caltech101/
    "Caltech101": (Part("caltech101/101_ObjectCategories/", ("BACKGROUND_Google/",),
                        ("101_ObjectCategories.tar.gz", "caltech-101.zip")),),
    "CIFAR10": (Part("cifar-10-batches-py/", ("batches.meta", "data_batch_1", "test_batch"),
                     ("cifar-10-python.tar.gz",), md5=True),),
    "CIFAR100": (Part("cifar-100-python/", ("meta", "train", "test"), ("cifar-100-python.tar.gz",), md5=True),),
    "DTD": (Part("dtd/dtd/", ("images/", "labels/"), ("dtd-r1.0.1.tar.gz",)),),
    "EuroSAT": (Part("eurosat/2750/", ("Forest/", "River/"), ("EuroSAT.zip",)),),
    "FGVCAircraft": (Part("fgvc-aircraft-2013b/", ("data/",), ("fgvc-aircraft-2013b.tar.gz",)),),
    "Flowers102": (Part("flowers-102/jpg/", ("image_00001.jpg",), ("102flowers.tgz",)),
                   Part("flowers-102/imagelabels.mat", md5=True), Part("flowers-102/setid.mat", md5=True)),
    "Food101": (Part("food-101/", ("images/", "meta/"), ("food-101.tar.gz",)),),
    "OxfordIIITPet": (Part("oxford-iiit-pet/images/", ("Abyssinian_1.jpg",), ("images.tar.gz",)),
                      Part("oxford-iiit-pet/annotations/", ("trainval.txt", "test.txt"), ("annotations.tar.gz",))),
    "STL10": (Part("stl10_binary/", ("train_X.bin", "test_X.bin"), ("stl10_binary.tar.gz",), md5=True),),
    "SVHN": (Part("train_32x32.mat", md5=True), Part("test_32x32.mat", md5=True)),  # extra is not prepared
    "MNIST": _mnist("MNIST"),
    "FashionMNIST": _mnist("FashionMNIST"),
}  # fmt: skip


def archive_dir(card: DataCard, dataset_root: Path) -> Path:
    """The folder the card's archives go in for torchvision (or for featkit, with folder cards)."""
    return dataset_root / ARCHIVE_DIRS.get(card.loader.torchvision_class or "", "")


def parts(card: DataCard) -> tuple[Part, ...]:
    """What the card's loader reads under ROOT/NAME. A folder card: the folder its archive unpacks to."""
    if card.loader.kind == "folder":
        stem = Path(card.archives[0].file).name.split(".")[0] if card.archives else "data"
        files = tuple(a.file for a in card.archives)
        return (Part(f"{stem}/", tuple(f"{s}/" for s in card.loader.args), files),)
    return PARTS.get(card.loader.torchvision_class or "", ())


def md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def _check_md5(card: DataCard, path: Path) -> None:
    expected = next((a.md5 for a in card.archives if a.file == path.name), None)
    if expected is None:
        return
    found = md5_file(path)
    if found != expected:
        raise InputError(
            f"Archive {path} has md5 {found}, the {card.name} card expects {expected}: it is truncated or "
            f"a different file. Delete it and rerun to download it again, or replace it with a good copy."
        )


def check_archives(card: DataCard, dataset_root: Path) -> None:
    """Every archive of the card that is on disk and has an md5 in the card must match it.

    Absent archives are fine: torchvision deletes some after extracting, and an extracted copy needs none.
    Checked before torchvision sees them, because torchvision quietly re-downloads a bad archive (and offline
    that surfaces as a confusing download error).
    """
    folder = archive_dir(card, dataset_root)
    for archive in card.archives:
        if (folder / archive.file).is_file():
            _check_md5(card, folder / archive.file)


# --- finding and placing a copy you already have ---------------------------------------------------------------

def _holds(folder: Path, entries: Sequence[str]) -> bool:
    return all((folder / e.rstrip("/")).is_dir() if e.endswith("/") else (folder / e).is_file() for e in entries)


def _subdirs(folder: Path, skip_outputs: bool) -> list[Path]:
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return []
    return [c for c in children if c.is_dir() and not c.name.startswith(".")
            and not (skip_outputs and c.name.startswith("images"))]  # fmt: skip


def _containers(base: Path) -> Iterator[Path]:
    """``base`` and the folders up to SEARCH_DEPTH below it, breadth first (not into featkit's images*/ outputs)."""
    level = [base]
    for depth in range(SEARCH_DEPTH + 1):
        yield from level
        if depth < SEARCH_DEPTH:
            level = [c for folder in level for c in _subdirs(folder, skip_outputs=folder == base)]


def _matches(part: Part, path: Path) -> bool:
    if part.is_dir:
        return path.is_dir() and _holds(path, part.holds)
    return path.is_file()


def find_part(part: Part, base: Path, *, outputs: bool = False) -> Path | None:
    """``part``'s unpacked copy in ``base`` (or up to SEARCH_DEPTH folders below it), or None.

    A folder is found by its name, or under any name by what it holds; ``base`` itself counts (the user unpacked
    the folder's contents straight into it). ``outputs``: skip featkit's own images*/ folders in ``base``.
    """
    if base.is_file():
        return base if not part.is_dir and base.name == part.name else None
    for folder in _containers(base):
        if part.is_dir and part.holds and _holds(folder, part.holds):
            return folder
        candidate = folder / part.name
        if outputs and folder == base and candidate.name.startswith("images"):
            continue  # featkit's own output folders
        if _matches(part, candidate):
            return candidate
    return None


def _find_archive(part: Part, bases: Sequence[Path]) -> Path | None:
    """The first of the part's archives in ``bases`` or one folder below; a base that is that file counts too."""
    for name in part.archives:
        for base in bases:
            if base.is_file():
                if base.name == name:
                    return base
                continue
            for folder in [base, *_subdirs(base, skip_outputs=True)]:
                if (folder / name).is_file():
                    return folder / name
    return None


def _link(src: Path, dst: Path, dataset_root: Path) -> None:
    """``dst`` -> ``src``, without copying image bytes.

    A symlink (relative when ``src`` is under ROOT/NAME, so the data root can move); where symlinks are
    impossible, a tree of hard links (copies only across filesystems).
    """
    inside = _under(src, dataset_root)
    try:
        os.symlink(os.path.relpath(src, dst.parent) if inside else os.path.abspath(src), dst,
                   target_is_directory=src.is_dir())
        return
    except OSError as exc:
        logger.info("cannot symlink %s (%s): hard-linking its files", dst, exc)
    if not src.is_dir():
        _hardlink_or_copy(src, dst)
        return
    for folder, _, files in os.walk(src, followlinks=True):
        out = dst / os.path.relpath(folder, src)
        out.mkdir(parents=True, exist_ok=True)
        for name in files:
            _hardlink_or_copy(Path(folder) / name, out / name)


def _hardlink_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _under(path: Path, folder: Path) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))


def place(found: Path, target: Path, dataset_root: Path, made: list[Path]) -> None:
    """Make ``target`` (where torchvision looks) show ``found`` (where the copy is), without copying image bytes.

    A folder that contains ``target`` itself (``ROOT/dtd/dtd`` inside the unpacked ``ROOT/dtd``) gets ``target``
    as a new folder of links to its entries. Never replaces a real file or folder; a symlink there (an earlier
    ``--from``'s) is pointed at the new copy. What it makes is appended to ``made``, for a failed prepare to undo.
    """
    if target.is_symlink():
        if target.exists() and os.path.samefile(target, found):
            return
        target.unlink()
    elif target.exists():
        if os.path.samefile(target, found):
            return
        raise InputError(f"{target} already exists and is not {found}: move it away and rerun to use {found} "
                         f"(featkit links it there), or drop --from.")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not _under(target, found):
        made.append(target)
        _link(found, target, dataset_root)
        return
    made.append(target)
    target.mkdir()
    step = Path(os.path.abspath(target)).relative_to(os.path.abspath(found)).parts[0]
    outputs = os.path.samefile(found, dataset_root)  # featkit's images*/ there are not the dataset's
    for child in sorted(found.iterdir()):
        if child.name != step and not child.name.startswith(".") and not (outputs and child.name.startswith("images")):
            _link(child, target / child.name, dataset_root)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()


def unpack(card: DataCard, part: Part, archive: Path, dest: Path, target: Path) -> None:
    """Unpack ``archive`` into ``dest`` as torchvision's download would, offline, keeping the archive.

    An inner archive is unpacked too, its outer folder then removed, as torchvision does with Caltech-101's zip
    (which holds 101_ObjectCategories.tar.gz). A failed unpack removes everything it wrote.
    """
    from torchvision.datasets.utils import extract_archive

    _check_md5(card, archive)
    if target.is_symlink() and not target.exists():
        target.unlink()  # an earlier --from's link to a copy that has gone: the archive replaces it
    dest.mkdir(parents=True, exist_ok=True)
    before = set(os.listdir(dest))
    logger.info("unpacking %s into %s", archive, dest)
    try:
        extract_archive(str(archive), str(dest))
        new = sorted(set(os.listdir(dest)) - before)
        inner = next((dest / n / a for n in new for a in part.archives if (dest / n / a).is_file()), None)
        if not target.exists() and inner is not None:
            extract_archive(str(inner), str(dest))
            shutil.rmtree(inner.parent)
    except BaseException as exc:
        for name in set(os.listdir(dest)) - before:
            _remove(dest / name)
        if not isinstance(exc, (OSError, EOFError, RuntimeError, ValueError, tarfile.TarError, zipfile.BadZipFile)):
            raise
        reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"Cannot unpack {archive} into {dest}: {reason}. Replace it with a good copy.") from None


def is_linked(target: Path) -> bool:
    """``target`` is a link to a copy elsewhere, or a folder of such links (:func:`place`: all its entries are)."""
    if target.is_symlink():
        return True
    try:
        return target.is_dir() and next(target.iterdir()).is_symlink()
    except (OSError, StopIteration):
        return False


def _present(part: Part, target: Path, strict: bool) -> bool:
    """The part is in its place: it exists (torchvision judges the rest), and ``strict``, holds what identifies it.

    Strict is for folder cards, which featkit reads itself.
    """
    if strict:
        return _matches(part, target)
    return target.is_dir() if part.is_dir else target.is_file()


def gather(card: DataCard, dataset_root: Path, *, source: Path | None = None, download: bool = True,
           made: list[Path] | None = None) -> dict[Part, Path | None]:
    """Make each part of the card present where its loader reads it; return where each one is (None: missing).

    In order: ``source`` (``--from``: the unpacked folder, or a folder or archive holding it) is linked into the
    place; a part already in its place is kept; an unpacked copy under ROOT/NAME (up to SEARCH_DEPTH folders
    down) is linked into the place (a folder card reads it where it is); an archive there (itself or one folder
    down) or in torchvision's download folder is unpacked into the place. What is still missing is for
    torchvision's download to fetch; with ``download=False`` it is a one-line error naming each expected path.
    What this makes on disk is appended to ``made``.
    """
    made = [] if made is None else made
    if source is not None and not source.exists():
        raise InputError(f"--from {source} does not exist: pass the unpacked {card.name} folder (or its archive).")
    folder_card = card.loader.kind == "folder"
    dest = archive_dir(card, dataset_root)
    where: dict[Part, Path | None] = {}
    from_source = False
    for part in parts(card):
        target = part.where(dataset_root)
        found = None
        if source is not None:
            found = find_part(part, source)
            placed = found is not None or _present(part, target, folder_card)
            archive = None if placed else _find_archive(part, [source])
            if archive is not None:
                unpack(card, part, archive, dest, target)
                found = target if _present(part, target, folder_card) else None
            from_source = from_source or found is not None
        if found is None and _present(part, target, folder_card):
            found = target
        if found is None:
            found = find_part(part, dataset_root, outputs=True)
            if found is not None and folder_card:
                where[part] = found  # featkit reads a folder card's split folders where they are
                continue
        if found is None and (archive := _find_archive(part, [dest, dataset_root])) is not None:
            unpack(card, part, archive, dest, target)
            found = target if _present(part, target, folder_card) else None
        if found is not None and found != target:
            place(found, target, dataset_root, made)
        where[part] = None if found is None else target
    if source is not None and not from_source:
        raise InputError(f"--from {source} holds no {card.name} data: expected {expected(card, dataset_root)} "
                         f"(or that folder anywhere, or its archive).")
    missing = [p for p, w in where.items() if w is None]
    linked = [p.where(dataset_root) for p in where if is_linked(p.where(dataset_root))]
    if missing and (not download or linked):
        lead = "--no-download was given" if not download else (
            f"torchvision's download would write into the linked {', '.join(map(str, linked))}")
        raise missing_error(card, dataset_root, missing, lead=lead)
    return where


def _describe(card: DataCard, part: Part, dataset_root: Path) -> str:
    target = part.where(dataset_root)
    notes = ["unpacked" if part.archives else "as downloaded"]
    if part.is_dir and part.holds:
        notes.append(f"holding {', '.join(part.holds)}")
    if part.md5:
        notes.append("torchvision checks the md5 of each file" if part.is_dir else "torchvision checks its md5")
    text = f"{target}{'/' if part.is_dir else ''} ({'; '.join(notes)})"
    folder = archive_dir(card, dataset_root)
    return " or ".join([text, *(str(folder / a) for a in part.archives)])


def expected(card: DataCard, dataset_root: Path, missing: Sequence[Part] | None = None) -> str:
    """What the card needs and where, one phrase per part: "ROOT/x/caltech101/101_ObjectCategories/ (unpacked) or …"."""
    return "; and ".join(_describe(card, p, dataset_root) for p in (missing if missing is not None else parts(card)))


def missing_error(card: DataCard, dataset_root: Path, missing: Sequence[Part], reason: str = "", *,
                  lead: str = "--no-download was given") -> InputError:
    """The one-line error for "not here, and not to be downloaded": the exact paths, where it looked, ``--from``."""
    why = f" ({reason})" if reason else ""
    rerun = ", or rerun without --no-download" if lead.startswith("--no-download") else ""
    return InputError(
        f"{card.name} is not under {dataset_root} and {lead}{why}: expected "
        f"{expected(card, dataset_root, missing)}; looked there, in {dataset_root}/ and up to {SEARCH_DEPTH} "
        f"folders below it. Put it there, or pass --from PATH to the unpacked folder wherever it is{rerun}."
    )


def offline_error(card: DataCard, dataset_root: Path, download: bool, cause: BaseException, *,
                  linked: bool = False) -> InputError:
    """The one-line error for "the data is not here and could not be fetched", saying what to download where.

    ``linked``: torchvision was not allowed to download because part of the copy is a link to the user's folder.
    """
    reason = str(cause).splitlines()[0] if str(cause).strip() else type(cause).__name__
    if linked:
        return missing_error(card, dataset_root, parts(card), reason, lead="torchvision does not accept the copy "
                             "linked there")
    if not download:
        return missing_error(card, dataset_root, parts(card), reason)
    folder = archive_dir(card, dataset_root)
    urls = [a.url or a.file for a in card.archives] or [f"the dataset from {card.source or 'its source'}"]
    return InputError(
        f"Cannot download {card.name} (no network?): {reason}. Download {', '.join(urls)} into {folder}/ and "
        f"rerun, or pass --from PATH to the unpacked copy you have (expected: {expected(card, dataset_root)}), "
        f"or pass --root to a folder that already holds it."
    )


def open_torchvision(card: DataCard, dataset_root: Path, args: dict[str, Any], download: bool) -> Any:
    """``torchvision.datasets.<class>(root=ROOT/NAME, download=..., **args)``, with failures as one line.

    torchvision reports a missing dataset as RuntimeError("Dataset not found ...") and a failed download as
    URLError/OSError (or RuntimeError from MNIST's mirror loop); all of them mean "not here, not fetchable".
    Where a part is linked to the user's own copy, torchvision is never let download: it would write into it.
    """
    import torchvision.datasets

    # cards validates that a torchvision loader names its class
    cls = getattr(torchvision.datasets, cast(str, card.loader.torchvision_class))
    dataset_root.mkdir(parents=True, exist_ok=True)
    linked = any(is_linked(part.where(dataset_root)) for part in parts(card))
    try:
        return cls(root=str(dataset_root), download=download and not linked, **args)
    except (URLError, OSError, RuntimeError) as exc:
        raise offline_error(card, dataset_root, download, exc, linked=download and linked) from exc
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
