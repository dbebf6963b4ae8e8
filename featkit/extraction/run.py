"""One extraction run: list inputs, skip what the store already holds, embed the rest and write it shard by shard.

The vectors come from :class:`featkit.extraction.embed.Embedder`, the same code that embeds search queries in
memory; this module adds the store: planning, resume, shards, failure records. Batches hold only images that
decoded, and shards hold ``shard_rows`` good rows, so the features of an
image never depend on which other files were corrupt, and a killed run resumed later produces exactly the
shards an uninterrupted run would have.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from featkit._device import device_list
from featkit._versions import library_versions
from featkit.backbones.weights import WeightsInfo
from featkit.data.sources import list_inputs
from featkit.errors import InputError, Interrupted, StoreError
from featkit.extraction import plan, ranks
from featkit.extraction.config import SHARD_BYTES, ExtractConfig
from featkit.extraction.embed import Embedder, resolve_decoder, resolve_taps
from featkit.extraction.fingerprint import fingerprints
from featkit.store import format as fmt
from featkit.store.writer import open_writer

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
    added_taps: tuple[str, ...] = ()  # taps this run added to rows the store already held
    backfilled: int = 0  # rows those taps were computed for
    images_per_s_by_device: dict[str, float] = dataclasses.field(default_factory=dict)  # with several processes
    rank: int = 0  # under torchrun: the rank that returns this (rank 0 writes the store and reports)


class _ShardBuilder:
    """Accumulates good rows and failures of one partition until a shard is full, then commits it to its segment.

    Positions are rows of the partition's input table; ``offset`` of them are in the segment already.
    """

    def __init__(self, segment, inputs: pd.DataFrame, shard_rows: int, dtype: str):
        self.segment, self.pending, self.shard_rows, self.dtype = segment, inputs, shard_rows, dtype
        self.features: dict[str, list[np.ndarray]] = {}
        self.positions: list[int] = []
        self.sizes: list[tuple[int, int]] = []
        self.failures: list[tuple[int, str, str]] = []
        self.committed_rows = 0

    @property
    def room(self) -> int:
        return self.shard_rows - len(self.positions)

    def add(self, feats: dict[str, np.ndarray], positions: list[int], sizes: list[tuple[int, int]]) -> None:
        for tap, x in feats.items():
            self.features.setdefault(tap, []).append(x)
        self.positions += positions
        self.sizes += sizes
        if self.room == 0:
            self.commit(final=False)

    def commit(self, final: bool, extra_failures: pd.DataFrame | None = None,
               dims: dict[str, int] | None = None) -> None:
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
            "fingerprint": rows["fingerprint"].to_numpy(),
        })
        frows = self.pending.iloc[[f[0] for f in mine]]
        fails = pd.DataFrame({"path": frows["path"].to_numpy(), "reason": [f[1] for f in mine],
                              "message": [f[2] for f in mine], "bytes": frows["bytes"].to_numpy(np.int64),
                              "mtime_ns": frows["mtime_ns"].to_numpy(np.int64),
                              "fingerprint": frows["fingerprint"].to_numpy()})
        if extra_failures is not None and len(extra_failures):
            fails = pd.concat([fails, extra_failures.assign(bytes=-1, mtime_ns=-1, fingerprint="")], ignore_index=True)
        if not len(meta) and not len(fails):
            return
        if self.features:
            arrays = {tap: np.concatenate(parts) for tap, parts in self.features.items()}
        else:
            arrays = {tap: np.empty((0, d), dtype=self.dtype) for tap, d in (dims or {}).items()}
        consumed = len(self.pending) if cut is None else cut + 1
        self.segment.commit_shard(arrays, meta, fails, consumed, seal=final)
        self.committed_rows += len(meta)
        self.features, self.positions, self.sizes = {}, [], []


def write_partition(segment, embedder: Embedder, inputs: pd.DataFrame, unlisted: pd.DataFrame | None,
                    on_progress=lambda n: None) -> tuple[int, Counter]:
    """Compute one partition's inputs into its segment, after the shards a killed run committed; seal it.

    Returns:
        Rows computed, and the reasons of the files skipped.
    """
    if segment.sealed:  # a killed run (or worker) finished it: only the merge is left
        return 0, Counter()
    shard_rows = embedder.settings.shard_rows
    start = segment.consumed
    shards = _ShardBuilder(segment, inputs, shard_rows, embedder.settings.dtype)
    reasons: Counter = Counter()
    for batch in embedder.batches(inputs["path"].iloc[start:].tolist(), boundary=shard_rows):
        failures = [(p + start, r, m) for p, r, m in batch.failures]
        shards.failures += failures
        reasons.update(f[1] for f in failures)
        if batch.positions:
            shards.add(batch.features, [p + start for p in batch.positions], batch.sizes)
        on_progress(len(batch.positions) + len(failures))
    extra = unlisted if unlisted is not None and len(unlisted) else None
    dims = embedder.dims() if not shards.features and (extra is not None or shards.failures) else None
    shards.commit(final=True, extra_failures=extra, dims=dims)
    segment.seal()
    return shards.committed_rows, reasons


def write_partitions(writer, embedder: Embedder, parts: list[plan.Partition], pending: pd.DataFrame,
                     unlisted: pd.DataFrame, on_progress=lambda n: None) -> tuple[int, Counter]:
    """Compute every partition into its segment, in order, merging each as it is sealed (one process).

    One loader streams the inputs of all partitions (after what each segment holds already), so the decoders
    never stop between partitions; ``cuts`` keep each partition's batches what they would be alone.
    """
    shard_rows = embedder.settings.shard_rows
    segments = [writer.open_segment(p.number, p.inputs, p.sha256) for p in parts]
    # inputs each segment holds already (a killed run's); a sealed one is only merged
    held = [part.inputs if segment.sealed else segment.consumed for part, segment in zip(parts, segments, strict=True)]
    starts: list[int] = []  # where each partition's remaining inputs begin in the stream
    paths: list[str] = []
    for part, skip in zip(parts, held, strict=True):
        starts.append(len(paths))
        on_progress(skip)
        paths += pending["path"].iloc[part.start + skip: part.stop].tolist()
    builders = [_ShardBuilder(seg, pending.iloc[p.start:p.stop], shard_rows, embedder.settings.dtype)
                for p, seg in zip(parts, segments, strict=True)]
    reasons: Counter = Counter()
    finished = 0  # partitions sealed and merged

    def finish_up_to(k: int) -> None:
        nonlocal finished
        while finished < k:
            part, builder = parts[finished], builders[finished]
            if not segments[finished].sealed:
                extra = unlisted if part.last and len(unlisted) else None
                dims = embedder.dims() if not builder.features and (extra is not None or builder.failures) else None
                builder.commit(final=True, extra_failures=extra, dims=dims)
                segments[finished].seal()  # where the last commit had nothing to write
            writer.merge(segments[finished].name)
            finished += 1

    for batch in embedder.batches(paths, boundary=shard_rows, cuts=starts[1:]):
        first = batch.positions[0] if batch.positions else batch.failures[0][0]
        k = bisect.bisect_right(starts, first) - 1
        finish_up_to(k)
        local = held[k] - starts[k]  # stream position -> the partition's input position
        failures = [(p + local, r, m) for p, r, m in batch.failures]
        builders[k].failures += failures
        reasons.update(f[1] for f in failures)
        if batch.positions:
            builders[k].add(batch.features, [p + local for p in batch.positions], batch.sizes)
        on_progress(len(batch.positions) + len(failures))
    finish_up_to(len(parts))
    return sum(b.committed_rows for b in builders), reasons


def _check_output(items: list, output: Path) -> None:
    """Refuse a store path that is a file, or that lies inside a folder being read (it would list itself)."""
    if output.exists() and not output.is_dir():
        raise InputError(f"-o {output} is a file; give a folder for the feature store.")
    target = os.path.realpath(output)
    for item in items:
        folder = Path(item).expanduser()
        if folder.is_dir():
            root = os.path.realpath(folder)
            if os.path.commonpath([root, target]) == root:
                raise InputError(f"-o {output} is inside the input folder {folder}: the store would be read as "
                                 "input; put it outside.")


def _plan(writer, listing) -> tuple[pd.DataFrame, pd.DataFrame, int, int, int]:
    """Inputs still to compute (new or changed), failures to record, and counts of unchanged/changed/removed.

    A file is unchanged when its size, mtime and content fingerprint are those recorded (the fingerprint catches
    an edit that kept the size and restored the mtime). Rows recorded before fingerprints were are compared by
    size and mtime only, and their files are not read. The inputs to compute carry their fingerprint.
    """
    table = listing.table
    done = writer.committed()
    merged = table.merge(done, on="path", how="left", suffixes=("", "_done"), indicator=True)
    known = merged["_merge"] == "both"
    same_stat = known & (merged["bytes"] == merged["bytes_done"]) & (merged["mtime_ns"] == merged["mtime_ns_done"])
    recorded = merged["fingerprint"]
    read = (~same_stat | recorded.notna()).to_numpy()
    prints = pd.Series(None, index=merged.index, dtype=object)
    prints[read] = fingerprints(merged.loc[read, "path"])
    same = same_stat & (recorded.isna() | (recorded == prints))
    changed = known & ~same
    gone = done[~done["path"].isin(table["path"])]
    stale = (list(merged.loc[changed & (merged["row"] >= 0), "row"].astype(int))
             + list(gone.loc[gone["row"] >= 0, "row"].astype(int)))
    writer.mark_stale(stale)
    pending = table[(~same).to_numpy()].assign(fingerprint=prints[~same].to_numpy()).reset_index(drop=True)
    bad = listing.bad_names[~listing.bad_names["path"].isin(done["path"])]
    return pending, bad, int(same.sum()), int(changed.sum()), int((gone["row"] >= 0).sum())


def run_extraction(inputs, output: str | os.PathLike, cfg: ExtractConfig, *, progress: bool = False) -> ExtractResult:
    """Extract ``cfg.taps`` of ``cfg.model`` for ``inputs`` into the store at ``output`` (resuming if it exists).

    With ``cfg.procs`` > 1 (or several devices), worker processes compute the partitions
    (:mod:`featkit.extraction.parallel`); the store is bitwise the one a single process writes.

    Raises:
        InputError: no inputs, ``output`` is a file or inside an input folder, or not one file could be read
            (the failures are recorded in the store first).
        Interrupted: Ctrl-C; committed shards stay and the same call resumes.
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)  # a generator is read once
    _check_output(items, Path(output))
    on_ray = cfg.engine == "ray"
    world = ranks.torchrun_world() if (cfg.procs or 1) == 1 and not on_ray else None
    if world is not None:  # under torchrun: this process is one rank, on its own device
        cfg = ranks.join(world[2], cfg)
    devices = device_list(cfg.device, cfg.procs)
    if len(devices) == 1 and cfg.device == "all":  # every GPU, and there is one (or none: the CPU)
        cfg = dataclasses.replace(cfg, device=devices[0])
    # one decoder for every process (auto resolved for all the devices), checked before anything is written
    kinds = (["cuda" if cfg.gpus_per_actor > 0 else "cpu"] if on_ray  # the actors' device, not this driver's
             else [d.split(":")[0] for d in devices])
    cfg = dataclasses.replace(cfg, decoder=resolve_decoder(cfg.decoder, kinds))
    listing = list_inputs(items, layout=cfg.layout, limit=cfg.limit, per_class=cfg.per_class)
    cfg = _with_store_taps(cfg, Path(output))
    # several processes: this one only plans and merges, and needs the model's settings, not a device of its own
    embedder = Embedder(cfg if len(devices) == 1 and not on_ray else dataclasses.replace(cfg, device="cpu", workers=0))
    start = time.perf_counter()
    if world is not None and world[0] != 0:
        return _other_rank(Path(output), embedder, world, start)
    with open_writer(output, embedder.settings, overwrite=cfg.overwrite) as writer:
        added = tuple(t.name for t in writer.adding)
        shard_rows = embedder.settings.shard_rows
        rows_before = writer.next_row
        per_device: dict[str, float] = {}
        if (len(devices) > 1 or world is not None or on_ray) and writer.version == 1:  # before anything is written
            raise StoreError(f"{output} is a store of format v1, which one process writes; upgrade it to write "
                             f"it with several: featkit store upgrade {output}")
        try:
            # first, so that rows whose files no longer decode are retired and planned again below
            backfilled = _backfill(writer, cfg, progress) if added else 0
            pending, bad_names, unchanged, changed, removed = _plan(writer, listing)
            parts = plan.partitions(pending, bad_names, shard_rows, writer.segment_count, whole=writer.version == 1)
            runtime = embedder.runtime
            where = (embedder.describe(len(pending)) if len(devices) == 1 else f"{len(devices)} processes on "
                     + ", ".join(f"{d} ×{n}" if n > 1 else d for d, n in Counter(devices).items()))
            if world is not None:
                where = f"{world[1]} torchrun ranks ({runtime.describe()} on rank 0)"
            if on_ray:
                where = (f"Ray ({cfg.ray_address or 'local'}), {cfg.cpus_per_actor:g} CPU + {cfg.gpus_per_actor:g} "
                         "GPU per actor")
            writer.begin_run({"inputs": [str(i) for i in items], "device": where,
                              "batch_size": cfg.batch_size, "workers": embedder.decoders(len(pending)),
                              "procs": len(devices), "versions": library_versions(), "to_compute": len(pending),
                              "unchanged": unchanged, "changed": changed, "removed": removed})
            reasons = Counter(bad_names["reason"])
            with tqdm(total=len(pending), unit="img", disable=not progress, dynamic_ncols=True, desc="extract") as bar:
                if world is not None:
                    shared = {"parts": parts, "pending": pending, "unlisted": bad_names,
                              "manifests": [writer.segment_manifest(p.number, p.inputs, p.sha256) for p in parts],
                              "taps": {t: (m["dims"], m["dtype"]) for t, m in writer.taps.items()}}
                    ranks.share(shared, 0)
                    mine = ranks.compute_share(writer.root, embedder, shared, 0, world[1], bar)
                    ranks.merge_all(writer, parts)
                    computed, why = ranks.totals(*mine)
                    reasons.update(why)
                elif on_ray:
                    from featkit.extraction.ray_engine import run_ray

                    computed, why, per_device = run_ray(writer, cfg, parts, pending, bad_names, bar)
                    reasons.update(why)
                elif len(devices) == 1:
                    computed, why = write_partitions(writer, embedder, parts, pending, bad_names, bar.update)
                    reasons.update(why)
                else:
                    from featkit.extraction.parallel import run_parallel

                    computed, why, per_device = run_parallel(writer, cfg, devices, parts, pending, bad_names, bar)
                    reasons.update(why)
        except KeyboardInterrupt:
            adding = f"; {', '.join(added)} not yet added to every shard" if writer.adding else ""
            waiting = writer.unmerged_rows()
            pending_note = f", and {waiting:,} more in segments that a rerun finishes" if waiting else ""
            raise Interrupted(f"Interrupted: {output} holds {writer.next_row:,} rows in committed shards "
                              f"({writer.next_row - rows_before:,} of them from this run{pending_note}; shards of "
                              f"{shard_rows:,} rows{adding}); rerun the same command to resume.") from None
        failed = sum(reasons.values())
        seconds = time.perf_counter() - start
        info: dict = {"computed": computed, "failed": failed, "seconds": round(seconds, 3),
                      "images_per_s": round(computed / seconds, 2) if seconds else 0.0}
        if per_device:
            info["images_per_s_by_device"] = per_device
        writer.end_run(info)
        rows, failures, taps = writer.rows, writer.failures, dict(writer.taps)
    if world is not None:
        ranks.leave()
    if rows == 0 and failures:  # this run's, or recorded by an earlier one
        said = ", ".join(f"{reason} {n}" for reason, n in reasons.most_common()) or "recorded earlier"
        files = "the only file was" if failures == 1 else f"all {failures:,} files were"
        raise InputError(f"Nothing could be read: {files} skipped ({said}); the store at {output} records why "
                         f"(featkit info {output}).")
    return ExtractResult(
        store=Path(output), rows=rows, computed=computed, failed=failed, unchanged=unchanged,
        changed=changed, removed=removed, seconds=seconds, images_per_s=info["images_per_s"],
        taps={t: v["dims"] for t, v in taps.items()}, device=where, weights=embedder.weights,
        added_taps=added, backfilled=backfilled, images_per_s_by_device=per_device,
    )


