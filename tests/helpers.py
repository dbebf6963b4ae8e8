"""Small helpers the tests share: generated images and byte-level store comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_images(root: Path, classes: int = 2, per_class: int = 4, size: tuple[int, int] = (48, 40), seed: int = 0,
                 fmt: str = "png") -> Path:
    """``root/c<k>/<i>.<fmt>``: smooth random colour fields (distinct per class) so features differ per image."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    for k in range(classes):
        folder = root / f"c{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            freq = rng.uniform(0.05, 0.3, size=3)
            phase = rng.uniform(0, 6.28, size=3)
            img = np.stack([127 + 120 * np.sin(freq[c] * (xx + k * 7) + phase[c] + yy * 0.1 * (c + 1))
                            for c in range(3)], -1)
            Image.fromarray(img.astype(np.uint8)).save(folder / f"{i:03d}.{fmt}")
    return root


def store_bytes(root: Path) -> dict[str, bytes]:
    """Every committed data file of a store (the manifest carries timestamps, so it is compared separately)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.parts[-2] != root.name}


def write_feature_store(root: Path, shards: tuple[int, ...] = (4, 4), dims: int = 8, tap: str = "feat") -> Path:
    """A feature store of random float32 vectors without a model: one shard of ``n`` rows per entry of ``shards``."""
    import pandas as pd

    from featkit.backbones.spec import Preprocess
    from featkit.store.settings import StoreSettings, TapRecord, WeightsRecord
    from featkit.store.writer import StoreWriter

    settings = StoreSettings("synthetic", WeightsRecord("random", "random(seed=0)", "0" * 64, 10, seed=0),
                             Preprocess(8, 8), (TapRecord(tap, tap),), pool="avg", l2=False, dtype="float32",
                             precision="fp32", draft=True, shard_rows=max(shards))
    rng = np.random.default_rng(0)
    with StoreWriter(root, settings) as writer:
        for n in shards:
            first = writer.next_row
            meta = pd.DataFrame({"path": [f"/img/{i:04d}.jpg" for i in range(first, first + n)], "label": "a",
                                 "split": None, "width": 8, "height": 8, "bytes": 100, "mtime_ns": 1})
            writer.commit_shard({tap: rng.standard_normal((n, dims)).astype(np.float32)}, meta,
                                pd.DataFrame(columns=["path", "reason", "message", "bytes", "mtime_ns"]))
    return root


def in_thread(fn, timeout: float = 20):
    """``fn()`` in a daemon thread, so a call that blocks (on a FIFO, say) fails the test instead of hanging it."""
    import threading

    result: list = []

    def run():
        try:
            result.append((fn(), None))
        except BaseException as e:  # noqa: BLE001 - handed to the test's thread below
            result.append((None, e))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout)
    assert result, f"still running after {timeout} s"
    value, error = result[0]
    if error is not None:
        raise error
    return value
