"""How fast ``featkit serve`` answers, against the model's own forward pass, on the machine it runs on.

An index of the ants/bees train photos (245, SqueezeNet 1.1 ImageNet weights, avg-pooled fire9; synthetic
500×375 JPEGs with random weights where ../shared is absent) is served by uvicorn on 127.0.0.1. Measured:

* **forward**: the model alone on one preprocessed 224×224 image (best of 20), and per image at batch 32.
* **one at a time**: 50 uploads of val photos, each sent after the last was answered (p50, p95).
* **200 concurrent**: 200 uploads sent at once (httpx, one connection each), and 200 searches by id at once.
  The server is ``featkit serve INDEX --port 0 --device cpu`` in its own process; the client shares its cores.
  The uploads queue behind the one thread that owns the model, which embeds up to a batch at a time.

Usage:  python benchmarks/serve_latency.py [--concurrent 200] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FEATKIT_SHARED") or REPO.parent / "shared")
sys.path.insert(0, str(REPO / "tests"))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def library_and_queries(root: Path):
    import featkit
    from featkit.index import Index
    from featkit.serve.library import Library

    weights = SHARED / "weights" / "squeezenet1_1-imagenet.pth"
    photos = SHARED / "data" / "hymenoptera_160"
    if weights.is_file() and photos.is_dir():
        train, queries, w = photos / "train", sorted((photos / "val").glob("*/*.jpg")), str(weights)
        what = "245 ants/bees train photos, SqueezeNet 1.1 ImageNet weights, fire9 avg"
    else:
        from helpers import write_images

        write_images(root / "photos", classes=4, per_class=60, size=(500, 375), fmt="jpg")
        train, queries, w = root / "photos", sorted((root / "photos").glob("*/*.jpg"))[::4], "random"
        what = "240 synthetic 500×375 JPEGs, SqueezeNet 1.1 random weights, fire9 avg"
    featkit.extract(train, root / "feats", model="squeezenet1_1", layers=["fire9"], pool="avg", weights=w,
                    device="cpu", batch_size=32)
    Index.build(root / "feats", weights=w if w != "random" else None).save(root / "lib.index")
    return Library(Index.open(root / "lib.index"), device="cpu"), [q.read_bytes() for q in queries], what


def forward_ms(library) -> tuple[float, float]:
    import torch

    from featkit.data.transforms import normalize_batch

    embedder = library.embedder
    crop = embedder.preprocess.crop
    one = torch.randint(0, 255, (1, 3, crop, crop), dtype=torch.uint8)
    batch = torch.randint(0, 255, (32, 3, crop, crop), dtype=torch.uint8)
    times = {}
    with torch.inference_mode():
        for name, x in (("one", one), ("batch", batch)):
            best = float("inf")
            for _ in range(20 if name == "one" else 5):
                start = time.perf_counter()
                embedder.extractor(normalize_batch(x, embedder.preprocess))
                best = min(best, time.perf_counter() - start)
            times[name] = best * 1000 / len(x)
    return times["one"], times["batch"]


async def timed(client, method: str, url: str, **kwargs) -> float:
    start = time.perf_counter()
    answer = await client.request(method, url, **kwargs)
    answer.raise_for_status()
    return time.perf_counter() - start


async def measure(base: str, queries: list[bytes], n_items: int, concurrent: int) -> dict[str, list[float]]:
    import httpx

    def upload(i: int) -> dict:
        return {"files": {"image": ("q.jpg", queries[i % len(queries)], "image/jpeg")}}

    # TCP_NODELAY, as browsers set it: without it every request waits ~40 ms for a delayed ACK (Nagle), which
    # measures the client, not the server; no idle keep-alive reuse across the storms (the server drops those).
    transport = httpx.AsyncHTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                                         limits=httpx.Limits(max_connections=concurrent, keepalive_expiry=1))
    async with httpx.AsyncClient(base_url=base, timeout=300, transport=transport) as c:
        for i in range(3):  # warm-up
            await timed(c, "POST", "/api/search?k=10", **upload(i))
        sequential = [await timed(c, "POST", "/api/search?k=10", **upload(i)) for i in range(50)]
        start = time.perf_counter()
        storm = await asyncio.gather(*(timed(c, "POST", "/api/search?k=10", **upload(i)) for i in range(concurrent)))
        storm_wall = time.perf_counter() - start
        await asyncio.sleep(2)  # idle connections expire
        by_id = await asyncio.gather(*(timed(c, "GET", f"/api/search?id={i % n_items}&k=10")
                                       for i in range(concurrent)))
    return {"sequential": sequential, "storm": list(storm), "storm_wall": [storm_wall], "by_id": list(by_id)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrent", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        library, queries, what = library_and_queries(Path(tmp))
        one, per_image = forward_ms(library)
        # the server as a user runs it, in its own process: the client's work does not share its GIL or cores' time
        server = subprocess.Popen([sys.executable, "-m", "featkit", "serve", str(library.index.path), "--port", "0",
                                   "--device", "cpu"], stderr=subprocess.PIPE, text=True)
        try:
            base = ""
            for line in server.stderr:  # type: ignore[union-attr]
                if line.startswith("open http"):
                    base = line.split()[1].rstrip("/")
                    break
            if not base:
                raise SystemExit("featkit serve did not start")
            got = asyncio.run(measure(base, queries, len(library), args.concurrent))
        finally:
            server.terminate()
            server.wait(timeout=30)
    ms = {k: [t * 1000 for t in v] for k, v in got.items()}
    print(f"featkit serve latency: {what}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"model forward alone: {one:.1f} ms for one image, {per_image:.1f} ms per image at batch 32\n")
    print("| Requests | p50 ms | p95 ms | max ms | p50 / one forward |")
    print("|---|---|---|---|---|")
    for name, key in (("uploads, one at a time (50)", "sequential"),
                      (f"uploads, {args.concurrent} at once", "storm"),
                      (f"searches by id, {args.concurrent} at once", "by_id")):
        v = ms[key]
        print(f"| {name} | {percentile(v, 50):.0f} | {percentile(v, 95):.0f} | {max(v):.0f} | "
              f"{percentile(v, 50) / one:.1f}× |")
    wall = ms["storm_wall"][0] / 1000
    print(f"\n{args.concurrent} concurrent uploads answered in {wall:.2f} s: {args.concurrent / wall:.0f} uploads/s "
          f"(one forward per image alone would allow {1000 / one:.0f}/s; batched {1000 / per_image:.0f}/s)")
    print(f"median of the sequential uploads: {statistics.median(ms['sequential']):.1f} ms")


if __name__ == "__main__":
    main()
