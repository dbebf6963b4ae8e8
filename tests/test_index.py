"""The FAISS index on seeded clustered vectors: every kind against a numpy oracle, the file format's refusals
(RELIABILITY.md row 18), atomic saves under SIGKILL (row 19), incremental add / remove, near-duplicate grouping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest

from featkit.backbones.spec import Preprocess
from featkit.errors import FeatkitError, SearchIndexError
from featkit.index import Index
from featkit.index.dedup import find_duplicates, union
from featkit.index.kinds import parse_bytes, plan_index
from featkit.store.settings import StoreSettings, TapRecord, WeightsRecord
from featkit.store.writer import StoreWriter

N, DIM, K = 3000, 32, 10


def clustered(n: int, dim: int = DIM, centres: int = 40, noise: float = 0.35, seed: int = 0) -> np.ndarray:
    """Gaussian blobs around random centres: the structure of CNN features that approximate search relies on."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    return c[rng.integers(0, centres, n)] + noise * rng.standard_normal((n, dim)).astype(np.float32)


def settings(model: str = "synthetic", tap: str = "feat") -> StoreSettings:
    return StoreSettings(model, WeightsRecord("random", "random(seed=0)", "0" * 64, 10, seed=0), Preprocess(8, 8),
                         (TapRecord(tap, tap),), pool="avg", l2=False, dtype="float32", precision="fp32", draft=True,
                         shard_rows=1000)


def write_store(root: Path, x: np.ndarray, *, first: int = 0, model: str = "synthetic", tap: str = "feat",
                labels: np.ndarray | None = None) -> Path:
    """A feature store holding ``x`` (shards of 1000 rows), paths /img/NNNNNN.jpg numbered from ``first``."""
    with StoreWriter(root, settings(model, tap)) as writer:
        for start in range(0, len(x), 1000):
            part = x[start: start + 1000]
            ids = range(first + start, first + start + len(part))
            meta = pd.DataFrame({"path": [f"/img/{i:06d}.jpg" for i in ids],
                                 "label": [None if labels is None else str(labels[i - first]) for i in ids],
                                 "split": None, "width": 64, "height": 48, "bytes": 1000, "mtime_ns": 1})
            writer.commit_shard({tap: part}, meta,
                                pd.DataFrame(columns=["path", "reason", "message", "bytes", "mtime_ns"]))
    return root


def cosine_oracle(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    b = base / np.linalg.norm(base, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q.astype(np.float64) @ b.T.astype(np.float64)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / truth.shape[1] for f, t in zip(found, truth, strict=True)]))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("index")
    x = clustered(N + 200)
    base, queries = x[:N], x[N:]  # queries are held out: not in the index
    return {"root": root, "base": base, "queries": queries, "store": write_store(root / "store", base)}


@pytest.fixture(scope="module")
def built(data):
    """One index per kind, built once for the module."""
    return {kind: Index.build(data["store"], kind=kind) for kind in ("flat", "hnsw", "ivf", "ivfpq")}


