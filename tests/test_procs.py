"""One ``featkit extract`` on several processes (``--procs``): the same store as one process, bitwise, and every
kill recovers (RELIABILITY rows 12, 13 with workers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import store_bytes, write_images

import featkit

ARGS = ["--model", "squeezenet1_1", "--weights", "random", "--layer", "fire9", "--layer", "logits", "--pool", "avg",
        "--workers", "0", "--device", "cpu", "--batch-size", "2", "--shard-rows", "2", "-q"]


# One thread per process, whatever the machine's load: oneDNN's reductions depend on the thread count (on
# different counts features differ in the last bits, ~1e-7), and the claim is bitwise equality.
ENV = {**os.environ, "FEATKIT_NUM_THREADS": "1"}


def extract(src: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "featkit", "extract", str(src), "-o", str(out), *ARGS, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def finished(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def merged(out: Path) -> int:
    try:
        return (out / "log.jsonl").read_text().count('"segment"')
    except OSError:
        return 0


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = write_images(tmp_path_factory.mktemp("procs") / "imgs", classes=3, per_class=16, size=(96, 80))
    for i in (3, 20):  # failures land in the same shards whichever worker meets them
        (folder / f"c{i % 3}" / f"{i:03d}_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    return folder


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "store"
    finished(extract(photos, out, "--procs", "1"))
    return out


def test_two_processes_write_the_store_one_writes_bitwise(photos, reference, tmp_path):
    printed = finished(extract(photos, tmp_path / "s", "--procs", "2"))
    assert store_bytes(tmp_path / "s") == store_bytes(reference)
    store, one = featkit.open_features(tmp_path / "s"), featkit.open_features(reference)
    assert len(store) == 48 and store.segment_count == 7 and len(store.failures) == 2  # 50 inputs, 8 a partition
    assert store.rows.equals(one.rows)
    assert "cpu:" in printed or "img/s" in printed
    runs = store.runs[-1]
    assert runs["procs"] == 2 and "cpu" in runs["images_per_s_by_device"]


def test_a_worker_killed_mid_run_is_replaced_and_the_store_is_the_same(photos, reference, tmp_path):
    out = tmp_path / "s"
    proc = extract(photos, out, "--procs", "2")
    deadline = time.monotonic() + 120
    victim = None
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        if list(out.glob("segments/*/segment.json")):  # a worker is writing: kill one of them
            workers = [p for p in children(proc.pid) if "spawn" in Path(f"/proc/{p}/cmdline").read_text()]
            if workers:
                victim = workers[0]
                os.kill(victim, signal.SIGKILL)
        time.sleep(0.01)
    assert victim is not None, "the run ended before a worker could be killed"
    finished(proc)
    assert store_bytes(out) == store_bytes(reference)
    assert featkit.open_features(out).runs[-1]["computed"] == 48


def test_the_parent_killed_mid_run_takes_its_workers_with_it_and_a_rerun_ends_the_same(photos, reference, tmp_path):
    out = tmp_path / "s"
    proc = extract(photos, out, "--procs", "2")
    deadline = time.monotonic() + 120
    while merged(out) < 1 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    workers = children(proc.pid)
    proc.kill()
    proc.wait()
    assert merged(out) < 7, "the run ended before it could be killed"
    time.sleep(2)
    assert not [w for w in workers if alive(w)]  # none writes on into the store
    finished(extract(photos, out, "--procs", "2"))
    assert store_bytes(out) == store_bytes(reference)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert sum(len(e["rows"]) for e in log if "segment" in e) == featkit.open_features(out).shard_count


def test_a_rerun_computes_nothing(photos, reference, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("FEATKIT_NUM_THREADS", "1")
    shutil.copytree(reference, tmp_path / "s")
    result = featkit.extract(photos, tmp_path / "s", procs=2, model="squeezenet1_1", weights="random",
                             layers=["fire9", "logits"], pool="avg", workers=0, device="cpu", batch_size=2,
                             shard_rows=2)
    assert (result.computed, result.unchanged) == (0, 50)
    assert store_bytes(tmp_path / "s") == store_bytes(reference)


def test_under_torchrun_each_rank_takes_its_share_and_the_store_is_the_same(photos, reference, tmp_path):
    env = {**ENV, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "featkit", "extract", str(photos), "-o", str(tmp_path / "s"), *ARGS],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("wrote ") == 1 and "2 torchrun ranks" in run.stdout  # rank 0 reports for both
    assert store_bytes(tmp_path / "s") == store_bytes(reference)
