"""Store format v2: O(1) commits, a reader with a bounded number of open files, v1 stores opening, resuming and
upgrading, and segments that never mix settings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import as_v1_store, read_all, store_bytes, write_feature_store, write_images

import featkit
from featkit.errors import StoreError
from featkit.store import format as fmt
from featkit.store import segments as sg
from featkit.store.writer import SegmentWriter, StoreWriter, open_writer

FAST = {"model": "squeezenet1_1", "weights": "random", "device": "cpu", "workers": 0, "pool": "avg",
        "layers": ["fire9"], "batch_size": 2, "shard_rows": 2}
NO_FAILURES = pd.DataFrame(columns=["path", "reason", "message", "bytes", "mtime_ns"])


def one_row(i: int) -> tuple[dict, pd.DataFrame]:
    meta = pd.DataFrame({"path": [f"/img/{i:06d}.jpg"], "label": "a", "split": None, "width": 8, "height": 8,
                         "bytes": 100, "mtime_ns": 1})
    return {"feat": np.full((1, 4), i, np.float32)}, meta


class Written:
    """Bytes handed to the store's writes: whole files (atomic writes) and appends to the log."""

    def __init__(self, monkeypatch):
        self.bytes = 0
        real_write, real_append = fmt.write_bytes, sg.append_log

        def write_bytes(path, data):
            self.bytes += len(data)
            return real_write(path, data)

        def append_log(root, entry, committed_bytes=None):
            end = real_append(root, entry, committed_bytes)
            self.bytes += end - (committed_bytes if committed_bytes is not None else end)
            return end

        monkeypatch.setattr(fmt, "write_bytes", write_bytes)
        monkeypatch.setattr(sg, "append_log", append_log)
        monkeypatch.setattr(os, "fsync", lambda fd: None)  # bytes are counted, not durability: keep it quick

    def of_commit(self, writer, i: int) -> int:
        before = self.bytes
        writer.commit_shard(*one_row(i), NO_FAILURES)
        return self.bytes - before


def test_committing_a_shard_writes_the_same_bytes_at_10_and_at_10000_shards(tmp_path, monkeypatch):
    written = Written(monkeypatch)
    root = write_feature_store(tmp_path / "s", shards=(1,), dims=4)
    settings = fmt.read_manifest(root)[1]
    cost = {}
    with StoreWriter(root, settings) as writer:
        for i in range(1, 1001):
            n = writer.next_row
            if n in (10, 100, 1000):
                cost[n] = written.of_commit(writer, i)
            else:
                writer.commit_shard(*one_row(i), NO_FAILURES)
    # the next 9,000 segments as their log lines (what a commit reads of them), then the 10,000th commit
    with open(root / sg.LOG, "a") as log:
        for k in range(writer.segment_count, 10_000):
            log.write(json.dumps({"segment": sg.segment_name(k), "rows": [1], "failures": [0]}) + "\n")
    with StoreWriter(root, settings) as writer:
        assert writer.next_row == 10_000
        cost[10_000] = written.of_commit(writer, 10_000)
    assert max(cost.values()) <= min(cost.values()) * 1.01, cost  # flat: no list of every shard is rewritten

    # format v1 rewrites its manifest, which lists every shard: the same count grows with the store
    small, big = (as_v1_store(write_feature_store(tmp_path / f"v2-{n}", shards=(1,) * n, dims=4), tmp_path / f"v1-{n}")
                  for n in (10, 200))
    v1_cost = {}
    for root in (small, big):
        with open_writer(root, settings) as writer:
            assert writer.version == 1
            n = writer.next_row
            v1_cost[n] = written.of_commit(writer, n)
    assert v1_cost[200] > 5 * v1_cost[10], v1_cost


READ_UNDER_LIMIT = textwrap.dedent("""
    import json, os, resource, sys
    import numpy as np
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    import featkit
    store = featkit.open_features(sys.argv[1])
    whole = np.asarray(store["feat"])
    picked = store["feat"][np.random.default_rng(0).permutation(len(store))]
    rows = store.rows
    part = store.read_rows(300, 310, columns=["path"])
    chunked = sum(float(c.sum()) for c in store["feat"].chunks(rows=37))
    open_now = len(os.listdir("/proc/self/fd"))
    print(json.dumps([len(store), float(whole.sum()), float(picked.sum()), len(rows), list(part.columns),
                      part["row"].tolist(), chunked, open_now]))
""")


