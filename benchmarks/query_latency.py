"""How long one search by image takes, end to end, against the work it cannot avoid: decoding and one forward pass.

For each model (random weights, the tap ``featkit extract`` would store, pooled), on a 500×375 JPEG query like a
photo, against a flat index of 64 such images, the median over ``--repeats`` runs after warm-up of:

* **decode**: the query file → its uint8 224×224 crop (PIL decode with JPEG draft scaling, resize, centre crop:
  featkit's own ``load_crop``, the same work any pipeline does per image);
* **forward**: the model on that one pre-decoded crop (featkit's engine, normalisation included);
* **search, warm**: ``Index.search("query.jpg", k=10)`` on an index whose model is already loaded (the first
  search loads it; ``featkit serve`` loads it at start): listing, decoding, forward, FAISS search, result table;
  decode, forward and warm search run in turn in one loop, so that all three see the same machine;
* **search, cold**: ``Index.open`` + the first search, model loading included (what one ``featkit search`` pays);
* **before** (featkit ≤ 0.1's path, kept here only to compare): the query extracted into a temporary feature
  store on disk with every tap the store had, re-opened, then searched; it loaded the model on every query.

The target is search, warm ≤ 1.3 × (decode + forward).

Usage:  python benchmarks/query_latency.py [--models resnet50,alexnet,squeezenet1_1] [--repeats 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark this checkout, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_throughput import machine, make_images  # noqa: E402

import featkit  # noqa: E402
from featkit.data.transforms import load_crop, normalize_batch  # noqa: E402
from featkit.extraction.config import ExtractConfig  # noqa: E402
from featkit.extraction.run import run_extraction  # noqa: E402
from featkit.index import Index  # noqa: E402

TAPS = {"resnet50": "avgpool", "alexnet": "fc7", "vgg16": "fc7", "squeezenet1_1": "fire9"}
TARGET = 1.3


def median_seconds(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(steps: dict, repeats: int, warmup: int = 3) -> dict[str, list[float]]:
    """Seconds of each step, the steps run in turn ``repeats`` times after ``warmup`` rounds."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def before(index: Index, query: Path, store_taps: tuple[str, ...], work: Path) -> None:
    """The search path this benchmark replaces: a temporary store on disk, every tap, the model loaded per query."""
    s = index.settings
    cfg = ExtractConfig(model=s.model, taps=store_taps, weights="random", pool=s.pool, l2=s.l2, dtype=s.dtype,
                        precision=s.precision, draft=s.draft, seed=s.weights.seed or 0, device="cpu", download=False)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        run_extraction([query], Path(tmp) / "queries", cfg)
        store = featkit.open_features(Path(tmp) / "queries")
        index.search_vectors(np.array(store[index.tap], dtype=np.float32), 10)


def measure(model: str, images: list[Path], query: Path, work: Path, repeats: int) -> dict:
    tap = TAPS.get(model, "penultimate")
    store_taps = (tap, "logits") if tap not in ("fc", "logits") else (tap,)  # a store usually holds a few taps
    featkit.extract(images, work / model, model=model, layers=list(store_taps), pool="avg", weights="random",
                    device="cpu", overwrite=True)
    Index.build(work / model, tap=tap, kind="flat").save(work / f"{model}.index", overwrite=True)

    start = time.perf_counter()
    index = Index.open(work / f"{model}.index")
    index.search(str(query), k=10, device="cpu")
    cold = time.perf_counter() - start

    embedder = index.embedder(device="cpu")
    pre = embedder.preprocess
    crop, _ = load_crop(query, pre)
    batch = crop.unsqueeze(0)
    steps = {"decode": lambda: load_crop(query, pre),
             "forward": lambda: embedder.extractor(normalize_batch(batch, pre)),
             "warm": lambda: index.search(str(query), k=10, device="cpu")}
    # interleaved, so that the three see the same machine (a 2-core machine's speed drifts from second to second)
    times = interleaved(steps, repeats)
    decode, forward, warm = (statistics.median(times[k]) for k in steps)
    old = median_seconds(lambda: before(index, query, store_taps, work), max(3, repeats // 6), warmup=1)
    return {"model": model, "tap": tap, "decode_ms": 1e3 * decode, "forward_ms": 1e3 * forward,
            "warm_ms": 1e3 * warm, "cold_ms": 1e3 * cold, "before_ms": 1e3 * old,
            "ratio": warm / (decode + forward), "speedup_vs_before": old / warm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet50,alexnet,squeezenet1_1")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    info = machine(torch.device("cpu"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="featkit-query-bench-") as tmp:
        work = Path(tmp)
        images = make_images(work / "images", 65)
        query, library = images[-1], images[:-1]
        for model in args.models.split(","):
            print(f"measuring {model}...", file=sys.stderr, flush=True)
            rows.append(measure(model, library, query, work, args.repeats))
    print(f"CPU: {info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch threads, torch {info['torch']}; "
          f"query: one 500×375 JPEG, flat index of 64 images, random weights, pool avg, k=10, median of "
          f"{args.repeats}\n")
    print("| model | tap | decode | forward | decode + forward | search, warm | × (decode + forward) | "
          "search, cold | before (temp store) | warm vs before |")
    print("|---|---|---:|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        verdict = "PASS" if r["ratio"] <= TARGET else "MISS"
        print(f"| {r['model']} | {r['tap']} | {r['decode_ms']:.1f} ms | {r['forward_ms']:.1f} ms | "
              f"{r['decode_ms'] + r['forward_ms']:.1f} ms | {r['warm_ms']:.1f} ms | {r['ratio']:.2f}× (≤{TARGET}) "
              f"{verdict} | {r['cold_ms']:.0f} ms | {r['before_ms']:.0f} ms | {r['speedup_vs_before']:.1f}× |")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
