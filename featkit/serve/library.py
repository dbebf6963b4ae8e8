"""What the web app shows of one index: its settings, its items, their vectors, neighbours, pictures, groups and map.

Everything is reached by index id. A path is only ever read from the index's own id table, never taken from a
request, so no request can name a file. Pictures are decoded with featkit's safe decoder and re-encoded as JPEG:
only raster pixels leave the server, whatever the file on disk has become since it was indexed.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from featkit.errors import SearchIndexError, StoreError
from featkit.index import Index
from featkit.index.dedup import THRESHOLD, find_duplicates
from featkit.index.exact import prepare
from featkit.index.stored import StoredVectors
from featkit.reports.search_page import jpeg_thumbnail

THUMB = 192  # px, the longer side of a thumbnail
FULL = 2048  # px, the longer side of the "full" image (a re-encoded copy, not the file)
MAP_POINTS = 5_000  # items drawn on the 2-D map at most (a seeded sample of larger libraries)
RESULT_FIELDS = ("rank", "id", "path", "score", "label")


class UnknownItem(SearchIndexError):
    """An id that is not in the index."""


def _label(value) -> str | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) or pd.isna(value) else str(value)


class Library:
    """An opened index and the model that embeds queries like it, shared by every request.

    Args:
        index: the opened index.
        weights: the store's weights file, where it is not where the store recorded it.
        device: where query images are embedded.
        dedup_threshold: cosine at or above which two items are near-duplicates (``featkit dedup``'s default).
    """

    def __init__(self, index: Index, *, weights: str | os.PathLike | None = None, device: str = "auto",
                 dedup_threshold: float = THRESHOLD):
        self.index = index
        self.embedder = index.embedder(weights=weights, device=device)  # the model loads once, here
        table = index.ids.sort_values("id", kind="stable").reset_index(drop=True)
        self.table = table
        self._position = pd.Index(table["id"].to_numpy(np.int64))
        self._paths = table["path"].astype(str).to_numpy()
        self._labels = [_label(v) for v in table["label"].tolist()]
        self._label_set = set(self._labels)
        self.dedup_threshold = dedup_threshold
        self._stored = StoredVectors(table, index.tap, index.manifest["dim"])
        self._lock = threading.Lock()  # guards the lazily computed groups and map
        self._groups: list[dict] | None = None
        self._map: dict | None = None

    # ---- items -------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.table)

    def _at(self, item_id: int) -> int:
        try:
            at = self._position.get_loc(int(item_id))
        except KeyError:
            raise UnknownItem(f"No item {item_id} in this index.") from None
        return int(at)  # ids are unique, so get_loc gives one position

    def record(self, item_id: int) -> dict:
        at = self._at(item_id)
        return {"id": int(item_id), "path": str(self._paths[at]), "label": self._labels[at]}

    def path(self, item_id: int) -> str:
        return str(self._paths[self._at(item_id)])

    def labels(self) -> dict[str, int]:
        """Each label and how many items carry it, most common first (items without a label are not counted)."""
        counts = pd.Series([x for x in self._labels if x is not None], dtype=object).value_counts()
        return {str(k): int(v) for k, v in counts.items()}

    def items(self, offset: int = 0, limit: int = 60, label: str | None = None) -> dict:
        """One page of items in id order, optionally only those with ``label``."""
        positions = np.arange(len(self.table)) if label is None else np.flatnonzero(
            np.array([x == label for x in self._labels], dtype=bool))
        page = positions[offset: offset + limit]
        return {"total": len(positions), "offset": offset,
                "items": [{"id": int(self._position[p]), "path": str(self._paths[p]), "label": self._labels[p]}
                          for p in page]}

    def info(self) -> dict:
        """The index's settings for the page's header (and ``GET /api/info``)."""
        m, s = self.index.manifest, self.index.settings
        return {"index": self.index.path.name if self.index.path else None, "model": s.model,
                "weights": s.weights.id, "weights_sha256": s.weights.sha256, "tap": self.index.tap,
                "pool": s.pool, "dims": m["dim"], "pca": m.get("pca"), "vectors": len(self.index),
                "kind": self.index.kind, "factory": m["factory"], "metric": self.index.metric,
                "recall_at_10": m.get("recall_at_10"), "decoder": self.embedder.decoder,
                "device": str(self.embedder.runtime.device), "labels": self.labels(),
                "dedup_threshold": self.dedup_threshold}

    # ---- vectors and neighbours --------------------------------------------------------------------------

    def vectors(self, item_ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of ``item_ids``, read from the feature stores the index was built from."""
        for i in item_ids:
            self._at(i)  # an unknown id is a 404, not a damaged index
        return self._stored.take(np.asarray(item_ids, dtype=np.int64))

    def neighbours(self, vector: np.ndarray, k: int, *, label: str | None = None,
                   exclude: int | None = None) -> list[dict]:
        """The ``k`` nearest items to ``vector`` (with ``label`` only, if given; ``exclude`` left out)."""
        n = len(self.index)
        if label is not None and label not in self._label_set:
            return []
        want = k + (exclude is not None)
        ask = min(n, want if label is None else max(4 * want, 64))
        while True:
            scores, ids = self.index.search_vectors(vector, ask)
            results: list[dict] = []
            for score, item in zip(scores[0].tolist(), ids[0].tolist(), strict=True):
                if item < 0 or item == exclude:
                    continue
                at = self._position.get_loc(item)
                if label is not None and self._labels[at] != label:
                    continue
                results.append({"rank": len(results) + 1, "id": int(item), "path": str(self._paths[at]),
                                "score": round(float(score), 6), "label": self._labels[at]})
                if len(results) == k:
                    return results
            if ask >= n:
                return results
            ask = min(n, ask * 4)

    # ---- pictures ----------------------------------------------------------------------------------------

    def picture(self, item_id: int, size: int = FULL) -> bytes:
        """The item's image as JPEG bytes, at most ``size`` px on its longer side.

        Raises:
            UnknownItem: no such id.
            DecodeError: the file is gone, or is no longer an image featkit decodes (an SVG or HTML file put in
                its place is refused here, never sent).
        """
        path = self.path(item_id)  # an unknown id raises before any file is touched
        return self._thumbnail(path, size) if size <= THUMB else _jpeg(path, size)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one Library lives as long as the server
    def _thumbnail(self, path: str, size: int) -> bytes:
        return _jpeg(path, size)

    # ---- browsing ----------------------------------------------------------------------------------------

    def duplicates(self) -> list[dict]:
        """Near-duplicate groups among the items (``featkit dedup`` on each source store), largest first."""
        with self._lock:
            if self._groups is None:
                groups, complete = self._find_groups()
                if not complete:  # a store is unreadable now: try again next time instead of keeping a gap
                    return groups
                self._groups = groups
            return self._groups

    def _find_groups(self) -> tuple[list[dict], bool]:
        by_path = pd.Series(self.table["id"].to_numpy(np.int64), index=self._paths)
        by_path = by_path[~by_path.index.duplicated()]
        groups: list[dict] = []
        complete = True
        for root in self.index.manifest["source"]["stores"]:
            try:
                found = find_duplicates(root, tap=self.index.tap, threshold=self.dedup_threshold)
            except (SearchIndexError, StoreError):
                complete = False  # a store gone since: its items are still searchable, only not grouped
                continue
            found = found[found["path"].astype(str).isin(by_path.index)]
            for _, members in found.groupby("group", sort=True):
                if len(members) < 2:
                    continue
                groups.append({"size": len(members), "members": [
                    {"id": int(by_path[path]), "path": path, "label": _label(label), "score": round(float(score), 6),
                     "keep": bool(keep)}
                    for path, label, score, keep in zip(members["path"].astype(str).tolist(), members["label"].tolist(),
                                                        members["score"].tolist(), members["representative"].tolist(),
                                                        strict=True)]})
        groups.sort(key=lambda g: -g["size"])
        return groups, complete

    def embedding_map(self) -> dict:
        """A 2-D PCA map of (a seeded sample of) the items, for the page to draw coloured by label."""
        with self._lock:
            if self._map is None:
                made = self._make_map()
                if "note" in made:  # not drawable now (a store is unreadable): try again next time
                    return made
                self._map = made
            return self._map

    def _make_map(self) -> dict:
        ids = self.table["id"].to_numpy(np.int64)
        if len(ids) > MAP_POINTS:
            ids = np.sort(np.random.default_rng(0).choice(ids, MAP_POINTS, replace=False))
        try:
            x = prepare(self.vectors(ids.tolist()), self.index.metric).astype(np.float64)
        except SearchIndexError as exc:
            return {"points": [], "labels": [], "note": str(exc)}
        x -= x.mean(axis=0)
        xy = np.zeros((len(x), 2))
        if len(x) > 1:
            _, _, vt = np.linalg.svd(x, full_matrices=False)
            xy[:, : min(2, len(vt))] = x @ vt[:2].T
        labels = [self._labels[self._at(i)] for i in ids.tolist()]
        names = sorted({lab for lab in labels if lab is not None})
        code = {name: c for c, name in enumerate(names)}
        points = [[int(i), round(float(a), 5), round(float(b), 5), -1 if lab is None else code[lab]]
                  for i, (a, b), lab in zip(ids.tolist(), xy.tolist(), labels, strict=True)]
        return {"points": points, "labels": names, "sampled": len(ids) < len(self.table)}


def _jpeg(path: str, size: int) -> bytes:
    small = size <= THUMB
    return jpeg_thumbnail(path, size, quality=85 if small else 92, draft=small)


def open_library(index_path: str | os.PathLike, **kwargs) -> Library:
    """Open the index at ``index_path`` and load its model (see :class:`Library` for the arguments)."""
    return Library(Index.open(Path(index_path)), **kwargs)
