"""Writing a feature store: one writer at a time, shards committed atomically, resumable after any kill.

The manifest is rewritten after each shard's files are in place, so a shard exists only once the manifest
lists it; files of a shard that a kill left unlisted are simply written again by the next run. Replacing a store
(``overwrite``) deletes its manifest before its shards, so no kill leaves a manifest naming deleted files.

The writer's lock is an ``flock`` on the store directory itself, not on a file in it: a lock file can be deleted
while a run holds it, letting a second writer lock a new one. The kernel drops the lock when the process dies,
so a killed run never blocks the next.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
import stat
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from featkit._atomic import TMP_SUFFIX, fsync_dir
from featkit.errors import StoreError
from featkit.store import format as fmt
from featkit.store.settings import StoreSettings, TapRecord
from featkit.store.verify import read_table


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _added_taps(found: StoreSettings, wanted: StoreSettings) -> list[TapRecord]:
    """The taps ``wanted`` adds to a store made with ``found``, when that is the only difference (else none).

    The shard size may shrink (it is sized for all taps together): shards written before keep theirs.
    """
    if list(wanted.taps[: len(found.taps)]) != list(found.taps):
        return []
    if dataclasses.replace(wanted, taps=found.taps, shard_rows=found.shard_rows) != found:
        return []
    return list(wanted.taps[len(found.taps):])


def _with_fingerprint(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows written without a fingerprint (no file behind them: tests, synthetic stores) get a null one."""
    return rows if "fingerprint" in rows.columns else rows.assign(fingerprint=None)


LOCK_FILE = ".lock"


def _lock(root: Path) -> int:
    """An exclusive ``flock`` on the store folder itself, which no one can delete from under the writer.

    Where a filesystem cannot lock a folder opened for reading (NFS emulates flock with byte-range locks, which
    need a file open for writing), a ``.lock`` file in it is locked instead; deleting that one stops the writer
    at its next commit (:meth:`StoreWriter._check_root`).

    Raises:
        StoreError: another process holds the lock, or the filesystem cannot lock at all.
    """
    error: OSError | None = None
    for target, flags in ((root, os.O_RDONLY), (root / LOCK_FILE, os.O_RDWR | os.O_CREAT)):
        try:
            fd = os.open(target, flags, 0o644)
        except OSError as exc:
            error = exc
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"Another featkit process is writing to {root}; wait for it or use another -o.") from None
        except OSError as exc:
            os.close(fd)
            error = exc
    why = (error.strerror or str(error)) if error is not None else "no lock"
    raise StoreError(f"Cannot lock {root} for writing ({why}); featkit needs flock, which this filesystem refuses. "
                     "Write the store to a local disk and copy it.")


