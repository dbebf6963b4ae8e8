"""Turn what the user points at (folders, list files, image paths) into an ordered table of inputs.

A folder is walked recursively in sorted order, symlinked folders followed (a symlink back to a folder above it
is recorded, never followed). Its layout is decided once, before any work (see :func:`list_inputs`):
``root/{train,val,test}/CLASS/*`` gives a split column and the label, ``root/CLASS/*`` a label column. Every file
is listed (hidden files aside): whether it is an image is decided later by its content, not its extension.
WebDataset shards (a ``.tar``, or a folder holding shards and no images) give one row per sample with an image
(:mod:`featkit.data.shards`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from featkit._files import not_a_file
from featkit.choices import Layout
from featkit.data import shards
from featkit.errors import InputError, check_choice, check_int

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "valid", "validation", "test")
PATH_COLUMNS = ("path", "filepath", "file", "filename", "image", "image_path")
LABEL_COLUMNS = ("label", "class", "target", "category")
LIST_SUFFIXES = (".csv", ".tsv", ".parquet", ".txt")
COLUMNS = ["path", "label", "split", "bytes", "mtime_ns"]
# only for deciding a folder's layout (is a file at its root an image, or a stray README?); whether a listed
# file is an image is decided by its content
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".ppm", ".mpo")


@dataclass(frozen=True)
class Listing:
    """The inputs of a run in their final order, and the names that could not even be listed."""

    table: pd.DataFrame  # COLUMNS; bytes/mtime_ns are -1 where stat failed (the decoder records why)
    bad_names: pd.DataFrame  # path (escaped), reason, message


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        member = shards.member_info(path)  # a shard's member named by its path
        return (member.size, member.mtime_ns) if member is not None else (-1, -1)


def _shown(name: str) -> str:
    """``name`` as UTF-8 text, each undecodable byte written as a backslash escape."""
    return name if _utf8(name) else name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:  # undecodable bytes that os.fsdecode smuggled in as surrogates
        return False


def _walk(root: Path) -> tuple[list[tuple[str, tuple[str, ...]]], list[dict]]:
    """Every non-hidden file under ``root``, symlinked folders followed (as torchvision's ImageFolder does).

    Returns:
        (path as walked under ``root``, its parts relative to ``root``), sorted by parts; and the folders not
        entered because they are a symlink back to a folder above them (a loop), as failure records.
    """
    found: list[tuple[str, tuple[str, ...]]] = []
    loops: list[dict] = []
    stack: list[tuple[str, tuple[str, ...], frozenset[tuple[int, int]]]] = [
        (str(root), (), frozenset({_identity(str(root))}))]
    while stack:
        folder, rel, above = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            loops.append({"path": folder, "reason": "unreadable", "message": f"{folder}: cannot list: {exc.strerror}"})
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if _is_dir(entry):
                ident = _identity(entry.path)
                if ident in above:
                    loops.append({"path": entry.path, "reason": "symlink_loop",
                                  "message": f"{entry.path}: a symlink to a folder above it; not followed"})
                else:
                    stack.append((entry.path, (*rel, entry.name), above | {ident}))
            else:  # files, and anything else (broken symlinks, FIFOs): the decoder records what it is
                found.append((entry.path, (*rel, entry.name)))
    return sorted(found, key=lambda item: item[1]), loops


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:  # a symlink loop of its own, or a permission error
        return False


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _looks_like_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def _looks_like_content(name: str) -> bool:
    """An image, or a shard of them: what a folder's layout is decided by."""
    return _looks_like_image(name) or name.lower().endswith(shards.SHARD_SUFFIX)


def _decide_layout(root: Path, files: list[tuple[str, tuple[str, ...]]], layout: str) -> tuple[str, list[str]]:
    """The layout of ``root`` and the top-level entries it leaves out (said in one warning line)."""
    top_dirs = sorted({parts[0] for _, parts in files if len(parts) > 1})
    root_files = [parts[0] for _, parts in files if len(parts) == 1]
    splits = [d for d in top_dirs if d in SPLIT_NAMES]
    # split folders hold class folders; a class that happens to be called "train" (PASCAL VOC has one) holds images
    nested = {parts[0] for _, parts in files if len(parts) > 2}
    if layout == "auto":
        if splits and (set(top_dirs) <= set(SPLIT_NAMES) or all(d in nested for d in splits)):
            layout = "splits"
        elif top_dirs and not any(_looks_like_content(f) for f in root_files):
            layout = "classes"
        else:
            layout = "flat"
            if top_dirs and root_files:
                log.warning("%s holds images beside folders: listed as one set without labels (--layout classes "
                            "takes the folder names as labels)", root)
    elif layout == "splits" and not splits:
        raise InputError(f"--layout splits: {root} has no split folders ({', '.join(SPLIT_NAMES)}); it holds "
                         f"{_sample(top_dirs + root_files)}.")
    elif layout == "classes" and not top_dirs:
        raise InputError(f"--layout classes: {root} has no class folders; it holds {_sample(root_files)}.")
    if layout == "splits":
        left_out = [d + "/" for d in top_dirs if d not in SPLIT_NAMES] + root_files
    elif layout == "classes":
        left_out = root_files
    else:
        left_out = []
    if left_out:
        log.warning("%s: %s layout (%s); left out %s", root, layout,
                    ", ".join(f"{d}/" for d in (splits if layout == "splits" else top_dirs)[:6]), _sample(left_out))
    return layout, left_out


def _sample(names: list[str], most: int = 5) -> str:
    if not names:
        return "nothing"
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _shard_rows(root: Path, files: list[tuple[str, tuple[str, ...]]],
                layout: str) -> tuple[list[dict], list[dict]] | None:
    """A folder of WebDataset shards and no images (img2dataset's output): every shard's samples, else None.

    The shards' own layout gives labels and splits where the samples name none (``train/00000.tar``,
    ``cat/00000.tar``). The folder's other files (img2dataset's ``.parquet`` and ``_stats.json``) are named in one
    warning, not listed.
    """
    if any(_looks_like_image(parts[-1]) for _, parts in files):
        return None
    tars = [(path, parts) for path, parts in files if shards.is_shard(path)]
    if not tars:
        if any(shards.is_compressed_shard(path) for path, _ in files):
            raise InputError(f"{root} holds compressed tars: {shards.COMPRESSED_HELP}")
        return None
    tar_paths = {path for path, _ in tars}
    others = [os.path.join(*parts) for path, parts in files if path not in tar_paths]
    if others:
        log.warning("%s: a folder of %d WebDataset shards; left out %s", root, len(tars), _sample(others))
    return _expand_shards(_layout_rows(root, tars, layout))


def _expand_shards(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Rows whose file is a WebDataset shard replaced by its samples, and the shards' failure records.

    A sample takes the row's label and split (its class folder's, its list's) where it names none itself.
    """
    out: list[dict] = []
    bad: list[dict] = []
    for row in rows:
        if not shards.is_shard(row["path"]):
            out.append(row)
            continue
        found, broken = shards.list_shard(row["path"])
        out += [{**sample, "label": sample["label"] or row["label"], "split": sample["split"] or row["split"]}
                for sample in found]
        bad += broken
    return out, bad


def _folder_rows(root: Path, layout: str) -> tuple[list[dict], list[dict]]:
    files, loops = _walk(root)
    if (found := _shard_rows(root, files, layout)) is not None:
        return found[0], loops + found[1]
    rows, bad = _expand_shards(_layout_rows(root, files, layout))  # shards among images, or in class folders
    return rows, loops + bad


def _layout_rows(root: Path, files: list[tuple[str, tuple[str, ...]]], layout: str) -> list[dict]:
    layout, _ = _decide_layout(root, files, layout)
    rows = []
    for path, parts in files:
        label = split = None
        if layout == "splits":
            if parts[0] not in SPLIT_NAMES or len(parts) == 1:
                continue
            split, label = parts[0], (parts[1] if len(parts) > 2 else None)
        elif layout == "classes":
            if len(parts) == 1:
                continue
            label = parts[0]
        rows.append({"path": path, "label": label, "split": split})
    return rows


def _pick(columns: Iterable[str], wanted: Sequence[str]) -> str | None:
    lower = {c.lower(): c for c in columns}
    return next((lower[w] for w in wanted if w in lower), None)


def _list_file_rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            lines = [ln.strip() for ln in path.read_text().splitlines()]
            frame = pd.DataFrame({"path": [ln for ln in lines if ln and not ln.startswith("#")]})
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read the list file {path}: {exc}") from None
    path_col = _pick(frame.columns, PATH_COLUMNS)
    if path_col is None:
        raise InputError(f"{path} has no path column (looked for {', '.join(PATH_COLUMNS)}); "
                         f"columns are {list(frame.columns)}.")
    label_col = _pick(frame.columns, LABEL_COLUMNS)
    split_col = _pick(frame.columns, ("split",))
    base = path.parent
    rows = []
    for i, value in enumerate(frame[path_col]):
        p = Path(str(value)).expanduser()
        rows.append({
            "path": os.path.abspath(p if p.is_absolute() else base / p),
            "label": (None if label_col is None or frame[label_col].iloc[i] in ("", None)
                      else str(frame[label_col].iloc[i])),
            "split": (None if split_col is None or frame[split_col].iloc[i] in ("", None)
                      else str(frame[split_col].iloc[i])),
        })
    return rows


def is_list_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a list file (.csv/.tsv/.parquet/.txt) rather than an image."""
    return Path(path).suffix.lower() in LIST_SUFFIXES and os.path.isfile(path)


def list_inputs(inputs: str | os.PathLike | Iterable[str | os.PathLike], *, layout: str = "auto",
                limit: int | None = None, per_class: int | None = None) -> Listing:
    """List the images a run will read, in a deterministic order.

    Args:
        inputs: a folder, a list file (``.csv``/``.tsv``/``.parquet`` with a path column and optional label
            and split columns; ``.txt`` with one path per line), an image path, a WebDataset shard (``.tar``: a
            row per sample with an image, labelled by its ``.cls`` or ``.json``), or a sequence of these. A folder
            of shards and no images (img2dataset's output) is read as its shards.
        layout: how folders give labels and splits: ``auto`` (split folders if there are any, else class
            folders, else one flat set), ``splits`` (ROOT/SPLIT/CLASS/*), ``classes`` (ROOT/CLASS/*) or ``flat``
            (no labels). What a layout leaves out of a folder is said in one warning line.
        limit: only the first ``limit`` inputs, in listing order (a smoke run).
        per_class: only the first ``per_class`` inputs of each class in each split, in listing order (a smoke run
            that keeps every class; unlabelled inputs count as one class).

    Raises:
        InputError: an input does not exist, a list file cannot be read, a folder does not have the layout
            asked for, or there is nothing to read.
    """
    layout = check_choice("layout", layout, Layout, "list_inputs", error=InputError)
    for name, value in (("limit", limit), ("per_class", per_class)):
        if value is not None:
            check_int(name, value, "list_inputs", minimum=1, error=InputError)
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not items:
        raise InputError("No inputs given: pass a folder, a list file (.csv/.parquet/.txt) or image paths.")
    rows: list[dict] = []
    bad: list[dict] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            found, loops = _folder_rows(p.absolute(), layout)
            rows += found
            bad += loops
        elif is_list_file(p):
            found, broken = _expand_shards(_list_file_rows(p))  # a list may name shards
            rows += found
            bad += broken
        elif shards.is_shard(p):
            found, broken = shards.list_shard(os.path.abspath(p))
            rows += found
            bad += broken
        elif shards.is_compressed_shard(p):
            raise InputError(f"{p} is a compressed tar: {shards.COMPRESSED_HELP}")
        elif p.suffix.lower() in LIST_SUFFIXES and (what := not_a_file(p)) is not None:  # reading it could block
            raise InputError(f"List file {p} is {what}, not a file; pass the list file itself.")
        elif p.exists() or p.is_symlink() or shards.split_member(os.path.abspath(p)) is not None:
            rows.append({"path": os.path.abspath(p), "label": None, "split": None})
        else:
            raise InputError(f"Input not found: {p}. Pass a folder, a list file (.csv/.parquet/.txt) or image paths.")
    good = []
    seen: set[str] = set()
    bad = [{key: _shown(value) if isinstance(value, str) else value for key, value in record.items()}
           for record in bad]  # a failure's own path (a shard's) may be no UTF-8 either
    for row in rows:
        if not _utf8(row["path"]):
            bad.append({"path": _shown(row["path"]), "reason": "bad_filename",
                        "message": "file name is not valid UTF-8"})
        elif row["path"] not in seen:  # the same file listed twice is computed once
            seen.add(row["path"])
            size, mtime = (row.pop("bytes"), row.pop("mtime_ns")) if "bytes" in row else _stat(row["path"])
            good.append({**row, "bytes": size, "mtime_ns": mtime})
    if not good and not bad:
        where = ", ".join(str(i) for i in items[:3]) + (" ..." if len(items) > 3 else "")
        raise InputError(f"No images in {where}: nothing to read (hidden files are skipped; a list file needs rows).")
    table = pd.DataFrame(good, columns=COLUMNS)
    if per_class is not None:
        groups = table[["split", "label"]].fillna("\0")  # unlabelled rows are a group of their own
        table = table[(groups.groupby(["split", "label"]).cumcount() < per_class).to_numpy()].reset_index(drop=True)
    if limit is not None:
        table = table.iloc[:limit].reset_index(drop=True)
    return Listing(table, pd.DataFrame(bad, columns=["path", "reason", "message"]))
