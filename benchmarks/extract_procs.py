"""``featkit extract --procs N`` (and ``--device all``): throughput by process count, and whether the stores agree.

Each run is the real command (``python -m featkit extract``) in a fresh process over the same folder of synthetic
500×375 JPEGs (``extract_throughput.make_images``), random weights, into a fresh store. img/s is the run's own
figure (``computed / seconds`` from the store's log: model building is outside it, starting the workers inside);
``wall s`` is the whole command. Every store is compared with the first row's: ``bitwise`` when each data file has
the same bytes, else the largest difference between their vectors.

Usage:  python benchmarks/extract_procs.py [--device cpu] [--procs 1,2] [--images 256] [--model alexnet]
            [--layer fc7] [--pool none] [--batch-size 32] [--extra "--precision bf16"]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from extract_throughput import make_images  # noqa: E402 - the JPEG maker of the throughput benchmark

import featkit  # noqa: E402


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("part-*")) if p.is_file()}


def run(folder: Path, out: Path, args, procs: str) -> dict:
    device = args.device if procs != "all" else "all"
    command = [sys.executable, "-m", "featkit", "extract", str(folder), "-o", str(out), "--model", args.model,
               "--layer", args.layer, "--pool", args.pool, "--weights", "random", "--batch-size",
               str(args.batch_size), "--device", device, "-q", *shlex.split(args.extra)]
    if procs != "all":
        command += ["--procs", procs]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    last = featkit.open_features(out).runs[-1]
    return {"procs": procs, "device": last["device"], "img_s": last["images_per_s"], "wall_s": wall,
            "by_device": last.get("images_per_s_by_device", {})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--procs", default="1,2", help="process counts to run, comma-separated ('all': --device all)")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--model", default="alexnet")
    p.add_argument("--layer", default="fc7")
    p.add_argument("--pool", default="none")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--extra", default="", help="more featkit extract flags")
    p.add_argument("--images-dir", type=Path)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.images_dir or Path(tmp) / "imgs"
        make_images(folder, args.images)
        rows, first = [], None
        for procs in args.procs.split(","):
            out = Path(tmp) / f"store-{procs}"
            row = run(folder, out, args, procs)
            if first is None:
                first, row["same"] = out, "(reference)"
            elif files(out) == files(first):
                row["same"] = "bitwise"
            else:
                a = np.asarray(featkit.open_features(first)[args.layer], dtype=np.float64)
                b = np.asarray(featkit.open_features(out)[args.layer], dtype=np.float64)
                row["same"] = (f"max |Δ| {np.abs(a - b).max():.2g}" if a.shape == b.shape
                               else f"shapes {a.shape} vs {b.shape}")
            rows.append(row)
            print(f"  procs {procs}: {row['img_s']:.1f} img/s, {row['wall_s']:.1f} s, {row['same']}", flush=True)
    print(f"\n`featkit extract --procs N` on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"--device {args.device}: {args.model} {args.layer} (pool {args.pool}), {args.images} JPEGs 500×375, "
          f"batch {args.batch_size}, random weights {args.extra}\n")
    print("| procs | where | img/s | img/s per process | wall s | store vs first row |")
    print("|---|---|---:|---|---:|---|")
    for r in rows:
        per = ", ".join(f"{d} {v:,.1f}" for d, v in r["by_device"].items()) or "-"
        print(f"| {r['procs']} | {r['device']} | {r['img_s']:,.1f} | {per} | {r['wall_s']:.1f} | {r['same']} |")


if __name__ == "__main__":
    main()
