"""Writing a feature store (format v2): segments written shard by shard, merged in input order by one writer.

:class:`StoreWriter` holds the store's lock and its log; it hands out a :class:`SegmentWriter` per partition of a
run's inputs (:meth:`StoreWriter.open_segment`), in this process or, with the segment's name and manifest, in a
worker process (:mod:`featkit.extraction.parallel`). A segment commits each shard by rewriting its own small
``segment.json``; the store merges a sealed segment by appending one line to ``log.jsonl``. Neither cost grows
with the number of shards already in the store.

A kill leaves at worst an unmerged segment: the next run plans the same partitions, finds the segment's manifest
made from the same inputs and settings, and resumes it after its last committed shard, so the store ends
bitwise equal to an uninterrupted run. Replacing a store (``overwrite``) deletes its manifest before anything
else, so no kill leaves a manifest naming deleted files.

Stores of format v1 are written by :class:`featkit.store.writer_v1.V1Writer`; :func:`open_writer` picks.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd

from featkit._atomic import TMP_SUFFIX, fsync_dir
from featkit.errors import StoreError
from featkit.store import format as fmt
from featkit.store import segments as sg
from featkit.store.lock import StoreLock
from featkit.store.settings import StoreSettings, TapRecord
from featkit.store.verify import read_table


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def added_taps(found: StoreSettings, wanted: StoreSettings) -> list[TapRecord]:
    """The taps ``wanted`` adds to a store made with ``found``, when that is the only difference (else none).

    The shard size may shrink (it is sized for all taps together): shards written before keep theirs.
    """
    import dataclasses

    if list(wanted.taps[: len(found.taps)]) != list(found.taps):
        return []
    if dataclasses.replace(wanted, taps=found.taps, shard_rows=found.shard_rows) != found:
        return []
    return list(wanted.taps[len(found.taps):])


def with_fingerprint(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows written without a fingerprint (no file behind them: tests, synthetic stores) get a null one."""
    return rows if "fingerprint" in rows.columns else rows.assign(fingerprint=None)


def committed_inputs(shards: sg.ShardTable, retired: set[int]) -> pd.DataFrame:
    """Every input the shards hold (path, bytes, mtime_ns, fingerprint, row; row = -1 for a recorded failure).

    Later shards supersede earlier ones for the same path (a changed file computed again); retired rows are no
    longer in the store, so their files count as new if they come back. The fingerprint is NA in shards written
    before it was recorded.
    """
    columns = ["path", "bytes", "mtime_ns", "fingerprint"]
    frames = []
    for ref in shards:
        meta = read_table(ref.directory, fmt.metadata_path(ref.index), ref.rows, ref.local_first)
        meta = meta.reindex(columns=[*columns, "row"])
        meta["row"] = meta["row"].to_numpy(np.int64) + (ref.first_row - ref.local_first)
        fail = read_table(ref.directory, fmt.failures_path(ref.index), ref.failures).reindex(columns=columns)
        frames += [meta, fail.assign(row=-1)]
    if not frames:  # typed: an empty frame of floats cannot be merged with a listing's paths
        return pd.DataFrame({"path": pd.Series([], dtype=object), "bytes": pd.Series([], dtype="int64"),
                             "mtime_ns": pd.Series([], dtype="int64"), "fingerprint": pd.Series([], dtype=object),
                             "row": pd.Series([], dtype="int64")})
    done = pd.concat(frames, ignore_index=True).drop_duplicates("path", keep="last")
    return done[~done["row"].isin(retired)].reset_index(drop=True)


