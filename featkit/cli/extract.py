"""``featkit extract``: the hallmark command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from featkit.backbones.spec import LAYOUTS
from featkit.choices import Decoder, DType, Engine, Layout, Pool, Precision
from featkit.cli._console import console as make_console
from featkit.cli._options import (
    BatchSizeOpt,
    DeviceOpt,
    LayerOpt,
    LimitOpt,
    ModelOpt,
    PerClassOpt,
    PoolOpt,
    PrecisionOpt,
    QuietOpt,
    WeightsOpt,
)
from featkit.extraction.config import DEFAULT_MODEL, ExtractConfig


def print_result(result, console) -> None:
    """Say what an extraction wrote (``result``: an ``ExtractResult``)."""
    from featkit.store.reader import open_features

    store = open_features(result.store)
    console.print(f"[bold green]wrote[/] {result.store}: {result.rows:,} rows "
                  f"({result.computed:,} computed, {result.unchanged:,} already there, {result.failed:,} skipped) "
                  f"in {result.seconds:.1f} s, {result.images_per_s:.1f} img/s on {result.device}")
    for device, speed in result.images_per_s_by_device.items():
        console.print(f"  {device}: {speed:,.1f} img/s while computing")
    where = "" if store.version == 1 else "segments/*/"
    for tap, dims in result.taps.items():
        console.print(f"  {where}features/{tap}/part-*.npy  ({len(store):,} × {dims:,} {store[tap].dtype})")
    console.print(f"  {where}metadata/part-*.parquet  (row, path, label, split, width, height, bytes, mtime_ns, "
                  "fingerprint)")
    if result.added_taps:
        console.print(f"  added {', '.join(result.added_taps)} to the {result.backfilled:,} rows already in the store "
                      "(the other taps were not recomputed)")
    if result.changed or result.removed:
        console.print(f"  {result.changed} changed and {result.removed} removed files since the last run "
                      f"(old rows retired)")
    fails = store.failures
    if len(fails):
        reasons = ", ".join(f"{k} {v}" for k, v in fails["reason"].value_counts().items())
        console.print(f"  {where}failures/part-*.parquet  ({len(fails)} files skipped: {reasons})")
    console.print(f"Read it: featkit.open_features('{result.store}')['{next(iter(result.taps))}']")


def extract(
    inputs: Annotated[list[Path], typer.Argument(
        help="Folders (ImageFolder layouts give labels), list files (.csv/.parquet/.txt with a path column), "
             "WebDataset shards (.tar, or a folder of them: a row per sample, labelled by its .cls/.json) or images.",
        show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Feature store directory (resumed if it exists).")],
    model: ModelOpt = DEFAULT_MODEL,
    layer: LayerOpt = None,
    weights: WeightsOpt = "imagenet",
    pool: PoolOpt = Pool.none,
    l2: Annotated[bool, typer.Option("--l2", help="L2-normalise stored vectors.")] = False,
    dtype: Annotated[DType, typer.Option(help="Stored dtype.")] = DType.float32,
    precision: PrecisionOpt = Precision.fp32,
    batch_size: BatchSizeOpt = 32,
    device: DeviceOpt = "auto",
    workers: Annotated[int | None, typer.Option(
        help="Decoder processes beside the model (default: every spare core on a GPU; 0 on a CPU = decode on a "
             "thread per core between batches).", min=0)] = None,
    replicas: Annotated[int | None, typer.Option(
        help="On a CPU: model replicas computing batches side by side, each on its share of the threads, so one "
             "decodes while another computes (default: one per thread, each on one thread on up to 8 cores; "
             "1: each batch on all threads).",
        min=1)] = None,
    shard_rows: Annotated[int, typer.Option(help="Rows per committed shard (the unit of resume).", min=1)] = 2048,
    procs: Annotated[int | None, typer.Option(
        help="Worker processes, each with its own model (default: one per device that --device lists, e.g. "
             "cuda:0,cuda:1 or all; else 1). On a CPU they split the cores. The store is the same for any number.",
        min=1)] = None,
    draft: Annotated[bool, typer.Option(
        "--draft/--no-draft", help="Decode large JPEGs at reduced DCT scale (still ≥ the resize size).")] = True,
    decoder: Annotated[Decoder, typer.Option(
        help="What decodes and resizes images: pil (Pillow), tensor (libjpeg-turbo into tensors, tensor resize: "
             "~2x faster on a CPU), nvjpeg (batched on the GPU) or auto (nvjpeg on CUDA, else tensor). Pixels "
             "differ a little, so a store records it.")] = Decoder.pil,
    seed: Annotated[int, typer.Option(help="Seed for --weights random.")] = 0,
    layout: Annotated[Layout, typer.Option(
        help="How folders give labels: auto (split folders if any, else class folders), splits (ROOT/SPLIT/CLASS), "
             "classes (ROOT/CLASS) or flat (no labels).")] = Layout.auto,
    limit: LimitOpt = None,
    per_class: PerClassOpt = None,
    engine: Annotated[Engine, typer.Option(
        help="local (this machine: --procs, --device) or ray (an actor pool on a Ray cluster, extra featkit[ray]). "
             "The store is the same bytes either way.")] = Engine.local,
    address: Annotated[str | None, typer.Option(
        help="--engine ray: the cluster to join (auto, ray://HOST:PORT); default: a local Ray for this run.")] = None,
    actors: Annotated[int | None, typer.Option(
        help="--engine ray: actors, each holding one model (default: as many as the CPUs or GPUs allow).", min=1)
    ] = None,
    cpus_per_actor: Annotated[float, typer.Option(
        "--cpus-per-actor", help="--engine ray: CPUs per actor (Ray sets its torch threads from it).", min=0.01)
    ] = 1.0,
    gpus_per_actor: Annotated[float, typer.Option(
        "--gpus-per-actor", help="--engine ray: GPUs per actor (0: compute on CPUs).", min=0.0)] = 0.0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a store made with other settings.")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="Never download weights.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Extract features of one or more taps for every image into a feature store.

    Example: featkit extract --model vgg16 --layer fc7 PHOTOS/ -o feats/
    """
    from featkit.extraction.embed import resolve_taps
    from featkit.extraction.run import run_extraction

    cfg = ExtractConfig(model=model, taps=tuple(layer or ()), weights=weights, pool=pool, l2=l2,
                        dtype=dtype, precision=precision, batch_size=batch_size, device=device,
                        workers=workers, replicas=replicas, shard_rows=shard_rows, procs=procs, draft=draft,
                        decoder=decoder, seed=seed,
                        overwrite=overwrite, download=not offline, layout=layout, limit=limit, per_class=per_class,
                        engine=engine, ray_address=address, actors=actors, cpus_per_actor=cpus_per_actor,
                        gpus_per_actor=gpus_per_actor)
    console = make_console(stderr=True)
    result = run_extraction(inputs, output, cfg, progress=not quiet)
    if result.rank != 0:  # under torchrun, rank 0 reports for all
        return
    print_result(result, make_console())
    itemsize = 2 if cfg.dtype == "float16" else 4
    for tap in resolve_taps(cfg.model, cfg.taps):
        stored, pooled = tap.dims(cfg.pool), tap.dims("avg")
        if stored > pooled:  # a map or token list stored flattened: what that costs, and what pooling stores
            shape = "×".join(map(str, tap.shape))
            console.print(f"note: {tap.name} ({LAYOUTS[tap.layout].words}, {shape}) is stored flattened: "
                          f"{stored:,} values per image ({stored * itemsize / 2**10:,.0f} KiB as {cfg.dtype}); "
                          f"--pool avg stores {pooled:,}.")
    if result.weights.kind == "random":
        console.print("note: --weights random: these features carry no pretrained meaning (smoke tests only).")
