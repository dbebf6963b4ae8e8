"""A similar-image index over one tap of feature stores: build, open, search, add, remove, save."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from featkit._device import resolve_device
from featkit._faiss import faiss
from featkit.choices import Decoder, Engine
from featkit.errors import SearchIndexError, StoreError, check_choice, check_float, check_int
from featkit.extraction.embed import FAILURE_COLUMNS, Embedder, Embedding, config_for
from featkit.index import gpu
from featkit.index import manifest as files
from featkit.index.exact import exact_knn, faiss_metric, prepare, rerank
from featkit.index.kinds import K_FACTORS, IndexPlan, auto_candidates, plan_index, recall_at_k, search_knob
from featkit.index.stored import StoredVectors
from featkit.store.reader import FeatureStore, open_features
from featkit.store.settings import StoreSettings

log = logging.getLogger(__name__)

CHUNK = 16_384  # vectors read, prepared and added at a time
RERANK_BYTES = 64 * 2**20  # candidate vectors gathered at a time for re-ranking
TUNE_QUERIES = 1_000
TUNE_K = 10


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _store(store: FeatureStore | str | os.PathLike) -> FeatureStore:
    return store if isinstance(store, FeatureStore) else open_features(store)


def _id_rows(store: FeatureStore, first_id: int, keep: np.ndarray | None = None) -> pd.DataFrame:
    rows = store.rows if keep is None else store.rows[keep]
    return pd.DataFrame({"id": np.arange(first_id, first_id + len(rows), dtype=np.int64),
                         "path": rows["path"].astype(str).to_numpy(), "label": rows["label"].to_numpy(dtype=object),
                         "store": str(store.root.resolve()), "row": rows["row"].to_numpy(np.int64)})


def _sample(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))


class Index:
    """FAISS index over the vectors of one tap, with the provenance needed to embed new queries the same way.

    Build with :meth:`build`, read with :meth:`open`; ``search`` takes vectors or image paths.
    """

    def __init__(self, index: faiss.Index, ids: pd.DataFrame, manifest: dict, path: Path | None = None):
        self._cpu = index
        self._searcher: faiss.Index | None = None  # a GPU copy when one is visible, made on first search
        self.ids = ids.reset_index(drop=True)
        self.manifest = manifest
        self.path = path
        where = f"{path / files.MANIFEST}" if path is not None else "the index manifest"
        source = manifest.get("source")
        try:
            self.settings = StoreSettings.from_json(source.get("settings") if isinstance(source, dict) else None,
                                                    where, field="source.settings")
        except StoreError as exc:
            raise SearchIndexError(f"{exc} Rebuild the index with featkit index build.") from None
        if self.tap not in self.settings.tap_names:
            raise SearchIndexError(f"{where} is damaged: source.tap {self.tap[:80]!r} is not one of "
                                   "source.settings.taps. Rebuild the index with featkit index build.")
        self._embedders: dict[tuple, Embedder] = {}  # loaded models for image queries, by (weights file, device)
        self._apply(self._cpu, manifest.get("search_params", {}))

    # ---- building ----------------------------------------------------------------------------------------

    @classmethod
    def build(cls, store: FeatureStore | str | os.PathLike, *, tap: str | None = None, kind: str = "auto",
              metric: str = "cosine", pca: int | None = None, max_memory: int | None = None,
              recall_target: float = 0.95, weights: str | os.PathLike | None = None,
              progress: bool = False, engine: str = "local", ray_address: str | None = None) -> Index:
        """Index every row of ``store``'s ``tap``.

        Args:
            store: a feature store (path or opened).
            tap: the tap to index (default: the store's only tap).
            kind: ``auto``, ``flat``, ``hnsw``, ``ivf`` or ``ivfpq`` (see :mod:`featkit.index.kinds`).
            metric: ``cosine`` (L2-normalised vectors, inner product) or ``l2``.
            pca: reduce to this many dimensions first (recorded; queries are reduced the same way).
            max_memory: bytes the index may take (default: half the RAM); steers ``auto``.
            recall_target: recall@10 vs exact search that approximate kinds are tuned to reach.
            weights: where the store's weights file is now, recorded so searches by image can find it (the store
                records where it was at extraction; this is for a file that moved since).
            progress: show progress bars.
            engine: ``local``, or ``ray`` for IVF kinds: vectors added in parallel Ray tasks and merged in row order
                (the same search results as a local build; see :mod:`featkit.index.ray_build`).
            ray_address: the Ray cluster to join (``auto``, ``ray://HOST:PORT``); None starts a local one.
        """
        engine = check_choice("engine", engine, Engine, "Index.build", error=SearchIndexError)
        if engine == "ray" and kind not in ("ivf", "ivfpq"):
            raise SearchIndexError(f"--engine ray builds the IVF kinds (their lists merge); give --kind ivf or ivfpq, "
                                   f"not {kind}.")
        check_float("recall_target", recall_target, "Index.build", low=0, high=1, closed="right",
                    error=SearchIndexError)
        store = _store(store)
        tap = store.resolve_tap(tap)
        vectors = store[tap]
        n, dim = vectors.shape
        if n == 0:
            raise SearchIndexError(f"{store.root} has no rows to index; extract some images first.")
        if weights is not None:
            _check_weights_file(Path(weights), store)
        source = {"tap": tap, "settings": store.settings.to_json(),
                  "weights_path": str(Path(weights).resolve()) if weights else None,
                  "stores": [str(store.root.resolve())]}
        plan = plan_index(n, dim, kind, metric=metric, pca=pca, max_memory=max_memory)
        candidates = auto_candidates(n, dim, metric=metric, pca=pca, max_memory=max_memory) if kind == "auto" else []
        if len(candidates) > 1:  # measure which answers fastest at the recall target, on a sample
            from featkit.index.auto import choose_kind

            chosen, why = choose_kind(cls._from_vectors, vectors, candidates, metric=metric, pca=pca,
                                      max_memory=max_memory, target=recall_target, source=source, progress=progress)
            plan = dataclasses.replace(plan_index(n, dim, chosen, metric=metric, pca=pca, max_memory=max_memory),
                                       reason=why)
        return cls._from_vectors(vectors, _id_rows(store, 0), plan, metric=metric, pca=pca,
                                 recall_target=recall_target, source=source, progress=progress,
                                 ray=(ray_address,) if engine == "ray" else None)

    @classmethod
    def _from_vectors(cls, vectors, ids: pd.DataFrame, plan: IndexPlan, *, metric: str, pca: int | None,
                      recall_target: float, source: dict, progress: bool, ray: tuple | None = None) -> Index:
        """Train, add and tune the index ``plan`` describes over ``vectors`` (a store's tap, or rows in memory).

        ``ray``: (cluster address,) to add the vectors in Ray tasks instead of here.
        """
        n, dim = vectors.shape
        log.info("building %s (%s): %s", plan.kind, plan.factory, plan.reason)
        start = time.perf_counter()
        index = faiss.index_factory(dim, plan.factory, faiss_metric(metric))
        index = _train(index, vectors, plan, metric, progress)
        if ray is not None:
            from featkit.index.ray_build import add_on_ray

            index = add_on_ray(gpu.to_cpu(index), source["stores"][0], source["tap"], n, metric, address=ray[0])
        else:
            _add_chunks(index, vectors, ids["id"].to_numpy(), metric, progress)
        index = gpu.to_cpu(index)
        build_seconds = time.perf_counter() - start
        manifest = {
            "created": _now(), "faiss_version": faiss.__version__, "kind": plan.kind, "factory": plan.factory,
            "reason": plan.reason, "metric": metric, "normalised": metric == "cosine", "pca": pca, "dim": dim,
            "training_size": plan.train_size, "build_seconds": round(build_seconds, 3), "next_id": n,
            "search_params": {}, "recall_at_10": 1.0, "recall_target": recall_target, "tuning_queries": 0,
            "source": source,
        }
        built = cls(index, ids, manifest)
        if plan.approximate:
            built._tune(vectors, plan, recall_target, progress)
        return built

    def _tune(self, vectors, plan: IndexPlan, target: float, progress: bool) -> None:
        """Raise the search knob until recall@10 on held-out queries reaches ``target``; record what it reached."""
        metric = self.metric
        own = _sample(len(vectors), TUNE_QUERIES, seed=1)
        queries = prepare(vectors[own], metric)
        k = min(TUNE_K + 1, len(vectors))  # +1: each query finds itself, which recall leaves out
        _, exact = exact_knn(queries, (prepare(c, metric) for c in vectors.chunks(CHUNK)), k, metric)
        knob = search_knob(plan.kind, _nlist(self._cpu))
        steps = knob[1] if knob else (None,)
        factors = K_FACTORS if plan.kind == "ivfpq" else (1,)
        recall, chosen = 0.0, {}
        for value in tqdm(steps, desc="tune", disable=not progress, leave=False):
            params = {knob[0]: int(value)} if knob and value is not None else {}  # value is None only without a knob
            self._apply(self._cpu, params)
            # one search for the most candidates; fewer are its first columns (FAISS ranks them the same way)
            _, candidates = self._cpu.search(queries, k * factors[-1])
            for factor in factors:
                first = candidates[:, : k * factor]
                found = first if factor == 1 else refine(queries, first, k, metric, vectors_of(vectors))[1]
                recall, chosen = recall_at_k(found, exact, own, k - 1), {**params, **(
                    {"k_factor": factor} if factor > 1 else {})}
                if recall >= target:
                    break
            if recall >= target:
                break
        if recall < target:
            log.warning("recall@10 %.3f is below the target %.2f at the largest %s", recall, target,
                        knob[0] if knob else "setting")
        self._searcher = None
        self.manifest.update(search_params=chosen, recall_at_10=round(recall, 4), tuning_queries=len(own))

    @property
    def ids(self) -> pd.DataFrame:
        """The id table: id, path, label, store, row of each indexed vector."""
        return self._ids

    @ids.setter
    def ids(self, table: pd.DataFrame) -> None:
        self._ids = table
        # ids, the order that sorts them, paths and labels as arrays: made on the first search after a change
        self._id_lookup: tuple[np.ndarray, ...] | None = None
        self._stored: StoredVectors | None = None  # where each id's exact vector is: likewise

    # ---- reading and writing -----------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike) -> Index:
        """Open an index directory, refusing truncated, corrupt or foreign files before FAISS reads them."""
        loaded = files.load(Path(path))
        return cls(loaded.index, loaded.ids, loaded.manifest, Path(path))

    def save(self, path: str | os.PathLike | None = None, *, overwrite: bool = False) -> Path:
        """Write the index directory atomically (a kill leaves the previous index readable)."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise SearchIndexError("This index was never saved; give a path to save it to.")
        if target != self.path:
            files.check_target(target, overwrite)
        self.manifest = files.save(target, self._cpu, self.ids, {**self.manifest, "updated": _now()})
        self.path = target
        return target

    # ---- searching ---------------------------------------------------------------------------------------

    @property
    def metric(self) -> str:
        return self.manifest["metric"]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    def __len__(self) -> int:
        return int(self._cpu.ntotal)

    def __repr__(self) -> str:
        return (f"Index({self.path or 'unsaved'}: {len(self):,} × {self.manifest['dim']}-d {self.settings.model} "
                f"{self.tap}, {self.kind} '{self.manifest['factory']}', {self.metric}, "
                f"recall@10 {self.manifest['recall_at_10']})")

    def _apply(self, index: faiss.Index, params: dict) -> None:
        space = gpu.parameter_space()
        for name, value in params.items():
            if name != "k_factor":  # featkit's own: candidates re-ranked per result
                space.set_index_parameter(index, name, value)

    def search_vectors(self, vectors: np.ndarray, k: int = 10, *,
                       params: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the ``k`` nearest indexed vectors; ids are -1 where fewer than ``k`` exist.

        Scores are cosine similarities (higher is closer) or Euclidean distances (lower is closer).
        """
        x = np.asarray(vectors, dtype=np.float32)
        x = x[None, :] if x.ndim == 1 else x
        if x.ndim != 2 or x.shape[1] != self.manifest["dim"]:
            raise SearchIndexError(f"Query vectors have shape {x.shape} but the index holds {self.manifest['dim']}-d "
                                   f"{self.settings.model} {self.tap} features; embed queries with the same model "
                                   f"and tap.")
        check_int("k", k, "search", minimum=1, error=SearchIndexError)
        if self._searcher is None:
            self._searcher = gpu.to_gpu(self._cpu, self.kind)
        params = {**self.manifest.get("search_params", {}), **(params or {})}
        factor = check_int("k_factor", params.get("k_factor", 1), "search", minimum=1, error=SearchIndexError)
        self._apply(self._searcher, params)
        queries = prepare(x, self.metric)
        if factor > 1:  # IVF-PQ: the codes' k × factor best, re-ranked against the exact vectors in the stores
            if self._stored is None:
                self._stored = StoredVectors(self.ids, self.tap, self.manifest["dim"])
            _, candidates = self._searcher.search(queries, min(k * factor, max(k, len(self))))
            scores, ids = refine(queries, candidates, k, self.metric, self._stored.take)
        else:
            scores, ids = self._searcher.search(queries, k)
        if self.metric == "l2":
            scores = np.sqrt(np.maximum(scores, 0))
        return scores, ids

    @property
    def tap(self) -> str:
        return self.manifest["source"]["tap"]

    def embedder(self, *, weights: str | os.PathLike | None = None, device: str = "auto") -> Embedder:
        """The model that embeds query images exactly like the indexed ones, loaded on first use and kept.

        Only the indexed tap is computed, with the model, weights, preprocessing, pooling, dtype and precision the
        store recorded; the loaded weights are checked against the recorded sha256 before a query is embedded.

        Args:
            weights: the weights file the store was made with, where it is not where the store (or ``index build
                --weights``) recorded it.
            device: where queries are embedded.

        Raises:
            SearchIndexError: the store used a weights file and it is neither given nor where it was recorded (or
                it changed since), or the weights found would compute other vectors.
        """
        weights_file = weights or self._recorded_weights()
        key = (str(weights_file) if weights_file else None, device)
        if key not in self._embedders:
            config = config_for(self.settings, taps=[self.tap], weights=weights_file, device=device)
            # a query is a batch or two: each on all threads answers soonest (its vector may then differ from a
            # stored one in the last bits, as stores made on machines with other thread counts do)
            config = dataclasses.replace(config, replicas=1)
            substitute = config.decoder == Decoder.nvjpeg and resolve_device(device).type != "cuda"
            if substitute:  # nvJPEG needs a GPU: the tensor decoder is its CPU twin (same libjpeg rules, median
                config = dataclasses.replace(config, decoder=Decoder.tensor)  # cosine 0.996 to pil, as nvjpeg's)
            embedder = Embedder(config)
            changes = self.settings.for_tap(self.tap).diff(embedder.settings, vectors_only=True)
            changes = [c for c in changes if not (substitute and c.startswith("decoder:"))][:4]
            if changes:
                raise SearchIndexError(f"Query images would be embedded differently from the indexed ones "
                                       f"({'; '.join(changes)}); use the weights and featkit version the store was "
                                       "made with.")
            self._embedders[key] = embedder
        return self._embedders[key]

    def _recorded_weights(self) -> str | None:
        """Where the store's weights file was recorded, if it is still there, unchanged; None for other kinds.

        Raises:
            SearchIndexError: the store used a weights file that has moved or changed since: names the path and hash
                expected.
        """
        w = self.settings.weights
        if w.kind != "file":
            return None
        recorded = [p for p in (self.manifest["source"].get("weights_path"), w.path) if p]
        for path in recorded:
            if Path(path).is_file():
                from featkit.backbones.checkpoints import sha256_file

                if sha256_file(Path(path)) == w.sha256:
                    return path
        where = f" It was at {recorded[-1]}, which is gone or has changed since." if recorded else ""
        raise SearchIndexError(f"The indexed features come from the weights file '{w.id}' (sha256 {w.sha256[:12]}…)."
                               f"{where} Pass it with --weights FILE to embed query images.")

    def embed(self, images, *, weights: str | os.PathLike | None = None, device: str = "auto",
              progress: bool = False) -> Embedding:
        """Vectors of images (files, folders, bytes, PIL images, arrays), computed like the indexed ones, in memory.

        Returns:
            An :class:`~featkit.extraction.embed.Embedding` of the indexed tap; ``failures`` lists the images that
            could not be read.
        """
        return self.embedder(weights=weights, device=device).embed(images, progress=progress)

    def search(self, queries, k: int = 10, *, params: dict | None = None, weights: str | os.PathLike | None = None,
               device: str = "auto") -> pd.DataFrame:
        """The ``k`` nearest indexed images of each query.

        Args:
            queries: a (n, dim) or (dim,) float array of vectors, or images: paths, folders, image bytes, PIL images
                or uint8 pixel arrays, or a list of them (embedded like the index).
            k: neighbours per query.
            params: search parameters overriding the tuned ones, e.g. ``{"nprobe": 64}``.
            weights: the store's weights file, for image queries, where it is not where the store recorded it.
            device: where query images are embedded.

        Returns:
            A DataFrame with columns query (path, or row number for vectors), rank (1 = nearest), path, score,
            label, id. Query images that could not be decoded are left out (``result.attrs["failures"]``).
        """
        names: list[str] | list[int]
        if _are_images(queries):
            embedded = self.embed(queries, weights=weights, device=device)
            if not len(embedded.names):
                raise SearchIndexError(f"None of the query images could be read ({len(embedded.failures)} skipped).")
            vectors = np.asarray(embedded[self.tap], dtype=np.float32)
            names, failures = embedded.names, embedded.failures
        else:
            vectors = np.asarray(queries, dtype=np.float32)
            vectors = vectors[None, :] if vectors.ndim == 1 else vectors
            names, failures = list(range(len(vectors))), pd.DataFrame(columns=FAILURE_COLUMNS)
        scores, ids = self.search_vectors(vectors, k, params=params)
        table = self._table(names, scores, ids)
        table.attrs["failures"] = failures
        return table

    def _table(self, names: list, scores: np.ndarray, ids: np.ndarray) -> pd.DataFrame:
        valid = ids >= 0
        q, rank = np.nonzero(valid)
        found = ids[valid]
        if self._id_lookup is None:
            ids = self.ids["id"].to_numpy()
            self._id_lookup = (ids, np.argsort(ids), self.ids["path"].to_numpy(), self.ids["label"].to_numpy())
        ids, order, paths, labels = self._id_lookup
        rows = order[np.searchsorted(ids, found, sorter=order)]
        return pd.DataFrame({"query": [names[i] for i in q], "rank": rank + 1, "path": paths[rows],
                             "score": scores[valid].astype(float), "label": labels[rows],
                             "id": found.astype(np.int64)})

    # ---- changing ----------------------------------------------------------------------------------------

    def add(self, store: FeatureStore | str | os.PathLike, *, progress: bool = False) -> int:
        """Add the rows of another store made with the same model, weights, tap and preprocessing.

        Paths already in the index are skipped. Returns the number of vectors added.

        Raises:
            SearchIndexError: the store was made with other settings, or lacks the indexed tap.
        """
        store = _store(store)
        tap = self.tap
        if tap not in store.taps:
            raise SearchIndexError(f"{store.root} has no tap '{tap}' (its taps: {', '.join(store.taps)}); "
                                   f"the index holds {tap}.")
        # the stores may hold other taps besides the indexed one (a tap added since, say)
        changes = self.settings.for_tap(tap).diff(store.settings.for_tap(tap), vectors_only=True, limit=4)
        if changes:
            raise SearchIndexError(f"{store.root} was made with other settings than the indexed features "
                                   f"({'; '.join(changes)}); extract it with the same model, weights and "
                                   "preprocessing, or build a new index.")
        vectors = store[tap]
        if vectors.shape[1] != self.manifest["dim"]:
            raise SearchIndexError(f"{store.root} {tap} is {vectors.shape[1]}-d; "
                                   f"the index holds {self.manifest['dim']}-d vectors.")
        keep = ~store.rows["path"].astype(str).isin(self.ids["path"]).to_numpy()
        new = _id_rows(store, self.manifest["next_id"], keep)
        if len(new):
            positions = np.flatnonzero(keep)
            chunks = (vectors[positions[i: i + CHUNK]] for i in range(0, len(positions), CHUNK))
            _add_chunks(self._cpu, chunks, new["id"].to_numpy(), self.metric, progress, total=len(new))
            self.ids = pd.concat([self.ids, new], ignore_index=True)
            self.manifest["next_id"] = int(new["id"].max()) + 1
        stores = self.manifest["source"]["stores"]
        if str(store.root.resolve()) not in stores:
            stores.append(str(store.root.resolve()))
        self._searcher = None
        return len(new)

    def remove(self, paths: Sequence[str | os.PathLike]) -> int:
        """Remove the vectors of ``paths`` (flat and IVF kinds; HNSW graphs cannot drop nodes). Returns how many."""
        if self.kind == "hnsw":
            raise SearchIndexError("HNSW indexes cannot remove vectors (FAISS's graph has no deletion); "
                                   "rebuild with featkit index build, or use --kind flat/ivf.")
        # as the index lists them (absolute), or relative to here
        indexed = set(self.ids["path"])
        wanted = pd.Index([str(p) if str(p) in indexed else os.path.abspath(p) for p in paths])
        missing = wanted[~wanted.isin(self.ids["path"])]
        if len(missing):
            raise SearchIndexError(f"{len(missing)} path(s) are not in the index, e.g. {missing[0]}; "
                                   f"nothing was removed.")
        drop = self.ids["path"].isin(wanted).to_numpy()
        try:
            drop_ids = np.ascontiguousarray(self.ids.loc[drop, "id"].to_numpy(np.int64))
            # faiss's stubs list only the SWIG IDSelector; its Python wrapper takes an int64 id array too
            removed = self._cpu.remove_ids(drop_ids)  # type: ignore[arg-type]
        except RuntimeError:
            raise SearchIndexError(f"This {self.kind} index ('{self.manifest['factory']}') cannot remove vectors in "
                                   "FAISS; rebuild it with featkit index build.") from None
        self.ids = self.ids[~drop].reset_index(drop=True)
        self._searcher = None
        return int(removed)


def _are_images(queries) -> bool:
    """Whether ``queries`` are images to embed (paths, bytes, PIL images, uint8 pixels) rather than vectors."""
    from PIL import Image

    def image(q) -> bool:
        return isinstance(q, (str, os.PathLike, bytes, Image.Image)) or (
            isinstance(q, np.ndarray) and q.dtype == np.uint8)  # pixels are uint8; vectors are floats

    return image(queries) or (isinstance(queries, (list, tuple)) and bool(queries) and image(queries[0]))


def _check_weights_file(path: Path, store: FeatureStore) -> None:
    """Refuse to record a weights file other than the one the store was extracted with.

    A run directory is checked later, when query images are embedded: its model file is resolved by the extraction
    code.
    """
    recorded = store.settings.weights
    if recorded.kind != "file":
        raise SearchIndexError(f"{store.root} was extracted with '{recorded.id}' weights, not a file; "
                               f"leave out --weights.")
    if path.is_file():
        from featkit.backbones.checkpoints import sha256_file

        if sha256_file(path) != recorded.sha256:
            raise SearchIndexError(f"{path} is not the weights file {store.root} was extracted with "
                                   f"('{recorded.id}', sha256 {recorded.sha256[:12]}…).")
    elif not path.exists():
        raise SearchIndexError(f"The weights file {path} does not exist.")


def refine(queries: np.ndarray, candidates: np.ndarray, k: int, metric: str,
           take) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank each query's candidate ids by exact score against the vectors ``take(ids)`` returns, in batches."""
    scores = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    batch = max(1, RERANK_BYTES // max(1, candidates.shape[1] * queries.shape[1] * 4))
    for start in range(0, len(queries), batch):
        part = candidates[start: start + batch]
        valid = part >= 0
        unique, inverse = np.unique(part[valid], return_inverse=True)
        vectors = np.zeros((*part.shape, queries.shape[1]), dtype=np.float32)
        if len(unique):
            vectors[valid] = prepare(take(unique), metric)[inverse.reshape(-1)]
        width = min(k, part.shape[1])
        s, i = rerank(queries[start: start + batch], part, vectors, width, metric)
        scores[start: start + len(part), :width], ids[start: start + len(part), :width] = s, i
        if width < k:
            scores[start: start + len(part), width:], ids[start: start + len(part), width:] = np.nan, -1
    return scores, ids


def vectors_of(vectors):
    """``take`` for :func:`refine` over a store's tap while an index is built (its ids are the rows)."""
    return lambda ids: np.asarray(vectors[np.asarray(ids, dtype=np.int64)], dtype=np.float32)


def _nlist(index: faiss.Index) -> int | None:
    try:
        return faiss.extract_index_ivf(index).nlist
    except (RuntimeError, AttributeError):
        return None


def _train(index: faiss.Index, vectors, plan: IndexPlan, metric: str, progress: bool) -> faiss.Index:
    """Train on a seeded sample of the rows (on the GPU when there is one); returns the index to add to."""
    device_index = gpu.to_gpu(index, plan.kind)
    if not index.is_trained:
        rows = _sample(len(vectors), plan.train_size)
        log.info("training on %d of %d vectors", len(rows), len(vectors))
        device_index.train(prepare(vectors[rows], metric))
    return device_index


def _add_chunks(index: faiss.Index, chunks, ids: np.ndarray, metric: str, progress: bool,
                total: int | None = None) -> None:
    if hasattr(chunks, "chunks"):  # a TapArray: stream it shard-sized
        total, chunks = len(chunks), chunks.chunks(CHUNK)
    bar = tqdm(total=total, unit="vec", desc="add", disable=not progress, dynamic_ncols=True)
    start = 0
    for chunk in chunks:
        index.add_with_ids(prepare(chunk, metric), np.ascontiguousarray(ids[start: start + len(chunk)]))
        start += len(chunk)
        bar.update(len(chunk))
    bar.close()
