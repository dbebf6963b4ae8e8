"""Feature store format v1: the directory layout and the manifest.

```
STORE/
  manifest.json                       # written last: the commit point of every shard
  features/<tap>/part-NNNNN.npy       # float32/float16 (rows, dims), memory-mappable
  metadata/part-NNNNN.parquet         # row, path, label, split, width, height, bytes, mtime_ns, fingerprint
  failures/part-NNNNN.parquet         # path, reason, message, bytes, mtime_ns, fingerprint
```
The one writer holds an ``flock`` on the STORE directory itself. ``fingerprint`` (see
:mod:`featkit.extraction.fingerprint`) tells a rerun that a file changed when its size and mtime did not; shards
written before it was recorded lack the column, and their files are compared by size and mtime only.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from featkit._atomic import json_bytes, write_bytes
from featkit._files import is_sha256, read_json
from featkit.choices import DType, values
from featkit.errors import StoreError, WriteError
from featkit.store.settings import StoreSettings

FORMAT = "featkit-store"
VERSION = 1
MANIFEST = "manifest.json"
META_COLUMNS = ["row", "path", "label", "split", "width", "height", "bytes", "mtime_ns", "fingerprint"]
FAILURE_COLUMNS = ["path", "reason", "message", "bytes", "mtime_ns", "fingerprint"]


def shard_name(index: int, suffix: str) -> str:
    return f"part-{index:05d}{suffix}"


def feature_path(tap: str, index: int) -> str:
    return f"features/{tap}/{shard_name(index, '.npy')}"


def metadata_path(index: int) -> str:
    return f"metadata/{shard_name(index, '.parquet')}"


def failures_path(index: int) -> str:
    return f"failures/{shard_name(index, '.parquet')}"


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()


def read_manifest(root: Path) -> tuple[dict, StoreSettings] | None:
    """The manifest of ``root`` and its typed settings; None if there is none.

    Raises:
        StoreError: not a featkit store v1, or a manifest whose structure is damaged (names the file and field).
    """
    path = root / MANIFEST
    try:
        manifest = read_json(path)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise StoreError(f"{path} {exc}. Restore it, or recompute the store with featkit extract ... -o {root} "
                         "--overwrite.") from None
    if not isinstance(manifest, dict):
        raise StoreError(f"{root} is not a featkit feature store ({path} holds a JSON {type(manifest).__name__}, "
                         "not an object).")
    if manifest.get("format") != FORMAT:
        raise StoreError(f"{root} is not a featkit feature store (the format of {path} is not '{FORMAT}').")
    if manifest.get("version") != VERSION:
        raise StoreError(f"{root} is a featkit store of format version {str(manifest.get('version'))[:20]!r}; "
                         f"this featkit reads version {VERSION}.")
    if problem := _structure_problem(manifest):
        raise _damaged(path, problem)
    settings = StoreSettings.from_json(manifest.get("settings"), str(path))
    if problem := _taps_problem(manifest, settings):
        raise _damaged(path, problem)
    return manifest, settings


def _damaged(path: Path, problem: str) -> StoreError:
    return StoreError(f"{path} is damaged: {problem}. Restore it, or recompute the store with "
                      f"featkit extract ... -o {path.parent} --overwrite.")


def plain_name(name: object) -> bool:
    """True for a name that stays inside its folder: no separators, no '..', no NUL, not hidden, not empty.

    Also printable and at most 255 characters: a name the file system takes as one file in that folder.
    """
    return (isinstance(name, str) and name != "" and name.isprintable() and len(name.encode()) <= 255
            and not name.startswith(".") and not any(c in name for c in "/\\:"))


def shard_file(rel: str, index: int) -> bool:
    """True for a path that the writer gives a file of shard ``index``, relative to the store.

    ``features/<tap>/part-NNNNN.npy`` (a plain tap name), ``metadata/part-NNNNN.parquet`` or
    ``failures/part-NNNNN.parquet``: nothing else named in a manifest is ever opened or hashed.
    """
    parts = rel.split("/")
    if len(parts) == 3 and parts[0] == "features":
        return plain_name(parts[1]) and parts[2] == shard_name(index, ".npy")
    return rel in (metadata_path(index), failures_path(index))


MAX_COUNT = 2**48  # rows, failures or dimensions beyond this are damage, and would overflow int64 arithmetic


def is_count(value: object, low: int = 0) -> bool:
    """True for an integer (not a bool) from ``low`` to MAX_COUNT: a count or size a manifest may record."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= MAX_COUNT


def _structure_problem(m: dict) -> str:
    """What is wrong with the manifest's fields besides its settings, or an empty string."""
    if not isinstance(m.get("taps"), dict):
        return "taps must be an object"
    for tap, meta in m["taps"].items():
        if not plain_name(tap):
            return f"taps: {tap[:80]!r} is not a plain tap name"
        if not isinstance(meta, dict) or not is_count(meta.get("dims"), 1) or meta.get("dtype") not in values(DType):
            return f"taps.{tap} must be an object with dims (an integer >= 1) and dtype (float32 or float16)"
    for key in ("rows", "failures"):
        if not is_count(m.get(key)):
            return f"{key} must be an integer >= 0 (and at most 2**48)"
    if not isinstance(m.get("shards"), list):
        return "shards must be a list"
    total = 0
    for i, shard in enumerate(m["shards"]):
        if (not isinstance(shard, dict) or type(shard.get("index")) is not int or shard["index"] != i
                or not is_count(shard.get("rows")) or not is_count(shard.get("failures"))
                or not isinstance(shard.get("files"), dict)):
            return f"shards[{i}] must be an object with index {i}, rows, failures and files"
        for rel, digest in shard["files"].items():
            if not shard_file(rel, i):
                return f"shards[{i}].files: {rel[:80]!r} is not a file of shard {i}"
            if not is_sha256(digest):
                return f"shards[{i}].files[{rel!r}] must be a sha256 (64 hex digits)"
        total += shard["rows"]
    if total > MAX_COUNT:
        return f"shards hold {total} rows in all, more than {MAX_COUNT}"
    stale = m.get("stale_rows", [])
    if not isinstance(stale, list) or not all(is_count(r) and r < total for r in stale):
        return "stale_rows must be a list of row numbers of the store's shards"
    if not isinstance(m.get("runs", []), list) or not all(isinstance(r, dict) for r in m.get("runs", [])):
        return "runs must be a list of objects"
    return ""


def _taps_problem(m: dict, settings: StoreSettings) -> str:
    """A stored tap that the settings do not record (they say how every stored tap was computed), or ""."""
    unknown = [tap for tap in m["taps"] if tap not in settings.tap_names]
    return f"taps: {unknown[0][:80]!r} is not one of settings.taps" if unknown else ""


def write_manifest(root: Path, manifest: dict) -> None:
    write_file(root / MANIFEST, json_bytes(manifest))


def write_file(path: Path, data: bytes) -> str:
    """Write one of the store's files atomically; returns its sha256.

    Raises:
        StoreError: the write failed (disk full, quota, permissions): names the path and errno.
    """
    try:
        return write_bytes(path, data)
    except WriteError as exc:
        raise StoreError(f"{exc} Earlier shards are intact; fix the cause (e.g. free disk space) and rerun the same "
                         "command to resume.") from None
