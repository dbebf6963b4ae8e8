"""An image set that ships with the package: scikit-learn's bundled handwritten digits, rendered as PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _render(image: np.ndarray, path: Path, size: int) -> None:
    """The 8×8 scan (16 grey levels) scaled to ``size`` px with bicubic interpolation, ink dark on white."""
    pixels = (255 - image * (255 / 16)).clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").resize((size, size), Image.BICUBIC).save(path)


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


def digit_splits(per_class: int | None = None, seed: int = 0) -> dict[str, list[tuple[int, int]]]:
    """The data card's split: ``{"train": [(index, label), ...], "test": [...]}`` into ``load_digits()``.

    For each class in turn, its images in ``load_digits()`` order are permuted by one
    ``numpy.random.default_rng(seed)``; the first ``floor(n / 2)`` go to train and the rest to test (896 / 901).
    ``per_class`` keeps only the first ``per_class`` images of each permutation, for quick smoke runs.
    """
    from sklearn.datasets import load_digits

    target = load_digits().target
    rng = np.random.default_rng(seed)
    splits: dict[str, list[tuple[int, int]]] = {"train": [], "test": []}
    for label in range(10):
        order = rng.permutation(np.flatnonzero(target == label))
        if per_class is not None:
            order = order[:per_class]
        half = len(order) // 2
        splits["train"] += [(int(i), label) for i in order[:half]]
        splits["test"] += [(int(i), label) for i in order[half:]]
    return splits


def write_digit_splits(root: str | Path, per_class: int | None = None, size: int = 64, seed: int = 0) -> dict[str, int]:
    """Render the card's split as ``root/{train,test}/<digit>/<index>.png``; returns the image count per split."""
    from sklearn.datasets import load_digits

    images = load_digits().images
    root = Path(root)
    splits = digit_splits(per_class, seed)
    for split, members in splits.items():
        for index, label in members:
            _render(images[index], root / split / str(label) / f"{index:04d}.png", size)
    return {split: len(members) for split, members in splits.items()}
