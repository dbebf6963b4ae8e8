"""Near-duplicate groups: range search at a cosine threshold, then connected components.

Memory stays linear in the number of images: an exact inner-product index holds the vectors once, queries
run in batches, and each batch's pairs are merged into a union-find forest (an int64 parent per image) and
dropped, so no N × N matrix or full pair list ever exists.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from featkit._faiss import faiss
from featkit.errors import SearchIndexError, check_float
from featkit.index.exact import prepare
from featkit.index.index import CHUNK, _store
from featkit.store.reader import FeatureStore

BATCH = 2048
GROUP_COLUMNS = ["group", "size", "path", "representative", "score", "label"]


def _roots(parent: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """Roots of ``nodes``, compressing the paths walked (vectorised pointer jumping)."""
    roots = parent[nodes]
    while True:
        up = parent[roots]
        if np.array_equal(up, roots):
            break
        roots = up
    parent[nodes] = roots
    return roots


def union(parent: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Merge the sets of each pair (a[i], b[i]); the smaller root becomes the parent, so no cycle can form."""
    while len(a):
        ra, rb = _roots(parent, a), _roots(parent, b)
        differ = ra != rb
        a, b, ra, rb = a[differ], b[differ], ra[differ], rb[differ]
        # several pairs may hook the same root in one step: one write wins, the others retry next round
        parent[np.maximum(ra, rb)] = np.minimum(ra, rb)


def find_duplicates(store: FeatureStore | str | os.PathLike, *, tap: str | None = None, threshold: float = 0.95,
                    batch_size: int = BATCH, progress: bool = False) -> pd.DataFrame:
    """Groups of images whose ``tap`` vectors have cosine similarity ≥ ``threshold``, linked transitively.

    Returns:
        One row per image in a group of two or more: group (0 = largest), size, path, representative (the
        member with the most pixels, then the most bytes: the copy to keep), score (cosine similarity to the
        representative), label. Groups are ordered largest first.
    """
    check_float("threshold", threshold, "dedup", low=-1, high=1, closed="both", error=SearchIndexError)
    store = _store(store)
    tap = store.resolve_tap(tap)
    vectors = store[tap]
    n = len(vectors)
    exact = faiss.IndexFlatIP(vectors.shape[1])
    for chunk in vectors.chunks(CHUNK):
        exact.add(prepare(chunk, "cosine"))
    parent = np.arange(n, dtype=np.int64)
    for start in tqdm(range(0, n, batch_size), desc="dedup", unit="batch", disable=not progress):
        queries = prepare(vectors[start: start + batch_size], "cosine")
        # FAISS returns inner products strictly above the radius; nextafter makes the threshold inclusive
        lims, _, found = exact.range_search(queries, float(np.nextafter(np.float32(threshold), np.float32(-2))))
        # numpy's stubs type np.diff of an int64 array as timedelta64 (a signedinteger subclass)
        mine = np.repeat(np.arange(start, start + len(queries), dtype=np.int64),
                         np.diff(lims.astype(np.int64)))  # type: ignore[arg-type]
        keep = found > mine  # each pair once, no self-pairs
        union(parent, mine[keep], found[keep])
    roots = _roots(parent, np.arange(n, dtype=np.int64))
    return _groups(store, vectors, roots)


def _groups(store: FeatureStore, vectors, roots: np.ndarray) -> pd.DataFrame:
    sizes = np.bincount(roots, minlength=len(roots))
    members = np.flatnonzero(sizes[roots] >= 2)
    if not len(members):
        return pd.DataFrame(columns=GROUP_COLUMNS)
    rows = store.rows.iloc[members]
    table = pd.DataFrame({"root": roots[members], "size": sizes[roots[members]], "path": rows["path"].to_numpy(),
                          "pixels": rows["width"].to_numpy(np.int64) * rows["height"].to_numpy(np.int64),
                          "bytes": rows["bytes"].to_numpy(np.int64), "label": rows["label"].to_numpy(),
                          "member": members})
    table = table.sort_values(["size", "root", "pixels", "bytes", "path"], ascending=[False, True, False, False, True],
                              kind="stable").reset_index(drop=True)
    table["representative"] = ~table["root"].duplicated()
    table["group"] = table["root"].ne(table["root"].shift()).cumsum() - 1
    rep_of = table.loc[table["representative"]].set_index("root")["member"]
    reps = rep_of.loc[table["root"]].to_numpy()
    member_vectors = prepare(vectors[table["member"].to_numpy()], "cosine")
    table["score"] = np.einsum("ij,ij->i", member_vectors, prepare(vectors[reps], "cosine")).astype(float)
    return table[GROUP_COLUMNS]
