"""Which cosine threshold should ``featkit dedup`` use by default? Measured on planted copies of real photos.

Every ants/bees photo (train and val) is an original, copied byte for byte. A seeded subset of them is also
planted as edited copies: re-encoded JPEG at quality 40 and 75, half size, a 90 % centre crop (of each side),
flipped left-right and grayscale (the last four as PNG, so that only the edit differs). Everything is extracted
once with the real SqueezeNet 1.1 ImageNet weights (avg-pooled ``fire9``, featkit's default tap, and ``conv10``,
the class map), then ``find_duplicates`` runs at each threshold of the grid. For each threshold the table gives

* **caught**: planted copies found in the same group as their original, per edit and overall;
* **false pairs**: pairs of distinct originals that ended up in one group, and **false groups**: groups
  holding two or more originals (the dataset's photos are taken as distinct).

Below the table, the margins: the lowest cosine of each edit's copies to their original, and the highest cosine
between two distinct originals. Everything is written to a temporary directory and deleted.

Usage:  python benchmarks/dedup_threshold.py [--copies 100] [--seed 0] [--taps fire9,conv10]
                                             [--grid 0.80:0.99:0.01]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark this checkout, installed or not

import featkit  # noqa: E402
from featkit.index.dedup import find_duplicates  # noqa: E402
from featkit.index.exact import prepare  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _jpeg(quality: int):
    return lambda image, out: image.save(out.with_suffix(".jpg"), quality=quality)


def _png(edit):
    return lambda image, out: edit(image).save(out.with_suffix(".png"))


EDITS = {
    "jpeg q40": _jpeg(40),
    "jpeg q75": _jpeg(75),
    "half size": _png(lambda im: im.resize((im.width // 2, im.height // 2), Image.BICUBIC)),
    "crop 90 %": _png(lambda im: im.crop((im.width // 20, im.height // 20,
                                          im.width - im.width // 20, im.height - im.height // 20))),
    "flipped": _png(ImageOps.mirror),
    "grayscale": _png(lambda im: im.convert("L")),
}


def plant(data: Path, folder: Path, copies: int, seed: int) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """Originals and planted copies in ``folder``; returns the originals' names and {copy: (original, edit)}."""
    photos = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    folder.mkdir(parents=True)
    originals = []
    for i, path in enumerate(photos):
        name = f"o{i:04d}{path.suffix.lower()}"
        shutil.copyfile(path, folder / name)
        originals.append(name)
    planted = {}
    chosen = np.random.default_rng(seed).choice(len(photos), size=min(copies, len(photos)), replace=False)
    for i in sorted(chosen.tolist()):
        image = Image.open(photos[i]).convert("RGB")
        for e, (edit, save) in enumerate(EDITS.items()):
            stem = folder / f"c{i:04d}_{e}"
            save(image, stem)
            planted[next(folder.glob(stem.name + ".*")).name] = (originals[i], edit)
    return originals, planted


def score(groups, originals: list[str], planted: dict[str, tuple[str, str]]) -> dict:
    """Caught copies per edit, false pairs and false groups of one dedup result."""
    group_of = dict(zip(groups["path"].map(lambda p: Path(p).name), groups["group"], strict=True))
    caught: Counter[str] = Counter()
    for copy, (original, edit) in planted.items():
        caught[edit] += copy in group_of and group_of[copy] == group_of.get(original)
    per_group = Counter(group_of[o] for o in originals if o in group_of)
    return {"caught": caught, "false_pairs": sum(k * (k - 1) // 2 for k in per_group.values()),
            "false_groups": sum(k >= 2 for k in per_group.values())}


def margins(store, tap: str, originals: list[str], planted: dict[str, tuple[str, str]]) -> tuple[dict, float]:
    """Lowest cosine of each edit's copies to their original; highest cosine between two distinct originals."""
    row = {Path(p).name: i for i, p in enumerate(store.rows["path"])}
    vectors = prepare(np.asarray(store[tap]), "cosine")
    lowest: dict[str, float] = {}
    for copy, (original, edit) in planted.items():
        cos = float(vectors[row[copy]] @ vectors[row[original]])
        lowest[edit] = min(lowest.get(edit, 1.0), cos)
    mine = vectors[[row[o] for o in originals]]
    sims = mine @ mine.T
    np.fill_diagonal(sims, -1)
    return lowest, float(sims.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "hymenoptera_160")
    parser.add_argument("--weights", type=Path, default=SHARED / "weights" / "squeezenet1_1-imagenet.pth")
    parser.add_argument("--copies", type=int, default=100, help="originals planted as edited copies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--taps", default="fire9,conv10")
    parser.add_argument("--grid", default="0.80:0.99:0.01", help="start:stop:step (both ends included)")
    args = parser.parse_args()
    start, stop, step = (float(x) for x in args.grid.split(":"))
    grid = [round(t, 4) for t in np.arange(start, stop + step / 2, step)]
    decimals = max(2, -int(np.floor(np.log10(step))))
    taps = args.taps.split(",")

    with tempfile.TemporaryDirectory(prefix="featkit-dedup-") as tmp:
        folder = Path(tmp) / "photos"
        originals, planted = plant(args.data, folder, args.copies, args.seed)
        n_copies = len(planted) // len(EDITS)
        began = time.perf_counter()
        featkit.extract(folder, Path(tmp) / "store", model="squeezenet1_1", layers=taps, pool="avg",
                        weights=str(args.weights), device="cpu", batch_size=32)
        store = featkit.open_features(Path(tmp) / "store")
        print(f"{len(originals)} originals from {args.data}, {n_copies} of them (seed {args.seed}) planted as "
              f"{len(EDITS)} edited copies each: {len(store)} images, squeezenet1_1 ImageNet weights, pool avg; "
              f"extracted in {time.perf_counter() - began:.0f} s.\n")
        for tap in taps:
            print(f"### {tap} ({store[tap].shape[1]}-d)\n")
            print("| threshold | " + " | ".join(EDITS) + " | all copies | false pairs | false groups |")
            print("|---:|" + "---:|" * len(EDITS) + "---:|---:|---:|")
            for threshold in grid:
                s = score(find_duplicates(store, tap=tap, threshold=threshold), originals, planted)
                cells = [f"{s['caught'][e] / n_copies:.2f}" for e in EDITS]
                overall = sum(s["caught"].values()) / len(planted)
                print(f"| {threshold:.{decimals}f} | " + " | ".join(cells)
                      + f" | {overall:.3f} | {s['false_pairs']} | {s['false_groups']} |")
            lowest, highest = margins(store, tap, originals, planted)
            print("\nlowest cosine of a copy to its original: "
                  + ", ".join(f"{e} {v:.3f}" for e, v in lowest.items())
                  + f"; highest cosine between two distinct originals: {highest:.3f}\n")


if __name__ == "__main__":
    main()
