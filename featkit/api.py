"""The Python entry points, mirroring the CLI."""

from __future__ import annotations

import os
from collections.abc import Iterable

from featkit.extraction.config import DEFAULT_MODEL, ExtractConfig
from featkit.extraction.run import ExtractResult, run_extraction


def extract(inputs: str | os.PathLike | Iterable[str | os.PathLike], output: str | os.PathLike, *,
            model: str = DEFAULT_MODEL, layers: str | Iterable[str] = (), weights: str = "imagenet",
            progress: bool = False, **options) -> ExtractResult:
    """Extract features of ``layers`` of ``model`` for ``inputs`` into the feature store ``output``.

    Args:
        inputs: a folder (ImageFolder layouts give labels), a list file (.csv/.parquet/.txt) or image paths.
        output: the store directory; an existing store with the same settings is resumed/updated.
        model: backbone name (``featkit.list_backbones()``).
        layers: tap names or aliases (default: the backbone's default tap).
        weights: ``imagenet``, ``random`` or a weights file (loaded with ``weights_only=True``).
        progress: show a progress bar.
        **options: any other :class:`~featkit.ExtractConfig` field (pool, l2, dtype, precision, batch_size, ...).

    Returns:
        An :class:`ExtractResult`; read the features with :func:`featkit.open_features`.
    """
    taps = (layers,) if isinstance(layers, str) else tuple(layers)
    cfg = ExtractConfig(model=model, taps=taps, weights=weights, **options)
    return run_extraction(inputs, output, cfg, progress=progress)
