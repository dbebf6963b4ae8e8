"""Which FAISS index to build, following FAISS's own guidelines, and how to tune its search to a recall target.

The guidelines (github.com/facebookresearch/faiss/wiki/Guidelines-to-choose-an-index), as ``auto`` applies them:

* small collections (≤ 10,000 vectors): exact ``Flat`` search answers in milliseconds, so nothing is approximated;
* otherwise, while the vectors and the graph fit the memory budget and there are at most a million of them:
  ``HNSW32`` (the fastest queries, at the cost of build time and ~260 bytes of links per vector);
* otherwise, while the raw vectors fit: ``IVF{K},Flat`` with K ≈ 4·√N (a power of two; from 1 M vectors on
  K = 65,536 and from 10 M on 262,144, with an HNSW coarse quantizer, as the guidelines say);
* otherwise compress: ``IVF{K},PQ{M}x4fs``: 4-bit product-quantizer codes scanned with SIMD (M/2 bytes per
  vector), the largest M the budget allows. (The guidelines' OPQ rotation is left out: training it on 20,000
  256-d vectors took over 5 minutes on a 2-core machine, against 2 s for the fast-scan PQ.) Its candidates are
  re-ranked against the exact vectors in the feature store (``k_factor`` per result), which keeps the recall.

That is :func:`plan_index`'s order. ``auto`` above FLAT_MAX vectors measures instead (:mod:`featkit.index.auto`):
:func:`auto_candidates` lists the kinds that fit, and the fastest at the recall target on a sample is built.

Approximate kinds have their search knob (``efSearch`` for HNSW, ``nprobe`` for IVF, then IVF-PQ's ``k_factor``)
raised step by step on a held-out sample until recall@10 against exact search reaches the target; the recall
reached is recorded.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import numpy as np

from featkit.choices import IndexKind, SearchMetric, values
from featkit.errors import SearchIndexError, invalid_parameter, unknown

KINDS = values(IndexKind)
SEARCH_METRICS = values(SearchMetric)
FLAT_MAX = 10_000
HNSW_MAX = 1_000_000
HNSW_M = 32
HNSW_LINK_BYTES = HNSW_M * 2 * 4 + 16  # level-0 links (2M int32) plus the upper levels and bookkeeping, ≈ per vector
ID_BYTES = 8  # an int64 id per vector (IVF lists, IDMap)
PQ_SUBQUANTIZERS = (128, 96, 64, 48, 32, 16, 8, 4, 2)  # 4 bits each; tried largest first
K_FACTORS = (1, 2, 4, 8, 16, 32)  # IVF-PQ: candidates per result re-ranked against the exact vectors, tried in order
EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
TRAIN_PER_LIST = 64  # training vectors per IVF list (the guidelines ask for 30 to 256)
TRAIN_MAX = 1_000_000
PCA_TRAIN_MAX = 200_000

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """``"8GB"``, ``"512MiB"``, ``"2g"`` or a plain number of bytes."""
    match = _SIZE.match(str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise invalid_parameter("max_memory", "index build", "a size like 8GB, 512MiB or 2000000000", text,
                                error=SearchIndexError)
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def default_memory_budget() -> int:
    """Half of this machine's RAM: room for the index next to the process that searches it."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2


@dataclass(frozen=True)
class IndexPlan:
    """What to build: the FAISS factory string and why."""

    kind: str  # flat | hnsw | ivf | ivfpq
    factory: str  # for faiss.index_factory, ids included (IDMap or the IVF's own)
    dim: int  # dimension of the vectors given to the index
    pca: int | None  # dimension after PCA, if any
    train_size: int  # vectors sampled to train (0: nothing to train)
    reason: str

    @property
    def approximate(self) -> bool:
        return self.kind != "flat" or self.pca is not None


