"""Exact nearest neighbours, streamed over the stored vectors: the ground truth that tuning and tests compare to."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from featkit._faiss import faiss


def prepare(x: np.ndarray, metric: str) -> np.ndarray:
    """Vectors as FAISS takes them: contiguous float32, L2-normalised for cosine (then inner product = cosine).

    Zero rows stay zero. (featkit.probes.knn.l2_normalized does the same, but importing the probes imports torch,
    which a search by vector or ``featkit index info`` should not wait for.)
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    return x


def rerank(queries: np.ndarray, candidates: np.ndarray, vectors: np.ndarray, k: int,
           metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each query's ``candidates`` by exact score, best first.

    Scores are in FAISS's convention (inner product for cosine, squared distance for l2); ids are -1 where a query
    has fewer than ``k`` candidates.

    Args:
        queries: (n, d) prepared queries (L2-normalised for cosine).
        candidates: (n, c) ids, -1 for none.
        vectors: (n, c, d) prepared vectors of the candidates (any values where a candidate is -1).
        k: results per query.
        metric: ``cosine`` or ``l2``.
    """
    dots = np.einsum("qcd,qd->qc", vectors, queries)
    if metric == "cosine":
        scores = np.where(candidates >= 0, dots, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    else:
        norms = np.einsum("qd,qd->q", queries, queries)[:, None]
        scores = np.einsum("qcd,qcd->qc", vectors, vectors) - 2 * dots + norms
        scores = np.where(candidates >= 0, np.maximum(scores, 0), np.inf)
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    best = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    ids = np.where(np.isfinite(best), np.take_along_axis(candidates, order, axis=1), -1)
    return best, ids


def faiss_metric(metric: str) -> int:
    return faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2


def exact_knn(queries: np.ndarray, chunks: Iterable[np.ndarray], k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, row numbers) of prepared ``queries`` among the prepared ``chunks`` taken in order.

    Memory stays at one chunk plus (queries × k), however many vectors the chunks hold.
    """
    heap = faiss.ResultHeap(len(queries), k, keep_max=metric == "cosine")
    start = 0
    for chunk in chunks:
        scores, rows = faiss.knn(queries, chunk, min(k, len(chunk)), metric=faiss_metric(metric))
        if rows.shape[1] < k:  # a chunk smaller than k: pad with empty slots
            pad = k - rows.shape[1]
            fill = -np.inf if metric == "cosine" else np.inf
            scores = np.hstack([scores, np.full((len(queries), pad), fill, dtype=np.float32)])
            rows = np.hstack([rows, np.full((len(queries), pad), -1 - start, dtype=np.int64)])
        heap.add_result(np.ascontiguousarray(scores, dtype=np.float32), np.ascontiguousarray(rows + start))
        start += len(chunk)
    heap.finalize()
    return heap.D, heap.I
