"""Reading WebDataset shards in place against reading the same JPEGs as files.

N synthetic 500×375 JPEGs, written once as files (``NNNNN.jpg``) and once as img2dataset-style shards of
``--per-shard`` samples (``KEY.jpg`` + ``KEY.cls`` + ``KEY.json``). For each input it times:

* listing: ``list_inputs`` (a folder walk with a stat per file; a tar header scan per shard, reading each
  sample's ``.cls`` and ``.json`` for its label);
* extraction: AlexNet ``fc7`` (random weights, batch 32) end to end, the same store settings either way;
* a rerun: listing plus a fingerprint per row, nothing computed.

Also a header scan of one shard of 10,000 samples (30,000 members), the cost each process pays once per shard.

Usage:  python benchmarks/shard_input.py [--images 512] [--per-shard 128]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

OPTS = dict(model="alexnet", layers=["fc7"], weights="random", device="cpu", batch_size=32)


def jpegs(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        pixels = (rng.random((375, 500, 3)) * 40 + np.linspace(0, 200, 500)[None, :, None]).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def write_both(root: Path, images: list[bytes], per_shard: int) -> tuple[Path, Path]:
    files, shards = root / "files", root / "shards"
    files.mkdir()
    for i, data in enumerate(images):
        (files / f"{i:05d}.jpg").write_bytes(data)  # one flat folder, in the shards' order
    shards.mkdir()
    for start in range(0, len(images), per_shard):
        with tarfile.open(shards / f"{start // per_shard:05d}.tar", "w") as tar:
            for i in range(start, min(start + per_shard, len(images))):
                add(tar, f"{i:09d}.jpg", images[i])
                add(tar, f"{i:09d}.cls", str(i % 4).encode())
                add(tar, f"{i:09d}.json", json.dumps({"caption": "a photo", "url": "https://x/y.jpg"}).encode())
    return files, shards


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--per-shard", type=int, default=128)
    args = parser.parse_args()

    import featkit
    from featkit.data import shards as shard_module
    from featkit.data.sources import list_inputs

    root = Path(tempfile.mkdtemp(prefix="featkit-shards-"))
    try:
        data = jpegs(args.images)
        files, shards = write_both(root, data, args.per_shard)
        featkit.extract(files / "00000.jpg", root / "warm-up", **OPTS)  # the first model load, paid by neither
        rows = []
        stores = {}
        for name, inputs in (("files", files), ("shards", shards)):
            list_s, listing = timed(lambda inputs=inputs: list_inputs(inputs))
            out = root / f"store-{name}"
            extract_s, result = timed(lambda inputs=inputs, out=out: featkit.extract(inputs, out, **OPTS))
            rerun_s, again = timed(lambda inputs=inputs, out=out: featkit.extract(inputs, out, **OPTS))
            assert again.computed == 0
            stores[name] = np.asarray(featkit.open_features(out)["fc7"][:])
            rows.append((name, len(listing.table), list_s, extract_s, result.computed / extract_s, rerun_s))
        same = np.array_equal(stores["files"], stores["shards"])

        big = root / "big.tar"
        with tarfile.open(big, "w") as tar:
            for i in range(10_000):
                add(tar, f"{i:09d}.jpg", data[i % len(data)])
                add(tar, f"{i:09d}.cls", b"3")
                add(tar, f"{i:09d}.json", b'{"caption": "x"}')
        scan_s, scanned = timed(lambda: shard_module._scan(str(big)))
        list_big_s, _ = timed(lambda: shard_module.list_shard(str(big)))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"{args.images} JPEGs 500×375, AlexNet fc7 (random weights), batch 32, {platform.processor() or 'cpu'}; "
          f"shards of {args.per_shard} samples")
    print()
    print("| input | rows | listing s | extract s | images/s | rerun s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, n, list_s, extract_s, ips, rerun_s in rows:
        print(f"| {name} | {n} | {list_s:.3f} | {extract_s:.1f} | {ips:.1f} | {rerun_s:.2f} |")
    print()
    print(f"vectors bitwise equal between files and shards: {same}")
    print(f"one shard of 10,000 samples ({len(scanned.members):,} members): header scan {scan_s:.2f} s, "
          f"listing (its headers scanned again, every sample's .cls and .json read) {list_big_s:.2f} s")


if __name__ == "__main__":
    main()
