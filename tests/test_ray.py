"""``featkit extract --engine ray``: the same store as a local run, resumed like one, on a local Ray with 2 CPU actors.

Ray opens wildcard listeners and probes an outside address to find its own, so every Ray run here happens in a
private network namespace with only loopback up (``unshare --net``, as root; CI runs as root), with usage stats
off and no dashboard. Without unshare the tests skip and say why: they never start Ray in the host's network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="--engine ray needs the ray extra: pip install 'featkit[ray]'")

from helpers import private_network, store_bytes, write_feature_store, write_images  # noqa: E402

import featkit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OPTS = dict(model="squeezenet1_1", layers=["fire9"], pool="avg", weights="random", device="cpu", shard_rows=4,
            batch_size=4)


@pytest.fixture(autouse=True)
def one_thread():
    """The local runs compute on one thread, as each actor does (--cpus-per-actor 1): oneDNN's sums depend on it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def on_ray(tmp_path: Path, script: str, timeout: float = 600) -> dict:
    """Run ``script`` (Python; it prints one JSON line last) with loopback only; its JSON."""
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(script))
    # Ray's socket paths must stay under 108 bytes: a short folder of its own, removed after
    ray_tmp = tempfile.mkdtemp(prefix="fkray")
    env = {**os.environ, "HOME": str(tmp_path / "home"), "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": ray_tmp,
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run([*private_network("Ray"), sys.executable, str(path)], capture_output=True, text=True,
                              timeout=timeout, env=env)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_ray_extraction_is_bitwise_a_local_run_records_bad_files_and_a_rerun_computes_nothing(tmp_path):
    images = write_images(tmp_path / "imgs", classes=2, per_class=9)
    (images / "c0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (images / "c1" / "notes.txt").write_text("not an image")
    featkit.extract(images, tmp_path / "local", **OPTS)
    seen = on_ray(tmp_path, f"""
        import json, featkit
        opts = {OPTS!r}
        first = featkit.extract({str(images)!r}, {str(tmp_path / "ray")!r}, engine="ray", actors=2, **opts)
        again = featkit.extract({str(images)!r}, {str(tmp_path / "ray")!r}, engine="ray", actors=2, **opts)
        try:  # an actor size no node has: one line at once, not a wait forever
            featkit.extract({str(images)!r}, {str(tmp_path / "gpu")!r}, engine="ray", gpus_per_actor=1, **opts)
            unplaceable = ""
        except featkit.FeatkitError as exc:
            unplaceable = str(exc)
        print(json.dumps({{"computed": first.computed, "failed": first.failed, "device": first.device,
                          "by_device": first.images_per_s_by_device, "again": again.computed,
                          "unplaceable": unplaceable}}))
    """)
    assert seen["computed"] == 18 and seen["failed"] == 2 and seen["again"] == 0
    assert seen["unplaceable"].startswith("No Ray node has 1 CPU and 1 GPU for an actor"), seen["unplaceable"]
    assert seen["device"].startswith("Ray (local)") and len(seen["by_device"]) >= 1
    local, ray = store_bytes(tmp_path / "local"), store_bytes(tmp_path / "ray")
    assert local.keys() == ray.keys() and local == ray  # features, metadata and failures, shard by shard
    store = featkit.open_features(tmp_path / "ray")
    assert len(store.failures) == 2 and len(store) == 18  # recorded exactly as the local run records them


@pytest.mark.slow
def test_a_killed_ray_driver_leaves_segments_that_the_rerun_finishes_to_the_local_bytes(tmp_path):
    images = write_images(tmp_path / "imgs", classes=4, per_class=12)
    featkit.extract(images, tmp_path / "local", **OPTS)
    seen = on_ray(tmp_path, f"""
        import json, os, signal, subprocess, sys, time
        from pathlib import Path
        import featkit
        store = Path({str(tmp_path / "ray")!r})
        driver = subprocess.Popen([sys.executable, "-c", "import featkit; featkit.extract({str(images)!r}, "
                                   "{str(tmp_path / "ray")!r}, engine='ray', actors=2, **{OPTS!r})"],
                                  start_new_session=True)
        deadline = time.monotonic() + 300
        while not list(store.glob("segments/*/segment.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and what it started, mid-run
        driver.wait()
        # and its Ray's own processes, found by this job's Ray folder: `ray stop` would also kill the Ray of a
        # test running beside this one (the network namespace does not hide processes)
        mine = os.environ["RAY_TMPDIR"].encode()
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and mine in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)
            except OSError:
                pass
        again = featkit.extract({str(images)!r}, str(store), engine="ray", actors=2, **{OPTS!r})
        print(json.dumps({{"computed": again.computed, "rows": again.rows}}))
    """)
    assert seen["rows"] == 48 and seen["computed"] < 48  # the segments sealed before the kill were not redone
    assert store_bytes(tmp_path / "local") == store_bytes(tmp_path / "ray")


@pytest.mark.slow
def test_an_ivf_index_built_on_ray_answers_like_the_local_build(tmp_path):
    import numpy as np

    from featkit.index import Index, ray_build

    store = write_feature_store(tmp_path / "store", shards=(700,) * 5, dims=32)
    queries = np.random.default_rng(5).standard_normal((60, 32)).astype(np.float32)
    np.save(tmp_path / "queries.npy", queries)
    seen = on_ray(tmp_path, f"""
        import json
        import numpy as np
        from featkit.index import Index
        from featkit.index import ray_build
        ray_build.ROWS_PER_TASK = 1000  # 4 tasks for 3,500 rows
        queries = np.load({str(tmp_path / "queries.npy")!r})
        out = {{}}
        for kind in ("ivf", "ivfpq"):
            index = Index.build({str(store)!r}, kind=kind, engine="ray")
            index.save({str(tmp_path)!r} + "/" + kind + ".index")
            out[kind] = index.search_vectors(queries, 10)[1].tolist()
        print(json.dumps(out))
    """)
    assert ray_build.ROWS_PER_TASK > 1000  # the job changed its own copy only
    for kind in ("ivf", "ivfpq"):
        local = Index.build(store, kind=kind)
        on_ray_built = Index.open(tmp_path / f"{kind}.index")
        assert on_ray_built.manifest["search_params"] == local.manifest["search_params"]
        assert on_ray_built.manifest["recall_at_10"] == local.manifest["recall_at_10"]
        ids = local.search_vectors(queries, 10)[1]
        assert ids.tolist() == seen[kind]
        assert np.array_equal(on_ray_built.search_vectors(queries, 10)[1], ids)


def test_engine_ray_builds_ivf_kinds_only(tmp_path):
    from featkit.errors import SearchIndexError
    from featkit.index import Index

    store = write_feature_store(tmp_path / "store", shards=(50,), dims=8)
    with pytest.raises(SearchIndexError, match="--engine ray builds the IVF kinds"):
        Index.build(store, kind="hnsw", engine="ray")


def test_engine_ray_without_ray_installed_says_how_in_one_line(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    images = write_images(tmp_path / "imgs", classes=1, per_class=2)
    with pytest.raises(featkit.FeatkitError, match=r"pip install 'featkit\[ray\]'"):
        featkit.extract(images, tmp_path / "s", engine="ray", **OPTS)


@pytest.mark.slow
def test_webdataset_shards_on_ray_give_the_store_a_local_run_gives(tmp_path):
    from helpers import write_shards

    write_shards(write_images(tmp_path / "imgs", classes=2, per_class=7), tmp_path / "shards", per_shard=4)
    featkit.extract(tmp_path / "shards", tmp_path / "local", **OPTS)
    seen = on_ray(tmp_path, f"""
        import json, featkit
        done = featkit.extract({str(tmp_path / "shards")!r}, {str(tmp_path / "ray")!r}, engine="ray", actors=2,
                               **{OPTS!r})
        print(json.dumps({{"computed": done.computed, "failed": done.failed}}))
    """)
    assert seen == {"computed": 14, "failed": 0}
    assert store_bytes(tmp_path / "local") == store_bytes(tmp_path / "ray")
    assert featkit.open_features(tmp_path / "ray").rows["path"][0].endswith("shards/00000.tar/000000000.png")
