"""Parallel decoding: a DataLoader whose workers decode and crop while the main process runs the model.

Bad files never stop a run: a worker turns them into failure records, and the batch carries the good
crops together with the positions they came from, so rows stay aligned with paths.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset

from featkit.backbones.spec import Preprocess
from featkit.choices import Decoder
from featkit.data.decode import (
    DEFAULT_MAX_PIXELS,
    DecodeError,
    ImageSource,
    _display,
    open_image_file,
    probe_image,
    resized_pixels,
)
from featkit.data.nvjpeg import EncodedJpeg, gpu_decodes
from featkit.data.tensor_decode import decode_tensor_file, libjpeg_decodes, load_crop_tensor, read_all, resize_crop
from featkit.data.transforms import load_crop


@dataclass
class DecodedChunk:
    """What the loader yields for a run of consecutive inputs."""

    positions: list[int]  # input positions of the good images, in order
    pixels: torch.Tensor  # uint8 (len(positions), 3, crop, crop)
    sizes: list[tuple[int, int]]  # decoded (width, height) per good image
    failures: list[tuple[int, str, str]]  # (input position, reason code, message)
    last_position: int  # the last input position this chunk covers
    encoded: list[EncodedJpeg] = field(default_factory=list)  # JPEGs for the GPU decoder (--decoder nvjpeg)


class CropDataset(Dataset):
    """Decoded, resized and cropped images of ``sources`` (paths, bytes, PIL images, arrays), or why not."""

    def __init__(self, sources: Sequence[ImageSource], positions: Sequence[int], pre: Preprocess, draft: bool,
                 names: Sequence[str] | None = None, decoder: str = Decoder.pil):
        self.sources, self.positions, self.pre, self.draft = list(sources), list(positions), pre, draft
        self.names = list(names) if names is not None else None
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        """(position, crop, size, failure) of input ``i``; the crop is an :class:`EncodedJpeg` for the GPU."""
        try:
            name = self.names[i] if self.names is not None else None
            if self.decoder == Decoder.nvjpeg:
                return (self.positions[i], *self._for_gpu(self.sources[i], name), None)
            load = load_crop if self.decoder == Decoder.pil else load_crop_tensor
            crop, size = load(self.sources[i], self.pre, draft=self.draft, name=name)
            return self.positions[i], crop, size, None
        except DecodeError as exc:
            return self.positions[i], None, None, (exc.reason, str(exc))
        except Exception as exc:  # noqa: BLE001 - a decoder bug must not kill an hours-long run
            return self.positions[i], None, None, ("decode_error", f"{type(exc).__name__}: {exc}")

    def _for_gpu(self, source: ImageSource, name: str | None) -> tuple[torch.Tensor | EncodedJpeg, tuple[int, int]]:
        if isinstance(source, (str, os.PathLike)):
            with open_image_file(source) as fp:
                return self._file_for_gpu(fp, _display(source))
        if isinstance(source, (bytes, bytearray, memoryview)):
            if not len(source):
                return load_crop_tensor(source, self.pre, draft=self.draft, name=name)  # says why
            return self._file_for_gpu(io.BytesIO(bytes(source)), _display(name or "<bytes>"))
        return load_crop_tensor(source, self.pre, draft=self.draft, name=name)

    def _file_for_gpu(self, fp, label: str) -> tuple[torch.Tensor | EncodedJpeg, tuple[int, int]]:
        header = probe_image(fp, name=label)
        on_gpu = resized_pixels(header.size, self.pre.resize) <= DEFAULT_MAX_PIXELS  # else crop first, on the CPU
        if on_gpu and libjpeg_decodes(header, None) and not header.progressive:  # only these are read whole here
            data = read_all(fp, label)
            if gpu_decodes(header, data):
                return EncodedJpeg(-1, data, header, label), header.size
        pixels = decode_tensor_file(fp, min_side=self.pre.resize if self.draft else None, name=label, header=header)
        return resize_crop(pixels, self.pre), (int(pixels.shape[-1]), int(pixels.shape[-2]))


def collate(items, crop: int) -> DecodedChunk:
    good = [(pos, t, size) for pos, t, size, fail in items if fail is None and not isinstance(t, EncodedJpeg)]
    encoded = [dataclasses.replace(t, position=pos) for pos, t, _, fail in items if isinstance(t, EncodedJpeg)]
    # stacked in channels-last memory, the layout the batch is computed in (crops are HWC in memory)
    pixels = (torch.stack([t.movedim(0, -1) for _, t, _ in good]).movedim(-1, 1) if good
              else torch.empty((0, 3, crop, crop), dtype=torch.uint8))
    return DecodedChunk(
        positions=[pos for pos, _, _ in good],
        pixels=pixels,
        sizes=[size for _, _, size in good],
        failures=[(pos, fail[0], fail[1]) for pos, _, _, fail in items if fail is not None],
        last_position=items[-1][0],
        encoded=encoded,
    )


class _Collate:  # a picklable callable for worker processes
    def __init__(self, crop: int):
        self.crop = crop

    def __call__(self, items):
        return collate(items, self.crop)


class ThreadedChunks:
    """Decode each chunk with a pool of threads in this process, between forward passes.

    On a CPU the model already keeps every core busy, so decoder processes running alongside it only steal
    its cores (and stall its OpenMP barriers); decoding a chunk on all cores, then computing, is faster.
    PIL releases the GIL while it decodes and resizes.
    """

    def __init__(self, dataset: CropDataset, chunk: int, threads: int):
        self.dataset, self.chunk, self.threads = dataset, chunk, threads

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.chunk)

    def __iter__(self):
        n = len(self.dataset)
        if n == 1:  # one query image: starting threads would cost more than they save
            yield collate([self.dataset[0]], self.dataset.pre.crop)
            return
        with ThreadPoolExecutor(self.threads, thread_name_prefix="featkit-decode") as pool:
            for start in range(0, n, self.chunk):
                items = list(pool.map(self.dataset.__getitem__, range(start, min(start + self.chunk, n))))
                yield collate(items, self.dataset.pre.crop)


class PooledChunks:
    """Decode each chunk whole in one thread of ``pool``, ``ahead`` chunks ahead, and yield them in order.

    The pool's threads also compute the model's batches (:class:`featkit.extraction.replicas.ReplicaPool`): while
    one thread decodes a chunk another computes, so decoding no longer waits for the model or the model for it.
    """

    def __init__(self, dataset: CropDataset, chunk: int, pool: Executor, ahead: int):
        self.dataset, self.chunk, self.pool, self.ahead = dataset, chunk, pool, max(1, ahead)

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.chunk)

    def _decode(self, start: int) -> DecodedChunk:
        stop = min(start + self.chunk, len(self.dataset))
        return collate([self.dataset[i] for i in range(start, stop)], self.dataset.pre.crop)

    def __iter__(self):
        starts = iter(range(0, len(self.dataset), self.chunk))
        queued: deque[Future[DecodedChunk]] = deque(self.pool.submit(self._decode, s)
                                                    for _, s in zip(range(self.ahead), starts, strict=False))
        try:
            while queued:
                decoded = queued.popleft().result()
                if (start := next(starts, None)) is not None:
                    queued.append(self.pool.submit(self._decode, start))
                yield decoded
        finally:  # the consumer stopped early (an error, Ctrl-C): chunks not started are not decoded
            for future in queued:
                future.cancel()


def make_loader(sources: Sequence[ImageSource], positions: Sequence[int], pre: Preprocess, *, chunk: int,
                workers: int, draft: bool = True, names: Sequence[str] | None = None,
                decoder: str = Decoder.pil, pool: Executor | None = None, ahead: int = 2):
    """Chunks of ``chunk`` consecutive inputs, in order.

    They are decoded by ``workers`` processes running alongside the model, or (``workers=0``) by a thread per core
    in this process before each chunk is computed.

    ``names`` are how in-memory sources are called in failure messages (a path is its own name). ``decoder`` is
    ``pil``, ``tensor`` or ``nvjpeg`` (whose JPEGs the chunks carry encoded, for :mod:`featkit.data.nvjpeg`).
    With ``pool`` (and ``workers=0``), each chunk is decoded by one of its threads, ``ahead`` chunks ahead.
    """
    dataset = CropDataset(sources, positions, pre, draft, names, decoder)
    if workers == 0 and pool is not None:
        return PooledChunks(dataset, chunk, pool, ahead)
    if workers == 0:
        return ThreadedChunks(dataset, chunk, max(1, torch.get_num_threads()))
    return DataLoader(
        dataset,
        batch_size=chunk,
        shuffle=False,
        num_workers=workers,
        collate_fn=_Collate(pre.crop),
        persistent_workers=False,
        # JPEG bytes for the GPU are bigger than crops: fewer chunks wait in the pipes
        prefetch_factor=(2 if decoder == Decoder.nvjpeg else 4) if workers > 0 else None,
    )
