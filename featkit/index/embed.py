"""Query images are embedded by the extraction code itself, with the settings recorded for the indexed features.

The images go through :func:`featkit.extraction.run.run_extraction` into a throw-away store made with the very
settings of the source store (model, weights, every tap it extracted, pooling, preprocessing, dtype,
precision, JPEG draft mode), and the temporary store's settings are compared with the recorded ones before a
vector is used. There is no second implementation of preprocessing to drift apart from the first.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from featkit.errors import SearchIndexError
from featkit.store.writer import _differences

# settings that do not change the numbers: shard size, and the file name of a weights file (its sha256 counts)
_NOT_COMPARED = ("shard_rows",)


def comparable(settings: dict) -> dict:
    """A store's settings without what does not change its vectors."""
    out = {k: v for k, v in settings.items() if k not in _NOT_COMPARED}
    out["weights"] = {k: v for k, v in settings["weights"].items() if k != "id" or settings["weights"]["kind"] != "file"}
    return out


def settings_differences(recorded: dict, other: dict) -> str:
    return "; ".join(_differences(comparable(recorded), comparable(other))[:4])


@dataclass(frozen=True)
class Embedded:
    vectors: np.ndarray  # (n, dim) float32, in the order the inputs list them
    paths: list[str]
    failures: pd.DataFrame  # path, reason, message of query files that could not be decoded


def _weights_argument(settings: dict, weights_file: str | os.PathLike | None) -> tuple[str, int]:
    weights = settings["weights"]
    if weights["kind"] == "imagenet":
        return "imagenet", 0
    if weights["kind"] == "random":
        match = re.fullmatch(r"random\(seed=(-?\d+)\)", weights["id"])
        return "random", int(match.group(1)) if match else 0
    if weights_file is None:
        raise SearchIndexError(f"The indexed features come from the weights file '{weights['id']}' (sha256 "
                               f"{weights['sha256'][:12]}…); pass it with --weights FILE to embed query images.")
    return str(weights_file), 0


def embed_images(inputs: Sequence[str | os.PathLike], settings: dict, tap: str, *,
                 weights_file: str | os.PathLike | None = None, device: str = "auto", batch_size: int = 32,
                 progress: bool = False) -> Embedded:
    """Features of ``tap`` for the images ``inputs`` (files or folders), computed exactly as ``settings`` say.

    Raises:
        SearchIndexError: the weights file is needed but missing, or the weights/preprocessing available here
            would make different vectors than the recorded ones (e.g. another file with the same name).
    """
    from featkit.extraction.config import ExtractConfig
    from featkit.extraction.run import run_extraction
    from featkit.store.reader import open_features

    weights, seed = _weights_argument(settings, weights_file)
    cfg = ExtractConfig(model=settings["model"], taps=tuple(t["name"] for t in settings["taps"]), weights=weights,
                        pool=settings["pool"], l2=settings["l2"], dtype=settings["dtype"],
                        precision=settings["precision"], draft=settings["draft"], seed=seed, batch_size=batch_size,
                        device=device, download=False)
    with tempfile.TemporaryDirectory(prefix="featkit-query-") as tmp:
        run_extraction([Path(p) for p in inputs], Path(tmp) / "queries", cfg, progress=progress)
        store = open_features(Path(tmp) / "queries")
        changes = settings_differences(settings, store.settings)
        if changes:
            raise SearchIndexError(f"Query images would be embedded differently from the indexed ones ({changes}); "
                                   "use the weights and featkit version the store was made with.")
        vectors = np.array(store[tap], dtype=np.float32)
        return Embedded(vectors, store.rows["path"].tolist(), store.failures[["path", "reason", "message"]])
