"""Killed and failed runs resume, and end bitwise equal to an uninterrupted run (RELIABILITY rows 12, 13)."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import store_bytes, write_images

import featkit

ARGS = ["--model", "squeezenet1_1", "--weights", "random", "--layer", "logits", "--workers", "0", "--device", "cpu",
        "--batch-size", "2", "--shard-rows", "3", "--dtype", "float16", "-q"]


def command(src: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "featkit", "extract", str(src), "-o", str(out), *ARGS, *extra]


def committed_shards(out: Path) -> int:
    """Shards committed in every segment, merged or not (a kill leaves the segment's shards for the rerun)."""
    count = 0
    for path in out.glob("segments/*/segment.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            count += len(json.loads(path.read_text())["shards"])
    return count


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    src = write_images(tmp_path_factory.mktemp("resume") / "imgs", classes=3, per_class=14, size=(40, 32))
    for i in (2, 17, 30):  # failures spread over the run must land in the same shards after any kill
        (src / f"c{i % 3}" / f"{i:03d}_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    return src


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "store"
    subprocess.run(command(corpus, out), check=True, capture_output=True)
    return out


@pytest.mark.slow
def test_sigkill_at_random_points_resumes_to_the_same_bytes(corpus, reference, tmp_path):
    out = tmp_path / "store"
    rng = random.Random(1234)
    kills = 0
    while kills < 12:
        before = committed_shards(out)
        proc = subprocess.Popen(command(corpus, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Let it commit 0-1 more shards, then kill at a random moment inside the next shard's work.
        target = before + rng.choice([0, 1])
        deadline = time.monotonic() + 60
        while committed_shards(out) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.08))
        if proc.poll() is not None:
            break  # finished before the kill: nothing left to interrupt
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        assert committed_shards(out) >= before  # a kill never loses a committed shard
    assert kills >= 10
    subprocess.run(command(corpus, out), check=True, capture_output=True)
    assert store_bytes(out) == store_bytes(reference)
    assert not list(out.rglob("*.tmp"))
    assert len(featkit.open_features(out)) == 42


# `featkit extract` with a disk that fills up at the Nth fsync (of a shard file, a segment manifest or the log)
DISK_FULL = """
import errno, os, sys
import featkit._atomic, featkit.store.segments
real, calls, limit = os.fsync, [0], int(sys.argv.pop(1))
def fsync(fd):
    calls[0] += 1
    if calls[0] > limit:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real(fd)
featkit._atomic.os.fsync = featkit.store.segments.os.fsync = fsync
from featkit.cli.app import main
sys.argv[0] = "featkit"
main()
"""


@pytest.mark.slow
def test_write_error_is_one_clear_line_and_the_rerun_resumes(corpus, reference, tmp_path):
    out = tmp_path / "store"
    proc = subprocess.run([sys.executable, "-c", DISK_FULL, "40", *command(corpus, out)[3:]], capture_output=True,
                          text=True)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Cannot write ") and "No space left" in lines[0], proc.stderr
    assert "rerun the same command to resume" in lines[0]
    assert 0 < committed_shards(out) < committed_shards(reference)
    subprocess.run(command(corpus, out), check=True, capture_output=True)
    assert store_bytes(out) == store_bytes(reference)
