"""A store's shards are checked against its manifest or log: a damaged shard is refused, never read misaligned.

Format v1 and v2 alike; v2 checks a shard when it is first read (a billion-row store is not read at open).
RELIABILITY.md row 26 (size/row mismatch refused before it is read) and row 27 (a FIFO or directory in place of a store
file is refused at once). Each damage below read misaligned rows, raised a raw numpy/pyarrow error or blocked
before opening checked the files.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import as_v1_store, in_thread, read_all, shard_dir, write_feature_store

from featkit.cli.app import main as featkit_main
from featkit.errors import FeatkitError, StoreError
from featkit.store import format as fmt
from featkit.store.reader import open_features

NPY = fmt.feature_path("feat", 0)
META = fmt.metadata_path(0)
FAILS = fmt.failures_path(0)


@pytest.fixture(scope="module", params=["v2", "v1"])
def pristine(request, tmp_path_factory) -> Path:
    v2 = write_feature_store(tmp_path_factory.mktemp("pristine") / "store")
    return v2 if request.param == "v2" else as_v1_store(v2, tmp_path_factory.mktemp("v1") / "store")


@pytest.fixture
def store(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "store"))


def at(store: Path, rel: str) -> Path:
    return shard_dir(store) / rel


def npy_of(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def rows_of(path: Path, n: int) -> None:
    frame = pd.read_parquet(path)
    path.write_bytes(fmt.parquet_bytes(pd.concat([frame] * 2).head(n)))


DAMAGE = {  # name → (damage, the file it damages, what the refusal says)
    "truncated npy": (lambda p: truncate(p, p.stat().st_size - 4), NPY, "bytes where its header and the manifest"),
    "npy cut inside its header": (lambda p: truncate(p, 40), NPY, "is not a .npy file"),
    "7-row npy beside 4 metadata rows": (lambda p: p.write_bytes(npy_of(np.ones((7, 8), np.float32))), NPY,
                                         "holds 7 × 8 values where the manifest says 4 × 8"),
    "npy of other dims": (lambda p: p.write_bytes(npy_of(np.ones((4, 9), np.float32))), NPY, "4 × 9"),
    "float64 npy": (lambda p: p.write_bytes(npy_of(np.ones((4, 8), np.float64))), NPY,
                    "holds float64 values where the manifest says float32"),
    "object npy": (lambda p: p.write_bytes(npy_of(np.array([{"x": 1}] * 4, dtype=object))), NPY,
                   "holds object values where the manifest says float32"),
    "not an npy": (lambda p: p.write_bytes(b"just text, no magic string" * 20), NPY, "is not a .npy file"),
    "missing npy": (lambda p: p.unlink(), NPY, "is missing"),
    "FIFO as npy": (fifo, NPY, "is a named pipe (FIFO), not a .npy file"),
    "directory as npy": (directory, NPY, "is a directory, not a .npy file"),
    "metadata of 3 rows": (lambda p: rows_of(p, 3), META, "holds 3 rows where the manifest says 4"),
    "metadata of 7 rows": (lambda p: rows_of(p, 7), META, "holds 7 rows where the manifest says 4"),
    "metadata of another shard": (lambda p: p.write_bytes((p.parents[1] / fmt.metadata_path(1)).read_bytes()), META,
                                  "does not number its rows 0 to 3"),
    "truncated metadata": (lambda p: truncate(p, p.stat().st_size // 2), META, "is not a readable parquet table"),
    "missing metadata": (lambda p: p.unlink(), META, "is missing"),
    "FIFO as metadata": (fifo, META, "is a named pipe (FIFO), not a parquet table"),
    "directory as metadata": (directory, META, "is a directory, not a parquet table"),
}


@pytest.mark.parametrize("name", DAMAGE)
def test_a_damaged_shard_is_refused_before_it_is_read_naming_the_file(store, name):
    damage, rel, says = DAMAGE[name]
    damage(at(store, rel))
    with pytest.raises(StoreError) as refused:
        in_thread(lambda: read_all(store), timeout=10)  # a FIFO must not block
    message = str(refused.value)
    assert f"{at(store, rel)} " in message and says in message, message
    assert "\n" not in message and f"featkit verify {store}" in message and "--overwrite" in message


@pytest.mark.parametrize("damage, says", [
    (lambda p: p.unlink(), "is missing"),
    (fifo, "is a named pipe (FIFO), not a parquet table"),
    (lambda p: p.write_bytes(fmt.parquet_bytes(pd.DataFrame({"path": ["a", "b"]}))),
     "holds 2 rows where the manifest says 0"),
], ids=["missing", "FIFO", "2 rows"])
def test_a_damaged_failures_table_is_refused_when_read(store, damage, says):
    opened = open_features(store)
    damage(at(store, FAILS))
    with pytest.raises(StoreError) as refused:
        in_thread(lambda: opened.failures, timeout=10)
    assert f"{at(store, FAILS)} {says}" in str(refused.value)


def test_a_shard_replaced_after_opening_is_refused_when_its_features_are_read(store):
    opened = open_features(store)
    (at(store, NPY)).write_bytes(npy_of(np.ones((7, 8), np.float32)))
    with pytest.raises(StoreError, match="holds 7 × 8 values"):
        np.asarray(opened["feat"])


def test_a_fifo_manifest_is_refused_at_once(store):
    fifo(store / fmt.MANIFEST)
    with pytest.raises(StoreError, match="is a named pipe"):
        in_thread(lambda: open_features(store), timeout=10)


def test_a_bit_flip_in_the_vectors_still_opens(store):
    """Opening checks sizes and headers, not hashes: a flipped value reads (``featkit verify`` finds it)."""
    raw = bytearray((at(store, NPY)).read_bytes())
    raw[-5] ^= 0x01
    (at(store, NPY)).write_bytes(bytes(raw))
    assert read_all(store)["feat"].shape == (8, 8)


def test_every_truncation_of_a_shard_is_refused(store):
    """Row 26's attack, exhaustively for the vectors: every shorter length, and a sample for the table."""
    npy_bytes, meta_bytes = (at(store, NPY)).read_bytes(), (at(store, META)).read_bytes()
    lengths = {"npy": range(len(npy_bytes)), "parquet": range(0, len(meta_bytes), 29)}
    outcomes: dict[str, int] = {}
    for kind, keeps in lengths.items():
        path, data = (at(store, NPY), npy_bytes) if kind == "npy" else (at(store, META), meta_bytes)
        for keep in keeps:
            path.write_bytes(data[:keep])
            try:
                read_all(store)
                outcome = "opened"
            except StoreError as exc:
                assert str(path) in str(exc) and "\n" not in str(exc)
                outcome = "refused"
            outcomes[f"{kind} {outcome}"] = outcomes.get(f"{kind} {outcome}", 0) + 1
        path.write_bytes(data)
    assert outcomes == {"npy refused": len(npy_bytes), "parquet refused": len(lengths["parquet"])}, outcomes


