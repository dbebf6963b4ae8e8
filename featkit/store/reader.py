"""Reading a feature store: memory-mapped features per tap and a pandas table of rows."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from featkit._files import not_a_file
from featkit.errors import StoreError, unknown
from featkit.store import format as fmt
from featkit.store.settings import StoreSettings
from featkit.store.verify import damaged, npy_problem, read_table, verify_store


class TapArray:
    """The features of one tap across all shards, read lazily from memory-mapped ``.npy`` files.

    Behaves like a read-only 2-D array: ``len``, ``shape``, ``dtype``, indexing by int, slice or index array,
    and ``np.asarray(tap_array)`` to load it whole. ``chunks()`` streams it shard by shard.
    """

    def __init__(self, shards: list[np.memmap], live: np.ndarray | None):
        self._shards = shards
        self._starts = np.cumsum([0] + [len(s) for s in shards])
        self._live = live  # global row ids to expose, or None for all rows
        dims = shards[0].shape[1] if shards else 0
        self.dtype = shards[0].dtype if shards else np.dtype("float32")
        self.shape = (len(live) if live is not None else int(self._starts[-1]), dims)

    def __len__(self) -> int:
        return self.shape[0]

    def _take(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
        shard_of = np.searchsorted(self._starts, rows, side="right") - 1
        for s in np.unique(shard_of):
            mask = shard_of == s
            out[mask] = self._shards[s][rows[mask] - self._starts[s]]
        return out

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self[[int(key)]][0]
        if isinstance(key, slice) and self._live is None:
            start, stop, step = key.indices(len(self))
            first = np.searchsorted(self._starts, start, side="right") - 1
            # inside one shard: a zero-copy memmap view (past the last row, as in a store of 0 rows, there is none)
            if step == 1 and first + 1 < len(self._starts) and stop <= self._starts[first + 1]:
                return self._shards[first][start - self._starts[first]: stop - self._starts[first]]
        positions = np.arange(len(self))[key]
        rows = self._live[positions] if self._live is not None else positions
        return self._take(np.asarray(rows, dtype=np.int64))

    def __array__(self, dtype=None, copy=None):
        array = self[:] if len(self._shards) != 1 or self._live is not None else np.asarray(self._shards[0])
        return array.astype(dtype) if dtype is not None else array

    def chunks(self, rows: int = 65536) -> Iterator[np.ndarray]:
        """Consecutive blocks of at most ``rows`` rows, never loading the whole tap."""
        for start in range(0, len(self), rows):
            yield self[start: start + rows]


class FeatureStore:
    """A feature store opened for reading (see :func:`open_features`).

    Opening checks each shard's files against the manifest (``.npy`` headers and sizes, table lengths and row
    numbers), so a damaged shard is refused at once rather than read misaligned.
    """

    def __init__(self, root: Path, manifest: dict, settings: StoreSettings):
        self.root, self.manifest, self.settings = root, manifest, settings
        shards = manifest["shards"]
        starts = np.cumsum([0] + [s["rows"] for s in shards])
        problems = [f"{path} {problem}" for s in shards for tap, meta in manifest["taps"].items()
                    if (problem := npy_problem(path := root / fmt.feature_path(tap, s["index"]), s["rows"],
                                               meta["dims"], meta["dtype"]))]
        if problems:
            raise damaged(root, problems)
        self._meta_all = (
            pd.concat([read_table(root, fmt.metadata_path(s["index"]), s["rows"], int(starts[i]))
                       for i, s in enumerate(shards)], ignore_index=True)
            if shards else pd.DataFrame(columns=fmt.META_COLUMNS)
        )
        stale = np.asarray(manifest.get("stale_rows", []), dtype=np.int64)
        self._live = None if len(stale) == 0 else np.setdiff1d(self._meta_all["row"].to_numpy(np.int64), stale)
        self.rows = self._meta_all if self._live is None else self._meta_all[self._meta_all["row"].isin(self._live)]
        self.rows = self.rows.reset_index(drop=True)

    @property
    def taps(self) -> list[str]:
        return list(self.manifest["taps"])

    @property
    def failures(self) -> pd.DataFrame:
        """Files that were skipped, with a reason code; files computed later (after a fix) are left out."""
        frames = [read_table(self.root, fmt.failures_path(s["index"]), s["failures"]) for s in self.manifest["shards"]]
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
        """The vectors of ``tap`` (a name or an alias), memory-mapped shard by shard."""
        tap = self.resolve_tap(tap)
        meta = self.manifest["taps"][tap]
        arrays = []
        for s in self.manifest["shards"]:
            path = self.root / fmt.feature_path(tap, s["index"])
            arrays.append(_mapped(self.root, path, s["rows"], meta["dims"], meta["dtype"]))
        return TapArray(arrays, self._live)

    def __getitem__(self, tap: str) -> TapArray:
        return self.features(tap)

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        s = self.settings
        taps = ", ".join(f"{t} ({v['dims']}-d {v['dtype']})" for t, v in self.manifest["taps"].items())
        return f"FeatureStore({self.root}: {len(self)} rows, {s.model} / {s.weights.id}, taps: {taps})"


def _mapped(root: Path, path: Path, rows: int, dims: int, dtype: str) -> np.memmap:
    """The shard at ``path`` memory-mapped, refused if it changed since the store was opened (one header read)."""
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
    """Open a feature store written by ``featkit extract``.

    Args:
        path: the store directory.
        verify: first re-hash every file against the sha256 the manifest recorded (reads the whole store, as
            ``featkit verify`` does); without it, opening checks sizes, headers and row counts only.

    Returns:
        A :class:`FeatureStore`: ``store["fc7"]`` is a memory-mapped (rows, dims) array, ``store.rows`` a
        DataFrame (row, path, label, split, width, height, bytes, mtime_ns) aligned with it.

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