class SegmentWriter:
    """Writes the shards of one segment; usable in a worker process (it needs only the folder and its manifest).

    Args:
        root: the store.
        manifest: the segment's manifest (new, or read back to resume it).
        taps: tap → (dims, dtype) the store already holds (a shard of other dims is refused).
        check: called before each write; raises when this writer must stop (the store was replaced).
    """

    def __init__(self, root: Path, manifest: sg.SegmentManifest, taps: dict[str, tuple[int, str]],
                 check: Callable[[], None] = lambda: None):
        self.root, self.manifest, self.check = root, manifest, check
        self.directory = sg.segment_dir(root, manifest.name)
        self.taps = dict(taps)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def consumed(self) -> int:
        return self.manifest.consumed

    @property
    def sealed(self) -> bool:
        return self.manifest.sealed

    def commit_shard(self, features: dict[str, np.ndarray], metadata: pd.DataFrame, failures: pd.DataFrame,
                     consumed: int, *, seal: bool = False) -> None:
        """Write one shard's files, then the segment manifest that commits them.

        ``consumed``: how many of the partition's inputs the segment holds with this shard. ``seal``: it is the
        last; the same manifest write seals the segment, so no kill leaves a complete segment unsealed (a rerun
        would record its last failures again).
        """
        self.check()
        index = len(self.manifest.shards)
        n, first = len(metadata), self.manifest.rows
        files = {}
        for tap, array in features.items():
            if array.shape[0] != n:
                raise ValueError(f"tap {tap}: {array.shape[0]} rows for {n} metadata rows")
            known = self.taps.get(tap)
            if known is not None and known[0] != array.shape[1]:
                raise StoreError(f"{self.root}: {tap} holds {known[0]:,} values per row; this run computes "
                                 f"{array.shape[1]:,} (another featkit version?). Use another -o, or --overwrite.")
            self.taps.setdefault(tap, (int(array.shape[1]), str(array.dtype)))
            rel = fmt.feature_path(tap, index)
            files[rel] = fmt.write_file(self.directory / rel, fmt.npy_bytes(array))
        meta = with_fingerprint(metadata).assign(row=np.arange(first, first + n, dtype=np.int64))[fmt.META_COLUMNS]
        rel = fmt.metadata_path(index)
        files[rel] = fmt.write_file(self.directory / rel, fmt.parquet_bytes(meta))
        fail = with_fingerprint(failures).reindex(columns=fmt.FAILURE_COLUMNS)
        rel = fmt.failures_path(index)
        files[rel] = fmt.write_file(self.directory / rel, fmt.parquet_bytes(fail))
        self.manifest.shards.append({"index": index, "rows": n, "failures": len(fail), "consumed": consumed,
                                     "files": files})
        self.manifest.sealed = seal
        sg.write_segment_manifest(self.root, self.manifest)

    def seal(self) -> None:
        """Every input of the partition is in a shard: the segment is ready to merge."""
        if not self.manifest.sealed:
            self.check()
            self.manifest.sealed = True
            sg.write_segment_manifest(self.root, self.manifest)


