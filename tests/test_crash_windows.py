"""Crash windows of the store writer (RELIABILITY row 29): `extract --overwrite` killed at each of its steps
never leaves a manifest naming deleted shards, and any rerun finishes the job; the writer's lock cannot be
deleted out from under it, and a killed writer's lock never blocks a rerun."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from helpers import store_bytes, write_images
from typer.testing import CliRunner

import featkit
from featkit.cli.app import app
from featkit.errors import FeatkitError, StoreError
from featkit.store import format as fmt
from featkit.store import writer as writer_module
from featkit.store.verify import store_shards
from featkit.store.writer import SegmentWriter, StoreWriter

FAST = dict(model="squeezenet1_1", weights="random", workers=0, batch_size=4, device="cpu", layers=["logits"],
            shard_rows=3)
OLD = dict(FAST, pool="avg")  # the store being replaced
NEW = dict(FAST, pool="max", overwrite=True)  # the settings replacing it


class Killed(BaseException):
    """Stands for kill -9: nothing in featkit catches it; the kernel would drop the lock as close() does."""


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("crash") / "imgs")  # 8 images: 3 shards of 3, 3, 2 rows


@pytest.fixture(scope="module")
def old_store(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("old") / "store"
    featkit.extract(folder, out, **OLD)
    return out


@pytest.fixture(scope="module")
def replaced(folder, tmp_path_factory) -> Path:
    """What `extract --overwrite` with the new settings makes, uninterrupted."""
    out = tmp_path_factory.mktemp("new") / "store"
    featkit.extract(folder, out, **NEW)
    return out


def killed_on_call(n: int, original):
    """``original``, except that its ``n``-th call raises :class:`Killed` before doing anything."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise Killed(f"{original.__name__} #{n}")
        return original(*args, **kwargs)

    return wrapper


# Each step `extract --overwrite` takes, named by what is done when the kill comes.
POINTS = {
    "old_manifest_retired": (StoreWriter, "rmtree", 1),  # manifest and log gone, the old segments all still there
    "old_segments_half_deleted": (StoreWriter, "rmtree", 4),  # v1's folders cleared, the segments next
    "old_store_gone": (StoreWriter, "_write_manifest", 1),
    "new_manifest_written": (StoreWriter, "begin_run", 1),
    "first_new_shard_committed": (SegmentWriter, "commit_shard", 2),
    "first_segment_sealed": (StoreWriter, "merge", 1),
}


def assert_no_manifest_names_a_missing_file(store: Path) -> None:
    found = fmt.read_manifest(store)
    if found is None:  # no store here: readers say so in one line
        with pytest.raises(StoreError, match="is not a featkit feature store"):
            featkit.open_features(store)
        return
    shards, bad = store_shards(store, found[0])
    missing = [ref.directory / name for ref, files in shards for name in files if not (ref.directory / name).is_file()]
    assert missing == [] and bad == []
    opened = featkit.open_features(store)
    assert all(len(np.asarray(opened[tap])) == len(opened.rows) for tap in opened.taps)


@pytest.mark.parametrize("point", list(POINTS))
def test_overwrite_killed_at_each_step_never_leaves_a_manifest_naming_deleted_shards(
        point, folder, old_store, replaced, tmp_path, monkeypatch):
    store = tmp_path / "store"
    shutil.copytree(old_store, store)
    cls, name, n = POINTS[point]
    with monkeypatch.context() as patch:
        if name == "rmtree":  # the writer's own, not every rmtree
            patch.setattr(writer_module, "shutil", SimpleNamespace(rmtree=killed_on_call(n, shutil.rmtree)))
        else:
            patch.setattr(cls, name, killed_on_call(n, getattr(cls, name)))
        with pytest.raises(Killed):
            featkit.extract(folder, store, **NEW)
    assert_no_manifest_names_a_missing_file(store)
    shown = CliRunner().invoke(app, ["info", str(store)])
    assert shown.exit_code == 0 or isinstance(shown.exception, FeatkitError), shown.output
    again = tmp_path / "again"
    shutil.copytree(store, again)
    # the same command again, or without --overwrite: either ends with the store an uninterrupted run makes
    featkit.extract(folder, again, **NEW)
    featkit.extract(folder, store, **{k: v for k, v in NEW.items() if k != "overwrite"})
    for out in (store, again):
        assert store_bytes(out) == store_bytes(replaced)
        assert len(featkit.open_features(out)) == 8


