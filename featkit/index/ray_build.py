"""``featkit index build --engine ray``: an IVF index's vectors added in parallel Ray tasks, as autofaiss does.

The driver trains the coarse quantizer (and PQ) once, on the same seeded sample as a local build. Each task
opens the feature store, adds one range of rows to a copy of the trained, empty index, and returns that partial
index. The driver merges the partials in row order (FAISS ``merge_from``), so every inverted list holds the
same codes in the same order as a local build, and then tunes ``nprobe`` as a local build does: same quantizer,
same seed, same search results. Tasks read the store themselves, so every node must see it (a shared file
system). Partials travel through Ray's object store and are merged in the driver's memory.

faiss's ``contrib.ondisk.merge_ondisk`` (what autofaiss uses for indexes larger than memory) merges only plain
inverted lists: IVF-Flat, or PQ with 8-bit codes. featkit's IVF-PQ is the 4-bit fast-scan kind, whose block lists
``OnDiskInvertedLists`` refuses (faiss 1.15: ``il->code_size == code_size`` fails), and an on-disk IVF-Flat at the
sizes that need it (10⁹ × 2,048 floats) is 8 TB. So the merge stays in memory: 72 bytes a vector for
``PQ128x4fs`` with its id.
"""

from __future__ import annotations

import numpy as np

from featkit._faiss import faiss
from featkit.errors import SearchIndexError

ROWS_PER_TASK = 65_536


def add_part(trained: bytes, root: str, tap: str, start: int, stop: int, metric: str) -> bytes:
    """A Ray task's body: rows ``start:stop`` of the store's tap added to a copy of the trained index."""
    from featkit.index.exact import prepare
    from featkit.store.reader import open_features

    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    vectors = open_features(root)[tap]
    for at in range(start, stop, 16_384):
        end = min(stop, at + 16_384)
        index.add_with_ids(prepare(vectors[at:end], metric), np.arange(at, end, dtype=np.int64))
    return faiss.serialize_index(index).tobytes()


def add_on_ray(index: faiss.Index, root: str, tap: str, n: int, metric: str, *, address: str | None = None,
               tasks: int | None = None) -> faiss.Index:
    """``index`` (trained, empty) with rows 0..n of ``root``'s ``tap`` added by Ray tasks, merged in row order."""
    from featkit.extraction.ray_engine import MAX_RESTARTS, import_ray, start_ray, task_failure

    ray = import_ray()
    if faiss.extract_index_ivf(index) is None:  # pragma: no cover - callers pass IVF kinds only
        raise SearchIndexError("Only IVF indexes are built on Ray.")
    started_here = start_ray(ray, address)
    try:
        size = ROWS_PER_TASK if tasks is None else max(1, -(-n // tasks))
        trained = ray.put(faiss.serialize_index(index).tobytes())
        task = ray.remote(max_retries=MAX_RESTARTS)(add_part)
        refs = [task.remote(trained, root, tap, start, min(n, start + size), metric) for start in range(0, n, size)]
        merged: faiss.Index | None = None
        for ref in refs:  # in row order: each list's codes end up in the order a local build adds them
            try:
                part = faiss.deserialize_index(np.frombuffer(ray.get(ref), dtype=np.uint8))
            except Exception as exc:  # noqa: BLE001 - Ray wraps what the task raised; said in one line
                raise task_failure(ray, exc) from None
            if merged is None:
                merged = part
            else:
                merged.merge_from(part, 0)
        assert merged is not None  # n ≥ 1: at least one task
        return merged
    finally:
        if started_here:
            ray.shutdown()