def _other_rank(output: Path, embedder: Embedder, world: tuple[int, int, int], start: float) -> ExtractResult:
    """A torchrun rank other than 0: compute its share of rank 0's plan; the store is rank 0's to write."""
    rank, size, _ = world
    shared = ranks.share(None, rank)
    assert isinstance(shared, dict)
    with tqdm(disable=True) as bar:
        computed, reasons = ranks.totals(*ranks.compute_share(output, embedder, shared, rank, size, bar))
    ranks.leave()
    from featkit.store.reader import open_features

    store = open_features(output)
    seconds = time.perf_counter() - start
    return ExtractResult(store=output, rows=len(store), computed=computed, failed=sum(reasons.values()), unchanged=0,
                         changed=0, removed=0, seconds=seconds, images_per_s=round(computed / seconds, 2),
                         taps={t: v["dims"] for t, v in store.tap_info.items()}, device=embedder.runtime.describe(),
                         weights=embedder.weights, rank=rank)


def _with_store_taps(cfg: ExtractConfig, output: Path) -> ExtractConfig:
    """The taps asked for, after those a store already at ``output`` holds: a run adds taps, never drops them."""
    found = None if cfg.overwrite else fmt.read_manifest(output)
    if found is None or found[1].model != cfg.model:
        return cfg  # a new store, or another model: the writer says what differs
    have = list(found[1].tap_names)
    if not cfg.taps:  # no --layer: the store's own taps, not the model's default added to them
        return dataclasses.replace(cfg, taps=tuple(have))
    asked = [t.name for t in resolve_taps(cfg.model, cfg.taps)]
    return dataclasses.replace(cfg, taps=(*have, *(t for t in asked if t not in have)))


