"""The settings of one extraction run, built once at the edge (CLI flags or Python keywords)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from featkit.backbones.spec import TapSpec
from featkit.choices import Decoder, DType, Engine, Layout, Pool, Precision
from featkit.errors import check_bool, check_choice, check_float, check_int
from featkit.store.settings import StoreSettings, TapRecord, WeightsRecord

if TYPE_CHECKING:
    from featkit.backbones.weights import WeightsInfo

DEFAULT_MODEL = "resnet50"


def default_workers(device_type: str) -> int:
    """Decoder processes running alongside the model.

    On a GPU, JPEG decoding is what limits a run: every spare core decodes. On a CPU the model already uses
    every core, so decoding runs in between forward passes, on a thread per core (0 processes): measured on
    2 cores, AlexNet end to end ran ~25 % faster that way than with one decoder process competing for them.
    """
    if device_type in ("cuda", "mps"):
        return max(1, (os.cpu_count() or 2) - 1)
    return 0


@dataclass(frozen=True)
class ExtractConfig:
    """What to extract and how.

    Attributes:
        model: backbone name (see ``featkit models``).
        taps: tap names or aliases; empty means the backbone's default tap.
        weights: ``imagenet``, ``random`` or a weights file.
        pool: how maps and token lists become vectors: ``none`` (flatten); ``avg`` (= ``mean``), ``max``,
            ``gem`` over positions or tokens; ``cls``: a ViT's class token (see ``featkit taps MODEL``).
        l2: L2-normalise stored vectors.
        dtype: stored dtype, ``float32`` or ``float16``.
        precision: compute precision, ``fp32``, ``bf16`` or ``fp16`` (autocast).
        batch_size: images per forward pass.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        workers: decoder processes beside the model (None: chosen for the device, see ``default_workers``;
            0: decode in this process on a thread per core, between forward passes).
        replicas: on a CPU decoding on threads (``workers`` 0), model replicas computing batches side by side, each
            on its share of the threads (None: one per thread, each on one thread on up to 8 cores; 1: each batch
            on all threads). See :mod:`featkit.extraction.replicas`.
        shard_rows: rows per committed shard (the unit of resume).
        procs: worker processes computing the run's partitions (None: one per device ``device`` lists, e.g.
            ``cuda:0,cuda:1`` or ``all``; 1 for one device). The store is the same bytes for any number.
        draft: JPEG draft decoding (DCT scaling) down to the resize size, for large photos.
        decoder: ``pil`` (Pillow), ``tensor`` (libjpeg-turbo into tensors, tensor resize), ``nvjpeg`` (batched GPU
            decode) or ``auto`` (``nvjpeg`` on CUDA, else ``tensor``); see :class:`featkit.choices.Decoder`.
        seed: seed of ``--weights random``.
        overwrite: replace a store made with other settings.
        download: allow downloading ImageNet weights into the torch hub cache.
        layout: how input folders give labels and splits: ``auto``, ``splits``, ``classes`` or ``flat`` (see
            :func:`featkit.data.sources.list_inputs`); it decides the rows, not the numbers, so stores don't record
            it.
        limit, per_class: read only the first ``limit`` inputs, or the first ``per_class`` of each class in each
            split (smoke runs: they decide the rows, not the numbers, so stores don't record them either).
        engine: ``local`` or ``ray`` (the store is the same bytes either way, so stores don't record it).
        ray_address: the Ray cluster to join (``auto``, ``ray://HOST:PORT``); None starts a local one for the run.
        actors: Ray actors, each holding one model (None: as many as the cluster's CPUs or GPUs allow).
        cpus_per_actor: CPUs each actor reserves; Ray sets its ``OMP_NUM_THREADS`` (torch's threads) from it.
        gpus_per_actor: GPUs each actor reserves (0: actors compute on their CPUs).
    """

    model: str = DEFAULT_MODEL
    taps: tuple[str, ...] = ()
    weights: str = "imagenet"
    pool: str = "none"
    l2: bool = False
    dtype: str = "float32"
    precision: str = "fp32"
    batch_size: int = 32
    device: str = "auto"
    workers: int | None = None
    replicas: int | None = None
    shard_rows: int = 2048
    procs: int | None = None
    draft: bool = True
    decoder: str = "pil"
    seed: int = 0
    overwrite: bool = False
    download: bool = True
    layout: str = "auto"
    limit: int | None = None
    per_class: int | None = None
    engine: str = "local"
    ray_address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0

    def __post_init__(self) -> None:
        # choices are kept as plain strings (an enum member is accepted), so they compare and serialise as text
        for name, choices in (("pool", Pool), ("dtype", DType), ("precision", Precision), ("layout", Layout),
                              ("decoder", Decoder), ("engine", Engine)):
            object.__setattr__(self, name, check_choice(name, getattr(self, name), choices, "extract"))
        if self.pool == Pool.mean:  # the same numbers as avg: recorded as avg, so the two stores are one
            object.__setattr__(self, "pool", Pool.avg.value)
        # plain Python values: they go into the store's manifest, which is read back strictly
        for name in ("batch_size", "shard_rows"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), "extract", minimum=1))
        object.__setattr__(self, "seed", check_int("seed", self.seed, "extract"))
        if self.procs is not None:
            object.__setattr__(self, "procs", check_int("procs", self.procs, "extract", minimum=1))
        if self.workers is not None:
            object.__setattr__(self, "workers", check_int("workers", self.workers, "extract", minimum=0))
        if self.replicas is not None:
            object.__setattr__(self, "replicas", check_int("replicas", self.replicas, "extract", minimum=1))
        if self.actors is not None:
            object.__setattr__(self, "actors", check_int("actors", self.actors, "extract", minimum=1))
        for name, low in (("cpus_per_actor", 0.01), ("gpus_per_actor", 0.0)):
            object.__setattr__(self, name, check_float(name, getattr(self, name), "extract", low=low, high=1e6,
                                                        closed="both"))
        for name in ("l2", "draft", "overwrite", "download"):
            object.__setattr__(self, name, check_bool(name, getattr(self, name), "extract"))
        if isinstance(self.taps, str):  # a single tap name, not its letters
            object.__setattr__(self, "taps", (self.taps,))


SHARD_BYTES = 512 * 2**20  # a shard is held in memory until it is committed


def rows_per_shard(cfg: ExtractConfig, taps: list[TapSpec]) -> int:
    """``cfg.shard_rows``, lowered for huge rows (e.g. flattened early conv maps) so a shard fits in memory."""
    row_bytes = sum(t.dims(cfg.pool) for t in taps) * np.dtype(cfg.dtype).itemsize
    return max(1, min(cfg.shard_rows, SHARD_BYTES // max(1, row_bytes)))


def settings_of(cfg: ExtractConfig, taps: list[TapSpec], weights: WeightsInfo, decoder: str) -> StoreSettings:
    """Everything that determines the stored numbers (a store never mixes two of these).

    ``decoder`` is the one that runs (``cfg.decoder`` with ``auto`` resolved for the device).
    """
    wid = Path(weights.id).name if weights.kind == "file" else weights.id
    return StoreSettings(
        model=cfg.model,
        weights=WeightsRecord(weights.kind, wid, weights.sha256, weights.num_classes,
                              cfg.seed if weights.kind == "random" else None,
                              weights.id if weights.kind == "file" else None),
        preprocess=weights.preprocess,
        taps=tuple(TapRecord(t.name, t.node, t.aliases,
                             t.layout if cfg.pool != "none" and t.layout in ("tokens", "hwc") else "") for t in taps),
        pool=cfg.pool, l2=cfg.l2, dtype=cfg.dtype, precision=cfg.precision, draft=cfg.draft, fold_bn=True,
        shard_rows=rows_per_shard(cfg, taps), decoder=decoder,
    )
