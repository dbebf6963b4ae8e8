"""Model replicas on a CPU: batches computed side by side on threads give the store a single forward pass would,
in input order with bad files in their places, and leave the caller's torch threads as they were."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from helpers import store_bytes, write_images
from PIL import Image

import featkit
from featkit._device import Runtime
from featkit.extraction.config import ExtractConfig
from featkit.extraction.embed import Embedder
from featkit.extraction.replicas import ReplicaPool, per_thread_counts, replica_layout

FAST = {"model": "squeezenet1_1", "weights": "random", "device": "cpu", "workers": 0, "pool": "avg"}

pytestmark = pytest.mark.skipif(not per_thread_counts(), reason="this torch build has no per-thread thread counts")


@pytest.fixture
def two_threads(monkeypatch):
    """This process computes on 2 threads (test processes run on 1) of a 2-core machine, whatever this one has."""
    monkeypatch.setattr("featkit.extraction.embed.machine_cores", lambda: 2)
    monkeypatch.setattr("featkit._device._threads_set", True)  # a busy machine would lower the count set here
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def replica_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("featkit-replica")]


def messy_folder(root):
    """13 images over two classes, with a cut JPEG, a text file named .jpg and an empty file among them."""
    write_images(root, classes=2, per_class=6, size=(40, 48), fmt="jpg")
    (root / "c0" / "zz_cut.jpg").write_bytes((root / "c0" / "000.jpg").read_bytes()[:300])
    (root / "c1" / "a_text.jpg").write_text("not an image")
    (root / "c1" / "m_empty.png").write_bytes(b"")
    Image.new("RGB", (64, 30), (200, 10, 10)).save(root / "c1" / "wide.jpg")
    return root


def test_layout_gives_each_replica_its_share_of_the_threads():
    assert replica_layout(1) == (1, 1)
    assert replica_layout(2) == (2, 1)
    assert replica_layout(8) == (8, 1)
    assert replica_layout(12) == (6, 2)  # past 8 replicas, several threads each: memory grows with each one
    assert replica_layout(64) == (8, 8)
    assert replica_layout(4, 1) == (1, 4)
    assert replica_layout(4, 3) == (3, 1)
    assert replica_layout(2, 5) == (2, 1)  # never more replicas than threads


def test_a_share_of_a_large_machine_gives_each_batch_the_threads_the_whole_machine_does():
    # 16 cores: 8 replicas × 2 threads; a --procs 2 worker (8 threads) or a busy machine (5 free) keeps 2 each
    assert replica_layout(16, cores=16) == (8, 2)
    assert replica_layout(8, cores=16) == (4, 2)
    assert replica_layout(5, cores=16) == (2, 2)
    assert replica_layout(1, cores=16) == (1, 1)  # fewer threads than a replica's share: all it has
    assert replica_layout(1, cores=2) == (1, 1)  # a busy 2-core machine: one thread, as each replica has


def test_a_worker_with_half_a_large_machine_stores_the_bytes_the_whole_machine_does(tmp_path, monkeypatch):
    images = messy_folder(tmp_path / "imgs")
    opts = dict(FAST, batch_size=3, shard_rows=4)
    monkeypatch.setattr("featkit.extraction.embed.machine_cores", lambda: 16)  # 2 threads each
    monkeypatch.setattr("featkit._device._threads_set", True)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(16)  # the whole machine: 8 replicas × 2 threads
        assert Embedder(ExtractConfig(**opts)).replicas(100) == (8, 2)
        featkit.extract(images, tmp_path / "whole", **opts)
        torch.set_num_threads(8)  # a --procs 2 worker's share: 4 replicas × 2 threads, not 8 × 1
        assert Embedder(ExtractConfig(**opts)).replicas(100) == (4, 2)
        featkit.extract(images, tmp_path / "share", **opts)
    finally:
        torch.set_num_threads(before)
    a, b = store_bytes(tmp_path / "whole"), store_bytes(tmp_path / "share")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a if k.endswith((".npy", ".parquet")))


@pytest.mark.parametrize("decoder", ["pil", "tensor"])
def test_replicas_give_the_store_one_forward_pass_per_batch_gives(tmp_path, two_threads, decoder):
    images = messy_folder(tmp_path / "imgs")
    opts = dict(FAST, batch_size=3, shard_rows=4, decoder=decoder)  # batches end at shard boundaries too
    featkit.extract(images, tmp_path / "replicas", **opts)  # 2 replicas of 1 thread
    torch.set_num_threads(1)
    featkit.extract(images, tmp_path / "one", **opts)  # each batch on the one thread: the same arithmetic
    a, b = store_bytes(tmp_path / "replicas"), store_bytes(tmp_path / "one")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a if k.endswith((".npy", ".parquet")))
    store = featkit.open_features(tmp_path / "replicas")
    assert len(store) == 13 and store.rows["path"].is_monotonic_increasing
    assert sorted(store.failures["reason"]) == ["empty", "not_an_image", "truncated"]
    assert torch.get_num_threads() == 1 and not replica_threads()


def test_a_run_uses_replicas_and_leaves_the_callers_threads_alone(tmp_path, two_threads):
    images = write_images(tmp_path / "imgs", per_class=5)
    embedder = Embedder(ExtractConfig(model="squeezenet1_1", weights="random", device="cpu", workers=0,
                                      batch_size=4))
    assert embedder.replicas(10) == (2, 1)
    assert embedder.replicas(4) == (1, 1)  # one batch: one replica, on the same share (the same numbers)
    ran_on: set[str] = set()
    forward = embedder.extractor.forward

    def spy(x):
        ran_on.add(threading.current_thread().name)
        assert torch.get_num_threads() == 1  # each replica computes on its share
        return forward(x)

    embedder.extractor.forward = spy
    emb = embedder.embed(images)
    assert len(emb.names) == 10 and ran_on and all(n.startswith("featkit-replica") for n in ran_on)
    assert torch.get_num_threads() == 2  # the caller's count
    seen: list[int] = []
    later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    later.start()
    later.join()
    assert seen == [2]  # and threads started later still take it
    assert not replica_threads()


def test_replicas_one_computes_each_batch_on_all_threads(tmp_path, two_threads):
    images = write_images(tmp_path / "imgs", per_class=5)
    embedder = Embedder(ExtractConfig(model="squeezenet1_1", weights="random", device="cpu", workers=0,
                                      batch_size=4, replicas=1))
    assert embedder.replicas(100) == (1, 2)
    ran_on: set[str] = set()
    forward = embedder.extractor.forward
    embedder.extractor.forward = lambda x: (ran_on.add(threading.current_thread().name), forward(x))[1]
    embedder.embed(images)
    assert ran_on == {threading.current_thread().name}


def test_the_store_is_the_same_whoever_decodes_and_however_many_runs_made_it(tmp_path, two_threads):
    images = messy_folder(tmp_path / "imgs")
    opts = dict(FAST, batch_size=4, shard_rows=4)
    featkit.extract(images, tmp_path / "threads", **opts)
    featkit.extract(images, tmp_path / "processes", **dict(opts, workers=2))  # decoder processes, same replicas
    first = sorted(images.rglob("*.*"))[:4]  # a whole shard, so the rerun forms the batches one run forms
    featkit.extract([str(p) for p in first], tmp_path / "resumed", **opts)  # one batch: one replica
    featkit.extract(images, tmp_path / "resumed", **opts)
    a, b = store_bytes(tmp_path / "threads"), store_bytes(tmp_path / "processes")
    assert all(a[k] == b[k] for k in a if k.endswith(".npy"))
    one, resumed = featkit.open_features(tmp_path / "threads"), featkit.open_features(tmp_path / "resumed")
    order = np.argsort(resumed.rows["path"].to_numpy())
    assert resumed.rows["path"].to_numpy()[order].tolist() == one.rows["path"].tolist()
    np.testing.assert_array_equal(np.asarray(resumed["fire9"])[order], np.asarray(one["fire9"]))


def test_a_failing_forward_stops_the_run_with_its_error_and_no_thread_is_left(tmp_path, two_threads):
    images = write_images(tmp_path / "imgs", per_class=8)
    embedder = Embedder(ExtractConfig(model="squeezenet1_1", weights="random", device="cpu", workers=0,
                                      batch_size=2))
    calls = 0
    forward = embedder.extractor.forward

    def failing(x):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise MemoryError("out of memory on batch 3")
        return forward(x)

    embedder.extractor.forward = failing
    got = []
    with pytest.raises(MemoryError, match="batch 3"):
        for batch in embedder.batches(sorted(str(p) for p in images.rglob("*.*"))):
            got += batch.positions
    assert got == [0, 1, 2, 3]  # the batches before it, in order
    assert not replica_threads()


def test_stopping_early_cancels_what_was_queued(tmp_path, two_threads):
    images = write_images(tmp_path / "imgs", per_class=8)
    embedder = Embedder(ExtractConfig(model="squeezenet1_1", weights="random", device="cpu", workers=0,
                                      batch_size=2))
    batches = embedder.batches(sorted(str(p) for p in images.rglob("*.*")))
    first = next(batches)
    batches.close()
    assert first.positions == [0, 1] and not replica_threads()
    np.testing.assert_array_equal(first.features["fire9"].shape, (2, 512 * 13 * 13))


def test_pool_threads_compute_on_their_share(two_threads):
    pool = ReplicaPool(2, 1)
    try:
        assert sorted(pool.map(lambda _: torch.get_num_threads(), range(8))) == [1] * 8
    finally:
        pool.shutdown()
    assert torch.get_num_threads() == 2


def test_ctrl_c_while_replicas_start_frees_them_at_once(monkeypatch, two_threads):
    submit, calls = ReplicaPool.submit, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first replica is already waiting for the others
            raise KeyboardInterrupt
        return submit(self, *args, **kwargs)

    monkeypatch.setattr(ReplicaPool, "submit", interrupted)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        ReplicaPool(2, 1)
    for thread in replica_threads():
        thread.join(timeout=10)
    assert time.monotonic() - start < 10 and not replica_threads()  # not the barrier's 60 s
    assert torch.get_num_threads() == 2


def test_the_run_log_counts_threads_in_words():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert Runtime(torch.device("cpu"), "fp32").describe() == "cpu, 1 thread, fp32"
        torch.set_num_threads(2)
        assert Runtime(torch.device("cpu"), "bf16").describe() == "cpu, 2 threads, bf16"
    finally:
        torch.set_num_threads(before)
