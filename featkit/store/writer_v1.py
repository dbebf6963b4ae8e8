"""Writing a feature store of format v1 (resume, add taps): shards committed atomically, resumable after any kill.

New stores are v2 (:mod:`featkit.store.writer`); this writer keeps stores written by earlier featkit growing in
their own format until ``featkit store upgrade`` rewrites them. Each commit rewrites the manifest, which lists
every shard: the cost v2 removes.


The manifest is rewritten after each shard's files are in place, so a shard exists only once the manifest
lists it; files of a shard that a kill left unlisted are simply written again by the next run. Replacing a store
(``overwrite``) deletes its manifest before its shards, so no kill leaves a manifest naming deleted files.

The writer's lock is an ``flock`` on the store directory itself, not on a file in it: a lock file can be deleted
while a run holds it, letting a second writer lock a new one. The kernel drops the lock when the process dies,
so a killed run never blocks the next.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from featkit._atomic import TMP_SUFFIX
from featkit.errors import StoreError
from featkit.store import format as fmt
from featkit.store.lock import StoreLock
from featkit.store.segments import ShardTable
from featkit.store.settings import StoreSettings, TapRecord
from featkit.store.verify import read_table
from featkit.store.writer import BaseWriter, added_taps, committed_inputs, now, with_fingerprint


class V1Writer(BaseWriter):
    """Open a v1 store for writing with fixed ``settings`` (the interface of :class:`StoreWriter`).

    Args:
        root: the store directory.
        settings: everything that determines the features (model, weights, taps, preprocessing, ...).
        found: the store's manifest and settings, as read under ``lock``.
        lock: the store's lock, held by the caller and released by :meth:`close`.

    Raises:
        StoreError: another process writes to ``root``; the store holds features made with other settings.
    """

    version = 1

    def __init__(self, root: str | os.PathLike, settings: StoreSettings, *, found: tuple[dict, StoreSettings],
                 lock: StoreLock):
        self.root = Path(root)
        self._lock = lock  # held for the writer's lifetime
        try:
            self.manifest = self._open(settings, found)
        except BaseException:
            self.close()
            raise

    def _open(self, settings: StoreSettings, found: tuple[dict, StoreSettings]) -> dict:
        self.adding: list[TapRecord] = []  # taps these settings have and the store doesn't have yet
        if found[1] != settings:
            self.adding = added_taps(found[1], settings)
            if not self.adding:
                changes = "; ".join(found[1].diff(settings, limit=4))
                raise StoreError(f"{self.root} holds features made with other settings ({changes}). "
                                 "Use another -o, or --overwrite to replace them.")
        manifest = found[0]
        manifest.setdefault("stale_rows", [])  # absent from stores written before they were recorded
        manifest.setdefault("runs", [])
        if not self.adding:  # the same settings, in this featkit's schema; new taps are recorded when complete
            manifest["settings"] = settings.to_json()
        self.settings = settings
        for leftover in self.root.rglob(f"*{TMP_SUFFIX}"):  # a kill mid-write leaves these; they were never committed
            leftover.unlink()
        return manifest

    @property
    def shards(self) -> ShardTable:
        return ShardTable.of_v1(self.root, self.manifest["shards"])

    @property
    def next_row(self) -> int:
        return sum(s["rows"] for s in self.manifest["shards"])

    @property
    def taps(self) -> dict[str, dict]:
        return self.manifest["taps"]

    @property
    def rows(self) -> int:
        return self.manifest["rows"]

    @property
    def failures(self) -> int:
        return self.manifest["failures"]

    @property
    def stale_rows(self) -> set[int]:
        return set(self.manifest["stale_rows"])

    def committed(self) -> pd.DataFrame:
        """Every input already handled (path, bytes, mtime_ns, fingerprint, row; row = -1 for a recorded failure)."""
        return committed_inputs(self.shards, self.stale_rows)

    # a v1 store has no segments: its one "segment" is the store, each shard committed (and merged) at once
    segment_count = 0

    def open_segment(self, number: int, inputs: int, inputs_sha256: str) -> V1Writer:
        return self

    name = ""
    consumed = 0
    sealed = False

    def seal(self) -> None:
        pass

    def unmerged_rows(self) -> int:
        return 0

    def merge(self, name: str) -> None:
        pass

    def begin_run(self, info: dict) -> None:
        self.manifest["runs"].append({"started": now(), **info})
        self._write_manifest()

    def mark_stale(self, rows: list[int]) -> None:
        """Rows whose files changed or disappeared: readers skip them from now on."""
        if rows:
            self.manifest["stale_rows"] = sorted(set(self.manifest["stale_rows"]) | set(int(r) for r in rows))
            self.manifest["rows"] = self.next_row - len(self.manifest["stale_rows"])
            self._write_manifest()

    def commit_shard(self, features: dict[str, np.ndarray], metadata: pd.DataFrame, failures: pd.DataFrame,
                     consumed: int = 0, *, seal: bool = False) -> None:
        """Write one shard's files, then the manifest that makes them part of the store."""
        self.check()
        index = len(self.manifest["shards"])
        n = len(metadata)
        files = {}
        for tap, array in features.items():
            if array.shape[0] != n:
                raise ValueError(f"tap {tap}: {array.shape[0]} rows for {n} metadata rows")
            known = self.manifest["taps"].get(tap)
            if known is not None and known["dims"] != array.shape[1]:
                raise StoreError(f"{self.root}: {tap} holds {known['dims']:,} values per row; this run computes "
                                 f"{array.shape[1]:,} (another featkit version?). Use another -o, or --overwrite.")
            rel = fmt.feature_path(tap, index)
            files[rel] = fmt.write_file(self.root / rel, fmt.npy_bytes(array))
            self.manifest["taps"].setdefault(tap, {"dims": int(array.shape[1]), "dtype": str(array.dtype)})
        meta = with_fingerprint(metadata).assign(row=np.arange(self.next_row, self.next_row + n, dtype=np.int64))
        meta = meta[fmt.META_COLUMNS]
        files[fmt.metadata_path(index)] = fmt.write_file(self.root / fmt.metadata_path(index), fmt.parquet_bytes(meta))
        fail = with_fingerprint(failures).reindex(columns=fmt.FAILURE_COLUMNS)
        files[fmt.failures_path(index)] = fmt.write_file(self.root / fmt.failures_path(index), fmt.parquet_bytes(fail))
        self.manifest["shards"].append({"index": index, "rows": n, "failures": len(fail), "files": files})
        self.manifest["rows"] = self.next_row - len(self.manifest["stale_rows"])
        self.manifest["failures"] += len(fail)
        self._write_manifest()

    def missing_tap(self, tap: str) -> list[fmt.ShardRef]:
        """Shards that lack the features of ``tap``, which is being added to the store."""
        return [ref for ref in self.shards if fmt.feature_path(tap, ref.index) not in
                self.manifest["shards"][ref.index]["files"]]

    def shard_metadata(self, ref: fmt.ShardRef) -> pd.DataFrame:
        """The metadata of a shard, refused (StoreError) if it disagrees with the manifest (a damaged store)."""
        return read_table(self.root, fmt.metadata_path(ref.index), ref.rows, ref.first_row)

    def add_tap_shard(self, ref: fmt.ShardRef, tap: str, array: np.ndarray) -> None:
        """Write an added tap's features for one existing shard (its rows, in order), then the manifest."""
        shard = self.manifest["shards"][ref.index]
        if array.shape[0] != shard["rows"]:
            raise ValueError(f"tap {tap}: {array.shape[0]} rows for shard {ref.index} of {shard['rows']} rows")
        self.check()
        rel = fmt.feature_path(tap, ref.index)
        shard["files"][rel] = fmt.write_file(self.root / rel, fmt.npy_bytes(array))
        self._write_manifest()

    def end_run(self, info: dict) -> None:
        self.manifest["runs"][-1].update({"finished": now(), **info})
        self._write_manifest()

