"""Feature store formats: v1's directory layout and manifest, and what v2 (:mod:`featkit.store.segments`) shares.

Format v1, which this featkit still reads, resumes and adds taps to (``featkit store upgrade`` rewrites it as v2):

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from featkit._atomic import json_bytes, write_bytes
from featkit._files import is_sha256, read_json
from featkit.choices import DType, values
from featkit.errors import StoreError, WriteError
from featkit.store.settings import StoreSettings

FORMAT = "featkit-store"
VERSION = 2  # what new stores are written as
VERSIONS = (1, 2)  # what this featkit reads
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
    if manifest.get("version") not in VERSIONS or isinstance(manifest.get("version"), bool):
        raise StoreError(f"{root} is a featkit store of format version {str(manifest.get('version'))[:20]!r}; "
                         f"this featkit reads versions {' and '.join(map(str, VERSIONS))} (a newer featkit wrote it?).")
    if problem := (_structure_problem(manifest) if manifest["version"] == 1 else _taps_structure_problem(manifest)):
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


def _taps_structure_problem(m: dict) -> str:
    """What is wrong with the manifest's taps (every version has them), or an empty string."""
    if not isinstance(m.get("taps"), dict):
        return "taps must be an object"
    for tap, meta in m["taps"].items():
        if not plain_name(tap):
            return f"taps: {tap[:80]!r} is not a plain tap name"
        if not isinstance(meta, dict) or not is_count(meta.get("dims"), 1) or meta.get("dtype") not in values(DType):
            return f"taps.{tap} must be an object with dims (an integer >= 1) and dtype (float32 or float16)"
    return ""


def _structure_problem(m: dict) -> str:
    """What is wrong with a v1 manifest's fields besides its settings, or an empty string."""
    if problem := _taps_structure_problem(m):
        return problem
    for key in ("rows", "failures"):
        if not is_count(m.get(key)):
            return f"{key} must be an integer >= 0 (and at most 2**48)"
    if problem := shards_problem(m.get("shards")):
        return problem
    total = sum(shard["rows"] for shard in m["shards"])
    if total > MAX_COUNT:
        return f"shards hold {total} rows in all, more than {MAX_COUNT}"
    stale = m.get("stale_rows", [])
    if not isinstance(stale, list) or not all(is_count(r) and r < total for r in stale):
        return "stale_rows must be a list of row numbers of the store's shards"
    if not isinstance(m.get("runs", []), list) or not all(isinstance(r, dict) for r in m.get("runs", [])):
        return "runs must be a list of objects"
    return ""


def shards_problem(shards: object, *, consumed_up_to: int | None = None) -> str:
    """What is wrong with a list of shard records (index, rows, failures, files[, consumed]); "" if nothing."""
    if not isinstance(shards, list):
        return "shards must be a list"
    consumed = 0
    for i, shard in enumerate(shards):
        if (not isinstance(shard, dict) or type(shard.get("index")) is not int or shard["index"] != i
                or not is_count(shard.get("rows")) or not is_count(shard.get("failures"))
                or not isinstance(shard.get("files"), dict)):
            return f"shards[{i}] must be an object with index {i}, rows, failures and files"
        if consumed_up_to is not None:
            step = shard.get("consumed", -1)
            if not is_count(step) or not consumed <= int(step) <= consumed_up_to:
                return f"shards[{i}].consumed must be a count from {consumed} to {consumed_up_to}"
            consumed = int(step)
        for rel, digest in shard["files"].items():
            if not shard_file(rel, i):
                return f"shards[{i}].files: {rel[:80]!r} is not a file of shard {i}"
            if not is_sha256(digest):
                return f"shards[{i}].files[{rel!r}] must be a sha256 (64 hex digits)"
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


@dataclass(frozen=True)
class ShardRef:
    """Where one committed shard lives and which rows it holds.

    Attributes:
        directory: the folder its ``features/``, ``metadata/`` and ``failures/`` files are in (a v1 store's root,
            or a v2 segment's folder).
        index: its number in that folder (``part-NNNNN``).
        rows, failures: what it holds.
        first_row: the store's number for its first row.
        local_first: the number its metadata table gives its first row (v1: the store's; v2: the segment's).
        segment: the v2 segment it belongs to ("" in a v1 store).
    """

    directory: Path
    index: int
    rows: int
    failures: int
    first_row: int
    local_first: int
    segment: str = ""

    def file(self, rel: str) -> Path:
        return self.directory / rel

    def feature_file(self, tap: str) -> Path:
        return self.directory / feature_path(tap, self.index)

    def metadata_file(self) -> Path:
        return self.directory / metadata_path(self.index)

    def failures_file(self) -> Path:
        return self.directory / failures_path(self.index)