def test_every_bit_flip_in_a_shard_header_or_table_is_refused_or_opens_aligned(store):
    """A flipped bit in a ``.npy`` header or a metadata table never escapes as a raw numpy or pyarrow error."""
    outcomes: dict[str, int] = {}
    table_offsets = np.random.default_rng(0).choice((at(store, META)).stat().st_size, 120, replace=False)
    for rel, offsets in ((NPY, range(128)), (META, sorted(table_offsets))):
        path = at(store, rel)
        data = path.read_bytes()
        for offset in offsets:
            raw = bytearray(data)
            raw[offset] ^= 1 << (offset % 8)
            path.write_bytes(bytes(raw))
            try:
                opened = read_all(store)
                assert len(opened) == len(opened["feat"]) == len(opened.rows) == 8
                outcome = "opened"
            except FeatkitError as exc:
                assert "\n" not in str(exc)
                outcome = "refused"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        path.write_bytes(data)
    assert outcomes.get("refused", 0) > 0 and sum(outcomes.values()) == 128 + 120, outcomes


def test_the_cli_refuses_a_damaged_store_in_one_line(store, monkeypatch, capsys):
    (at(store, NPY)).write_bytes(npy_of(np.array([{"x": 1}] * 4, dtype=object)))
    monkeypatch.setattr(sys, "argv", ["featkit", "dedup", str(store)])
    monkeypatch.setenv("FEATKIT_DEBUG", "0")
    with pytest.raises(SystemExit) as exited:
        featkit_main()
    err = capsys.readouterr().err
    assert exited.value.code == 1 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: ") and "holds object values" in err


@pytest.mark.parametrize("damage", ["truncated", "fewer rows", "fifo"])
def test_resuming_a_damaged_store_is_refused_in_one_line(store, damage):
    """A rerun of ``featkit extract`` reads what each shard holds before planning: a damaged table is refused."""
    if damage == "truncated":
        truncate(at(store, META), 40)
    elif damage == "fewer rows":
        (at(store, META)).write_bytes(fmt.parquet_bytes(pd.read_parquet(at(store, META)).head(3)))
    else:
        fifo(at(store, FAILS))
    from featkit.store.writer import open_writer

    settings = fmt.read_manifest(store)[1]
    with open_writer(store, settings) as writer, pytest.raises(StoreError, match="is damaged"):
        in_thread(writer.committed, timeout=10)
