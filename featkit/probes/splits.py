"""Train / val / test features and labels out of feature stores, decided by their ``split`` column.

Two checks keep a test score honest: a separate test store must hold vectors computed like the train store's
(same model, weights, tap, pooling, preprocessing), and no test image may also be one the probe is fitted on
(the same path, or the same bytes under another name, e.g. a photo copied into both train/ and test/).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from featkit._files import not_a_file, sha256_file
from featkit.errors import InputError, check_bool, check_float, check_int
from featkit.probes.protocol import stratified_holdout
from featkit.store.reader import FeatureStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    name: str
    X: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class Holdout:
    """A seeded stratified test split carved from a store without a split column."""

    fraction: float
    seed: int

    def describe(self) -> str:
        return (f"no split column: tested on a seeded stratified {self.fraction * 100:g} % of the rows "
                f"(seed {self.seed})")


@dataclass(frozen=True)
class ProbeData:
    """What a probe trains on, validates on (None: carve from train) and is tested on.

    Attributes:
        holdout: how the test rows were carved when the store has no split column (None: the split column or a
            test store decided).
        shared: (fitted-on path, test path) of every test image that is also one the probe is fitted on (train or
            val); empty unless ``allow_overlap`` let them through.
    """

    train: Split
    val: Split | None
    test: Split
    holdout: Holdout | None = None
    shared: tuple[tuple[str, str], ...] = ()


def _rows(store: FeatureStore, tap: str, mask: np.ndarray, name: str) -> Split:
    features = store[tap]
    labels = store.rows["label"].to_numpy()[mask]
    if len(labels) and any(label is None for label in labels):
        raise InputError(f"The {name} rows of {store.root} have no labels: probes need an ImageFolder layout "
                         "(ROOT/CLASS/*) or a list file with a label column.")
    return Split(name, np.asarray(features[np.flatnonzero(mask)], dtype=np.float32), labels.astype(str))


def probe_data(store: FeatureStore, tap: str, test_store: FeatureStore | None = None, *,
               allow_overlap: bool = False, test_fraction: float = 0.2, seed: int = 0) -> ProbeData:
    """Split ``store`` by its ``split`` column (train/val/test), or train on all of it and test on ``test_store``.

    A store with train and val but no test split (e.g. the ants/bees tutorial set) is tested on val, and the
    validation split for choosing C is then carved from train. A labelled store without a split column (an
    ImageFolder ROOT/CLASS/*) is tested on a seeded stratified ``test_fraction`` of its rows, the protocol's
    holdout.

    Args:
        store: the store to train on (and, without ``test_store``, to split).
        tap: the tap to probe; both stores must hold it.
        test_store: a store to test on; its vectors of ``tap`` must be computed like ``store``'s.
        allow_overlap: log a warning instead of raising when test images are also training (or val) images.
        test_fraction: the share of rows held out for test when ``store`` has no split column.
        seed: seeds that holdout.

    Raises:
        InputError: no labels, no usable split, a test store extracted differently, or train and test sharing
            files (unless ``allow_overlap``).
    """
    tap = store.resolve_tap(tap)
    check_float("test_fraction", test_fraction, "probe_data", low=0, high=1)
    check_int("seed", seed, "probe_data")
    check_bool("allow_overlap", allow_overlap, "probe_data")
    # the validation folder names featkit's listing accepts, as the probe protocol's one name
    splits = store.rows["split"].fillna("").replace({"valid": "val", "validation": "val"}).to_numpy()
    if test_store is not None:
        test_store.resolve_tap(tap)
        _check_same_vectors(store, test_store, tap)
        every = np.ones(len(store), dtype=bool)
        shared = _check_overlap(store.rows, test_store.rows, allow_overlap,
                                f"The train store {store.root} and the test store {test_store.root}")
        test_all = np.ones(len(test_store), dtype=bool)
        return ProbeData(_rows(store, tap, every, "train"), None, _rows(test_store, tap, test_all, "test"),
                         shared=shared)
    if not (splits != "").any():
        return _holdout(store, tap, Holdout(test_fraction, seed), allow_overlap)
    if not (splits == "train").any():
        raise InputError(f"{store.root} has no train split: extract an ImageFolder with train/ [val/] test/ "
                         "folders, or pass --test TEST_STORE.")
    has_val, has_test = (splits == "val").any(), (splits == "test").any()
    if not has_val and not has_test:
        raise InputError(f"{store.root} has a train split but neither val nor test: pass --test TEST_STORE.")
    test_name = "test" if has_test else "val"
    fitted_on = (splits == "train") | ((splits == "val") & has_test)
    shared = _check_overlap(store.rows[fitted_on], store.rows[splits == test_name], allow_overlap,
                            f"The train{'/val' if has_val and has_test else ''} and {test_name} splits of {store.root}")
    train = _rows(store, tap, splits == "train", "train")
    val = _rows(store, tap, splits == "val", "val") if has_val and has_test else None
    return ProbeData(train, val, _rows(store, tap, splits == test_name, test_name), shared=shared)


def _holdout(store: FeatureStore, tap: str, holdout: Holdout, allow_overlap: bool) -> ProbeData:
    """Train on all but a seeded stratified share of a labelled store without a split column, test on that share."""
    labels = store.rows["label"].to_numpy()
    unlabelled = sum(label is None for label in labels)
    if len(labels) == 0 or unlabelled:
        what = "no rows" if len(labels) == 0 else "no labels" if unlabelled == len(labels) else "rows without labels"
        raise InputError(f"{store.root} has {what}: probes need an ImageFolder layout (ROOT/CLASS/* or "
                         "ROOT/train|val|test/CLASS/*) or a list file with a label column.")
    kept, held = stratified_holdout(labels.astype(str), holdout.fraction, holdout.seed,
                                    what=f"test split from {store.root} (it has no split column)", error=InputError)
    train_mask, test_mask = np.zeros(len(labels), dtype=bool), np.zeros(len(labels), dtype=bool)
    train_mask[kept], test_mask[held] = True, True
    shared = _check_overlap(store.rows[train_mask], store.rows[test_mask], allow_overlap,
                            f"The train rows and the held-out test rows of {store.root}")
    return ProbeData(_rows(store, tap, train_mask, "train"), None, _rows(store, tap, test_mask, "test"),
                     holdout=holdout, shared=shared)


def _check_same_vectors(store: FeatureStore, test_store: FeatureStore, tap: str) -> None:
    changes = store.settings.for_tap(tap).diff(test_store.settings.for_tap(tap), vectors_only=True)
    if changes:
        more = f"; and {len(changes) - 4} more" if len(changes) > 4 else ""
        raise InputError(f"The test store {test_store.root} was extracted differently from the train store "
                         f"{store.root} ({'; '.join(changes[:4])}{more}): a probe fitted on one set of vectors "
                         "cannot be tested on another. Extract both with the same settings (featkit info shows them).")


def _check_overlap(fitted: pd.DataFrame, test: pd.DataFrame, allow: bool, where: str) -> tuple[tuple[str, str], ...]:
    """The files ``test`` shares with ``fitted``; raise (or, with ``allow``, log a warning) when there are any."""
    shared = shared_files(fitted, test)
    if not shared:
        return ()
    first, copy = shared[0]
    n = len(shared)
    what = (f"{where} share {n} image{'s' if n > 1 else ''} (e.g. {copy}"
            + (")" if first == copy else f" has the same content as {first})"))
    if not allow:
        raise InputError(f"{what}: the test score would count images the probe was fitted on. Remove the copies "
                         "(featkit dedup lists them) or pass --allow-overlap (allow_overlap=True) to probe anyway.")
    log.warning("%s; probing anyway (overlap allowed).", what)
    return shared


def shared_files(fitted: pd.DataFrame, test: pd.DataFrame) -> tuple[tuple[str, str], ...]:
    """(fitted path, test path) of each test row that is a fitted row's file: the same path, or the same sha256.

    Only files of a size (the ``bytes`` column) that occurs on both sides are read, and of those only the first
    4 KiB, unless that too matches on both sides (sizes of fixed-size formats and large JPEG sets collide often;
    their first kilobytes rarely do); files that no longer exist are compared by path only.
    """
    fitted_paths = set(fitted["path"])
    pairs = [(path, path) for path in test["path"] if path in fitted_paths]
    same_path = {test_path for _, test_path in pairs}
    fitted_files = fitted.loc[fitted["bytes"].isin(set(test["bytes"])), ["path", "bytes"]]
    test_files = test.loc[test["bytes"].isin(set(fitted["bytes"])) & ~test["path"].isin(same_path), ["path", "bytes"]]
    if not len(fitted_files) or not len(test_files):
        return tuple(pairs)
    by_head: dict[tuple[int, str], list[str]] = {}
    for path, size in fitted_files.itertuples(index=False):
        head = _digest(path, HEAD_BYTES)
        if head is not None:
            by_head.setdefault((size, head), []).append(path)
    whole: dict[str, str] = {}  # full sha256 → a fitted file, for the groups a test file falls into
    read: set[tuple[int, str]] = set()  # groups whose fitted files are in ``whole`` (each read whole once)
    for path, size in test_files.itertuples(index=False):
        key = (size, _digest(path, HEAD_BYTES) or "")
        if key not in by_head:
            continue
        if key not in read:
            read.add(key)
            for fitted_path in by_head[key]:
                whole.setdefault(_digest(fitted_path) or "", fitted_path)
        digest = _digest(path)
        if digest in whole:
            pairs.append((whole[digest], path))
    return tuple(pairs)


HEAD_BYTES = 4096


def _digest(path: str, limit: int | None = None) -> str | None:
    """sha256 of a file's first ``limit`` bytes (all of it: None); None if it cannot be read (or is not a file)."""
    if not_a_file(path) is not None:  # a FIFO would block open() forever
        return None
    try:
        if limit is None:
            return sha256_file(path)
        with open(path, "rb") as f:
            return hashlib.sha256(f.read(limit)).hexdigest()
    except OSError:
        return None
