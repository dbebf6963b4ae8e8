"""An image set that ships with the package: scikit-learn's bundled handwritten digits, rendered as PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from featkit.datasets.materialise import Item


def _render(image: np.ndarray, path: Path, size: int) -> None:
    """The 8×8 scan (16 grey levels) scaled to ``size`` px with bicubic interpolation, ink dark on white."""
    pixels = (255 - image * (255 / 16)).clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BICUBIC).save(path)


def write_digits(root: str | Path, per_class: int = 20, size: int = 64) -> Path:
    """Write the first ``per_class`` digits of each class as ``root/<digit>/<n>.png`` (an ImageFolder layout)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = Path(root)
    counts = dict.fromkeys(range(10), 0)
    for image, label in zip(digits.images, digits.target, strict=True):
        label = int(label)
        if counts[label] >= per_class:
            continue
        _render(image, root / str(label) / f"{counts[label]:04d}.png", size)
        counts[label] += 1
    return root


def digit_items() -> list[Item]:
    """Every image of ``load_digits()`` as a dataset item (index, label; an array, so no file)."""
    from sklearn.datasets import load_digits

    return [Item(i, int(label), None) for i, label in enumerate(load_digits().target)]


def write_digit_splits(root: str | Path, splits: dict[str, list[Item]], size: int = 64) -> dict[str, int]:
    """Render ``splits`` (from the card's split protocol) as ``root/SPLIT/<digit>/<index>.png``.

    Returns the image count per split.
    """
    from sklearn.datasets import load_digits

    images = load_digits().images
    root = Path(root)
    for split, members in splits.items():
        for item in members:
            _render(images[item.index], root / split / str(item.label) / f"{item.index:04d}.png", size)
    return {split: len(members) for split, members in splits.items()}
