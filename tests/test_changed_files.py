"""A rerun notices an edit that kept the file's size and restored its mtime (RELIABILITY row 30): each row
carries a fingerprint of the file's content; stores written before it was recorded still resume."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import write_images

import featkit
from featkit.extraction import fingerprint as fingerprint_module
from featkit.extraction.fingerprint import SPAN, fingerprint
from featkit.store import format as fmt

FAST = dict(model="squeezenet1_1", weights="random", workers=0, batch_size=4, device="cpu", layers=["logits"])
OLD_META = ["row", "path", "label", "split", "width", "height", "bytes", "mtime_ns"]
OLD_FAILURES = ["path", "reason", "message", "bytes", "mtime_ns"]


@pytest.fixture
def bmps(tmp_path) -> Path:
    """8 BMPs of one size: uncompressed, so every one of them is exactly as long as the others."""
    root = write_images(tmp_path / "imgs", fmt="bmp")
    assert len({p.stat().st_size for p in root.rglob("*.bmp")}) == 1
    return root


def sneak(path: Path, data: bytes) -> None:
    """Replace the content of ``path`` by ``data`` of the same length, and put its mtime back."""
    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def live(store, name: str) -> np.ndarray:
    rows = store.rows
    return np.asarray(store["logits"])[rows.index[rows["path"].str.endswith(name)][0]]


def test_a_same_size_edit_with_its_mtime_restored_is_computed_again(bmps, tmp_path):
    featkit.extract(bmps, tmp_path / "s", **FAST)
    before = featkit.open_features(tmp_path / "s")
    sneak(bmps / "c0" / "002.bmp", (bmps / "c1" / "003.bmp").read_bytes())
    result = featkit.extract(bmps, tmp_path / "s", **FAST)
    assert (result.computed, result.changed, result.unchanged, result.removed) == (1, 1, 7, 0)
    store = featkit.open_features(tmp_path / "s")
    assert len(store.rows) == 8 and store.stale_rows == [2]  # the old row is retired
    # the new content's features (computed in a batch of one: equal within rounding, as row 20 says)
    np.testing.assert_allclose(live(store, "c0/002.bmp"), live(store, "c1/003.bmp"), rtol=1e-5, atol=1e-6)
    for name in ("c0/000.bmp", "c0/001.bmp", "c1/000.bmp"):  # the others: the same rows, untouched
        np.testing.assert_array_equal(live(store, name), live(before, name))
    assert store.rows["fingerprint"].str.fullmatch(r"[0-9a-f]{32}").all()
    again = featkit.extract(bmps, tmp_path / "s", **FAST)
    assert (again.computed, again.changed, again.unchanged) == (0, 0, 8)


def test_a_recorded_failure_mended_in_place_with_its_mtime_restored_is_tried_again(bmps, tmp_path):
    broken = bmps / "c1" / "001.bmp"
    good = broken.read_bytes()
    sneak(broken, bytes(len(good)))  # zeros: not an image
    first = featkit.extract(bmps, tmp_path / "s", **FAST)
    assert (first.computed, first.failed) == (7, 1)
    sneak(broken, good)
    result = featkit.extract(bmps, tmp_path / "s", **FAST)
    assert (result.computed, result.changed, result.failed) == (1, 1, 0)
    store = featkit.open_features(tmp_path / "s")
    assert len(store.rows) == 8 and len(store.failures) == 0


def test_a_store_written_before_fingerprints_resumes_without_reading_its_files(bmps, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:  # the columns featkit wrote before fingerprints
        patch.setattr(fmt, "META_COLUMNS", OLD_META)
        patch.setattr(fmt, "FAILURE_COLUMNS", OLD_FAILURES)
        featkit.extract(bmps, tmp_path / "s", **FAST)
    assert list(pd.read_parquet(next((tmp_path / "s").rglob("metadata/part-00000.parquet"))).columns) == OLD_META
    read: list[str] = []
    counting = lambda path: read.append(path) or fingerprint(path)  # noqa: E731
    monkeypatch.setattr(fingerprint_module, "fingerprint", counting)  # what fingerprints() reads each file with
    again = featkit.extract(bmps, tmp_path / "s", **FAST)
    assert (again.computed, again.unchanged) == (0, 8) and read == []  # nothing recomputed, no file read
    # a new file gets a fingerprint; an old row's same-size edit goes unseen (it has none): its size and mtime rule
    write_images(tmp_path / "more", classes=1, per_class=1, fmt="bmp", seed=9)
    os.replace(tmp_path / "more" / "c0" / "000.bmp", bmps / "c1" / "new.bmp")
    sneak(bmps / "c0" / "000.bmp", (bmps / "c0" / "001.bmp").read_bytes())
    added = featkit.extract(bmps, tmp_path / "s", **FAST)
    assert (added.computed, added.changed, added.unchanged) == (1, 0, 8)
    store = featkit.open_features(tmp_path / "s")  # shards with and without the column read as one table
    assert len(store.rows) == 9 and store.rows["fingerprint"].notna().tolist() == [False] * 8 + [True]
    sneak(bmps / "c1" / "new.bmp", (bmps / "c1" / "000.bmp").read_bytes())
    edited = featkit.extract(bmps, tmp_path / "s", **FAST)
    assert (edited.computed, edited.changed, edited.unchanged) == (1, 1, 8)
    # without featkit: plain pandas reads every shard
    assert len(pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "s").rglob("metadata/*.parquet")))) == 10


def test_the_fingerprint_reads_both_ends_and_never_waits_on_a_fifo(tmp_path):
    big = tmp_path / "big.bin"
    data = bytearray(np.random.default_rng(0).integers(0, 256, 3 * SPAN, dtype=np.uint8).tobytes())
    big.write_bytes(data)
    seen = {fingerprint(big)}
    for offset in (0, SPAN - 1, len(data) - SPAN, len(data) - 1):  # edits at both ends
        edited = bytearray(data)
        edited[offset] ^= 1
        big.write_bytes(edited)
        seen.add(fingerprint(big))
    assert len(seen) == 5
    big.write_bytes(data + b"\0")  # the size is part of it
    assert fingerprint(big) not in seen
    edited = bytearray(data)
    edited[len(data) // 2] ^= 1  # the middle of a big file is not read: the price of a cheap check
    big.write_bytes(edited)
    assert fingerprint(big) == fingerprint(tmp_path / "big.bin") and fingerprint(big) in seen
    fifo = tmp_path / "pipe.bmp"
    os.mkfifo(fifo)
    done = threading.Event()
    threading.Thread(target=lambda: (fingerprint(fifo), done.set()), daemon=True).start()
    assert done.wait(5), "fingerprint() blocked on a FIFO"
    assert fingerprint(fifo) == fingerprint(tmp_path / "missing.bmp") == fingerprint(tmp_path) == ""
