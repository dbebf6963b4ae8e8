"""What committing a shard and opening a store cost as a feature store grows, format v1 against v2.

For each shard count N (10 to 200,000), a store already holding N shards of 2,048 rows is prepared, then:

* **commit**: the median time of ``--commits`` real shard commits (tiny shards: 1 row × 4 float32, so the time is
  the format's bookkeeping, not the data), and the bytes each writes (data files included, a few KB);
* **open**: the time of ``featkit.open_features`` plus ``len()`` and reading one row of the last shard, and the
  Python memory it allocates (tracemalloc peak).

The N shards already there are described the way each format records them (v1: the manifest's list of every
shard with its files' sha256; v2: one log line per merged segment of 4 shards), without writing their data files:
neither a commit nor an open reads them, so materialising 200,000 × 3 files would measure the disk, not the
format. The measured commits and the read of the last shard are real files.

Usage:  python benchmarks/store_scale.py [--sizes 10,100,1000,10000,100000,200000] [--commits 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from featkit.backbones.spec import Preprocess
from featkit.store import format as fmt
from featkit.store import segments as sg
from featkit.store.reader import open_features
from featkit.store.settings import StoreSettings, TapRecord, WeightsRecord
from featkit.store.writer import StoreWriter, open_writer

ROWS = 2048  # rows of each shard already in the store (the default shard size)
SETTINGS = StoreSettings("synthetic", WeightsRecord("random", "random(seed=0)", "0" * 64, 10, seed=0),
                         Preprocess(8, 8), (TapRecord("feat", "feat"),), pool="avg", l2=False, dtype="float32",
                         precision="fp32", draft=True, shard_rows=ROWS)
NO_FAILURES = pd.DataFrame(columns=["path", "reason", "message", "bytes", "mtime_ns"])


def prepare(root: Path, version: int, shards: int) -> None:
    """A store of ``shards`` shards of ROWS rows as its format records them (data files not written)."""
    with StoreWriter(root, SETTINGS):  # a v2 store of no rows: manifest and lock
        pass
    manifest = json.loads((root / fmt.MANIFEST).read_text())
    manifest["taps"] = {"feat": {"dims": 4, "dtype": "float32"}}
    digest = hashlib.sha256(b"x").hexdigest()
    if version == 1:
        manifest.update(version=1, rows=shards * ROWS, failures=0, stale_rows=[], runs=[], shards=[
            {"index": i, "rows": ROWS, "failures": 0,
             "files": {fmt.feature_path("feat", i): digest, fmt.metadata_path(i): digest, fmt.failures_path(i): digest}}
            for i in range(shards)])
    else:
        with open(root / sg.LOG, "w") as log:
            for k in range(0, shards, 4):
                n = min(4, shards - k)
                log.write(json.dumps({"segment": sg.segment_name(k // 4), "rows": [ROWS] * n, "failures": [0] * n},
                                     separators=(",", ":")) + "\n")
    (root / fmt.MANIFEST).write_text(json.dumps(manifest, indent=1))


class Counted:
    """Bytes the store's atomic writes and log appends are handed."""

    def __init__(self):
        self.bytes = 0
        real_write, real_append = fmt.write_bytes, sg.append_log

        def write_bytes(path, data):
            self.bytes += len(data)
            return real_write(path, data)

        def append_log(root, entry, committed_bytes=None):
            end = real_append(root, entry, committed_bytes)
            self.bytes += end - (committed_bytes if committed_bytes is not None else os.path.getsize(root / sg.LOG))
            return end

        fmt.write_bytes, sg.append_log = write_bytes, append_log


def measure(version: int, shards: int, commits: int, counted: Counted, work: Path) -> dict:
    root = work / f"v{version}-{shards}"
    prepare(root, version, shards)
    times, sizes = [], []
    with open_writer(root, SETTINGS) as writer:
        assert writer.version == version
        for i in range(commits):
            meta = pd.DataFrame({"path": [f"/img/{i}.jpg"], "label": "a", "split": None, "width": 8, "height": 8,
                                 "bytes": 100, "mtime_ns": 1})
            before, start = counted.bytes, time.perf_counter()
            writer.commit_shard({"feat": np.full((1, 4), i, np.float32)}, meta, NO_FAILURES)
            times.append(time.perf_counter() - start)
            sizes.append(counted.bytes - before)
    record = (root / fmt.MANIFEST).stat().st_size + ((root / sg.LOG).stat().st_size if version == 2 else 0)
    start = time.perf_counter()
    store = open_features(root)
    n = len(store)
    last = store["feat"][n - 1]  # a real shard: one of those just committed
    opened = time.perf_counter() - start
    assert last.shape == (4,)
    del store
    tracemalloc.start()  # a second open, for its memory (tracemalloc slows allocation down: not timed)
    store = open_features(root)
    store["feat"][n - 1]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"format": f"v{version}", "shards": shards, "commit_ms": statistics.median(times) * 1e3,
            "commit_bytes": statistics.median(sizes), "record_bytes": record, "open_ms": opened * 1e3,
            "open_mib": peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,100,1000,10000,100000,200000")
    parser.add_argument("--commits", type=int, default=20)
    parser.add_argument("--formats", default="1,2")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    counted = Counted()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shards in [int(s) for s in args.sizes.split(",")]:
            for version in [int(v) for v in args.formats.split(",")]:
                rows.append(measure(version, shards, args.commits, counted, Path(tmp)))
                r = rows[-1]
                print(f"  {r['format']} {shards:>7,} shards: commit {r['commit_ms']:8.2f} ms "
                      f"({r['commit_bytes']:,.0f} B), open {r['open_ms']:8.1f} ms, {r['open_mib']:.1f} MiB", flush=True)
    print(f"\nfeature store scale on {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
          f"(shards of {ROWS:,} rows; commit = median of {args.commits}):\n")
    print("| format | shards | rows | commit ms | bytes per commit | manifest + log bytes | open ms | open MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['format']} | {r['shards']:,} | {r['shards'] * ROWS:,} | {r['commit_ms']:.2f} | "
              f"{r['commit_bytes']:,.0f} | {r['record_bytes']:,} | {r['open_ms']:,.1f} | {r['open_mib']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
