"""Model replicas on a CPU: batches computed side by side on threads give the store a single forward pass would,
in input order with bad files in their places, and leave the caller's torch threads as they were."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from helpers import store_bytes, write_images
from PIL import Image

import featkit
from featkit.extraction.config import ExtractConfig
from featkit.extraction.embed import Embedder
from featkit.extraction.replicas import ReplicaPool, per_thread_counts, replica_layout

FAST = {"model": "squeezenet1_1", "weights": "random", "device": "cpu", "workers": 0, "pool": "avg"}

pytestmark = pytest.mark.skipif(not per_thread_counts(), reason="this torch build has no per-thread thread counts")


@pytest.fixture
def two_threads():
    """This process computes on 2 threads (test processes run on 1), as a 2-core machine does by default."""
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
