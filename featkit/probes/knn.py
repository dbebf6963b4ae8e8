"""Cosine kNN probe with temperature-weighted votes, as in DINO's kNN evaluation, on exact FAISS search."""

from __future__ import annotations

import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from featkit._faiss import faiss
from featkit.errors import check_float, check_int
from featkit.probes.linear import ProbeError, encode_labels, validated
from featkit.probes.protocol import ProbeResult, scored_on_test


def l2_normalized(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length as contiguous float32 (zero rows stay zero)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, np.finfo(np.float32).tiny)


class KNNProbe(ClassifierMixin, BaseEstimator):
    """k nearest neighbours by cosine similarity; each neighbour votes ``exp(similarity / temperature)``.

    Args:
        k: neighbours per query (fewer if the training set is smaller).
        temperature: the vote temperature T; DINO uses 0.07.
        batch_size: queries searched at once (bounds memory, not results).
    """

    def __init__(self, k=20, temperature=0.07, batch_size=4096):
        self.k = k
        self.temperature = temperature
        self.batch_size = batch_size

    def fit(self, X, y) -> KNNProbe:
        """Remember the L2-normalised training features and their labels."""
        for name in ("k", "batch_size"):
            check_int(name, getattr(self, name), "KNNProbe", minimum=1, error=ProbeError)
        check_float("temperature", self.temperature, "KNNProbe", low=0, high=np.inf, error=ProbeError)
        X, y = validated(self, X, y, reset=True)
        self._labels = encode_labels(self, y)
        self._train = l2_normalized(X)
        return self

    def votes(self, X) -> np.ndarray:
        """Summed vote weights per class, (n, n_classes), columns in the order of ``classes_``."""
        check_is_fitted(self)
        X, _ = validated(self, X, reset=False)
        queries = l2_normalized(X)
        # a flat index is a copy of the vectors: rebuilt per call so the estimator stays picklable
        index = faiss.IndexFlatIP(self._train.shape[1])
        index.add(self._train)
        k = min(self.k, len(self._train))
        out = np.zeros((len(queries), len(self.classes_)), dtype=np.float64)
        for start in range(0, len(queries), self.batch_size):
            sims, ids = index.search(queries[start: start + self.batch_size], k)
            weights = np.exp(sims.astype(np.float64) / self.temperature)
            rows = np.repeat(np.arange(start, start + len(ids)), k)
            np.add.at(out, (rows, self._labels[ids].ravel()), weights.ravel())
        return out

    def predict_proba(self, X) -> np.ndarray:
        v = self.votes(X)
        return v / v.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        votes = self.votes(X)
        return self.classes_[votes.argmax(axis=1)]


def run_knn_probe(train_X, train_y, test_X, test_y, *, k: int = 20, temperature: float = 0.07) -> ProbeResult:
    """Fit a :class:`KNNProbe` on train and report its test metrics and predictions."""
    start = time.perf_counter()
    probe = KNNProbe(k=k, temperature=temperature).fit(train_X, train_y)
    metrics = scored_on_test(probe.classes_, probe.votes(test_X), test_y)
    return ProbeResult(kind="knn", **metrics, n_train=len(probe._labels), n_val=0,
                       seconds=time.perf_counter() - start, k=k, temperature=temperature)
