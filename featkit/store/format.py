"""Feature store format v1: the directory layout and the manifest.

```
STORE/
  manifest.json                       # written last: the commit point of every shard
  features/<tap>/part-NNNNN.npy       # float32/float16 (rows, dims), memory-mappable
  metadata/part-NNNNN.parquet         # row, path, label, split, width, height, bytes, mtime_ns
  failures/part-NNNNN.parquet         # path, reason, message, bytes, mtime_ns
  .lock                               # held (flock) by the one writer
```
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from featkit._atomic import json_bytes, write_bytes
from featkit.errors import StoreError, WriteError

FORMAT = "featkit-store"
VERSION = 1
MANIFEST = "manifest.json"
META_COLUMNS = ["row", "path", "label", "split", "width", "height", "bytes", "mtime_ns"]
FAILURE_COLUMNS = ["path", "reason", "message", "bytes", "mtime_ns"]


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


def read_manifest(root: Path) -> dict | None:
    """The manifest of ``root``, None if there is none; refuses what is not a featkit store v1."""
    path = root / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path} is not readable JSON ({exc}). Use --overwrite to start the store afresh.") from None
    if manifest.get("format") != FORMAT:
        raise StoreError(f"{root} is not a featkit feature store (no '{FORMAT}' manifest).")
    if manifest.get("version") != VERSION:
        raise StoreError(f"{root} is a featkit store of format version {manifest.get('version')}; this featkit reads version {VERSION}.")
    return manifest


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
