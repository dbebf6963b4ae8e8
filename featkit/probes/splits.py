"""Train / val / test features and labels out of feature stores, decided by their ``split`` column."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featkit.errors import InputError
from featkit.store.reader import FeatureStore


@dataclass(frozen=True)
class Split:
    name: str
    X: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class ProbeData:
    """What a probe trains on, validates on (None: carve from train) and is tested on."""

    train: Split
    val: Split | None
    test: Split


def _rows(store: FeatureStore, tap: str, mask: np.ndarray, name: str) -> Split:
    features = store[tap]
    labels = store.rows["label"].to_numpy()[mask]
    if len(labels) and any(label is None for label in labels):
        raise InputError(f"The {name} rows of {store.root} have no labels: probes need an ImageFolder layout "
                         "(ROOT/CLASS/*) or a list file with a label column.")
    return Split(name, np.asarray(features[np.flatnonzero(mask)], dtype=np.float32), labels.astype(str))


def probe_data(store: FeatureStore, tap: str, test_store: FeatureStore | None = None) -> ProbeData:
    """Split ``store`` by its ``split`` column (train/val/test), or train on all of it and test on ``test_store``.

    A store with train and val but no test split (e.g. the ants/bees tutorial set) is tested on val, and the
    validation split for choosing C is then carved from train.
    """
    splits = store.rows["split"].fillna("").to_numpy()
    if test_store is not None:
        every = np.ones(len(store), dtype=bool)
        test_all = np.ones(len(test_store), dtype=bool)
        return ProbeData(_rows(store, tap, every, "train"), None, _rows(test_store, tap, test_all, "test"))
    if not (splits == "train").any():
        raise InputError(f"{store.root} has no train split: extract an ImageFolder with train/ [val/] test/ "
                         "folders, or pass --test TEST_STORE.")
    train = _rows(store, tap, splits == "train", "train")
    has_val, has_test = (splits == "val").any(), (splits == "test").any()
    if has_test:
        val = _rows(store, tap, splits == "val", "val") if has_val else None
        return ProbeData(train, val, _rows(store, tap, splits == "test", "test"))
    if has_val:
        return ProbeData(train, None, _rows(store, tap, splits == "val", "val"))
    raise InputError(f"{store.root} has a train split but neither val nor test: pass --test TEST_STORE.")
