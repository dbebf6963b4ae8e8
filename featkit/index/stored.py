"""The exact vectors behind index ids, read back from the feature stores the index was built from.

An index keeps what it needs to find candidates (codes, graphs); the exact vectors stay in the stores' memory-mapped
shards. Re-ranking IVF-PQ candidates and searching from an indexed item read them here, by the (store, row) that the
id table records for each id.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd

from featkit.errors import SearchIndexError, StoreError
from featkit.store.reader import FeatureStore, open_features


class StoredVectors:
    """Vectors of the ids in ``ids`` (columns id, store, row), from tap ``tap`` of their stores.

    Thread-safe: a store's shard-map cache is not, so reads take a lock (they are memory copies).
    """

    def __init__(self, ids: pd.DataFrame, tap: str, dim: int):
        table = ids.sort_values("id", kind="stable")
        self._ids = table["id"].to_numpy(np.int64)
        self._roots = table["store"].astype(str).to_numpy()
        self._rows = table["row"].to_numpy(np.int64)
        self.tap, self.dim = tap, dim
        self._stores: dict[str, FeatureStore] = {}
        self._row_numbers: dict[str, np.ndarray] = {}  # each store's stored row numbers, ascending
        self._lock = threading.Lock()

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Where ``ids`` sit in the id table (sorted by id).

        Raises:
            SearchIndexError: an id is not in it.
        """
        at = np.minimum(np.searchsorted(self._ids, ids), max(len(self._ids) - 1, 0))
        if not len(self._ids) or not np.array_equal(self._ids[at], ids):
            raise SearchIndexError("An id is not in this index's id table; the index is damaged: rebuild it.")
        return at

    def take(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), dim) float32 vectors of ``ids``, in order.

        Raises:
            SearchIndexError: a store is gone or no longer holds the rows (names the store's folder only).
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        at = self.positions(ids)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        with self._lock:
            roots = self._roots[at]
            for root in dict.fromkeys(roots.tolist()):
                where = np.flatnonzero(roots == root)
                store = self._store(root)
                stored = self._stored_rows(root, store)
                wanted = self._rows[at[where]]
                found = np.minimum(np.searchsorted(stored, wanted), max(len(stored) - 1, 0))
                if not len(stored) or not np.array_equal(stored[found], wanted):
                    raise SearchIndexError(f"The feature store '{Path(root).name}' no longer holds the indexed rows "
                                           "(it changed since the index was built); rebuild the index.")
                out[where] = np.asarray(store[self.tap][found], dtype=np.float32)
        return out

    def _store(self, root: str) -> FeatureStore:
        if root not in self._stores:
            try:
                self._stores[root] = open_features(root)
            except StoreError:  # its message names where it was looked for; the folder's name says enough
                raise SearchIndexError(f"The feature store '{Path(root).name}' that holds the indexed vectors cannot "
                                       "be read (moved or changed since the index was built).") from None
        return self._stores[root]

    def _stored_rows(self, root: str, store: FeatureStore) -> np.ndarray:
        if root not in self._row_numbers:
            self._row_numbers[root] = store.rows["row"].to_numpy(np.int64)
        return self._row_numbers[root]
