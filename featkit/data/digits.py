"""An image set that ships with the package: scikit-learn's bundled handwritten digits, rendered as PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(root: str | Path, per_class: int = 20, size: int = 64) -> Path:
    """Write ``per_class`` digits of each class as ``root/<digit>/<n>.png`` (an ImageFolder layout).

    The 8×8 scans (16 grey levels) are scaled to ``size`` px with bicubic interpolation, ink dark on white.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = Path(root)
    counts = dict.fromkeys(range(10), 0)
    for image, label in zip(digits.images, digits.target, strict=True):
        label = int(label)
        if counts[label] >= per_class:
            continue
        pixels = (255 - image * (255 / 16)).clip(0, 255).astype(np.uint8)
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="L").resize((size, size), Image.BICUBIC).save(folder / f"{counts[label]:04d}.png")
        counts[label] += 1
    return root