class StoreWriter:
    """Open (or create) a store for writing with fixed ``settings``.

    Args:
        root: the store directory.
        settings: everything that determines the features (model, weights, taps, preprocessing, ...).
        overwrite: delete an existing store made with other settings instead of refusing.

    Raises:
        StoreError: another process writes to ``root``; the store holds features made with other settings.
    """

    def __init__(self, root: str | os.PathLike, settings: StoreSettings, *, overwrite: bool = False):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock: int | None = _lock(self.root)  # held for the writer's lifetime
        locked = os.fstat(self._lock)
        # what must still be at its path for this writer to go on: the store folder, or the lock file held instead
        self._locked_path = self.root if stat.S_ISDIR(locked.st_mode) else self.root / LOCK_FILE
        self._locked = (locked.st_dev, locked.st_ino)
        try:
            self.manifest = self._open(settings, overwrite)
        except BaseException:
            self.close()
            raise

    def _open(self, settings: StoreSettings, overwrite: bool) -> dict:
        found = fmt.read_manifest(self.root) if not overwrite else None
        self.adding: list[TapRecord] = []  # taps these settings have and the store doesn't have yet
        if found is not None and found[1] != settings:
            self.adding = _added_taps(found[1], settings)
            if not self.adding:
                changes = "; ".join(found[1].diff(settings, limit=4))
                raise StoreError(f"{self.root} holds features made with other settings ({changes}). "
                                 "Use another -o, or --overwrite to replace them.")
        if found is None:
            self._clear()
            manifest = {"format": fmt.FORMAT, "version": fmt.VERSION, "created": _now(), "taps": {}, "rows": 0,
                        "failures": 0, "shards": [], "stale_rows": [], "runs": []}
        else:
            manifest = found[0]
            manifest.setdefault("stale_rows", [])  # absent from stores written before they were recorded
            manifest.setdefault("runs", [])
        if not self.adding:  # the same settings, in this featkit's schema; new taps are recorded when complete
            manifest["settings"] = settings.to_json()
        self.settings = settings
        for leftover in self.root.rglob(f"*{TMP_SUFFIX}"):  # a kill mid-write leaves these; they were never committed
            leftover.unlink()
        return manifest

    def _clear(self) -> None:
        """Delete what a store (or a killed attempt at one) left here: the manifest first, durably, then the shards.

        A kill part-way leaves no manifest, so readers see no store, and the next run, with or without
        ``overwrite``, starts afresh; never a manifest naming deleted shards.
        """
        manifest = self.root / fmt.MANIFEST
        if manifest.exists():
            manifest.unlink()
            fsync_dir(self.root)
        for name in ("features", "metadata", "failures"):
            shutil.rmtree(self.root / name, ignore_errors=True)

    def _check_root(self) -> None:
        """Refuse to write once what is locked (the folder, or its lock file) was deleted or replaced.

        The path may be another writer's now.
        """
        try:
            st = os.stat(self._locked_path)
            here: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            here = None
        if here != self._locked:
            raise StoreError(f"{self.root} was deleted or replaced while this run wrote to it; nothing more is "
                             "written. Rerun to start the store again.")

    def _write_manifest(self) -> None:
        self._check_root()
        fmt.write_manifest(self.root, self.manifest)

    @property
    def next_row(self) -> int:
        return sum(s["rows"] for s in self.manifest["shards"])

    def committed(self) -> pd.DataFrame:
        """Every input already handled (path, bytes, mtime_ns, fingerprint, row; row = -1 for a recorded failure).

        The fingerprint is missing (NA) in shards written before it was recorded.
        """
        columns = ["path", "bytes", "mtime_ns", "fingerprint"]
        frames = []
        for shard in self.manifest["shards"]:
            # reindex: a column its shard predates (the fingerprint) comes back as NA
            meta = self.shard_metadata(shard["index"]).reindex(columns=[*columns, "row"])
            fail = read_table(self.root, fmt.failures_path(shard["index"]), shard["failures"]).reindex(columns=columns)
            frames += [meta, fail.assign(row=-1)]
        if not frames:  # typed: an empty frame of floats cannot be merged with a listing's paths
            return pd.DataFrame({"path": pd.Series([], dtype=object), "bytes": pd.Series([], dtype="int64"),
                                 "mtime_ns": pd.Series([], dtype="int64"), "fingerprint": pd.Series([], dtype=object),
                                 "row": pd.Series([], dtype="int64")})
        # later shards supersede earlier ones for the same path (a changed file computed again); retired rows
        # are no longer in the store, so their files count as new if they come back
        done = pd.concat(frames, ignore_index=True).drop_duplicates("path", keep="last")
        return done[~done["row"].isin(self.manifest["stale_rows"])].reset_index(drop=True)

    def begin_run(self, info: dict) -> None:
        self.manifest["runs"].append({"started": _now(), **info})
        self._write_manifest()

    def mark_stale(self, rows: list[int]) -> None:
        """Rows whose files changed or disappeared: readers skip them from now on."""
        if rows:
            self.manifest["stale_rows"] = sorted(set(self.manifest["stale_rows"]) | set(int(r) for r in rows))
            self.manifest["rows"] = self.next_row - len(self.manifest["stale_rows"])
            self._write_manifest()

    def commit_shard(self, features: dict[str, np.ndarray], metadata: pd.DataFrame, failures: pd.DataFrame) -> None:
        """Write one shard's files, then the manifest that makes them part of the store."""
        self._check_root()
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
        meta = _with_fingerprint(metadata).assign(row=np.arange(self.next_row, self.next_row + n, dtype=np.int64))
        meta = meta[fmt.META_COLUMNS]
        files[fmt.metadata_path(index)] = fmt.write_file(self.root / fmt.metadata_path(index), fmt.parquet_bytes(meta))
        fail = _with_fingerprint(failures).reindex(columns=fmt.FAILURE_COLUMNS)
        files[fmt.failures_path(index)] = fmt.write_file(self.root / fmt.failures_path(index), fmt.parquet_bytes(fail))
        self.manifest["shards"].append({"index": index, "rows": n, "failures": len(fail), "files": files})
        self.manifest["rows"] = self.next_row - len(self.manifest["stale_rows"])
        self.manifest["failures"] += len(fail)
        self._write_manifest()

    def missing_tap(self, tap: str) -> list[int]:
        """Shards (by index) that lack the features of ``tap``, which is being added to the store."""
        return [s["index"] for s in self.manifest["shards"] if fmt.feature_path(tap, s["index"]) not in s["files"]]

    def shard_metadata(self, index: int) -> pd.DataFrame:
        """The metadata of shard ``index``, refused (StoreError) if it disagrees with the manifest (a damaged store)."""
        shards = self.manifest["shards"]
        first_row = sum(s["rows"] for s in shards[:index])
        return read_table(self.root, fmt.metadata_path(index), shards[index]["rows"], first_row)

    def add_tap_shard(self, index: int, tap: str, array: np.ndarray) -> None:
        """Write an added tap's features for one existing shard (its rows, in order), then the manifest."""
        shard = self.manifest["shards"][index]
        if array.shape[0] != shard["rows"]:
            raise ValueError(f"tap {tap}: {array.shape[0]} rows for shard {index} of {shard['rows']} rows")
        self._check_root()
        rel = fmt.feature_path(tap, index)
        shard["files"][rel] = fmt.write_file(self.root / rel, fmt.npy_bytes(array))
        self._write_manifest()

    def finish_adding(self, dims: dict[str, int]) -> None:
        """Every shard has the added taps: from now on they are part of the store (settings and tap list)."""
        for record in self.adding:
            self.manifest["taps"][record.name] = {"dims": int(dims[record.name]), "dtype": self.settings.dtype}
        self.manifest["settings"] = self.settings.to_json()
        self.adding = []
        self._write_manifest()

    def end_run(self, info: dict) -> None:
        self.manifest["runs"][-1].update({"finished": _now(), **info})
        self._write_manifest()

    def close(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
