"""A folder of bad files never stops a run: each is skipped and recorded, and good rows stay exact (rows 6-11)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from corpus import write_bad_corpus, write_odd_but_good_corpus
from helpers import store_bytes, write_images

import featkit
from featkit.errors import InputError

FAST = dict(model="squeezenet1_1", weights="random", layers=["fire9"], pool="avg", workers=2, batch_size=4,
            device="cpu", shard_rows=5)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    good = write_images(root / "good_only", classes=1, per_class=9, size=(40, 30))
    mixed = root / "mixed"
    shutil.copytree(good / "c0", mixed)
    expected = write_bad_corpus(mixed)
    return good / "c0", mixed, expected


def test_bad_corpus_is_skipped_and_recorded_and_good_features_are_unchanged(folders, tmp_path):
    good, mixed, expected = folders
    assert len(expected) >= 40
    result = featkit.extract(mixed, tmp_path / "mixed", **FAST)
    featkit.extract(good, tmp_path / "good", **FAST)
    store = featkit.open_features(tmp_path / "mixed")
    assert len(store) == 9 and result.computed == 9
    # folders named like images (and links to folders) are folders to walk, not files to decode
    files = {n: r for n, r in expected.items() if not os.path.isdir(mixed / n)}
    recorded = {Path(p).name: r for p, r in zip(store.failures["path"], store.failures["reason"], strict=True)}
    assert recorded == files
    assert store.failures["message"].str.len().min() > 0
    # the same good images, whatever bad files sat between them: bitwise equal features (and row metadata)
    np.testing.assert_array_equal(np.asarray(store["fire9"]),
                                  np.asarray(featkit.open_features(tmp_path / "good")["fire9"]))
    features = {k: v for k, v in store_bytes(tmp_path / "mixed").items() if k.startswith("features/")}
    assert features == {k: v for k, v in store_bytes(tmp_path / "good").items() if k.startswith("features/")}


def test_a_list_file_of_every_bad_entry_records_each_with_its_reason(folders, tmp_path):
    _, mixed, expected = folders
    names = sorted(expected)
    (tmp_path / "list.txt").write_text("".join(f"{mixed / n}\n" for n in names))
    with pytest.raises(InputError, match=f"^Nothing could be read: all {len(names)} files were skipped"):
        featkit.extract(tmp_path / "list.txt", tmp_path / "s", **FAST)  # a non-zero exit, after recording them
    store = featkit.open_features(tmp_path / "s")
    assert len(store) == 0 and store["fire9"][:10].shape == (0, store["fire9"].shape[1])  # a slice of no rows
    recorded = dict(zip(store.failures["path"].map(lambda p: Path(p).name), store.failures["reason"], strict=True))
    assert recorded == expected


def test_odd_but_valid_images_all_become_rows(tmp_path):
    described = write_odd_but_good_corpus(tmp_path / "odd")
    result = featkit.extract(tmp_path / "odd", tmp_path / "s", **FAST)
    store = featkit.open_features(tmp_path / "s")
    names = set(store.rows["path"].map(lambda p: Path(p).name))
    undecodable_names = {n for n in described if isinstance(n, bytes) or not n.isprintable()}
    # every image with a UTF-8 name is a row; a non-UTF-8 name can't go into Parquet and is recorded instead
    assert names == {n for n in described if isinstance(n, str)} - undecodable_names
    assert set(store.failures["reason"]) <= {"bad_filename"}
    assert np.isfinite(np.asarray(store["fire9"])).all()
    assert result.failed == len(store.failures)