def _backfill(writer, cfg: ExtractConfig, progress: bool) -> int:
    """Compute the taps being added for the rows the store already holds, shard by shard (each commit resumable).

    Rows retired earlier get zeros: no reader sees them. A file that no longer decodes (deleted, damaged) retires
    its row, and the run's plan then treats it as gone.
    """
    names = [t.name for t in writer.adding]
    embedder = Embedder(dataclasses.replace(cfg, taps=tuple(names)))
    dims = embedder.dims()
    biggest = int(writer.shards.rows.max()) if len(writer.shards) else 0
    need = biggest * sum(dims.values()) * np.dtype(cfg.dtype).itemsize
    if need > SHARD_BYTES:  # existing shards keep their size, and one is computed whole in memory
        raise StoreError(f"Adding {', '.join(names)} to {writer.root} would hold {need / 2**30:.1f} GiB per shard of "
                         f"{biggest:,} rows in memory; pool it (--pool avg), or extract it into another store.")
    stale = writer.stale_rows
    missing = {tap: set(writer.missing_tap(tap)) for tap in names}
    shards = sorted(set().union(*missing.values()), key=lambda ref: ref.first_row)
    computed = 0
    for ref in tqdm(shards, desc=f"add {', '.join(names)}", unit="shard", disable=not progress):
        meta = writer.shard_metadata(ref)
        rows = meta["row"].to_numpy(np.int64)
        live = [i for i, row in enumerate(rows) if int(row) not in stale]
        arrays = {tap: np.zeros((len(meta), dims[tap]), dtype=cfg.dtype) for tap in names}
        retired = []
        for batch in embedder.batches(meta["path"].iloc[live].tolist()):
            for tap, values in batch.features.items():
                arrays[tap][[live[p] for p in batch.positions]] = values
            retired += [int(rows[live[p]]) for p, _, _ in batch.failures]
        for tap in names:
            if ref in missing[tap]:
                writer.add_tap_shard(ref, tap, arrays[tap])
        writer.mark_stale(retired)
        computed += len(live) - len(retired)
    writer.finish_adding(dims)
    return computed
