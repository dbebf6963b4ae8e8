"""featkit.embed: images → vectors in memory, the same vectors a store holds, from any kind of image source, and a
search by image that writes nothing anywhere."""

from __future__ import annotations

import io
import os
import sys
import tempfile

import numpy as np
import pytest
from helpers import write_images
from PIL import Image

import featkit
from featkit.index import Index

FAST = {"model": "squeezenet1_1", "weights": "random", "device": "cpu", "workers": 0}


def test_embed_returns_bitwise_the_vectors_extract_stores(tiny_folder, tmp_path):
    featkit.extract(tiny_folder, tmp_path / "s", layers=["fire9", "logits"], pool="avg", **FAST)
    store = featkit.open_features(tmp_path / "s")
    emb = featkit.embed(tiny_folder, layers=["fire9", "logits"], pool="avg", **FAST)
    assert list(emb) == ["fire9", "logits"] and emb.names == store.rows["path"].tolist()
    for tap in ("fire9", "logits"):
        np.testing.assert_array_equal(emb[tap], np.asarray(store[tap]))
    assert emb.settings == store.settings  # what a store made the same way records
    assert emb.failures.empty and emb.positions.tolist() == list(range(8))


def test_paths_bytes_pil_images_and_arrays_give_the_same_vectors(tiny_folder):
    path = sorted((tiny_folder / "c1").iterdir())[2]  # a PNG: lossless, so every route sees the same pixels
    data = path.read_bytes()
    rgb = np.asarray(Image.open(path).convert("RGB"))
    sources = [str(path), data, Image.open(path), rgb, Image.open(io.BytesIO(data)).convert("RGBA")]
    emb = featkit.embed(sources, layers="fire9", pool="avg", **FAST)
    assert emb.names == [str(path), "<image 1>", "<image 2>", "<image 3>", "<image 4>"]
    for row in emb["fire9"][1:]:
        np.testing.assert_array_equal(row, emb["fire9"][0])


def test_bad_sources_are_recorded_and_rows_stay_aligned(tiny_folder, tmp_path):
    good = sorted((tiny_folder / "c0").iterdir())[:2]
    (tmp_path / "bad.jpg").write_text("not an image")
    cut = good[0].read_bytes()[:60]  # a PNG's bytes, cut off
    sources = [str(good[0]), str(tmp_path / "bad.jpg"), cut, np.zeros((4, 4), np.float32), str(good[1])]
    emb = featkit.embed(sources, layers="fire9", pool="avg", **FAST)
    assert emb.positions.tolist() == [0, 4] and emb["fire9"].shape == (2, 512)
    assert emb.failures["position"].tolist() == [1, 2, 3]
    assert emb.failures["reason"].tolist() == ["not_an_image", "truncated", "not_an_image"]
    assert emb.failures["path"].tolist() == [str(tmp_path / "bad.jpg"), "<image 2>", "<image 3>"]
    alone = featkit.embed(str(good[1]), layers="fire9", pool="avg", **FAST)["fire9"][0]
    np.testing.assert_allclose(emb["fire9"][1], alone, rtol=1e-5, atol=1e-6)  # a batch of 2 vs 1: rounding only


def test_nothing_that_decodes_still_gives_arrays_of_the_right_width(tmp_path):
    (tmp_path / "bad.jpg").write_text("not an image")
    emb = featkit.embed([str(tmp_path / "bad.jpg")], layers=["fire9", "logits"], pool="avg", **FAST)
    assert emb["fire9"].shape == (0, 512) and emb["logits"].shape == (0, 1000) and len(emb.failures) == 1


def test_embed_agrees_with_the_store_on_real_photos_at_any_batch_size(shared_weights, hymenoptera, tmp_path):
    val = sorted((hymenoptera / "val" / "bees").iterdir())[:40]
    featkit.extract(val, tmp_path / "s", model="squeezenet1_1", weights=str(shared_weights), layers=["fire9"],
                    pool="avg", device="cpu")
    stored = np.asarray(featkit.open_features(tmp_path / "s")["fire9"])
    one_by_one = featkit.embed(val, model="squeezenet1_1", weights=str(shared_weights), layers="fire9", pool="avg",
                               device="cpu", batch_size=1)["fire9"]
    cosine = np.sum(stored * one_by_one, axis=1) / np.linalg.norm(stored, axis=1) / np.linalg.norm(one_by_one, axis=1)
    assert cosine.min() >= 0.99999, cosine.min()


class _WriteWatch:
    """Records every file opened for writing while ``active`` (a Python audit hook: it sees open() and os.open)."""

    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def __init__(self):
        self.active = False
        self.writes: list[str] = []
        sys.addaudithook(self)  # hooks cannot be removed; an inactive one costs a comparison

    def __call__(self, event: str, args) -> None:
        if not self.active or event != "open":
            return
        path, mode, flags = args
        if ((isinstance(mode, str) and any(c in mode for c in "wax+"))
                or (isinstance(flags, int) and flags & self.WRITE_FLAGS)):
            self.writes.append(str(path))


def test_a_search_by_image_writes_no_file_anywhere(tiny_folder, tmp_path):
    featkit.extract(tiny_folder, tmp_path / "s", layers=["fire9", "logits"], pool="avg", **FAST)
    index = Index.build(tmp_path / "s", tap="fire9")
    index.save(tmp_path / "i.index")
    index = Index.open(tmp_path / "i.index")
    query = sorted((tiny_folder / "c1").iterdir())[0]
    index.search(str(query), k=3, device="cpu")  # loads the model once; the search below reuses it
    watch = _WriteWatch()
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    tree_before = sorted(p.name for p in tmp_path.rglob("*"))
    watch.active = True
    try:
        hits = Index.open(tmp_path / "i.index").search([str(query)], k=3, device="cpu")
    finally:
        watch.active = False
    assert watch.writes == []
    assert (set(os.listdir(tempfile.gettempdir())) == tmp_before
            and sorted(p.name for p in tmp_path.rglob("*")) == tree_before)
    assert hits["path"].iloc[0] == str(query) and hits["score"].iloc[0] == pytest.approx(1.0, abs=1e-5)


def test_embed_breaks_batches_where_the_store_breaks_shards_and_takes_any_iterable(tmp_path):
    folder = write_images(tmp_path / "imgs", classes=2, per_class=8, size=(96, 80))
    opts = {**FAST, "layers": "fire9", "pool": "avg", "batch_size": 4, "shard_rows": 5}  # 5 is no multiple of 4
    featkit.extract(folder, tmp_path / "s", **opts)
    emb = featkit.embed((p for p in sorted(folder.rglob("*.png"))), **opts)  # a generator of paths
    stored = featkit.open_features(tmp_path / "s")
    assert emb.names == stored.rows["path"].tolist()
    np.testing.assert_array_equal(emb["fire9"], np.asarray(stored["fire9"]))


def test_options_that_reach_the_manifest_are_checked_at_the_edge(tiny_folder, tmp_path):
    for bad in ({"l2": 1}, {"draft": "yes"}, {"seed": 2.5}):
        with pytest.raises(featkit.FeatkitError, match=f"The '{next(iter(bad))}' parameter of extract must be"):
            featkit.extract(tiny_folder, tmp_path / "s", **{**FAST, **bad})
    assert not (tmp_path / "s").exists()
