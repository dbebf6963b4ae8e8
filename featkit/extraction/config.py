"""The settings of one extraction run, built once at the edge (CLI flags or Python keywords)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from featkit.errors import FeatkitError

DTYPES = ("float32", "float16")
POOLS = ("none", "avg", "max", "gem")
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
        pool: how spatial taps become vectors: ``none`` (flatten), ``avg``, ``max``, ``gem``.
        l2: L2-normalise stored vectors.
        dtype: stored dtype, ``float32`` or ``float16``.
        precision: compute precision, ``fp32``, ``bf16`` or ``fp16`` (autocast).
        batch_size: images per forward pass.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        workers: decoder processes beside the model (None: chosen for the device, see ``default_workers``;
            0: decode in this process on a thread per core, between forward passes).
        shard_rows: rows per committed shard (the unit of resume).
        draft: JPEG draft decoding (DCT scaling) down to the resize size, for large photos.
        seed: seed of ``--weights random``.
        overwrite: replace a store made with other settings.
        download: allow downloading ImageNet weights into the torch hub cache.
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
    shard_rows: int = 2048
    draft: bool = True
    seed: int = 0
    overwrite: bool = False
    download: bool = True

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise FeatkitError(f"The pool must be one of {', '.join(POOLS)}. Got '{self.pool}' instead.")
        if self.dtype not in DTYPES:
            raise FeatkitError(f"The dtype must be one of {', '.join(DTYPES)}. Got '{self.dtype}' instead.")
        for name in ("batch_size", "shard_rows"):
            if int(getattr(self, name)) < 1:
                raise FeatkitError(f"The {name} must be an integer >= 1. Got {getattr(self, name)} instead.")
        if self.workers is not None and self.workers < 0:
            raise FeatkitError(f"The workers must be an integer >= 0. Got {self.workers} instead.")