def ivf_lists(n: int) -> int:
    """K inverted lists: ≈ 4·√N as a power of two below 1 M vectors; 65,536 / 262,144 above (the guidelines)."""
    if n >= 10_000_000:
        k = 262_144
    elif n >= 1_000_000:
        k = 65_536
    else:
        k = 2 ** max(0, round(math.log2(4 * math.sqrt(n))))
    # the guidelines ask for 30 to 256 training points per list: fewer lists for collections too small for K
    return max(1, min(k, 2 ** int(math.log2(max(1, n // 30)))))


def _pq_subquantizers(d: int, budget_per_vector: float) -> int | None:
    # at least 2 dimensions per 4-bit sub-quantizer; M/2 bytes of code plus the id per vector
    return next((m for m in PQ_SUBQUANTIZERS if d % m == 0 and m <= d // 2 and m / 2 + ID_BYTES <= budget_per_vector),
                None)


def plan_index(n: int, dim: int, kind: str = "auto", *, metric: str = "cosine", pca: int | None = None,
               max_memory: int | None = None) -> IndexPlan:
    """Choose the index for ``n`` vectors of ``dim`` dimensions (after ``pca`` if given).

    Raises:
        SearchIndexError: unknown kind, or a memory budget that even the most compressed index exceeds.
    """
    if kind not in KINDS:
        raise unknown("index kind", kind, KINDS, see="featkit index build --help")
    if metric not in SEARCH_METRICS:
        raise unknown("metric", metric, SEARCH_METRICS, see="featkit index build --help")
    if pca is not None and (isinstance(pca, bool) or not isinstance(pca, int) or not 0 < pca < dim):
        raise invalid_parameter("pca", "index build", f"an int from 1 to {dim - 1} for {dim}-d features", pca,
                                error=SearchIndexError)
    d = pca or dim
    budget = max_memory or default_memory_budget()
    # cosine after PCA: the projected vectors are normalised again, so scores stay cosine similarities
    prefix = (f"PCA{pca},L2norm," if metric == "cosine" else f"PCA{pca},") if pca else ""
    pca_train = min(n, PCA_TRAIN_MAX)
    flat_bytes = n * (d * 4 + ID_BYTES)
    nlist = ivf_lists(n)
    quantizer = "_HNSW32" if nlist >= 65_536 else ""
    ivf_train = min(n, max(TRAIN_PER_LIST * nlist, 10_000), TRAIN_MAX)
    if kind == "auto":
        if n <= FLAT_MAX:
            kind, reason = "flat", f"{n:,} ≤ {FLAT_MAX:,} vectors: exact search is fast enough"
        elif n <= HNSW_MAX and n * (d * 4 + HNSW_LINK_BYTES + ID_BYTES) <= budget:
            kind, reason = "hnsw", f"{n:,} vectors with HNSW links fit in {budget / 2**30:.1f} GiB"
        elif flat_bytes <= budget:
            kind, reason = "ivf", f"{n:,} raw vectors fit in {budget / 2**30:.1f} GiB"
        else:
            kind, reason = "ivfpq", (f"{n:,} raw vectors need {flat_bytes / 2**30:.1f} GiB > {budget / 2**30:.1f} GiB: "
                                     f"compressed")
    else:
        reason = f"--kind {kind}"
    if kind == "flat":
        return IndexPlan("flat", f"IDMap,{prefix}Flat", dim, pca, pca_train if pca else 0, reason)
    if kind == "hnsw":
        return IndexPlan("hnsw", f"IDMap,{prefix}HNSW{HNSW_M}", dim, pca, pca_train if pca else 0, reason)
    if kind == "ivf":
        return IndexPlan("ivf", f"{prefix}IVF{nlist}{quantizer},Flat", dim, pca, ivf_train,
                         f"{reason}; {nlist:,} lists")
    m = _pq_subquantizers(d, budget / n)
    if m is None:
        raise SearchIndexError(f"{n:,} vectors of {d} dimensions do not fit in {budget / 2**20:,.0f} MiB even as "
                               f"PQ codes (at least {n * (1 + ID_BYTES) / 2**20:,.0f} MiB); raise --max-memory or "
                               f"reduce with --pca.")
    return IndexPlan("ivfpq", f"{prefix}IVF{nlist}{quantizer},PQ{m}x4fs", dim, pca, ivf_train,
                     f"{reason}; {nlist:,} lists, {m // 2} bytes of code per vector")


def auto_candidates(n: int, dim: int, *, metric: str = "cosine", pca: int | None = None,
                    max_memory: int | None = None) -> list[str]:
    """The kinds ``auto`` measures for ``n`` vectors: exact below FLAT_MAX; else those that fit the memory budget.

    HNSW (up to HNSW_MAX vectors) and IVF-Flat when their vectors fit, IVF-PQ (re-ranked from the store) always.
    """
    if n <= FLAT_MAX:
        return ["flat"]
    d = pca or dim
    budget = max_memory or default_memory_budget()
    kinds = []
    if n <= HNSW_MAX and n * (d * 4 + HNSW_LINK_BYTES + ID_BYTES) <= budget:
        kinds.append("hnsw")
    if n * (d * 4 + ID_BYTES) <= budget:
        kinds.append("ivf")
    if _pq_subquantizers(d, budget / n) is not None:
        kinds.append("ivfpq")
    return kinds or [plan_index(n, dim, "auto", metric=metric, pca=pca, max_memory=max_memory).kind]


def search_knob(kind: str, nlist: int | None = None) -> tuple[str, tuple[int, ...]] | None:
    """The parameter that trades speed for recall, and the values tuning tries in order."""
    if kind == "hnsw":
        return "efSearch", EF_SEARCH
    if kind in ("ivf", "ivfpq"):
        steps = [2**i for i in range(20) if 2**i < (nlist or 1)] + [nlist or 1]
        return "nprobe", tuple(steps)
    return None


def recall_at_k(found: np.ndarray, exact: np.ndarray, own: np.ndarray, k: int) -> float:
    """Mean overlap of the first ``k`` neighbours, leaving out each query's own id (queries come from the index)."""
    hits = 0
    for f, e, me in zip(found, exact, own, strict=True):
        f = f[(f != me) & (f >= 0)][:k]
        e = e[e != me][:k]
        hits += len(np.intersect1d(f, e))
    return hits / (k * len(found)) if len(found) else 1.0
