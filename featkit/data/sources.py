"""Turn what the user points at (folders, list files, image paths) into an ordered table of inputs.

A folder is walked recursively in sorted order. ImageFolder layouts give labels: ``root/CLASS/*`` gives a
label column; ``root/{train,val,test}/CLASS/*`` gives a split column and the label. Every regular file is
listed (hidden files aside): whether it is an image is decided later by its content, not its extension.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from featkit.errors import InputError

SPLIT_NAMES = ("train", "val", "valid", "validation", "test")
PATH_COLUMNS = ("path", "filepath", "file", "filename", "image", "image_path")
LABEL_COLUMNS = ("label", "class", "target", "category")
LIST_SUFFIXES = (".csv", ".tsv", ".parquet", ".txt")
COLUMNS = ["path", "label", "split", "bytes", "mtime_ns"]


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
        return -1, -1


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:  # undecodable bytes that os.fsdecode smuggled in as surrogates
        return False


def _walk(root: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(absolute path, path parts relative to root) for every non-hidden file, sorted, symlinked dirs not followed."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root).parts
        found += [(os.path.join(dirpath, f), (*rel, f)) for f in filenames if not f.startswith(".")]
    return sorted(found, key=lambda item: item[1])


def _folder_rows(root: Path) -> list[dict]:
    files = _walk(root)
    top_dirs = {parts[0] for _, parts in files if len(parts) > 1}
    top_files = any(len(parts) == 1 for _, parts in files)
    by_split = bool(top_dirs) and not top_files and top_dirs <= set(SPLIT_NAMES)
    by_label = bool(top_dirs) and not top_files and not by_split
    rows = []
    for path, parts in files:
        label = split = None
        if by_split:
            split, label = parts[0], (parts[1] if len(parts) > 2 else None)
        elif by_label:
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


def list_inputs(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> Listing:
    """List the images a run will read, in a deterministic order.

    Args:
        inputs: a folder, a list file (``.csv``/``.tsv``/``.parquet`` with a path column and optional label
            and split columns; ``.txt`` with one path per line), an image path, or a sequence of these.

    Raises:
        InputError: an input does not exist or a list file cannot be read.
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not items:
        raise InputError("No inputs given: pass a folder, a list file (.csv/.parquet/.txt) or image paths.")
    rows: list[dict] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            rows += _folder_rows(p.absolute())
        elif is_list_file(p):
            rows += _list_file_rows(p)
        elif p.exists() or p.is_symlink():
            rows.append({"path": os.path.abspath(p), "label": None, "split": None})
        else:
            raise InputError(f"Input not found: {p}. Pass a folder, a list file (.csv/.parquet/.txt) or image paths.")
    good, bad = [], []
    seen: set[str] = set()
    for row in rows:
        if not _utf8(row["path"]):
            shown = row["path"].encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            bad.append({"path": shown, "reason": "bad_filename", "message": "file name is not valid UTF-8"})
        elif row["path"] not in seen:  # the same file listed twice is computed once
            seen.add(row["path"])
            size, mtime = _stat(row["path"])
            good.append({**row, "bytes": size, "mtime_ns": mtime})
    table = pd.DataFrame(good, columns=COLUMNS)
    return Listing(table, pd.DataFrame(bad, columns=["path", "reason", "message"]))
