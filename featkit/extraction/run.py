"""One extraction run: list inputs, skip what the store already holds, extract the rest shard by shard.

Batches hold only images that decoded, and shards hold ``shard_rows`` good rows, so the features of an
image never depend on which other files were corrupt, and a killed run resumed later produces exactly the
shards an uninterrupted run would have.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from featkit._device import resolve_runtime
from featkit._versions import library_versions
from featkit.backbones.registry import describe
from featkit.backbones.spec import TapSpec
from featkit.backbones.weights import WeightsInfo, load_backbone_weights
from featkit.data.loader import DecodedChunk, make_loader
from featkit.data.sources import list_inputs
from featkit.data.transforms import normalize_batch
from featkit.extraction.config import ExtractConfig, default_workers
from featkit.extraction.engine import TapExtractor
from featkit.store.writer import StoreWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractResult:
    """What a run did (the CLI prints it; the manifest keeps it too)."""

    store: Path
    rows: int  # live rows in the store after the run
    computed: int  # images computed by this run
    failed: int  # files this run skipped and recorded
    unchanged: int  # inputs already in the store, skipped
    changed: int
    removed: int
    seconds: float
    images_per_s: float
    taps: dict[str, int]  # tap -> dims
    device: str
    weights: WeightsInfo


def resolve_taps(model: str, names: tuple[str, ...]) -> list[TapSpec]:
    spec = describe(model)
    taps: list[TapSpec] = []
    for name in names or (spec.default_tap,):
        tap = spec.tap(name)
        if tap not in taps:
            taps.append(tap)
    return taps


SHARD_BYTES = 512 * 2**20  # a shard is held in memory until it is committed


def rows_per_shard(cfg: ExtractConfig, taps: list[TapSpec]) -> int:
    """``cfg.shard_rows``, lowered for huge rows (e.g. flattened early conv maps) so a shard fits in memory."""
    row_bytes = sum(t.dims(cfg.pool) for t in taps) * np.dtype(cfg.dtype).itemsize
    return max(1, min(cfg.shard_rows, SHARD_BYTES // max(1, row_bytes)))


def settings_of(cfg: ExtractConfig, taps: list[TapSpec], weights: WeightsInfo) -> dict:
    """Everything that determines the stored numbers (a store never mixes two of these)."""
    wid = Path(weights.id).name if weights.kind == "file" else weights.id
    return {
        "model": cfg.model,
        "weights": {"kind": weights.kind, "id": wid, "sha256": weights.sha256, "num_classes": weights.num_classes},
        "preprocess": weights.preprocess.as_dict(),
        "taps": [{"name": t.name, "node": t.node} for t in taps],
        "pool": cfg.pool,
        "l2": cfg.l2,
        "dtype": cfg.dtype,
        "precision": cfg.precision,
        "draft": cfg.draft,
        "fold_bn": True,
        "shard_rows": rows_per_shard(cfg, taps),
    }


class _ShardBuilder:
    """Accumulates good rows and failures until a shard is full, then commits it."""

    def __init__(self, writer: StoreWriter, pending: pd.DataFrame, shard_rows: int, np_dtype):
        self.writer, self.pending, self.shard_rows, self.np_dtype = writer, pending, shard_rows, np_dtype
        self.features: dict[str, list[np.ndarray]] = {}
        self.positions: list[int] = []
        self.sizes: list[tuple[int, int]] = []
        self.failures: list[tuple[int, str, str]] = []
        self.committed_rows = 0

    @property
    def room(self) -> int:
        return self.shard_rows - len(self.positions)

    def add(self, feats: dict[str, torch.Tensor], positions: list[int], sizes: list[tuple[int, int]]) -> None:
        for tap, x in feats.items():
            self.features.setdefault(tap, []).append(x.cpu().numpy().astype(self.np_dtype, copy=False))
        self.positions += positions
        self.sizes += sizes
        if self.room == 0:
            self.commit(final=False)

    def commit(self, final: bool, extra_failures: pd.DataFrame | None = None, dims: dict[str, int] | None = None) -> None:
        # A failure belongs to the shard of the next good image after it, so shard contents don't depend on
        # where a previous run was killed.
        cut = self.positions[-1] if (self.positions and not final) else None
        mine = [f for f in self.failures if cut is None or f[0] < cut]
        self.failures = [f for f in self.failures if not (cut is None or f[0] < cut)]
        rows = self.pending.iloc[self.positions]
        meta = pd.DataFrame({
            "path": rows["path"].to_numpy(), "label": rows["label"].to_numpy(), "split": rows["split"].to_numpy(),
            "width": np.array([s[0] for s in self.sizes], dtype=np.int64),
            "height": np.array([s[1] for s in self.sizes], dtype=np.int64),
            "bytes": rows["bytes"].to_numpy(np.int64), "mtime_ns": rows["mtime_ns"].to_numpy(np.int64),
        })
        frows = self.pending.iloc[[f[0] for f in mine]]
        fails = pd.DataFrame({"path": frows["path"].to_numpy(), "reason": [f[1] for f in mine],
                              "message": [f[2] for f in mine], "bytes": frows["bytes"].to_numpy(np.int64),
                              "mtime_ns": frows["mtime_ns"].to_numpy(np.int64)})
        if extra_failures is not None and len(extra_failures):
            fails = pd.concat([fails, extra_failures.assign(bytes=-1, mtime_ns=-1)], ignore_index=True)
        if not len(meta) and not len(fails):
            return
        if self.features:
            arrays = {tap: np.concatenate(parts) for tap, parts in self.features.items()}
        else:
            arrays = {tap: np.empty((0, d), dtype=self.np_dtype) for tap, d in (dims or {}).items()}
        self.writer.commit_shard(arrays, meta, fails)
        self.committed_rows += len(meta)
        self.features, self.positions, self.sizes = {}, [], []


def _plan(writer: StoreWriter, listing) -> tuple[pd.DataFrame, pd.DataFrame, int, int, int]:
    """Inputs still to compute (new or changed), failures to record, and counts of unchanged/changed/removed."""
    table = listing.table
    done = writer.committed()
    merged = table.merge(done, on="path", how="left", suffixes=("", "_done"), indicator=True)
    known = merged["_merge"] == "both"
    same = known & (merged["bytes"] == merged["bytes_done"]) & (merged["mtime_ns"] == merged["mtime_ns_done"])
    changed = known & ~same
    gone = done[~done["path"].isin(table["path"])]
    stale = list(merged.loc[changed & (merged["row"] >= 0), "row"].astype(int)) + list(gone.loc[gone["row"] >= 0, "row"].astype(int))
    writer.mark_stale(stale)
    pending = table[(~same).to_numpy()].reset_index(drop=True)
    bad = listing.bad_names[~listing.bad_names["path"].isin(done["path"])]
    return pending, bad, int(same.sum()), int(changed.sum()), int((gone["row"] >= 0).sum())


def run_extraction(inputs, output: str | os.PathLike, cfg: ExtractConfig, *, progress: bool = False) -> ExtractResult:
    """Extract ``cfg.taps`` of ``cfg.model`` for ``inputs`` into the store at ``output`` (resuming if it exists)."""
    taps = resolve_taps(cfg.model, cfg.taps)
    runtime = resolve_runtime(cfg.device, cfg.precision)
    listing = list_inputs(inputs)
    model, weights = load_backbone_weights(cfg.model, cfg.weights, seed=cfg.seed, download=cfg.download)
    np_dtype = np.dtype(cfg.dtype)
    start = time.perf_counter()
    with StoreWriter(output, settings_of(cfg, taps, weights), overwrite=cfg.overwrite) as writer:
        pending, bad_names, unchanged, changed, removed = _plan(writer, listing)
        workers = default_workers(runtime.device.type) if cfg.workers is None else cfg.workers
        writer.begin_run({"inputs": [str(i) for i in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)],
                          "device": runtime.describe(), "batch_size": cfg.batch_size, "workers": workers,
                          "versions": library_versions(), "to_compute": len(pending), "unchanged": unchanged,
                          "changed": changed, "removed": removed})
        extractor = TapExtractor(model, taps, runtime, pool=cfg.pool, l2=cfg.l2)
        del model
        shards = _ShardBuilder(writer, pending, rows_per_shard(cfg, taps), np_dtype)
        failed = len(bad_names)
        if len(pending):
            loader = make_loader(pending["path"].tolist(), range(len(pending)), weights.preprocess,
                                 chunk=cfg.batch_size, workers=min(workers, max(1, len(pending) // cfg.batch_size)),
                                 pin_memory=runtime.is_cuda, draft=cfg.draft)
            failed += _consume(loader, extractor, shards, weights, cfg.batch_size, runtime, progress, len(pending))
        dims = None
        if not shards.features and (len(bad_names) or shards.failures):
            with torch.inference_mode():  # a shard of failures only still needs each tap's width
                probe = torch.zeros(1, 3, weights.preprocess.crop, weights.preprocess.crop, device=runtime.device)
                dims = {k: v.shape[1] for k, v in extractor(probe).items()}
        shards.commit(final=True, extra_failures=bad_names, dims=dims)
        seconds = time.perf_counter() - start
        computed = shards.committed_rows
        info = {"computed": computed, "failed": failed, "seconds": round(seconds, 3),
                "images_per_s": round(computed / seconds, 2) if seconds else 0.0}
        writer.end_run(info)
        manifest = writer.manifest
    return ExtractResult(
        store=Path(output), rows=manifest["rows"], computed=computed, failed=failed, unchanged=unchanged,
        changed=changed, removed=removed, seconds=seconds, images_per_s=info["images_per_s"],
        taps={t: v["dims"] for t, v in manifest["taps"].items()}, device=runtime.describe(), weights=weights,
    )


def _consume(loader, extractor: TapExtractor, shards: _ShardBuilder, weights: WeightsInfo, batch_size: int,
             runtime, progress: bool, total: int) -> int:
    """Run the model over the loader's chunks in batches of good images; returns how many files failed."""
    pixels: list[torch.Tensor] = []
    positions: list[int] = []
    sizes: list[tuple[int, int]] = []
    failed = 0
    bar = tqdm(total=total, unit="img", disable=not progress, dynamic_ncols=True, desc="extract")

    def forward(n: int) -> None:
        nonlocal pixels, positions, sizes
        batch = torch.cat(pixels) if len(pixels) > 1 else pixels[0]
        x, rest = batch[:n], batch[n:]
        if runtime.channels_last:  # convert the uint8 batch: the float ops keep the layout, saving a float copy
            x = x.contiguous(memory_format=torch.channels_last)
        feats = extractor(normalize_batch(x, weights.preprocess))
        shards.add(feats, positions[:n], sizes[:n])
        pixels = [rest] if len(rest) else []
        positions, sizes = positions[n:], sizes[n:]

    for chunk in loader:
        chunk: DecodedChunk
        shards.failures += chunk.failures
        failed += len(chunk.failures)
        if chunk.positions:
            pixels.append(chunk.pixels.to(runtime.device, non_blocking=True))
            positions += chunk.positions
            sizes += chunk.sizes
        while len(positions) >= min(batch_size, shards.room):
            forward(min(batch_size, shards.room))
        bar.update(len(chunk.positions) + len(chunk.failures))
    while positions:
        forward(min(batch_size, shards.room, len(positions)))
    bar.close()
    return failed
