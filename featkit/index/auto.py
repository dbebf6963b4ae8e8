"""``--kind auto`` by measurement: build each kind that fits on a sample, tune it to the recall target, time it.

FAISS's guidelines rank the kinds by size and memory, but which one answers fastest at a recall target depends on
the data: on 100,000 clustered 2,048-d vectors IVF-Flat answered 3× faster than the HNSW the guidelines pick. So
``auto`` builds HNSW, IVF-Flat and IVF-PQ (re-ranked from the store) where each fits the memory budget, on a seeded
sample of AUTO_SAMPLE vectors, tunes each to the target, times a batch of queries, and keeps the fastest that
reaches the target (the most accurate if none does). The reason recorded in the manifest lists what it measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd

from featkit.index.kinds import default_memory_budget, plan_index

AUTO_SAMPLE = 20_000  # vectors each candidate is built on
AUTO_QUERIES = 500  # queries timed (a batch, best of 3)
AUTO_K = 10


class InMemory:
    """Rows held in memory, read like a store's tap (``len``, ``shape``, indexing, ``chunks``)."""

    def __init__(self, x: np.ndarray):
        self.x = x
        self.shape = x.shape

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key) -> np.ndarray:
        return self.x[key]

    def chunks(self, rows: int = 65536) -> Iterator[np.ndarray]:
        for start in range(0, len(self.x), rows):
            yield self.x[start: start + rows]


class _Rows:
    """What a trial index re-ranks IVF-PQ candidates from: the sample itself (its ids are its row numbers)."""

    def __init__(self, x: np.ndarray):
        self.x = x

    def take(self, ids: np.ndarray) -> np.ndarray:
        return self.x[np.asarray(ids, dtype=np.int64)]


def choose_kind(build: Callable, vectors, candidates: list[str], *, metric: str, pca: int | None,
                max_memory: int | None, target: float, source: dict, progress: bool) -> tuple[str, str]:
    """The fastest of ``candidates`` at recall@10 ≥ ``target`` on a sample, and the reason to record.

    Args:
        build: ``Index._from_vectors``.
        vectors: the tap's vectors (a store's TapArray).
        candidates: kinds to measure (:func:`featkit.index.kinds.auto_candidates`).
        metric: as the index will be built.
        pca: as the index will be built.
        target: the recall@10 the kinds are tuned to.
        max_memory: the budget; scaled to the sample so that PQ codes get the bytes per vector the full index would.
        source: the index manifest's source record.
        progress: show progress bars.
    """
    n, dim = vectors.shape
    rng = np.random.default_rng(2)
    rows = np.sort(rng.choice(n, size=min(n, AUTO_SAMPLE), replace=False))
    sample = np.asarray(vectors[rows], dtype=np.float32)
    queries = np.asarray(vectors[np.sort(rng.choice(n, size=min(n, AUTO_QUERIES), replace=False))], dtype=np.float32)
    size = len(sample)
    ids = pd.DataFrame({"id": np.arange(size, dtype=np.int64), "path": "", "label": None, "store": "",
                        "row": np.arange(size, dtype=np.int64)})
    budget = max(1, (max_memory or default_memory_budget()) * size // n)
    measured = []
    for kind in candidates:
        plan = plan_index(size, dim, kind, metric=metric, pca=pca, max_memory=budget)
        trial = build(InMemory(sample), ids, plan, metric=metric, pca=pca, recall_target=target, source=source,
                      progress=progress)
        if kind == "ivfpq":
            trial._stored = _Rows(sample)
        trial.search_vectors(queries[:10], AUTO_K)  # warm-up
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            trial.search_vectors(queries, AUTO_K)
            best = min(best, time.perf_counter() - start)
        measured.append((kind, float(trial.manifest["recall_at_10"]), len(queries) / best))
    reached = [m for m in measured if m[1] >= target]
    kind = max(reached, key=lambda m: m[2])[0] if reached else max(measured, key=lambda m: m[1])[0]
    shown = "; ".join(f"{k}{'+refine' if k == 'ivfpq' else ''} {qps:,.0f} queries/s at recall@10 {r:.3f}"
                      for k, r, qps in measured)
    return kind, f"auto: measured on {size:,} of {n:,} vectors: {shown} → {kind}"
