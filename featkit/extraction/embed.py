"""Images → vectors in memory: the one path from pixels to features.

:class:`Embedder` holds a loaded model and turns images (file paths, image bytes, PIL images, uint8 arrays) into
``{tap: vectors}``, batched, with the store's decode, preprocessing, precision and bad-file records. Everything
that computes features goes through it: ``featkit extract`` writes what it yields into a store, and a search by
image embeds its queries with it, in memory, with the settings the indexed store recorded.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from featkit._device import HostStaging, Runtime, machine_cores, resolve_runtime, start_fetch
from featkit.backbones.registry import describe
from featkit.backbones.spec import TapSpec
from featkit.backbones.weights import load_backbone_weights
from featkit.choices import Decoder
from featkit.data.decode import ImageSource
from featkit.data.loader import make_loader
from featkit.data.nvjpeg import GpuJpegDecoder, merge_decoded
from featkit.data.tensor_decode import torchcodec_decoders
from featkit.data.transforms import normalize_batch
from featkit.errors import ParameterError
from featkit.extraction.config import (
    DEFAULT_MODEL,
    ExtractConfig,
    default_workers,
    settings_of,
)
from featkit.extraction.engine import TapExtractor
from featkit.extraction.replicas import ReplicaPool, per_thread_counts, replica_layout
from featkit.store.settings import StoreSettings

FAILURE_COLUMNS = ["position", "path", "reason", "message"]


def resolve_taps(model: str, names: Sequence[str]) -> list[TapSpec]:
    """The taps of ``model`` that ``names`` (names or aliases) stand for, in order, each once.

    No names stand for the model's default tap.
    """
    spec = describe(model)
    taps: list[TapSpec] = []
    for name in names or (spec.default_tap,):
        tap = spec.tap(name)
        if tap not in taps:
            taps.append(tap)
    return taps


@dataclass(frozen=True)
class EmbeddedBatch:
    """What :meth:`Embedder.batches` yields: one forward pass's features, or files that failed to decode.

    A batch may carry only failures (no features): those are yielded in input order, before any later image's
    features, so a consumer sees every input in order (one chunk after it was decoded: on a GPU the next chunk's
    decode is queued before the last batch's features are waited for).

    Attributes:
        features: tap → (n, dims) array in the configured dtype; empty when the batch is only failures.
        positions: input index of each row.
        sizes: decoded (width, height) of each row's image.
        failures: (input index, reason code, message) of inputs that could not be decoded.
    """

    features: dict[str, np.ndarray]
    positions: list[int]
    sizes: list[tuple[int, int]]
    failures: list[tuple[int, str, str]]


class Embedder:
    """A loaded model that embeds images: ``Embedder(config)(images)`` → an :class:`Embedding`.

    Args:
        config: what to extract and how (model, taps, weights, pool, l2, dtype, precision, device, ...).
    """

    def __init__(self, config: ExtractConfig):
        self.config = config
        self.taps = resolve_taps(config.model, config.taps)
        self.runtime: Runtime = resolve_runtime(config.device, config.precision)
        # auto is resolved here for this device; featkit extract resolves it once for all of a run's devices
        self.decoder = resolve_decoder(config.decoder, [self.runtime.device.type]) if config.decoder == Decoder.auto \
            else str(config.decoder)
        model, self.weights = load_backbone_weights(config.model, config.weights, seed=config.seed,
                                                    download=config.download)
        self.extractor = TapExtractor(model, self.taps, self.runtime, pool=config.pool, l2=config.l2)
        self.settings: StoreSettings = settings_of(config, self.taps, self.weights, self.decoder)
        self._np_dtype = np.dtype(config.dtype)

    @property
    def preprocess(self):
        return self.weights.preprocess

    def dims(self) -> dict[str, int]:
        """Each tap's vector length (one forward pass of a blank image, so it is right for any input size)."""
        with torch.inference_mode():
            crop = self.preprocess.crop
            probe = torch.zeros(1, 3, crop, crop, device=self.runtime.device)
            return {k: int(v.shape[1]) for k, v in self.extractor(probe).items()}

    def decoders(self, n: int) -> int:
        """Decoder processes for ``n`` images.

        The configured number (or the device's default), none for fewer than a batch (starting processes would
        cost more than they save), at most one per batch.
        """
        workers = default_workers(self.runtime.device.type) if self.config.workers is None else self.config.workers
        return min(workers, n // self.config.batch_size)

    def replicas(self, n: int) -> tuple[int, int]:
        """(model replicas, intra-op threads each) computing ``n`` images (:mod:`featkit.extraction.replicas`).

        On a CPU: ``config.replicas`` (None: one per thread, one thread each up to 8 cores), at most one per batch.
        The threads each replica gets depend on the machine's cores, not on ``n``, the decoders or this process's
        share of the cores, so neither do the numbers: a store's rows are bitwise the same whether they were
        computed in one run or several, by loader processes or threads, or by ``--procs`` workers. Elsewhere (or
        on a torch without per-thread counts): one, on every thread.
        """
        threads = torch.get_num_threads()
        if self.runtime.device.type != "cpu" or not per_thread_counts():
            return 1, threads
        replicas, each = replica_layout(threads, self.config.replicas, machine_cores())
        return max(1, min(replicas, -(-n // self.config.batch_size))), each

    def describe(self, n: int) -> str:
        """Where and how ``n`` images are computed, for the run log: ``cpu, 2 replicas × 1 thread, fp32``."""
        replicas, each = self.replicas(n)
        if each == torch.get_num_threads():
            return self.runtime.describe()
        return (f"{self.runtime.device.type}, {replicas} replica{'s' * (replicas > 1)} × {each} "
                f"thread{'s' * (each > 1)}, {self.runtime.precision}")

    def batches(self, sources: Sequence[ImageSource], *, names: Sequence[str] | None = None,
                boundary: int | None = None, cuts: Sequence[int] = (), progress: bool = False,
                desc: str = "extract") -> Iterator[EmbeddedBatch]:
        """Decode, crop and forward ``sources`` in batches of ``config.batch_size`` good images, in input order.

        Args:
            sources: file paths, image bytes, PIL images or uint8 arrays.
            names: how in-memory sources are called in failure messages (default ``<image N>``).
            boundary: batches never straddle a multiple of this many good images, so a run that resumes at such
                a multiple (a store's shard) forms exactly the batches an uninterrupted run would have.
            cuts: input positions where a new group starts (a store's partition): no batch (or failures-only
                batch) holds inputs of two groups, and ``boundary`` counts from each group's start, so each group
                gets the batches it would get alone, from one loader that keeps its decoders busy across groups.
            progress: show a progress bar.
            desc: what the bar says it is doing.
        """
        if self.decoder == Decoder.nvjpeg:
            resolve_decoder(self.decoder, [self.runtime.device.type])  # a GPU is needed from here on
        elif self.decoder != Decoder.pil:
            torchcodec_decoders()
        n = len(sources)
        names = _names(sources) if names is None else names
        replicas, threads_each = self.replicas(n)
        pool = None if threads_each == torch.get_num_threads() else ReplicaPool(replicas, threads_each)
        try:
            yield from self._batches(sources, names, boundary, cuts, progress, desc, pool)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _forward(self, x: torch.Tensor) -> Callable[[], dict[str, torch.Tensor]]:
        """Start the features of a uint8 batch; the returned call waits for them on the host."""
        # convert the uint8 batch: the float ops keep the layout (no float copy); MPS wants it contiguous
        x = x.contiguous(memory_format=torch.channels_last if self.runtime.channels_last else torch.contiguous_format)
        return start_fetch(self.extractor(normalize_batch(x, self.preprocess)))

    def _compute(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of a uint8 batch, on the host (on a replica's thread)."""
        return self._forward(x)()

    def _batches(self, sources: Sequence[ImageSource], names: Sequence[str], boundary: int | None,
                 cuts: Sequence[int], progress: bool, desc: str, pool: ReplicaPool | None) -> Iterator[EmbeddedBatch]:
        cfg = self.config
        n = len(sources)
        # one replica decodes a chunk while another computes; with one replica, every thread decodes each chunk
        side_by_side = pool if pool is not None and pool.replicas > 1 else None
        loader = make_loader(sources, range(n), self.preprocess, chunk=cfg.batch_size, workers=self.decoders(n),
                             draft=cfg.draft, names=names, decoder=self.decoder, pool=side_by_side,
                             ahead=pool.replicas if pool is not None else 0)
        staging = HostStaging(self.runtime.device)
        gpu = GpuJpegDecoder(self.runtime.device, self.preprocess, draft=cfg.draft) \
            if self.decoder == Decoder.nvjpeg else None
        pixels: list[torch.Tensor] = []
        positions: list[int] = []
        sizes: list[tuple[int, int]] = []
        # batches whose features are still being computed and copied (on a GPU, or by replicas), in input order,
        # failures included: (wait for the features, are they ready, positions, sizes, failures)
        pending: list[tuple[Callable[[], dict[str, torch.Tensor]], Callable[[], bool], list[int],
                            list[tuple[int, int]], list]] = []
        done = 0  # good images forwarded so far
        # with replicas, up to one batch per replica is computed while this thread batches the next chunk
        in_flight = pool.replicas if pool is not None else 0

        def room() -> int:
            left = cfg.batch_size if boundary is None else boundary - done % boundary
            return min(cfg.batch_size, left)

        def forward(count: int) -> None:
            nonlocal pixels, positions, sizes, done
            batch = torch.cat(pixels) if len(pixels) > 1 else pixels[0]
            x, rest = batch[:count], batch[count:]
            if pool is None:
                pending.append((self._forward(x), ready_now, positions[:count], sizes[:count], []))
            else:
                future = pool.submit(self._compute, x)
                pending.append((future.result, future.done, positions[:count], sizes[:count], []))
            pixels = [rest] if len(rest) else []
            positions, sizes = positions[count:], sizes[count:]
            done += count

        def ready(keep: int = 0) -> Iterator[EmbeddedBatch]:
            """The pending batches in order, until at most ``keep`` are left whose features are still coming."""
            while pending and (len(pending) > keep or pending[0][1]()):
                fetch, _, pos, size, fails = pending.pop(0)
                feats = fetch()
                yield EmbeddedBatch({tap: v.numpy().astype(self._np_dtype, copy=False) for tap, v in feats.items()},
                                    pos, size, fails)

        nothing: Callable[[], dict[str, torch.Tensor]] = dict
        group = 0  # the group of the inputs being batched: the number of cuts at or before them
        # the bar counts images handed on (computed, or recorded as failures), not images decoded ahead
        with tqdm(total=n, unit="img", disable=not progress, dynamic_ncols=True, desc=desc) as bar:
            for chunk in loader:
                if gpu is not None and chunk.encoded:
                    chunk = merge_decoded(chunk, gpu.decode(chunk.encoded), staging.to_device)
                # this chunk's decode is queued (on a GPU): now wait for the last chunk's batches
                for batch in ready(in_flight):
                    bar.update(len(batch.positions) + len(batch.failures))
                    yield batch
                for piece_group, fails, (lo, hi) in _by_group(chunk, cuts):
                    if piece_group != group:  # a new group: the last one's images go first, in their own batches
                        while positions:
                            forward(min(room(), len(positions)))
                        group, done = piece_group, 0
                    if fails:
                        pending.append((nothing, ready_now, [], [], fails))
                    if hi > lo:
                        pixels.append(staging.to_device(chunk.pixels[lo:hi]))
                        positions += chunk.positions[lo:hi]
                        sizes += chunk.sizes[lo:hi]
                    while len(positions) >= room():
                        forward(room())
            while positions:
                forward(min(room(), len(positions)))
            for batch in ready():
                bar.update(len(batch.positions) + len(batch.failures))
                yield batch

    def __call__(self, sources: Sequence[ImageSource], *, names: Sequence[str] | None = None,
                 progress: bool = False) -> Embedding:
        """Embed ``sources`` and collect the vectors of every tap (rows: the images that decoded, in order).

        Batches break where a store's shards would, so the vectors are bitwise those a store made with the same
        settings and batch size holds.
        """
        names = _names(sources) if names is None else names
        parts: dict[str, list[np.ndarray]] = {t.name: [] for t in self.taps}
        positions: list[int] = []
        failures: list[tuple[int, str, str]] = []
        for batch in self.batches(sources, names=names, boundary=self.settings.shard_rows, progress=progress):
            for tap, array in batch.features.items():
                parts[tap].append(array)
            positions += batch.positions
            failures += batch.failures
        dims = self.dims() if not positions else {}
        features = {tap: np.concatenate(arrays) if arrays else np.empty((0, dims[tap]), dtype=self._np_dtype)
                    for tap, arrays in parts.items()}
        fails = pd.DataFrame([(p, names[p], r, m) for p, r, m in failures], columns=FAILURE_COLUMNS)
        return Embedding(features, np.asarray(positions, dtype=np.int64), [names[p] for p in positions], fails,
                         self.settings)

    def embed(self, images: ImageSource | Iterable[ImageSource], *, progress: bool = False) -> Embedding:
        """Like calling the embedder, after listing folders into their image files (:func:`expand_sources`).

        Names that could not even be listed are among the failures, with position -1.
        """
        sources, names, unlisted = expand_sources(images)
        result = self(sources, names=names, progress=progress)
        if unlisted:
            extra = pd.DataFrame([{"position": -1, **row} for row in unlisted], columns=FAILURE_COLUMNS)
            result = dataclasses.replace(result, failures=pd.concat([result.failures, extra], ignore_index=True))
        return result


def ready_now() -> bool:
    return True


def resolve_decoder(decoder: str, device_types: Sequence[str]) -> str:
    """The one decoder all of a run's processes use on ``device_types`` (auto: nvjpeg if all are CUDA, else tensor).

    Raises:
        ParameterError: ``nvjpeg`` where a device is not CUDA.
        FeatkitError: TorchCodec, which the tensor and nvJPEG decoders use, cannot be loaded.
    """
    on_gpus = set(device_types) == {"cuda"}
    if decoder == Decoder.auto:
        decoder = Decoder.nvjpeg if on_gpus else Decoder.tensor
    if decoder == Decoder.nvjpeg and not on_gpus:
        where = ", ".join(sorted(set(device_types)))
        raise ParameterError(f"--decoder nvjpeg decodes on a CUDA GPU, and this run computes on {where}; "
                             f"use --decoder tensor (or auto) there.")
    if decoder != Decoder.pil:
        torchcodec_decoders()
    return str(decoder)


def _by_group(chunk, cuts: Sequence[int]) -> Iterator[tuple[int, list, tuple[int, int]]]:
    """A decoded chunk split where ``cuts`` fall: (group, its failures, its range of the chunk's good images)."""
    import bisect

    if not cuts:
        yield 0, list(chunk.failures), (0, len(chunk.positions))
        return
    groups = sorted({bisect.bisect_right(cuts, p) for p in chunk.positions}
                    | {bisect.bisect_right(cuts, f[0]) for f in chunk.failures})
    for g in groups:
        lo = bisect.bisect_left(chunk.positions, cuts[g - 1]) if g > 0 else 0
        hi = bisect.bisect_left(chunk.positions, cuts[g]) if g < len(cuts) else len(chunk.positions)
        fails = [f for f in chunk.failures if bisect.bisect_right(cuts, f[0]) == g]
        yield g, fails, (lo, hi)


def _names(sources: Sequence[ImageSource]) -> list[str]:
    """How failures and rows call each source: a path is its own name, in-memory images are ``<image N>``."""
    return [os.fsdecode(s) if isinstance(s, (str, os.PathLike)) else f"<image {i}>" for i, s in enumerate(sources)]


@dataclass(frozen=True)
class Embedding(Mapping[str, np.ndarray]):
    """Vectors of images, one row per image that decoded: ``embedding["fc7"]`` is an (n, dims) array.

    Attributes:
        features: tap → (n, dims) array.
        positions: the input index of each row (inputs that failed have no row).
        names: each row's path (``<image N>`` for in-memory images).
        failures: position, path, reason, message of each input that could not be decoded.
        settings: how the vectors were computed (the settings a store made the same way records).
    """

    features: dict[str, np.ndarray]
    positions: np.ndarray
    names: list[str]
    failures: pd.DataFrame
    settings: StoreSettings

    def __getitem__(self, tap: str) -> np.ndarray:
        return self.features[tap]

    def __iter__(self) -> Iterator[str]:
        return iter(self.features)

    def __len__(self) -> int:
        return len(self.features)

    def __repr__(self) -> str:
        taps = ", ".join(f"{t} {a.shape[1]}-d" for t, a in self.features.items())
        return (f"Embedding({len(self.positions)} images, {len(self.failures)} failed; {self.settings.model} "
                f"{self.settings.weights.id}: {taps})")


def expand_sources(images: ImageSource | Iterable[ImageSource]) -> tuple[list[ImageSource], list[str], list[dict]]:
    """Folders become their image files (as ``featkit extract`` lists them), in order; other sources stay.

    Returns:
        The sources, their names (paths, or ``<image N>``) and the names that could not be listed
        (dicts of path, reason, message).
    """
    from PIL import Image

    from featkit.data.shards import is_shard
    from featkit.data.sources import is_list_file, list_inputs

    one = (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray)
    # one image, or a collection of them: a list, a generator (Path.glob), a set...
    single = isinstance(images, one) or not isinstance(images, Iterable)
    items: list[ImageSource] = [cast(ImageSource, images)] if single else list(cast(Iterable[ImageSource], images))
    sources: list[ImageSource] = []
    names: list[str] = []
    unlisted: list[dict] = []
    for item in items:
        if (isinstance(item, (str, os.PathLike)) and os.path.isfile(item) and not is_list_file(item)
                and not is_shard(item)):
            # one image file: as list_inputs would list it, without a table
            path = os.path.abspath(os.path.expanduser(item))
            sources.append(path)
            names.append(path)
        elif isinstance(item, (str, os.PathLike)):
            listing = list_inputs(item, layout="flat")  # every image: embedding needs no labels
            sources += listing.table["path"].tolist()
            names += listing.table["path"].tolist()
            unlisted += listing.bad_names.to_dict("records") if len(listing.bad_names) else []
        else:
            names.append(f"<image {len(sources)}>")
            sources.append(item)
    return sources, names, unlisted


def config_for(settings: StoreSettings, *, taps: Sequence[str] | None = None,
               weights: str | os.PathLike | None = None, device: str = "auto",
               batch_size: int = 32) -> ExtractConfig:
    """The extraction config that computes vectors the way ``settings`` (a store's) say.

    Raises:
        ValueError: the settings used a weights file and ``weights`` (its path) is not given.
    """
    w = settings.weights
    if w.kind == "file" and weights is None:
        raise ValueError("the weights file's path is needed")
    weights = {"imagenet": "imagenet", "random": "random"}.get(w.kind, str(weights))
    return ExtractConfig(model=settings.model, taps=tuple(taps) if taps is not None else settings.tap_names,
                         weights=weights, pool=settings.pool, l2=settings.l2, dtype=settings.dtype,
                         precision=settings.precision, draft=settings.draft, decoder=settings.decoder,
                         seed=w.seed or 0,
                         batch_size=batch_size, device=device, download=False)


def embed(images: ImageSource | Iterable[ImageSource], *, model: str = DEFAULT_MODEL, weights: str = "imagenet",
          layers: str | Sequence[str] = (), pool: str = "none", progress: bool = False, **options) -> Embedding:
    """Vectors of ``layers`` of ``model`` for ``images``, in memory (nothing is written).

    The same decode, preprocessing and precision as :func:`featkit.extract`: for the same images and settings the
    vectors equal those a feature store holds.

    Args:
        images: a file path, a folder (its images, as extract lists them), an image file's bytes, a PIL image, a
            uint8 array (H, W[, 3|4]), or a sequence of these.
        model: backbone name (``featkit.list_backbones()``).
        weights: ``imagenet``, ``random`` or a weights file (loaded with ``weights_only=True``).
        layers: tap names or aliases (default: the backbone's default tap).
        pool: how maps and token lists become vectors: ``none`` (flatten); ``avg`` (= ``mean``), ``max``,
            ``gem`` over positions or tokens; ``cls``: a ViT's class token (see ``featkit taps MODEL``).
        progress: show a progress bar.
        **options: any other :class:`~featkit.ExtractConfig` field (l2, dtype, precision, batch_size, device, ...).

    Returns:
        An :class:`Embedding`: ``result["fc7"]`` is an (n, dims) array, one row per image that decoded
        (``result.failures`` says which did not and why; ``result.positions`` maps rows to inputs).
    """
    taps = (layers,) if isinstance(layers, str) else tuple(layers)
    config = ExtractConfig(model=model, taps=taps, weights=weights, pool=pool, **options)
    return Embedder(config).embed(images, progress=progress)

