"""Feature stores kept between benchmark runs, so no (dataset, model, weights, tap, preprocessing) is extracted twice.

Layout: ``CACHE/<dataset>-<folder hash>/<model>/<store key>/`` holds an ordinary feature store plus
``bench.json``, the key it was made for (dataset folder, model, weights identity, pool, precision). A store is
re-used for every tap it holds while its key matches and the dataset folder still lists the same files; a
folder that changed is brought up to date incrementally by the extractor. Taps no store holds yet are extracted
together, in one pass, into a new store whose name derives from the key and those taps, so a killed extraction
resumes into the same store next time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from featkit._atomic import write_json
from featkit.bench.datasets import BenchDataset
from featkit.store import format as fmt

KEY_FILE = "bench.json"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedTap:
    """Where one tap's features are, and whether this run had to compute any of them."""

    store: Path
    extracted: bool  # this run computed rows of this store (new, or an update of a changed folder)
    extract_seconds: float


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def weights_identity(model: str, weights: str, seed: int) -> str:
    """What the numbers depend on: torchvision's weights enum, the seed, or the content of a file."""
    from featkit.backbones.card import resolve_weights_path
    from featkit.backbones.checkpoints import sha256_file
    from featkit.backbones.weights import default_weights_enum

    if weights == "imagenet":
        enum = default_weights_enum(model)
        return f"imagenet:{type(enum).__name__}.{enum.name}" if enum is not None else "imagenet:none"
    if weights == "random":
        return f"random:{seed}"
    path = resolve_weights_path(Path(weights).expanduser())  # a fine-tuning run stands for its final weights
    if path.is_file():
        return f"sha256:{sha256_file(path)}"
    return f"path:{weights}"  # the extractor reports a missing file with a proper message


def is_up_to_date(store, dataset: BenchDataset) -> bool:
    """True when the dataset's folder lists exactly the files the store holds or recorded as failures, unchanged."""
    from featkit.data.sources import list_inputs

    listing = list_inputs(dataset.folder, per_class=dataset.per_class, limit=dataset.limit)

    def triples(frame) -> set[tuple[str, int, int]]:
        return {(r.path, int(r.bytes), int(r.mtime_ns)) for r in frame[["path", "bytes", "mtime_ns"]].itertuples()}

    good = triples(store.rows)
    listed_paths = set(listing.table["path"]) | set(listing.bad_names["path"])
    return (triples(listing.table) <= good | triples(store.failures) and {p for p, _, _ in good} <= listed_paths
            and _fingerprints_hold(store, set(listing.table["path"])))


def _fingerprints_hold(store, listed: set[str]) -> bool:
    """Every recorded content fingerprint of a listed file still matches it (an edit that kept size and mtime).

    Rows written before fingerprints were recorded have none, and are trusted on size and mtime, as extraction does.
    A recorded failure whose file is gone is not compared (it has nothing to fingerprint, and nothing to redo).
    """
    from featkit.extraction.fingerprint import fingerprint

    for frame in (store.rows, store.failures):
        if "fingerprint" in frame:
            recorded = frame[frame["path"].isin(listed)].dropna(subset=["fingerprint"])
            if any(fingerprint(p) != f for p, f in zip(recorded["path"], recorded["fingerprint"], strict=True)):
                return False
    return True


class FeatureCache:
    """Finds or extracts the stores that hold a model's taps on a dataset."""

    def __init__(self, root: Path):
        self.root = Path(root).expanduser()

    def _model_dir(self, dataset: BenchDataset, model: str) -> Path:
        return self.root / f"{dataset.name}-{_digest(str(dataset.folder))[:8]}" / model

    def _key(self, dataset: BenchDataset, model: str, cfg) -> dict:
        subset = {k: v for k, v in (("per_class", dataset.per_class), ("limit", dataset.limit)) if v is not None}
        return {"folder": str(dataset.folder), "model": model,
                "weights": weights_identity(model, cfg.weights_for(model), cfg.seed), "pool": cfg.pool,
                "precision": cfg.precision, "dtype": "float32", "l2": False, **subset}

    def _matching_stores(self, model_dir: Path, key: dict) -> list[tuple[Path, list[str]]]:
        """Stores made for ``key`` with a committed manifest, and the taps each holds."""
        from featkit.store.reader import open_features

        found = []
        for key_file in sorted(model_dir.glob(f"*/{KEY_FILE}")):
            try:
                if json.loads(key_file.read_text()) != key:
                    continue
            except (OSError, ValueError):
                continue
            if fmt.read_manifest(key_file.parent) is None:  # a run killed before its first commit
                continue
            opened = open_features(key_file.parent)
            if opened.runs and "finished" in opened.runs[-1]:
                found.append((key_file.parent, opened.taps))
        return found

    def ensure(self, dataset: BenchDataset, model: str, taps: list[str], cfg, *, progress: bool = False,
               echo: Callable[[str], None] = log.info) -> dict[str, CachedTap]:
        """Map each of ``taps`` (canonical tap names of ``model``) to a store holding it, extracting what is missing."""
        from featkit.extraction.run import run_extraction
        from featkit.store.reader import open_features

        key = self._key(dataset, model, cfg)
        model_dir = self._model_dir(dataset, model)
        located: dict[str, CachedTap] = {}
        for store_dir, held in self._matching_stores(model_dir, key):
            wanted = [t for t in taps if t in held and t not in located]
            if not wanted:
                continue
            extracted, seconds = False, 0.0
            if not is_up_to_date(open_features(store_dir), dataset):
                echo(f"updating {store_dir} ({dataset.folder} changed)")
                result = run_extraction(dataset.folder, store_dir, self._extract_config(model, held, cfg, dataset),
                                        progress=progress)
                extracted, seconds = result.computed > 0, result.seconds
            for tap in wanted:
                located[tap] = CachedTap(store_dir, extracted, seconds)
        missing = [t for t in taps if t not in located]
        if missing:
            store_dir = model_dir / _digest({**key, "taps": sorted(missing)})[:12]
            store_dir.mkdir(parents=True, exist_ok=True)
            write_json(store_dir / KEY_FILE, key, sort_keys=True)
            echo(f"extracting {model} {', '.join(missing)} on {dataset.name} → {store_dir}")
            start = time.perf_counter()
            run_extraction(dataset.folder, store_dir, self._extract_config(model, missing, cfg, dataset),
                           progress=progress)
            seconds = time.perf_counter() - start
            for tap in missing:
                located[tap] = CachedTap(store_dir, True, seconds)
        return located

    @staticmethod
    def _extract_config(model: str, taps: list[str], cfg, dataset: BenchDataset):
        from featkit.extraction.config import ExtractConfig

        return ExtractConfig(model=model, taps=tuple(taps), weights=cfg.weights_for(model), pool=cfg.pool,
                             precision=cfg.precision, batch_size=cfg.batch_size, device=cfg.device, seed=cfg.seed,
                             download=cfg.download, per_class=dataset.per_class, limit=dataset.limit)
