"""``featkit demo``: the whole extraction path on an image set the package builds itself, offline."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from featkit.cli._console import console as make_console
from featkit.cli._options import ModelOpt
from featkit.cli.extract import print_result
from featkit.errors import WeightsError
from featkit.extraction.config import DEFAULT_MODEL, ExtractConfig

log = logging.getLogger(__name__)


def _nearest_centroid_accuracy(x: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out nearest-centroid accuracy on L2-normalised features: a quick "are these features any good"."""
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    classes = np.unique(labels)
    sums = np.stack([x[labels == c].sum(0) for c in classes])
    counts = np.array([(labels == c).sum() for c in classes])
    correct = 0
    for i, c in enumerate(labels):
        k = np.searchsorted(classes, c)
        cents = sums.copy()
        cents[k] -= x[i]
        cents /= (counts - (np.arange(len(classes)) == k))[:, None]
        correct += classes[np.argmax(cents @ x[i])] == c
    return correct / len(labels)


def demo(
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Where to write the images and the store.")] = Path("demo_out"),
    model: ModelOpt = DEFAULT_MODEL,
    per_class: Annotated[int, typer.Option(help="Digits per class to render.", min=1)] = 20,
) -> None:
    """Render scikit-learn's digits as images, extract features, and print what was written."""
    from featkit.backbones import checkpoints
    from featkit.backbones.weights import default_weights_enum
    from featkit.datasets.digits import write_digits
    from featkit.extraction.run import run_extraction
    from featkit.store.reader import open_features

    console = make_console()
    images = write_digits(output / "digits", per_class=per_class)
    console.print(f"rendered {10 * per_class} digits (64×64 PNG, ImageFolder layout) into {images}")
    weights = "imagenet"
    enum = default_weights_enum(model)
    try:
        if enum is None:
            raise WeightsError(f"torchvision has no ImageNet weights for {model}")
        checkpoints.fetch_checkpoint(enum.url, download=True)
    except WeightsError as exc:
        log.debug("no ImageNet weights: %s", exc)
        console.print(f"[yellow]ImageNet weights for {model} are not cached and cannot be downloaded here; "
                      "using --weights random instead.[/]")
        weights = "random"
    cfg = ExtractConfig(model=model, weights=weights, overwrite=True)
    result = run_extraction(images, output / "store", cfg, progress=True)
    print_result(result, console)
    store = open_features(result.store)
    tap = next(iter(result.taps))
    x = np.asarray(store[tap], dtype=np.float64)
    acc = _nearest_centroid_accuracy(x, store.rows["label"].to_numpy())
    console.print(f"leave-one-out nearest-centroid accuracy of {model} {tap} on the digits: {acc:.1%} "
                  f"(chance 10%; {weights} weights)")