def neighbours(index: Index, queries: np.ndarray, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    scores, ids = index.search_vectors(queries, k)
    return scores, ids


def test_flat_is_the_exact_oracle_ids_and_scores(data, built):
    scores, ids = neighbours(built["flat"], data["queries"])
    want_scores, want_ids = cosine_oracle(data["base"], data["queries"], K)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert built["flat"].manifest["recall_at_10"] == 1.0


def test_l2_flat_matches_euclidean_distances(data):
    index = Index.build(data["store"], kind="flat", metric="l2")
    dist, ids = neighbours(index, data["queries"][:50])
    d = np.linalg.norm(data["queries"][:50, None, :].astype(np.float64) - data["base"][None], axis=2)
    order = np.argsort(d, axis=1)[:, :K]
    np.testing.assert_array_equal(ids, order)
    np.testing.assert_allclose(dist, np.take_along_axis(d, order, axis=1), rtol=1e-4)


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfpq"])
def test_approximate_kinds_reach_the_recall_they_record(data, built, kind):
    index = built[kind]
    _, ids = neighbours(index, data["queries"])
    measured = recall(ids, cosine_oracle(data["base"], data["queries"], K)[1])
    recorded = index.manifest["recall_at_10"]
    # recorded on 1,000 queries drawn from the index, measured here on 200 fresh ones: allow their sampling error
    assert measured >= recorded - 0.03, (kind, measured, recorded)
    assert recorded >= 0.95 and measured >= 0.92  # IVF-PQ too: its candidates are re-ranked on the exact vectors
    knob = "efSearch" if kind == "hnsw" else "nprobe"
    assert knob in index.manifest["search_params"]


def test_ivfpq_keeps_its_recall_in_an_eighth_of_flat_memory_by_reranking_from_the_store(data, built, tmp_path):
    index = built["ivfpq"]
    params = index.manifest["search_params"]
    assert params.get("k_factor", 1) > 1  # on these clusters the 4-bit codes alone reach ~0.3
    codes_only = recall(index.search_vectors(data["queries"], K, params={"k_factor": 1})[1],
                        cosine_oracle(data["base"], data["queries"], K)[1])
    assert codes_only < 0.8
    # per vector: its code and id, against flat's floats and id (the lists' fixed costs weigh little at scale)
    dim = data["base"].shape[1]
    assert faiss.extract_index_ivf(index._cpu).code_size + 8 <= (4 * dim + 8) / 8
    # the scores are exact cosines, computed from the stored vectors
    scores, ids = index.search_vectors(data["queries"][:20], K)
    base = data["base"] / np.linalg.norm(data["base"], axis=1, keepdims=True)
    q = data["queries"][:20] / np.linalg.norm(data["queries"][:20], axis=1, keepdims=True)
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", base[ids], q), atol=1e-5)
    # saved and reopened, it re-ranks from the store it records; without the store, one clear line
    index.save(tmp_path / "pq.index")
    reopened = Index.open(tmp_path / "pq.index")
    np.testing.assert_array_equal(reopened.search_vectors(data["queries"][:20], K)[1], ids)


def test_ivfpq_reranks_at_most_every_vector_for_a_large_k(data, built):
    index = built["ivfpq"]
    scores, ids = index.search_vectors(data["queries"][:3], len(index))  # k × k_factor capped at the index's size
    assert ids.shape == (3, len(index))
    for row, score in zip(ids, scores, strict=True):
        found = row[row >= 0]  # as many as the probed lists hold, best first, then -1
        assert len(found) == len(set(found.tolist())) > 10 and (row[len(found):] == -1).all()
        assert (np.diff(score[: len(found)]) <= 1e-6).all()


def test_ivfpq_reranking_needs_its_store_and_says_so(data, tmp_path):
    store = write_store(tmp_path / "store", data["base"][:3000])
    Index.build(store, kind="ivfpq").save(tmp_path / "pq.index")
    store.rename(tmp_path / "moved")
    index = Index.open(tmp_path / "pq.index")
    with pytest.raises(SearchIndexError, match="feature store 'store' that holds the indexed vectors cannot be read"):
        index.search_vectors(data["queries"][:5], K)
    assert index.search_vectors(data["queries"][:5], K, params={"k_factor": 1})[1].shape == (5, K)  # codes only


def test_l2_ivfpq_reranks_to_euclidean_distances(data):
    index = Index.build(data["store"], kind="ivfpq", metric="l2")
    dist, ids = neighbours(index, data["queries"][:50])
    d = np.linalg.norm(data["queries"][:50, None, :].astype(np.float64) - data["base"][None], axis=2)
    np.testing.assert_allclose(dist, np.take_along_axis(d, ids, axis=1), rtol=1e-4)
    assert recall(ids, np.argsort(d, axis=1)[:, :K]) >= 0.9


def test_pca_reduces_dimensions_and_records_its_recall(data):
    index = Index.build(data["store"], kind="flat", pca=16)
    assert index.manifest["factory"] == "IDMap,PCA16,L2norm,Flat" and index.manifest["pca"] == 16
    _, ids = neighbours(index, data["queries"])  # queries stay 32-d: the index applies the PCA
    measured = recall(ids, cosine_oracle(data["base"], data["queries"], K)[1])
    assert 0 < index.manifest["recall_at_10"] < 1
    assert abs(measured - index.manifest["recall_at_10"]) < 0.08


def test_auto_follows_size_and_memory_budget():
    assert plan_index(5_000, 512).kind == "flat"
    assert plan_index(100_000, 2048, max_memory=parse_bytes("8GB")).kind == "hnsw"
    assert plan_index(100_000, 2048, max_memory=parse_bytes("830MB")).kind == "ivf"  # raw fits, links don't
    big = plan_index(2_000_000, 2048, max_memory=parse_bytes("20GB"))
    assert big.kind == "ivf" and big.factory == "IVF65536_HNSW32,Flat"
    small = plan_index(2_000_000, 2048, max_memory=parse_bytes("1GiB"))
    assert small.kind == "ivfpq" and small.factory == "IVF65536_HNSW32,PQ128x4fs"  # 64 bytes + id per vector
    with pytest.raises(SearchIndexError, match="raise --max-memory"):
        plan_index(2_000_000, 2048, max_memory=parse_bytes("10MB"))
    with pytest.raises(FeatkitError, match="Did you mean 'hnsw'"):
        plan_index(10, 8, "hnws")
    with pytest.raises(SearchIndexError, match="8GB"):
        parse_bytes("lots")


def test_auto_measures_the_kinds_that_fit_and_keeps_the_fastest_at_the_target(tmp_path):
    import re

    store = write_store(tmp_path / "s", clustered(12_000))
    index = Index.build(store)  # > 10,000 vectors: HNSW, IVF-Flat and IVF-PQ all fit, so all are measured
    reason = index.manifest["reason"]
    measured = {kind: (float(qps.replace(",", "")), float(r)) for kind, qps, r in
                re.findall(r"(hnsw|ivf|ivfpq\+refine) ([\d,]+) queries/s at recall@10 ([\d.]+)", reason)}
    assert set(measured) == {"hnsw", "ivf", "ivfpq+refine"}, reason
    reached = {k: qps for k, (qps, r) in measured.items() if r >= 0.95}
    fastest = max(reached, key=reached.get).replace("+refine", "")
    assert index.kind == fastest and reason.endswith(f"→ {fastest}")
    assert index.manifest["recall_at_10"] >= 0.95
    # a budget only PQ codes fit: nothing to measure
    tight = Index.build(store, max_memory=12_000 * 40)
    assert tight.kind == "ivfpq" and not tight.manifest["reason"].startswith("auto: measured")


def test_auto_builds_flat_for_a_small_store_and_search_returns_paths(data):
    index = Index.build(data["store"])
    assert index.kind == "flat"
    table = index.search(data["base"][:2], k=3)
    assert list(table.columns) == ["query", "rank", "path", "score", "label", "id"]
    assert table["path"].tolist()[0] == "/img/000000.jpg" and table["rank"].tolist() == [1, 2, 3, 1, 2, 3]


def test_save_and_open_round_trip(data, built, tmp_path):
    path = built["ivf"].save(tmp_path / "a.index")
    opened = Index.open(path)
    manifest = json.loads((path / "manifest.json").read_text())
    for key in ("faiss_version", "factory", "metric", "normalised", "search_params", "training_size", "dim",
                "count", "recall_at_10", "source"):
        assert key in manifest
    assert manifest["files"]["index"]["sha256"] and manifest["source"]["tap"] == "feat"
    np.testing.assert_array_equal(neighbours(opened, data["queries"])[1], neighbours(built["ivf"], data["queries"])[1])


# ---- refusals: RELIABILITY.md row 18 -----------------------------------------------------------------------

@pytest.fixture
def saved(data, built, tmp_path, monkeypatch):
    path = built["flat"].save(tmp_path / "photos.index")

    def read_index_must_not_run(*args, **kwargs):
        raise AssertionError("faiss.read_index was reached")

    monkeypatch.setattr(faiss, "read_index", read_index_must_not_run)
    return path


def _index_file(path: Path) -> Path:
    return path / json.loads((path / "manifest.json").read_text())["files"]["index"]["name"]


def test_truncated_index_file_is_refused_before_faiss_reads_it(saved):
    f = _index_file(saved)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(SearchIndexError, match="truncated"):
        Index.open(saved)


def test_bit_flipped_index_file_is_refused_before_faiss_reads_it(saved):
    f = _index_file(saved)
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    f.write_bytes(bytes(raw))
    with pytest.raises(SearchIndexError, match="corrupt or replaced"):
        Index.open(saved)


def test_index_file_from_another_index_is_refused(saved, data, tmp_path):
    other = write_store(tmp_path / "other", clustered(N, seed=5))
    Index.build(other, kind="flat").save(tmp_path / "other.index")
    _index_file(saved).write_bytes(_index_file(tmp_path / "other.index").read_bytes())  # same size, other vectors
    with pytest.raises(SearchIndexError, match="corrupt or replaced"):
        Index.open(saved)


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "manifest.json").write_text("{not json"), "not readable JSON"),
    (lambda p: (p / "manifest.json").write_text(json.dumps({"format": "something-else"})), "not a featkit index"),
    (lambda p: (p / "manifest.json").unlink(), "no manifest.json"),
    (lambda p: _index_file(p).unlink(), "missing"),
])
def test_damaged_or_foreign_directories_are_refused(saved, damage, message):
    damage(saved)
    with pytest.raises(SearchIndexError, match=message):
        Index.open(saved)


