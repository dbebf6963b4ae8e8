"""Images → the classes a network sees in them: the top-k of its ``logits`` tap, with their names.

Prediction is embedding with one tap: the model's ``logits`` (pooled where a family's logits tap is spatial), through
:class:`~featkit.extraction.embed.Embedder`, so it reads, decodes, preprocesses and skips bad files exactly as
``featkit extract`` does, and takes the same weights: ``imagenet``, ``random``, a file, or a fine-tuning run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import pandas as pd

from featkit.backbones.registry import describe
from featkit.backbones.weights import WeightsInfo, default_weights_enum
from featkit.data.decode import ImageSource
from featkit.errors import InputError, WeightsError, check_int
from featkit.extraction.config import DEFAULT_MODEL, ExtractConfig
from featkit.extraction.embed import Embedder

log = logging.getLogger(__name__)

COLUMNS = ["path", "rank", "label", "index", "prob"]


def class_names(model: str, weights: WeightsInfo) -> tuple[str, ...] | None:
    """The names of the head's outputs, or None where the weights carry none.

    ImageNet weights and fine-tuned weights (their card) name their classes. A weights file without a card whose
    head has as many outputs as torchvision's ImageNet weights for ``model`` have categories is taken for ImageNet
    weights (a converted or re-saved checkpoint), and gets those names. Random weights name nothing.

    Raises:
        WeightsError: the names and the head disagree in number (a card written for other weights).
    """
    names = weights.categories
    if names is None and weights.kind == "file":
        enum = default_weights_enum(model)
        imagenet = tuple(enum.meta["categories"]) if enum is not None else ()
        names = imagenet if len(imagenet) == weights.num_classes else None
    if names is not None and len(names) != weights.num_classes:
        raise WeightsError(f"The weights {weights.id} name {len(names)} classes but their head has "
                           f"{weights.num_classes} outputs; fix or delete their card.")
    return names


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, probabilities), each (n, k): the ``k`` most probable classes of each row, most probable first.

    The softmax is computed in float64; ties keep the lower class index first.
    """
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    order = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(p, order, axis=1)


def predict(images: ImageSource | Iterable[ImageSource], *, model: str = DEFAULT_MODEL, weights: str = "imagenet",
            k: int = 5, device: str = "auto", batch_size: int = 32, progress: bool = False,
            **options) -> pd.DataFrame:
    """The ``k`` most probable classes of each image, with their names and probabilities.

    Args:
        images: a file path, a folder (its images, as extract lists them), an image file's bytes, a PIL image, a
            uint8 array, or a sequence of these.
        model: backbone name (``featkit.list_backbones()``).
        weights: ``imagenet``, ``random``, a weights file or a ``featkit finetune`` run directory. Class names come
            from torchvision's ImageNet categories or the run's card; a file without a card whose head has the
            ImageNet number of classes gets the ImageNet names (see :func:`class_names`); otherwise, and for random
            weights, labels are the class indices as strings.
        k: classes per image, at least 1. A ``k`` above the number of classes is lowered to it (every class,
            ranked): the default 5 then still works for a two-class fine-tuned model.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        batch_size: images per forward pass.
        progress: show a progress bar.
        **options: other :class:`~featkit.ExtractConfig` fields that do not change what is computed from the logits
            (precision, workers, draft, seed, download, ...).

    Returns:
        A DataFrame with columns path, rank (1 = most probable), label, index (the class's output index) and prob,
        ``k`` rows per image that could be read, in input order. ``result.attrs["failures"]`` lists the inputs
        that could not (position, path, reason, message); ``result.attrs["k"]`` is the ``k`` used.

    Raises:
        InputError: none of the images could be read.
    """
    k = check_int("k", k, "predict", minimum=1)
    tap = describe(model).tap("logits")
    config = ExtractConfig(model=model, taps=(tap.name,), weights=weights, pool="avg" if tap.is_spatial else "none",
                           l2=False, device=device, batch_size=batch_size, **options)
    embedder = Embedder(config)
    names = class_names(model, embedder.weights)
    embedded = embedder.embed(images, progress=progress)
    failures = embedded.failures
    if not embedded.names:
        if not len(failures):
            raise InputError("No images found in the inputs given.")
        reasons = ", ".join(f"{r} {n}" for r, n in failures["reason"].value_counts().items())
        raise InputError(f"None of the {len(failures)} images could be read ({reasons}).")
    num_classes = embedded[tap.name].shape[1]
    if k > num_classes:
        log.info("k=%d is more than the %d classes of %s: returning all of them, ranked", k, num_classes, model)
        k = num_classes
    index, prob = top_k(embedded[tap.name], k)
    labels = np.asarray(names, dtype=object) if names is not None else np.arange(num_classes).astype(str)
    result = pd.DataFrame({
        "path": np.repeat(np.asarray(embedded.names, dtype=object), k),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int64), len(embedded.names)),
        "label": labels[index.ravel()],
        "index": index.ravel().astype(np.int64),
        "prob": prob.ravel(),
    }, columns=COLUMNS)
    result.attrs["failures"] = failures
    result.attrs["k"] = k
    return result