def test_a_store_of_many_shards_reads_whole_under_ulimit_64(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    root = write_feature_store(tmp_path / "s", shards=(2,) * 400, dims=4)  # 400 shards: 1,200 files
    out = subprocess.run([sys.executable, "-c", READ_UNDER_LIMIT, str(root)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    n, whole, picked, rows, columns, numbers, chunked, open_now = json.loads(out.stdout)
    expected = float(np.asarray(featkit.open_features(root)["feat"], dtype=np.float64).sum())
    assert n == rows == 800 and columns == ["path", "row"] and numbers == list(range(300, 310))
    assert whole == pytest.approx(expected) and picked == pytest.approx(expected) and chunked == pytest.approx(expected)
    assert open_now < 40  # the maps it keeps: a quarter of the limit, not one per shard


def test_reading_a_row_range_opens_only_its_shards(tmp_path, monkeypatch):
    root = write_feature_store(tmp_path / "s", shards=(4,) * 6, dims=4)
    store = featkit.open_features(root)
    opened: list[str] = []
    real = np.load
    monkeypatch.setattr(np, "load", lambda path, *a, **k: opened.append(Path(path).name) or real(path, *a, **k))
    block = store["feat"][9:14]  # rows of shards 2 and 3
    assert block.shape == (5, 4) and opened == ["part-00002.npy", "part-00003.npy"]
    assert store.read_rows(9, 14)["row"].tolist() == [9, 10, 11, 12, 13]


# ---- v1 stores: open, resume, add taps, upgrade ---------------------------------------------------------------

@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = write_images(tmp_path_factory.mktemp("v1") / "imgs", classes=2, per_class=4)
    (folder / "c1" / "bad.png").write_bytes(b"not an image")
    return folder


@pytest.fixture
def v1_store(photos, tmp_path) -> tuple[Path, Path]:
    """A v1 store of the photos (as earlier featkit wrote it, one row retired) and the v2 store it came from."""
    v2 = tmp_path / "v2"
    featkit.extract(photos, v2, **FAST)
    writer = open_writer(v2, featkit.open_features(v2).settings)
    writer.mark_stale([3])
    writer.close()
    return as_v1_store(v2, tmp_path / "v1"), v2


def test_a_v1_store_reads_as_the_v2_store_it_came_from(v1_store):
    v1, v2 = (featkit.open_features(p) for p in v1_store)
    assert (v1.version, v2.version) == (1, 2) and len(v1) == len(v2) == 7 and v1.stale_rows == [3]
    pd.testing.assert_frame_equal(v1.rows, v2.rows)
    np.testing.assert_array_equal(np.asarray(v1["fire9"]), np.asarray(v2["fire9"]))
    pd.testing.assert_frame_equal(v1.failures, v2.failures)


def test_a_v1_store_resumes_and_takes_new_files_and_taps_in_its_own_format(v1_store, photos, tmp_path):
    v1, _ = v1_store
    again = featkit.extract(photos, v1, **FAST)
    assert again.computed == 1 and again.unchanged == 8  # the retired row's file comes back; nothing else
    more = [photos, write_images(tmp_path / "more", classes=1, per_class=3, seed=4)]
    grown = featkit.extract(more, v1, **FAST)
    added = featkit.extract(more, v1, **{**FAST, "layers": ["fire9", "fire5"]})
    store = read_all(v1)
    assert grown.computed == 3 and added.added_taps == ("fire5",) and len(store) == 11
    assert store.version == 1 and not (v1 / sg.SEGMENTS).exists()
    assert store.taps == ["fire9", "fire5"] and store["fire5"].shape == (11, 256)


def test_procs_on_a_v1_store_says_to_upgrade_it_before_writing_anything(v1_store, photos):
    before = (v1_store[0] / fmt.MANIFEST).read_bytes()
    with pytest.raises(StoreError, match="featkit store upgrade"):
        featkit.extract(photos, v1_store[0], procs=2, **FAST)  # the retired row's file would be planned again
    assert (v1_store[0] / fmt.MANIFEST).read_bytes() == before


def test_upgrade_keeps_every_row_vector_failure_and_retired_row(v1_store, photos):
    v1, v2 = v1_store
    before = read_all(v1)
    rows, vectors, fails = before.rows, np.asarray(before["fire9"]), before.failures
    from featkit.store.upgrade import upgrade_store

    done = upgrade_store(v1)
    after = read_all(v1)
    assert (done.was, done.shards, done.rows, after.version) == (1, 5, 7, 2)  # the 5th: the bad file's record
    pd.testing.assert_frame_equal(after.rows, rows)
    np.testing.assert_array_equal(np.asarray(after["fire9"]), vectors)
    pd.testing.assert_frame_equal(after.failures, fails)
    assert after.stale_rows == [3] and after.runs == before.runs
    assert featkit.verify(v1).ok and not (v1 / "features").exists()
    assert upgrade_store(v1).was == 2  # a second upgrade does nothing
    rerun = featkit.extract(photos, v1, **FAST)
    assert (rerun.computed, rerun.unchanged) == (1, 8)


@pytest.mark.parametrize("step", ["links", "segment manifest", "log", "manifest", "cleanup"])
def test_an_upgrade_killed_at_any_step_leaves_a_store_that_reads_the_same(v1_store, step, monkeypatch):
    v1, _ = v1_store
    before = read_all(v1)
    expected, vectors, fails, runs = before.rows, np.asarray(before["fire9"]), before.failures, before.runs
    from featkit.store import upgrade as up

    class Killed(BaseException):
        pass

    def kill(*args, **kwargs):
        raise Killed

    real_write = up.fmt.write_file

    def kill_at_the_manifest(path, data):  # the commit point: the manifest swap, not a segment's manifest
        return kill() if Path(path).name == fmt.MANIFEST else real_write(path, data)

    target = {"links": (up.os, "link", kill), "segment manifest": (sg, "write_segment_manifest", kill),
              "log": (up, "write_bytes", kill), "manifest": (up.fmt, "write_file", kill_at_the_manifest),
              "cleanup": (up, "remove_v1_folders", kill)}
    with monkeypatch.context() as patch:
        patch.setattr(*target[step])
        with pytest.raises(Killed):
            up.upgrade_store(v1)
    for finished in (False, True):
        store = read_all(v1)
        assert store.version == (2 if step == "cleanup" or finished else 1)
        pd.testing.assert_frame_equal(store.rows, expected)
        np.testing.assert_array_equal(np.asarray(store["fire9"]), vectors)
        pd.testing.assert_frame_equal(store.failures, fails)
        assert store.runs == runs and store.stale_rows == [3]
        up.upgrade_store(v1)  # and it finishes
    assert featkit.verify(v1).ok and not (v1 / "features").exists()


def test_the_cli_upgrades_and_says_what_it_did(v1_store, capsys, monkeypatch):
    from featkit.cli.app import main

    monkeypatch.setattr(sys, "argv", ["featkit", "store", "upgrade", str(v1_store[0])])
    with pytest.raises(SystemExit) as exited:
        main()
    out = capsys.readouterr().out
    assert exited.value.code == 0 and "upgraded" in out and "7 rows in 5 shards" in out and "linked" in out


# ---- segments never mix settings ------------------------------------------------------------------------------

def test_a_segment_made_with_other_settings_is_never_merged(tmp_path):
    root = write_feature_store(tmp_path / "s", shards=(2,), dims=4)
    settings = fmt.read_manifest(root)[1]
    with StoreWriter(root, settings) as writer:
        segment = writer.open_segment(writer.segment_count, 1, "1" * 64)
        segment.manifest.settings_sha256 = "2" * 64  # as a worker with other settings would write it
        segment.commit_shard(*one_row(7), NO_FAILURES, 1)
        segment.seal()
        with pytest.raises(StoreError, match="written with other settings"):
            writer.merge(segment.name)
    assert len(featkit.open_features(root)) == 2


def test_a_segment_copied_in_from_a_store_of_other_settings_is_refused_when_read(photos, tmp_path):
    featkit.extract(photos, tmp_path / "avg", **FAST)
    featkit.extract(photos, tmp_path / "max", **{**FAST, "pool": "max"})
    name = sg.segment_name(featkit.open_features(tmp_path / "avg").segment_count)
    copied = shutil.copytree(tmp_path / "max" / "segments" / "seg-000000", tmp_path / "avg" / "segments" / name)
    record = json.loads((copied / sg.SEGMENT_MANIFEST).read_text())
    (copied / sg.SEGMENT_MANIFEST).write_text(json.dumps({**record, "name": name}))  # spliced in with care
    line = next(ln for ln in (tmp_path / "max" / sg.LOG).read_text().splitlines() if '"segment"' in ln)
    with open(tmp_path / "avg" / sg.LOG, "a") as log:
        log.write(line.replace("seg-000000", name) + "\n")
    with pytest.raises(StoreError, match="written with other settings than the store"):
        read_all(tmp_path / "avg")
    assert featkit.verify(tmp_path / "avg").bad[0].problem == "was written with other settings than the store's"


def test_a_worker_resumes_a_segment_a_killed_worker_left(tmp_path, monkeypatch):
    """An unmerged segment made from the same inputs and settings is picked up after its last committed shard."""
    root = write_feature_store(tmp_path / "s", shards=(2,), dims=4)
    settings = fmt.read_manifest(root)[1]
    with StoreWriter(root, settings) as writer:
        first = writer.open_segment(1, 3, "3" * 64)
        first.commit_shard(*one_row(1), NO_FAILURES, 1)
    with StoreWriter(root, settings) as writer:
        again = writer.open_segment(1, 3, "3" * 64)
        assert isinstance(again, SegmentWriter) and again.consumed == 1 and len(again.manifest.shards) == 1
        other = writer.open_segment(1, 3, "4" * 64)  # other inputs: the leftover is deleted
        assert other.consumed == 0 and not (sg.segment_dir(root, "seg-000001") / sg.SEGMENT_MANIFEST).exists()


def test_store_v1_and_v2_bytes_are_a_function_of_the_inputs_only(photos, tmp_path):
    """Two runs of the same inputs write the same segment files (what makes --procs and resume bitwise)."""
    featkit.extract(photos, tmp_path / "a", **FAST)
    featkit.extract(photos, tmp_path / "b", **FAST)
    assert store_bytes(tmp_path / "a") == store_bytes(tmp_path / "b")


@pytest.mark.parametrize("kill_at", ["merge", "seal"])
def test_a_kill_between_the_last_shard_and_the_merge_records_unlisted_files_once(tmp_path, monkeypatch, kill_at):
    """The last partition's final shard records the files that could not even be listed (here a name that is not
    UTF-8): a rerun after a kill before the merge must not record them again (a store of other bytes)."""
    src = write_images(tmp_path / "imgs", classes=1, per_class=3)
    os.close(os.open(os.path.join(os.fsencode(src / "c0"), b"bad\xff.png"), os.O_CREAT | os.O_WRONLY))
    featkit.extract(src, tmp_path / "ref", **FAST)

    class Killed(BaseException):
        pass

    def kill(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as patch:
        if kill_at == "merge":
            patch.setattr(StoreWriter, "merge", kill)
        else:  # the final shard's files written, the manifest that commits (and seals) them not
            patch.setattr(sg, "write_segment_manifest", lambda root, seg: kill() if seg.sealed else
                          sg.fmt.write_file(sg.segment_dir(root, seg.name) / sg.SEGMENT_MANIFEST,
                                            sg.json_bytes(seg.to_json(), indent=None)))
        with pytest.raises(Killed):
            featkit.extract(src, tmp_path / "out", **FAST)
    featkit.extract(src, tmp_path / "out", **FAST)
    assert store_bytes(tmp_path / "out") == store_bytes(tmp_path / "ref")
    assert len(featkit.open_features(tmp_path / "out").failures) == 1


def test_tap_arrays_index_like_numpy_and_refuse_what_numpy_would(tmp_path):
    root = write_feature_store(tmp_path / "s", shards=(3, 3, 2), dims=4)
    tap, whole = featkit.open_features(root)["feat"], np.asarray(featkit.open_features(root)["feat"])
    for key in (5, -1, slice(1, 7), slice(None, None, -2), slice(6, 2, -1), [0, 7, 3], np.array([[1, 2], [6, 0]]),
                whole[:, 0] > 0, (slice(2, 6), 1), (3, slice(0, 2)), np.array([], dtype=np.int64)):
        np.testing.assert_array_equal(tap[key], whole[key])
    for key in (True, np.array([0.5, 1.0]), 8, -9, (1, 2, 3)):
        with pytest.raises(IndexError):
            tap[key]
