"""Reading a feature store: features per tap memory-mapped shard by shard on first touch, rows read on demand.

Nothing is read at open beyond the manifest and the log: a shard's ``.npy`` file is mapped (and its header
checked against the log) when a row of it is first read, and at most a few dozen maps are held at once (an LRU
well under the open-file limit: each map holds a file descriptor), so a store of any number of shards reads
whole under ``ulimit -n 64``. A row-range or column read opens only the shards it needs.
"""

from __future__ import annotations

import os
import resource
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from featkit._files import not_a_file
from featkit.errors import StoreError, unknown
from featkit.store import format as fmt
from featkit.store import segments as sg
from featkit.store.settings import StoreSettings
from featkit.store.verify import damaged, npy_problem, read_table, verify_store

MAX_MAPS = 64  # open memory maps per tap (each holds a file descriptor), at most


def map_budget() -> int:
    """How many shards a tap keeps mapped: MAX_MAPS, or a quarter of the open-file limit where that is lower."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_MAPS
    return max(2, min(MAX_MAPS, soft // 4))


class TapArray:
    """The features of one tap across all shards, read lazily from memory-mapped ``.npy`` files.

    Behaves like a read-only 2-D array: ``len``, ``shape``, ``dtype``, indexing by int, slice, boolean mask or
    index array, and ``np.asarray(tap_array)`` to load it whole. ``chunks()`` streams it block by block. A slice
    within one shard is a zero-copy view of its map.
    """

    def __init__(self, store: FeatureStore, tap: str, dims: int, dtype: str):
        self._store, self._tap = store, tap
        self._starts = store.shard_table.starts
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()
        self._budget = map_budget()
        self.dtype = np.dtype(dtype)
        self._dtype_name = dtype
        self.shape = (len(store), dims)

    def __len__(self) -> int:
        return self.shape[0]

    def _map(self, shard: int) -> np.ndarray:
        array = self._maps.get(shard)
        if array is not None:
            self._maps.move_to_end(shard)
            return array
        ref = self._store.shard_table[shard]
        self._store.check_segment(ref.segment)
        array = _mapped(self._store.root, ref.feature_file(self._tap), ref.rows, self.shape[1], self._dtype_name)
        self._maps[shard] = array
        while len(self._maps) > self._budget:  # a view handed out keeps its map alive; we just stop holding it
            self._maps.popitem(last=False)
        return array

    def _take(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of the store's rows ``rows`` (numbers of stored rows, retired ones excluded by the caller)."""
        out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
        if not len(rows):
            return out
        shard_of = np.searchsorted(self._starts, rows, side="right") - 1
        order = np.argsort(shard_of, kind="stable")
        bounds = np.flatnonzero(np.diff(shard_of[order])) + 1
        for group in np.split(order, bounds):
            s = int(shard_of[group[0]])
            out[group] = self._map(s)[rows[group] - self._starts[s]]
        return out

    def _range(self, first: int, stop: int) -> np.ndarray:
        """Stored rows ``first`` to ``stop`` (contiguous): a view inside one shard, else a copy."""
        s = int(np.searchsorted(self._starts, first, side="right") - 1)
        if stop <= self._starts[s + 1]:
            return self._map(s)[first - self._starts[s]: stop - self._starts[s]]
        out = np.empty((stop - first, self.shape[1]), dtype=self.dtype)
        at = first
        while at < stop:
            end = min(stop, int(self._starts[s + 1]))
            out[at - first: end - first] = self._map(s)[at - self._starts[s]: end - self._starts[s]]
            at, s = end, s + 1
        return out

    def __getitem__(self, key):
        n = len(self)
        if isinstance(key, tuple):  # rows, then columns: x[:, :8]
            if len(key) != 2:
                raise IndexError(f"a tap's vectors are 2-D; got {len(key)} indices")
            rows = self[key[0]]
            return rows[key[1]] if rows.ndim == 1 else rows[:, key[1]]
        if isinstance(key, (bool, np.bool_)):
            raise IndexError("index rows with an integer, a slice, a boolean mask or an array of row numbers")
        if isinstance(key, (int, np.integer)):
            k = int(key) + (n if key < 0 else 0)
            if not 0 <= k < n:
                raise IndexError(f"row {int(key)} is out of range for {n} rows")
            return self._take(self._store.stored_rows(np.array([k])))[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step == 1:
                if stop <= start:
                    return np.empty((0, self.shape[1]), dtype=self.dtype)
                first, last = self._store.stored_rows(np.array([start, stop - 1]))
                if last - first == stop - 1 - start:  # no retired row inside: one contiguous run of stored rows
                    return self._range(int(first), int(last) + 1)
            positions = np.arange(start, stop, step, dtype=np.int64)
        else:
            positions = np.asarray(key)
            if positions.dtype == bool:
                if positions.shape != (n,):
                    raise IndexError(f"a boolean mask of shape {positions.shape} for {n} rows")
                positions = np.flatnonzero(positions)
            elif positions.size and positions.dtype.kind not in "iu":
                raise IndexError(f"rows are indexed by integers, not {positions.dtype}")
            shape = positions.shape
            positions = positions.astype(np.int64, copy=False).reshape(-1)
            if len(positions) and (positions.min() < -n or positions.max() >= n):
                raise IndexError(f"rows out of range for {n} rows")
            positions = np.where(positions < 0, positions + n, positions)
            return self._take(self._store.stored_rows(positions)).reshape(*shape, self.shape[1])
        return self._take(self._store.stored_rows(positions))

    def __array__(self, dtype=None, copy=None):
        array = self[:]
        return array.astype(dtype) if dtype is not None else array

    def chunks(self, rows: int = 65536) -> Iterator[np.ndarray]:
        """Consecutive blocks of at most ``rows`` rows, never loading the whole tap."""
        for start in range(0, len(self), rows):
            yield self[start: start + rows]


class FeatureStore:
    """A feature store opened for reading (see :func:`open_features`).

    Opening reads the manifest and (v2) the log. Each shard's files are checked against them when first read
    (``.npy`` header, shape, dtype and size; table length and row numbers), so a damaged shard is refused before
    anything of it is read misaligned; :func:`verify_store` re-hashes every file.
    """

    def __init__(self, root: Path, manifest: dict, settings: StoreSettings):
        self.root, self.manifest, self.settings = root, manifest, settings
        self.version: int = manifest["version"]
        if self.version == 1:
            self.shard_table = sg.ShardTable.of_v1(root, manifest["shards"])
            retired = manifest.get("stale_rows", [])
            self.runs: list[dict] = manifest.get("runs", [])
        else:
            log = sg.read_log(root)
            self.shard_table = sg.ShardTable.of_log(root, log)
            retired, self.runs = sorted(log.retired), log.runs
        self._retired = np.asarray(retired, dtype=np.int64)
        self._shift = self._retired - np.arange(len(self._retired))  # see stored_rows
        self._digest = sg.settings_digest(settings) if self.version != 1 else ""
        self._checked: set[str] = set()
        self._rows: pd.DataFrame | None = None

    # ---- sizes and rows -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.shard_table.total_rows - len(self._retired)

    @property
    def stale_rows(self) -> list[int]:
        return self._retired.tolist()

    @property
    def shard_count(self) -> int:
        return len(self.shard_table)

    @property
    def segment_count(self) -> int:
        return len(self.shard_table.segment_names) if self.version != 1 else 0

    def stored_rows(self, positions: np.ndarray) -> np.ndarray:
        """The stored row numbers of live positions 0..len-1 (retired rows are skipped; sorted, they are few)."""
        if not len(self._retired):
            return positions
        return positions + np.searchsorted(self._shift, positions, side="right")

    def check_segment(self, name: str) -> None:
        """Before the first read of a v2 segment: its manifest agrees with the log and the store's settings."""
        if not name or name in self._checked:
            return
        path = sg.segment_dir(self.root, name) / sg.SEGMENT_MANIFEST
        shards = self.shard_table.segment_shards(name)
        problem = sg.merged_segment_problem(sg.read_segment_manifest(self.root, name),
                                            self.shard_table.rows[shards].tolist(),
                                            self.shard_table.failures[shards].tolist(), self._digest)
        if problem == sg.OTHER_SETTINGS:
            raise StoreError(f"{path} was written with other settings than the store {self.root} (a segment copied "
                             "from another store?); a store never mixes two. Recompute it with featkit extract ... "
                             "--overwrite.")
        if problem:
            raise damaged(self.root, [f"{path} {problem}"])
        self._checked.add(name)

    def read_rows(self, start: int = 0, stop: int | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Rows ``start`` to ``stop`` (live positions) of the metadata, reading only the shards (and columns) needed.

        ``row`` (the stored row number) is always included.
        """
        n = len(self)
        if start < 0 or (stop is not None and stop < 0):
            raise IndexError(f"read_rows takes row positions from 0 to {n}; got {start} to {stop}")
        stop = n if stop is None else min(stop, n)
        if stop <= start:
            return pd.DataFrame(columns=list(dict.fromkeys([*(columns or fmt.META_COLUMNS), "row"])))
        first, last = (int(r) for r in self.stored_rows(np.array([start, stop - 1])))
        table = self.shard_table
        lo = int(np.searchsorted(table.starts, first, side="right") - 1)
        hi = int(np.searchsorted(table.starts, last, side="right") - 1)
        wanted = None if columns is None else list(dict.fromkeys([*columns, "row"]))
        frames = []
        for i in range(lo, hi + 1):
            ref = table[i]
            self.check_segment(ref.segment)
            meta = read_table(ref.directory, fmt.metadata_path(ref.index), ref.rows, ref.local_first)
            meta["row"] = meta["row"].to_numpy(np.int64) + (ref.first_row - ref.local_first)
            frames.append(meta.reindex(columns=wanted) if wanted is not None else meta)
        rows = pd.concat(frames, ignore_index=True)
        rows = rows[(rows["row"] >= first) & (rows["row"] <= last) & ~rows["row"].isin(self._retired)]
        return rows.reset_index(drop=True)

    @property
    def rows(self) -> pd.DataFrame:
        """Every live row's metadata (row, path, label, split, width, height, bytes, mtime_ns, fingerprint).

        Read (every shard's table) on first use; :meth:`read_rows` reads a range.
        """
        if self._rows is None:
            self._rows = self.read_rows() if len(self) else pd.DataFrame(columns=fmt.META_COLUMNS)
        return self._rows

    @property
    def taps(self) -> list[str]:
        return list(self.manifest["taps"])

    @property
    def tap_info(self) -> dict[str, dict]:
        """Tap → dims and dtype."""
        return self.manifest["taps"]

    @property
    def failures(self) -> pd.DataFrame:
        """Files that were skipped, with a reason code; files computed later (after a fix) are left out."""
        frames = []
        for ref in self.shard_table:
            self.check_segment(ref.segment)
            frames.append(read_table(ref.directory, fmt.failures_path(ref.index), ref.failures))
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame(columns=fmt.FAILURE_COLUMNS)
        fails = pd.concat(frames, ignore_index=True).drop_duplicates("path", keep="last")
        return fails[~fails["path"].isin(self.rows["path"])].reset_index(drop=True)

    def resolve_tap(self, tap: str | None) -> str:
        """The stored tap that ``tap`` names (its name or one of its aliases, e.g. ``pool5`` for ``avgpool``).

        With None, the store's only tap; a store of several taps then says which are there.
        """
        if tap is None or tap == "":
            if len(self.taps) != 1:
                raise StoreError(f"{self.root} holds several taps ({', '.join(self.taps)}); choose one with --tap.")
            return self.taps[0]
        record = self.settings.tap(tap)
        name = record.name if record is not None else tap
        if name not in self.manifest["taps"]:
            names = [*self.taps, *(a for t in self.settings.taps for a in t.aliases)]
            raise unknown("tap", tap, names, context=f"the store {self.root}", see=f"featkit info {self.root}")
        return name

    def features(self, tap: str) -> TapArray:
        """The vectors of ``tap`` (a name or an alias), memory-mapped shard by shard as they are read."""
        tap = self.resolve_tap(tap)
        meta = self.manifest["taps"][tap]
        return TapArray(self, tap, meta["dims"], meta["dtype"])

    def __getitem__(self, tap: str) -> TapArray:
        return self.features(tap)

    def __repr__(self) -> str:
        s = self.settings
        taps = ", ".join(f"{t} ({v['dims']}-d {v['dtype']})" for t, v in self.manifest["taps"].items())
        return f"FeatureStore({self.root}: {len(self)} rows, {s.model} / {s.weights.id}, taps: {taps})"


def _mapped(root: Path, path: Path, rows: int, dims: int, dtype: str) -> np.ndarray:
    """The shard at ``path`` memory-mapped, refused unless its header and size are what the log says."""
    array = None
    if not_a_file(path) is None:  # np.load would wait forever on a FIFO
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception:  # noqa: BLE001 - npy_problem below says what is wrong with the file
            array = None
    if (array is not None and array.shape == (rows, dims) and array.dtype == np.dtype(dtype)
            and array.offset + array.nbytes == os.stat(path).st_size):
        return array
    problem = npy_problem(path, rows, dims, dtype) or "changed while it was read"
    raise damaged(root, [f"{path} {problem}"])


def open_features(path: str | os.PathLike, *, verify: bool = False) -> FeatureStore:
    """Open a feature store written by ``featkit extract`` (format v2, or v1 written by an earlier featkit).

    Args:
        path: the store directory.
        verify: first re-hash every file against the sha256 recorded for it (reads the whole store, as
            ``featkit verify`` does); without it, each shard's sizes, headers and row counts are checked when
            it is first read.

    Returns:
        A :class:`FeatureStore`: ``store["fc7"]`` is a lazily memory-mapped (rows, dims) array, ``store.rows`` a
        DataFrame (row, path, label, split, width, height, bytes, mtime_ns, fingerprint) aligned with it.

    Raises:
        StoreError: ``path`` is not a featkit feature store, or a file of it disagrees with its manifest (each
            bad file is named).
    """
    root = Path(path)
    found = fmt.read_manifest(root)
    if found is None:
        raise StoreError(f"{root} is not a featkit feature store (no {fmt.MANIFEST}). Create one with: "
                         f"featkit extract ... -o {root}")
    if verify and (bad := verify_store(root).bad):
        raise damaged(root, [f"{b.path}: {b.problem}" for b in bad])
    return FeatureStore(root, *found)
