"""Near-duplicates: groups within one store, and leaks from one store into another, at a cosine threshold.

Memory stays linear in the number of images: an exact inner-product index holds the vectors once, queries
run in batches, and each batch's pairs are merged into a union-find forest (an int64 parent per image), or into
each image's best match, and dropped, so no N × N matrix or full pair list ever exists.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from featkit._faiss import faiss
from featkit.errors import SearchIndexError, check_float
from featkit.index.exact import prepare
from featkit.index.index import CHUNK, _store
from featkit.store.reader import FeatureStore

BATCH = 2048
# Calibrated by benchmarks/dedup_threshold.py on planted copies of real photos (see find_duplicates).
THRESHOLD = 0.92
GROUP_COLUMNS = ["group", "size", "path", "representative", "score", "label"]
LEAK_COLUMNS = ["path", "against_path", "score", "matches", "label", "against_label"]


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


def _exact(vectors) -> faiss.IndexFlatIP:
    """An exact inner-product index of the L2-normalised ``vectors``, added a chunk at a time."""
    exact = faiss.IndexFlatIP(vectors.shape[1])
    for chunk in vectors.chunks(CHUNK):
        exact.add(prepare(chunk, "cosine"))
    return exact


def _pairs(exact: faiss.IndexFlatIP, vectors, threshold: float, batch_size: int, progress: bool,
           desc: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(row of ``vectors``, row of ``exact``, cosine) of every pair at cosine ≥ ``threshold``, a batch at a time."""
    # FAISS returns inner products strictly above the radius; nextafter makes the threshold inclusive
    radius = float(np.nextafter(np.float32(threshold), np.float32(-2)))
    for start in tqdm(range(0, len(vectors), batch_size), desc=desc, unit="batch", disable=not progress):
        queries = prepare(vectors[start: start + batch_size], "cosine")
        lims, scores, found = exact.range_search(queries, radius)
        # numpy's stubs type np.diff of an int64 array as timedelta64 (a signedinteger subclass)
        mine = np.repeat(np.arange(start, start + len(queries), dtype=np.int64),
                         np.diff(lims.astype(np.int64)))  # type: ignore[arg-type]
        yield mine, found.astype(np.int64), scores


def find_duplicates(store: FeatureStore | str | os.PathLike, *, tap: str | None = None,
                    threshold: float = THRESHOLD, batch_size: int = BATCH, progress: bool = False) -> pd.DataFrame:
    """Groups of images whose ``tap`` vectors have cosine similarity ≥ ``threshold``, linked transitively.

    The default, 0.92, comes from ``benchmarks/dedup_threshold.py``: the 398 ants/bees photos plus edited copies
    (JPEG quality 40 and 75, half size, 90 % centre crop, flipped, grayscale), SqueezeNet 1.1 ImageNet weights,
    avg-pooled ``fire9``. It is the lowest threshold that merged no two distinct photos whether 100 photos (seeds
    0-3) or all of them were copied: two shots of one ant on one leaf score 0.890, their copies up to 0.915. At
    0.92, 79-81 % of the copies join their original (re-encoded, cropped, flipped: 94-100 %; half size 69-79 %;
    grayscale 10-17 %, colour weighs in these features); the former 0.95 caught 56 %. Other models and taps
    score differently: calibrate them with the benchmark.

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
    exact = _exact(vectors)
    parent = np.arange(n, dtype=np.int64)
    for mine, found, _ in _pairs(exact, vectors, threshold, batch_size, progress, "dedup"):
        keep = found > mine  # each pair once, no self-pairs
        union(parent, mine[keep], found[keep])
    roots = _roots(parent, np.arange(n, dtype=np.int64))
    return _groups(store, vectors, roots)


def find_leaks(store: FeatureStore | str | os.PathLike, against: FeatureStore | str | os.PathLike, *,
               tap: str | None = None, threshold: float = THRESHOLD, batch_size: int = BATCH,
               progress: bool = False) -> pd.DataFrame:
    """Images of ``store`` with a near-duplicate in ``against`` (e.g. train photos that reappear in a test set).

    Only pairs across the two stores count. The smaller store is searched, in batches, against an exact index of
    the larger; each image of ``store`` keeps only its closest match and a count, so memory stays linear.

    Args:
        store: the store whose images may leak (e.g. the training set).
        against: the store they may leak into (e.g. the test set).
        tap: the tap compared (default: ``store``'s only tap); both stores must hold it.
        threshold: cosine similarity at or above which two images are near-duplicates (see
            :func:`find_duplicates` for how the default was chosen).
        batch_size: images of the smaller store searched at a time.
        progress: show a progress bar.

    Returns:
        One row per image of ``store`` with a near-duplicate: path, against_path (its closest image in
        ``against``), score (their cosine similarity), matches (images of ``against`` at ≥ ``threshold``), label,
        against_label; highest score first.

    Raises:
        SearchIndexError: the stores' ``tap`` vectors were computed differently (model, weights, tap node,
            pooling, preprocessing, dtype, ...), so their cosines would mean nothing.
    """
    check_float("threshold", threshold, "dedup", low=-1, high=1, closed="both", error=SearchIndexError)
    store, against = _store(store), _store(against)
    tap = store.resolve_tap(tap)
    against.resolve_tap(tap)
    changes = store.settings.for_tap(tap).diff(against.settings.for_tap(tap), vectors_only=True, limit=4)
    if changes:
        raise SearchIndexError(f"{against.root} computed its {tap} vectors differently from {store.root} "
                               f"({'; '.join(changes)}); extract both with the same settings to compare them.")
    mine, theirs = store[tap], against[tap]
    best = np.full(len(mine), -np.inf, dtype=np.float32)
    closest = np.full(len(mine), -1, dtype=np.int64)
    matches = np.zeros(len(mine), dtype=np.int64)
    if len(mine) and len(theirs):
        small, large = (mine, theirs) if len(mine) <= len(theirs) else (theirs, mine)
        for queries, found, scores in _pairs(_exact(large), small, threshold, batch_size, progress, "leaks"):
            own, other = (queries, found) if small is mine else (found, queries)
            np.add.at(matches, own, 1)
            order = np.argsort(-scores, kind="stable")  # each image's best pair of the batch comes first
            own, other, scores = own[order], other[order], scores[order]
            first = np.unique(own, return_index=True)[1]
            own, other, scores = own[first], other[first], scores[first]
            better = scores > best[own]
            best[own[better]], closest[own[better]] = scores[better], other[better]
    rows = np.flatnonzero(matches)
    leaks = pd.DataFrame({
        "path": store.rows["path"].to_numpy()[rows], "against_path": against.rows["path"].to_numpy()[closest[rows]],
        "score": best[rows].astype(float), "matches": matches[rows],
        "label": store.rows["label"].to_numpy()[rows], "against_label": against.rows["label"].to_numpy()[closest[rows]],
    }, columns=LEAK_COLUMNS)
    return leaks.sort_values(["score", "path"], ascending=[False, True], kind="stable").reset_index(drop=True)


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