class BaseWriter:
    """What the writers of both formats share: the lock, the manifest, finishing added taps, closing."""

    root: Path
    manifest: dict
    settings: StoreSettings
    adding: list[TapRecord]
    _lock: StoreLock

    def check(self) -> None:
        self._lock.check()

    def _write_manifest(self) -> None:
        self.check()
        fmt.write_manifest(self.root, self.manifest)

    def finish_adding(self, dims: dict[str, int]) -> None:
        """Every shard has the added taps: from now on they are part of the store (settings and tap list)."""
        for record in self.adding:
            self.manifest["taps"][record.name] = {"dims": int(dims[record.name]), "dtype": self.settings.dtype}
        self.manifest["settings"] = self.settings.to_json()
        self.adding = []
        self._write_manifest()

    def close(self) -> None:
        self._lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StoreWriter(BaseWriter):
    """Open (or create) a v2 store for writing with fixed ``settings``; the one writer of its log.

    Args:
        root: the store directory.
        settings: everything that determines the features (model, weights, taps, preprocessing, ...).
        overwrite: delete an existing store made with other settings instead of refusing.

    Raises:
        StoreError: another process writes to ``root``; the store holds features made with other settings.
    """

    version = 2

    def __init__(self, root: str | os.PathLike, settings: StoreSettings, *, overwrite: bool = False,
                 found: tuple[dict, StoreSettings] | None = None, lock: StoreLock | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = lock or StoreLock(self.root)  # held for the writer's lifetime
        try:
            if found is None and not overwrite:
                found = fmt.read_manifest(self.root)
            self._open(settings, found if not overwrite else None)
        except BaseException:
            self.close()
            raise

    def _open(self, settings: StoreSettings, found: tuple[dict, StoreSettings] | None) -> None:
        self.adding: list[TapRecord] = []  # taps these settings have and the store doesn't have yet
        if found is not None and found[0]["version"] != sg.VERSION:
            raise StoreError(f"{self.root} is a store of format version {found[0]['version']}; open it with "
                             "featkit.store.writer.open_writer, or upgrade it: featkit store upgrade {self.root}")
        if found is not None and found[1] != settings:
            self.adding = added_taps(found[1], settings)
            if not self.adding:
                changes = "; ".join(found[1].diff(settings, limit=4))
                raise StoreError(f"{self.root} holds features made with other settings ({changes}). "
                                 "Use another -o, or --overwrite to replace them.")
        self.settings = settings
        self.digest = sg.settings_digest(settings)
        self.manifest: dict
        if found is None:
            self._clear()
            self.manifest = {"format": fmt.FORMAT, "version": sg.VERSION, "created": now(), "taps": {},
                             "settings": settings.to_json()}
            self._write_manifest()
        else:
            self.manifest = found[0]
            for folder in ("features", "metadata", "failures"):  # v1's, left by a kill right after an upgrade
                shutil.rmtree(self.root / folder, ignore_errors=True)
            if not self.adding and self.manifest["settings"] != settings.to_json():  # e.g. the weights file moved
                self.manifest["settings"] = settings.to_json()
                self._write_manifest()
        self.log = sg.read_log(self.root)
        self._rows_merged = self.log.rows
        self._table: sg.ShardTable | None = None
        for leftover in self.root.glob(f"*{TMP_SUFFIX}"):  # a kill mid-write leaves these; never committed
            leftover.unlink()

    def _clear(self) -> None:
        """Delete what a store (or a killed attempt at one) left here: the manifest first, durably, then the rest.

        A kill part-way leaves no manifest, so readers see no store, and the next run, with or without
        ``overwrite``, starts afresh; never a manifest naming deleted files.
        """
        manifest = self.root / fmt.MANIFEST
        if manifest.exists():
            manifest.unlink()
            fsync_dir(self.root)
        (self.root / sg.LOG).unlink(missing_ok=True)
        for name in ("features", "metadata", "failures", sg.SEGMENTS):  # v1's folders too
            shutil.rmtree(self.root / name, ignore_errors=True)

    def _append(self, entry: dict) -> None:
        self.check()
        self.log.committed_bytes = sg.append_log(self.root, entry, self.log.committed_bytes)

    # ---- what the store holds -------------------------------------------------------------------------------
    @property
    def taps(self) -> dict[str, dict]:
        return self.manifest["taps"]

    @property
    def shards(self) -> sg.ShardTable:
        """Every merged shard (built when asked: a merge only appends to the log)."""
        if self._table is None:
            self._table = sg.ShardTable.of_log(self.root, self.log)
        return self._table

    @property
    def next_row(self) -> int:
        return self._rows_merged

    @property
    def rows(self) -> int:
        """Live rows: merged, not retired."""
        return self.next_row - len(self.log.retired)

    @property
    def failures(self) -> int:
        return self.log.failures

    @property
    def stale_rows(self) -> set[int]:
        return self.log.retired

    def committed(self) -> pd.DataFrame:
        """Every input the merged segments hold (see :func:`committed_inputs`)."""
        return committed_inputs(self.shards, self.log.retired)

    # ---- runs and retired rows ------------------------------------------------------------------------------
    def begin_run(self, info: dict) -> None:
        self._append({"run": {"started": now(), **info}})
        self.log.runs.append({"started": now(), **info})

    def end_run(self, info: dict) -> None:
        self._append({"run_end": {"finished": now(), **info}})
        self.log.runs[-1].update({"finished": now(), **info})
        self._drop_unmerged()

    def mark_stale(self, rows: list[int]) -> None:
        """Rows whose files changed or disappeared: readers skip them from now on."""
        new = sorted({int(r) for r in rows} - self.log.retired)
        if new:
            self._append({"retire": new})
            self.log.retired.update(new)

    # ---- segments -------------------------------------------------------------------------------------------
    @property
    def segment_count(self) -> int:
        return len(self.log.segments)

    def segment_manifest(self, number: int, inputs: int, inputs_sha256: str) -> sg.SegmentManifest:
        """The manifest for segment ``number`` made from a partition of ``inputs`` inputs.

        One a killed run left for the same partition and settings is resumed; anything else there is deleted.
        """
        name = sg.segment_name(number)
        if number < self.segment_count:
            raise StoreError(f"{self.root}: segment {name} is merged already (a damaged log?).")
        try:
            found = sg.read_segment_manifest(self.root, name)
        except StoreError:
            found = None  # never merged: a damaged leftover is simply written again
        if (found is not None and found.inputs_sha256 == inputs_sha256 and found.inputs == inputs
                and found.settings_sha256 == self.digest):
            for leftover in sg.segment_dir(self.root, name).rglob(f"*{TMP_SUFFIX}"):
                leftover.unlink()
            return found
        shutil.rmtree(sg.segment_dir(self.root, name), ignore_errors=True)
        return sg.SegmentManifest(name, self.digest, inputs, inputs_sha256)

    def open_segment(self, number: int, inputs: int, inputs_sha256: str) -> SegmentWriter:
        manifest = self.segment_manifest(number, inputs, inputs_sha256)
        return SegmentWriter(self.root, manifest, {t: (m["dims"], m["dtype"]) for t, m in self.taps.items()},
                             self.check)

    def merge(self, name: str) -> None:
        """Make a sealed segment part of the store: its rows get the numbers after every merged row.

        Raises:
            StoreError: it is not the next segment, not sealed, made with other settings, or its taps differ.
        """
        expected = sg.segment_name(self.segment_count)
        segment = sg.read_segment_manifest(self.root, name)
        if name != expected or segment is None or not segment.sealed:
            raise StoreError(f"{self.root}: cannot merge {name} (the next segment is {expected}, and a segment must "
                             "be sealed first).")
        if segment.settings_sha256 != self.digest:
            raise StoreError(f"{sg.segment_dir(self.root, name)} was written with other settings than the store "
                             f"{self.root}; a store never mixes two. Delete that segment and rerun.")
        taps = self._segment_taps(segment)
        if self.taps and set(taps) != set(self.taps):
            raise StoreError(f"{sg.segment_dir(self.root, name)} holds taps {sorted(taps)}, the store "
                             f"{sorted(self.taps)}; delete that segment and rerun.")
        for tap, (dims, dtype) in taps.items():
            known = self.taps.get(tap)
            if known is not None and (known["dims"], known["dtype"]) != (dims, dtype):
                raise StoreError(f"{self.root}: {tap} holds {known['dims']:,} values per row; {name} holds "
                                 f"{dims:,} (another featkit version?). Use another -o, or --overwrite.")
        if taps and not self.taps:  # the first rows: the store learns its taps' sizes (once)
            self.manifest["taps"] = {tap: {"dims": dims, "dtype": dtype} for tap, (dims, dtype) in taps.items()}
            self._write_manifest()
        rows = [s["rows"] for s in segment.shards]
        fails = [s["failures"] for s in segment.shards]
        self._append({"segment": name, "rows": rows, "failures": fails})
        self.log.segments.append((name, rows, fails))
        self._rows_merged += sum(rows)
        self._table = None

    def _segment_taps(self, segment: sg.SegmentManifest) -> dict[str, tuple[int, str]]:
        """The taps a segment's shards hold (from its first shard's files), with dims and dtype from a header."""
        from featkit.store.verify import npy_shape

        taps: dict[str, tuple[int, str]] = {}
        if not segment.shards:
            return taps
        first = segment.shards[0]
        directory = sg.segment_dir(self.root, segment.name)
        for rel in first["files"]:
            parts = rel.split("/")
            if parts[0] == "features":
                shape, dtype = npy_shape(directory / rel)
                taps[parts[1]] = (shape[1], dtype)
        return taps

    def unmerged_rows(self) -> int:
        """Rows in shards committed to segments not merged yet (a rerun resumes them)."""
        merged = {name for name, _, _ in self.log.segments}
        folder = self.root / sg.SEGMENTS
        rows = 0
        for path in folder.iterdir() if folder.is_dir() else []:
            if path.name not in merged:
                try:
                    found = sg.read_segment_manifest(self.root, path.name)
                except StoreError:
                    found = None
                rows += found.rows if found is not None else 0
        return rows

    def _drop_unmerged(self) -> None:
        """Delete segments no run will resume: those after the merged ones that this run did not finish."""
        merged = {name for name, _, _ in self.log.segments}
        folder = self.root / sg.SEGMENTS
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if path.name not in merged:
                shutil.rmtree(path, ignore_errors=True)

    def commit_shard(self, features: dict[str, np.ndarray], metadata: pd.DataFrame, failures: pd.DataFrame) -> None:
        """Write one shard as a segment of its own and merge it (for writers that have no partitions)."""
        shutil.rmtree(sg.segment_dir(self.root, sg.segment_name(self.segment_count)), ignore_errors=True)  # a kill's
        segment = self.open_segment(self.segment_count, len(metadata) + len(failures), "0" * 64)
        segment.commit_shard(features, metadata, failures, len(metadata) + len(failures), seal=True)
        self.merge(segment.name)

    # ---- adding taps to the shards the store holds ----------------------------------------------------------
    def missing_tap(self, tap: str) -> list[fmt.ShardRef]:
        """Shards that lack the features of ``tap``, which is being added to the store."""
        return [ref for ref in self.shards
                if fmt.feature_path(tap, ref.index) not in self._segment(ref.segment).shards[ref.index]["files"]]

    def _segment(self, name: str) -> sg.SegmentManifest:
        cache = self.__dict__.setdefault("_segments", {})
        if name not in cache:
            found = sg.read_segment_manifest(self.root, name)
            if found is None:
                raise StoreError(f"{sg.segment_dir(self.root, name)} has no {sg.SEGMENT_MANIFEST}; the store "
                                 f"{self.root} is damaged. Recompute it with featkit extract ... --overwrite.")
            cache[name] = found
        return cache[name]

    def shard_metadata(self, ref: fmt.ShardRef) -> pd.DataFrame:
        """The metadata of a shard with the store's row numbers, refused (StoreError) if it disagrees with the log."""
        meta = read_table(ref.directory, fmt.metadata_path(ref.index), ref.rows, ref.local_first)
        return meta.assign(row=meta["row"].to_numpy(np.int64) + (ref.first_row - ref.local_first))

    def add_tap_shard(self, ref: fmt.ShardRef, tap: str, array: np.ndarray) -> None:
        """Write an added tap's features for one merged shard (its rows, in order), then its segment's manifest."""
        if array.shape[0] != ref.rows:
            raise ValueError(f"tap {tap}: {array.shape[0]} rows for a shard of {ref.rows} rows")
        self.check()
        segment = self._segment(ref.segment)
        rel = fmt.feature_path(tap, ref.index)
        segment.shards[ref.index]["files"][rel] = fmt.write_file(ref.directory / rel, fmt.npy_bytes(array))
        sg.write_segment_manifest(self.root, segment)



def open_writer(root: str | os.PathLike, settings: StoreSettings, *, overwrite: bool = False):
    """The writer for the store at ``root``: v1 for a v1 store (resume, add taps), else v2 (new stores)."""
    from featkit.store.writer_v1 import V1Writer

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lock = StoreLock(root)
    try:
        found = None if overwrite else fmt.read_manifest(root)
        if found is not None and found[0]["version"] == 1:
            return V1Writer(root, settings, found=found, lock=lock)
        return StoreWriter(root, settings, overwrite=overwrite, found=found, lock=lock)
    except BaseException:
        lock.release()
        raise