HOLD = textwrap.dedent("""
    import sys, time
    import featkit
    from featkit.store.writer import StoreWriter
    root = sys.argv[1]
    writer = StoreWriter(root, featkit.open_features(root).settings)
    print("held", flush=True)
    time.sleep(120)
""")


def test_deleting_the_lock_lets_no_second_writer_in_and_a_killed_writer_blocks_no_rerun(folder, tmp_path):
    store = tmp_path / "store"
    featkit.extract(folder, store, **OLD)
    settings = featkit.open_features(store).settings
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(store)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        for hidden in store.glob(".*"):  # whatever lock file there may be: rm -f STORE/.lock mid-run
            hidden.unlink()
        with pytest.raises(StoreError, match="Another featkit process is writing"):
            StoreWriter(store, settings)
        with pytest.raises(StoreError, match="Another featkit process is writing"):
            featkit.extract(folder, store, **OLD)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert holder.returncode == -signal.SIGKILL
    again = featkit.extract(folder, store, **OLD)  # the kernel dropped the dead writer's lock
    assert (again.computed, again.unchanged) == (0, 8)


def test_a_writer_whose_store_was_deleted_and_made_again_stops_before_writing_into_the_new_one(folder, tmp_path):
    store = tmp_path / "store"
    featkit.extract(folder, store, **OLD)
    settings = featkit.open_features(store).settings
    rows = pd.DataFrame({"path": ["/x.png"], "label": [None], "split": [None], "width": [1], "height": [1],
                         "bytes": [1], "mtime_ns": [1]})
    no_failures = pd.DataFrame(columns=fmt.FAILURE_COLUMNS)
    with StoreWriter(store, settings) as first:
        shutil.rmtree(store)  # rm -r STORE while a run writes to it, and another run starts there
        featkit.extract(folder, store, **OLD)
        made = store_bytes(store)
        with pytest.raises(StoreError, match="was deleted or replaced while this run wrote to it"):
            first.commit_shard({"logits": np.zeros((1, 1000), np.float32)}, rows, no_failures)
    assert store_bytes(store) == made
    assert featkit.open_features(store).rows["path"].str.startswith(str(folder)).all()


def test_where_a_folder_cannot_be_locked_a_lock_file_is_and_deleting_it_stops_the_writer(folder, tmp_path,
                                                                                         monkeypatch):
    """NFS emulates flock with byte-range locks, which need a file open for writing: a folder fd gets EBADF there."""
    import errno
    import fcntl
    import stat as stat_mode

    real_flock = fcntl.flock

    def nfs_flock(fd, operation):
        if stat_mode.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EBADF, "Bad file descriptor")
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", nfs_flock)
    store = tmp_path / "store"
    featkit.extract(folder, store, **OLD)
    settings = featkit.open_features(store).settings
    with StoreWriter(store, settings) as writer:
        assert (store / ".lock").is_file()
        with pytest.raises(StoreError, match="Another featkit process is writing"):
            StoreWriter(store, settings)
        (store / ".lock").unlink()  # rm -f STORE/.lock mid-run: this writer stops before its next write
        with pytest.raises(StoreError, match="deleted or replaced"):
            writer.begin_run({})
    monkeypatch.setattr(fcntl, "flock", lambda fd, operation: (_ for _ in ()).throw(OSError(errno.ENOLCK, "No locks")))
    with pytest.raises(StoreError, match=r"Cannot lock .* \(No locks\)"):
        StoreWriter(store, settings)