def test_a_plain_faiss_file_is_not_an_index(tmp_path):
    faiss.write_index(faiss.IndexFlatIP(4), str(tmp_path / "raw.faiss"))
    with pytest.raises(SearchIndexError, match="is a file, not a featkit index"):
        Index.open(tmp_path / "raw.faiss")


def test_query_dimension_mismatch_is_a_clear_error(built):
    with pytest.raises(SearchIndexError, match="index holds 32-d synthetic feat features"):
        built["flat"].search(np.zeros((2, 64), np.float32))


def test_saving_over_something_that_is_not_an_index_is_refused(built, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(SearchIndexError, match="not a featkit index"):
        built["flat"].save(tmp_path / "photos", overwrite=True)
    assert (tmp_path / "photos" / "holiday.jpg").exists()
    built["flat"].save(tmp_path / "i")
    with pytest.raises(SearchIndexError, match="--overwrite"):
        built["ivf"].save(tmp_path / "i")


# ---- incremental add and remove: same model/tap only -------------------------------------------------------

def test_add_extends_the_index_and_matches_the_oracle_over_both_stores(data, tmp_path):
    extra = clustered(500, seed=3)
    index = Index.build(data["store"], kind="flat")
    added = index.add(write_store(tmp_path / "more", extra, first=N))
    assert added == 500 and len(index) == N + 500
    assert index.add(tmp_path / "more") == 0  # paths already indexed are skipped
    index.save(tmp_path / "grown.index")
    reopened = Index.open(tmp_path / "grown.index")
    _, ids = neighbours(reopened, data["queries"])
    np.testing.assert_array_equal(ids, cosine_oracle(np.vstack([data["base"], extra]), data["queries"], K)[1])
    assert reopened.manifest["source"]["stores"][-1].endswith("more")


@pytest.mark.parametrize("model, tap, dim, message", [
    ("othernet", "feat", DIM, "model: synthetic → othernet"),
    ("synthetic", "fc7", DIM, "taps"),
    ("synthetic", "feat", 48, "48-d"),
])
def test_add_refuses_stores_of_another_model_tap_or_dimension(built, tmp_path, model, tap, dim, message):
    other = write_store(tmp_path / "other", clustered(100, dim=dim), first=10**6, model=model, tap=tap)
    index = Index.open(built["flat"].save(tmp_path / "i.index"))
    with pytest.raises(SearchIndexError, match=message):
        index.add(other)
    assert len(index) == N


def test_remove_by_path_flat_and_ivf_but_not_hnsw(data, built, tmp_path):
    gone = ["/img/000000.jpg", "/img/000001.jpg"]
    for kind in ("flat", "ivf"):
        index = Index.open(built[kind].save(tmp_path / f"{kind}.index"))
        assert index.remove(gone) == 2
        index.save()
        reopened = Index.open(tmp_path / f"{kind}.index")
        found = reopened.search(data["base"][:2], k=5, params={"nprobe": 64} if kind == "ivf" else None)
        assert len(reopened) == N - 2 and not set(gone) & set(found["path"])
    with pytest.raises(SearchIndexError, match="not in the index"):
        index.remove(["/img/nope.jpg"])
    with pytest.raises(SearchIndexError, match="HNSW indexes cannot remove"):
        built["hnsw"].remove(gone)


# ---- kill -9 while saving: RELIABILITY.md row 19 ------------------------------------------------------------

KILLER = textwrap.dedent("""
    import os, signal, sys
    import faiss
    from featkit.index import Index
    from featkit.index import manifest
    point, store, target = sys.argv[1:]
    index = Index.build(store, kind="flat")
    index.remove(["/img/000000.jpg"])  # differs from the index on disk by one vector
    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
    if point == "mid_index_file":
        real = faiss.write_index
        def half_then_die(idx, path):
            real(idx, path)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
            die()
        faiss.write_index = half_then_die
    else:  # every new file in place, manifest not yet renamed
        manifest._commit = die
    index.save(target, overwrite=True)
""")


@pytest.mark.parametrize("point", ["mid_index_file", "before_manifest"])
def test_sigkill_during_save_leaves_the_previous_index_usable(data, built, tmp_path, point):
    target = tmp_path / "photos.index"
    built["flat"].save(target)
    proc = subprocess.run([sys.executable, "-c", KILLER, point, str(data["store"]), str(target)],
                          check=False, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -9, proc.stderr.decode()[-500:]
    index = Index.open(target)
    assert len(index) == N
    assert index.search(data["base"][:1], k=1)["path"].tolist() == ["/img/000000.jpg"]
    index.remove(["/img/000001.jpg"])
    index.save()  # the next save clears what the killed one left behind
    assert sorted(p.suffix for p in target.iterdir()) == [".faiss", ".json", ".parquet"]


# ---- near-duplicates ---------------------------------------------------------------------------------------

def test_union_merges_chains_and_stars_without_cycles():
    parent = np.arange(10)
    union(parent, np.array([1, 2, 3, 5, 8, 8]), np.array([2, 3, 4, 9, 5, 1]))
    roots = np.array([parent[parent[parent[i]]] for i in range(10)])
    assert len(set(roots[[1, 2, 3, 4, 5, 8, 9]])) == 1 and len(set(roots[[0, 6, 7]])) == 3


def test_dedup_groups_planted_near_copies_and_nothing_else(tmp_path):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2000, 64)).astype(np.float32)  # distinct: cosine ≈ 0 ± 0.15
    planted = {10: [500, 1500], 20: [1999], 30: [31, 32, 33]}
    for original, copies in planted.items():
        for c in copies:
            x[c] = x[original] + 0.05 * rng.standard_normal(64).astype(np.float32)
    store = write_store(tmp_path / "s", x)
    groups = find_duplicates(store, threshold=0.95, batch_size=300)  # batches split some groups' members
    got = {frozenset(g["path"]) for _, g in groups.groupby("group")}
    want = {frozenset(f"/img/{i:06d}.jpg" for i in [o, *c]) for o, c in planted.items()}
    assert got == want
    assert groups["size"].tolist()[:4] == [4, 4, 4, 4]  # largest group first
    assert groups.groupby("group")["representative"].sum().tolist() == [1, 1, 1]
    assert (groups["score"] > 0.95).all()


def test_missing_faiss_is_a_one_line_install_hint(monkeypatch):
    import importlib

    monkeypatch.setitem(sys.modules, "faiss", None)  # what `import faiss` sees without faiss-cpu / faiss-gpu
    monkeypatch.delitem(sys.modules, "featkit._faiss")
    with pytest.raises(FeatkitError, match=r"pip install 'featkit\[cpu\]'"):
        importlib.import_module("featkit._faiss")
