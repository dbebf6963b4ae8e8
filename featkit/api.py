"""The Python entry points, mirroring the CLI."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from featkit._files import Verified, read_json
from featkit.backbones.card import RUN_MANIFEST
from featkit.errors import FeatkitError
from featkit.extraction.config import DEFAULT_MODEL, ExtractConfig
from featkit.store.format import MANIFEST
from featkit.store.verify import verify_store

if TYPE_CHECKING:
    from featkit.extraction.run import ExtractResult


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
    from featkit.extraction.run import run_extraction  # torch: imported by extraction only, not by verify

    taps = (layers,) if isinstance(layers, str) else tuple(layers)
    cfg = ExtractConfig(model=model, taps=taps, weights=weights, **options)
    return run_extraction(inputs, output, cfg, progress=progress)


def verify(path: str | os.PathLike, *, progress: bool = False) -> Verified:
    """Re-hash every file of a feature store, index or fine-tuning run against the sha256 its manifest recorded.

    Args:
        path: a store (``featkit extract -o``), index (``featkit index build -o``) or run (``featkit finetune -o``)
            directory; which one it is comes from its manifest.
        progress: show a progress bar (bytes hashed).

    Returns:
        A :class:`~featkit._files.Verified`: ``ok``, and in ``bad`` each file that is missing, not a regular file,
        of the wrong size or with another sha256.

    Raises:
        FeatkitError: ``path`` is none of these, or its manifest is damaged.
    """
    root = Path(path)
    if (root / RUN_MANIFEST).exists():
        from featkit.finetune.rundir import verify_run

        return verify_run(root, progress=progress)
    from featkit.index import manifest as index_manifest

    if _format(root / MANIFEST) == index_manifest.FORMAT:
        return index_manifest.verify(root, progress=progress)
    if (root / MANIFEST).exists():
        return verify_store(root, progress=progress)
    raise FeatkitError(f"{root} is not a feature store, index or fine-tuning run directory (no {MANIFEST} or "
                       f"{RUN_MANIFEST}).")


def _format(manifest: Path) -> object:
    """The ``format`` a manifest names (None if it names none): which reader then reads it in full.

    A damaged index manifest still names the index format when FAISS files lie beside it, so the index's reader
    refuses it with index advice (a store's advice would be to write a store there).
    """
    try:
        data = read_json(manifest)
    except (FileNotFoundError, ValueError):
        data = None
    if isinstance(data, dict):
        return data.get("format")
    from featkit.index import manifest as index_manifest

    return index_manifest.FORMAT if any(manifest.parent.glob("*.faiss")) else None
