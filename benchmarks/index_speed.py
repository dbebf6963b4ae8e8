"""How fast featkit's similar-image index answers, and how exactly, against scikit-learn's brute-force search.

One run, on the machine it runs on: N normalised vectors with the cluster structure of CNN features (C Gaussian
centres, unit variance per dimension, plus Gaussian noise of ``--noise`` per dimension, then L2-normalised:
within-cluster cosine ≈ 0.8, as for avg-pooled CNN taps; isotropic random vectors in 2,048 dimensions defeat
every approximate index and would measure nothing), and Q held-out queries drawn the same way, k = 10.

* **sklearn**: ``NearestNeighbors(algorithm="brute", metric="cosine")``, ``kneighbors`` on all queries at once.
  Its neighbours are the ground truth for recall@10.
* each featkit kind (``flat``, ``hnsw``, ``ivf``, ``ivfpq``, ``auto``): ``featkit.Index.build`` on a feature store
  holding the vectors (build time includes training and tuning nprobe/efSearch, and IVF-PQ's re-rank factor, to
  recall@10 ≥ 0.95 on a held-out sample; for ``auto`` also measuring the kinds on a sample), then
  ``Index.search_vectors`` on all queries at once (best of ``--repeats``). IVF-PQ re-ranks its candidates against
  the exact vectors read from the store. Memory: the serialised FAISS index, against flat (floats and ids).

Queries/s = Q / seconds of one batched search call. Contention only slows a run down, so the fastest repeat
is kept. FAISS uses every core (OpenMP), scikit-learn's brute force uses BLAS on every core too.

Usage:  python benchmarks/index_speed.py [--quick] [--n 100000] [--dim 2048] [--centres 1000] [--queries 1000]
            [--kinds flat,hnsw,ivf,ivfpq,auto] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

K = 10


def clustered(n: int, dim: int, centres: int, noise: float, rng: np.random.Generator,
              means: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    means = rng.standard_normal((centres, dim)).astype(np.float32) if means is None else means
    x = means[rng.integers(0, len(means), n)]
    x += noise * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, means


def write_store(root: Path, x: np.ndarray) -> Path:
    """A featkit feature store holding ``x`` (what ``featkit index build`` reads)."""
    from featkit.backbones.spec import Preprocess
    from featkit.store.settings import StoreSettings, TapRecord, WeightsRecord
    from featkit.store.writer import StoreWriter

    settings = StoreSettings("synthetic", WeightsRecord("random", "random(seed=0)", "0" * 64, 1, seed=0),
                             Preprocess(8, 8), (TapRecord("feat", "feat"),), pool="avg", l2=True, dtype="float32",
                             precision="fp32", draft=True, shard_rows=16384)
    empty = pd.DataFrame(columns=["path", "reason", "message", "bytes", "mtime_ns"])
    with StoreWriter(root, settings) as writer:
        for start in range(0, len(x), 16384):
            part = x[start: start + 16384]
            meta = pd.DataFrame({"path": [f"v{i:08d}" for i in range(start, start + len(part))], "label": None,
                                 "split": None, "width": 0, "height": 0, "bytes": 0, "mtime_ns": 0})
            writer.commit_shard({"feat": part}, meta, empty)
    return root


def best_of(repeats: int, fn) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / truth.shape[1] for f, t in zip(found, truth, strict=True)]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, help="indexed vectors (default 100,000; --quick: 20,000)")
    p.add_argument("--dim", type=int, help="dimensions (default 2,048; --quick: 256)")
    p.add_argument("--centres", type=int, help="Gaussian centres (default 1,000; --quick: 200)")
    p.add_argument("--noise", type=float, default=0.5, help="noise std per dimension (centres have 1)")
    p.add_argument("--queries", type=int, help="held-out queries (default 1,000; --quick: 200)")
    p.add_argument("--kinds", default="flat,hnsw,ivf,ivfpq,auto")
    p.add_argument("--repeats", type=int, default=3, help="timed searches per row; the fastest is kept")
    p.add_argument("--quick", action="store_true", help="smoke check at a small size")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    quick = args.quick
    n = args.n or (20_000 if quick else 100_000)
    dim = args.dim or (256 if quick else 2048)
    centres = args.centres or (200 if quick else 1000)
    nq = args.queries or (200 if quick else 1000)

    from sklearn.neighbors import NearestNeighbors

    import featkit
    from featkit.index import Index

    rng = np.random.default_rng(0)
    x, means = clustered(n, dim, centres, args.noise, rng)
    queries, _ = clustered(nq, dim, centres, args.noise, rng, means)
    rows = []
    start = time.perf_counter()
    nn = NearestNeighbors(n_neighbors=K, algorithm="brute", metric="cosine").fit(x)
    fit_s = time.perf_counter() - start
    seconds, (_, truth) = best_of(args.repeats, lambda: nn.kneighbors(queries, K))
    base_qps = nq / seconds
    rows.append({"method": "sklearn brute cosine", "factory": "-", "build_s": round(fit_s, 2),
                 "queries_per_s": round(base_qps, 1), "vs_sklearn": 1.0, "recall_at_10": 1.0, "recorded_recall": None,
                 "params": {}})
    with tempfile.TemporaryDirectory(prefix="featkit-index-bench-") as tmp:
        store = featkit.open_features(write_store(Path(tmp) / "store", x))
        for kind in args.kinds.split(","):
            start = time.perf_counter()
            index = Index.build(store, kind=kind)
            build_s = time.perf_counter() - start
            index.search_vectors(queries[:10], K)  # warm-up (first-touch of memory, GPU copy)
            seconds, (_, ids) = best_of(args.repeats, lambda index=index: index.search_vectors(queries, K))
            m = index.manifest
            index_bytes = int(__import__("faiss").serialize_index(index._cpu).nbytes)
            rows.append({"method": f"featkit {kind}" + (f" → {m['kind']}" if kind == "auto" else ""),
                         "index_mb": round(index_bytes / 2**20, 1),
                         "of_flat": round(index_bytes / (n * (dim * 4 + 8)), 4),
                         "reason": m["reason"],
                         "factory": m["factory"], "build_s": round(build_s, 2), "queries_per_s": round(nq / seconds, 1),
                         "vs_sklearn": round(nq / seconds / base_qps, 2), "recall_at_10": round(recall(ids, truth), 4),
                         "recorded_recall": m["recall_at_10"], "params": m["search_params"]})
            print(f"  {rows[-1]['method']}: {rows[-1]}", flush=True)
    header = (f"{n:,} × {dim:,} normalised vectors ({centres:,} centres, noise {args.noise}), {nq:,} held-out queries, "
              f"k = {K}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, faiss GPUs: "
              f"{__import__('faiss').get_num_gpus()}")
    print(f"\n{header}\n")
    print("| method | index | build s | memory MiB (× flat) | queries/s | × sklearn | recall@10 | tuned |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        params = ", ".join(f"{k} {v}" for k, v in r["params"].items()) or "-"
        memory = f"{r['index_mb']:,.1f} ({r['of_flat']:.3f})" if "index_mb" in r else "-"
        print(f"| {r['method']} | `{r['factory']}` | {r['build_s']:.1f} | {memory} | {r['queries_per_s']:,.0f} | "
              f"{r['vs_sklearn']:.1f} | {r['recall_at_10']:.3f} | {params} |")
    for r in rows:
        if r.get("reason", "").startswith("auto: measured"):
            print(f"\n{r['method']}: {r['reason']}")
    if args.json:
        args.json.write_text(json.dumps({"setup": header, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
