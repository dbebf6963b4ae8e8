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
