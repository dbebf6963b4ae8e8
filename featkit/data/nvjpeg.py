"""The GPU decoder (``--decoder nvjpeg``): JPEGs decoded in batches by nvJPEG and resized on the GPU.

Decoder workers read each file, parse its header (the pixel-count guard, EXIF orientation) and check that its
entropy-coded data reaches the end-of-image marker (nvJPEG may decode a cut-off file without a word). Plain,
whole baseline JPEGs travel to the main process as their bytes (pinned for the copy) and are decoded at full
size (DCT scaling is a CPU shortcut); everything else (other formats, CMYK, progressive JPEGs) is decoded and
cropped by the workers with the ``tensor`` decoder. The main process decodes each chunk's JPEGs in one nvJPEG
call on a side CUDA stream, so the decode overlaps the previous batch's forward pass, then orients, resizes
(antialiased, as on the CPU) and crops them there. A batch nvJPEG refuses is decoded file by file; a file it
still refuses goes to the CPU decoder, which decodes it or names the reason, as for any other run.
"""

from __future__ import annotations

import dataclasses
import io
from collections import defaultdict
from dataclasses import dataclass

import torch
from PIL import Image

from featkit._device import SideStream, is_gpu_memory_error
from featkit.backbones.spec import Preprocess
from featkit.data import jpeg
from featkit.data.decode import DecodeError, ImageHeader
from featkit.data.tensor_decode import (
    decode_tensor,
    libjpeg_decodes,
    orients_like_pillow,
    resize_crop,
    torchcodec_decoders,
    upright,
)
from featkit.errors import FeatkitError

MAX_PIXELS = 64 * 2**20  # per resize on the GPU: 32 twelve-megapixel photos at once would take ~6 GB in float


@dataclass
class EncodedJpeg:
    """A JPEG file's bytes on their way to the GPU decoder, with what its header said."""

    position: int
    data: bytes  # the file's: pickled through the loader's pipe (a tensor each would cost a shared-memory file)
    header: ImageHeader
    name: str


def gpu_decodes(header: ImageHeader, data: bytes) -> bool:
    """True when the GPU decoder takes this file: a plain, whole, baseline JPEG (see the module's docstring).

    At full size whatever its size: the GPU resizes it (DCT scaling is a CPU decoder's shortcut).
    """
    return (libjpeg_decodes(header, None) and not header.progressive and jpeg.is_whole(data)
            and orients_like_pillow(data, header))


class GpuJpegDecoder:
    """Decodes chunks' :class:`EncodedJpeg` on ``device`` into crops, on a side stream."""

    def __init__(self, device: torch.device, pre: Preprocess, *, draft: bool = True):
        self.device, self.pre, self.draft = device, pre, draft
        self.side = SideStream(device)
        self.decoders = torchcodec_decoders()
        self._check_works()

    def _check_works(self) -> None:
        # a GPU decoder that cannot work here stops the run in one line, rather than each file falling back to the
        # CPU, slowly, in a store that says nvjpeg
        sample = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 30, 30)).save(sample, "JPEG")
        try:
            self.decoders.decode_jpeg([sample.getvalue()], mode="RGB", device=self.device)
        except RuntimeError as exc:
            if is_gpu_memory_error(exc):
                raise
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FeatkitError(f"nvJPEG cannot decode on {self.device} here ({why}); use --decoder tensor.") from None

    def decode(self, items: list[EncodedJpeg]):
        """(positions, uint8 crops (n, 3, crop, crop) on the device, sizes, failures) for ``items``, in their order.

        The crops are ready for the current stream to use; the work runs on the side stream.
        """
        positions, crops, sizes, failures = self.side.run(self._decode, items)
        return positions, self.side.hand_over(crops), sizes, failures

    def _decode(self, items: list[EncodedJpeg]):
        images = self._nvjpeg(items)
        ok: list[tuple[EncodedJpeg, torch.Tensor]] = []
        failures: list[tuple[int, str, str]] = []
        for item, pixels in zip(items, images, strict=True):
            if pixels is None:  # nvJPEG refused it: the CPU decoder decodes it or says why
                try:
                    pixels = decode_tensor(item.data, min_side=self._min_side, name=item.name)
                except DecodeError as exc:
                    failures.append((item.position, exc.reason, str(exc)))
                    continue
                ok.append((item, pixels.to(self.device)))
            else:
                ok.append((item, upright(pixels, item.header)))
        crop = self.pre.crop
        # images of one shape (most collections have a few) are resized together, MAX_PIXELS at a time
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, (_, pixels) in enumerate(ok):
            by_shape[tuple(pixels.shape)].append(i)
        groups = [rows[j:j + max(1, MAX_PIXELS // (shape[-1] * shape[-2]))] for shape, rows in by_shape.items()
                  for j in range(0, len(rows), max(1, MAX_PIXELS // (shape[-1] * shape[-2])))]
        if len(groups) == 1:  # the common case: no scatter (an index from the host would wait for the stream)
            out = resize_crop(torch.stack([pixels for _, pixels in ok]), self.pre)
        else:
            out = torch.empty((len(ok), crop, crop, 3), dtype=torch.uint8, device=self.device).permute(0, 3, 1, 2)
            for rows in groups:
                out[rows] = resize_crop(torch.stack([ok[i][1] for i in rows]), self.pre)
        sizes = [(int(p.shape[-1]), int(p.shape[-2])) for _, p in ok]
        return [item.position for item, _ in ok], out, sizes, failures

    @property
    def _min_side(self) -> int | None:
        return self.pre.resize if self.draft else None

    def _nvjpeg(self, items: list[EncodedJpeg]) -> list[torch.Tensor | None]:
        if not items:
            return []
        try:
            return list(self.decoders.decode_jpeg([it.data for it in items], mode="RGB", device=self.device))
        except RuntimeError as exc:
            if is_gpu_memory_error(exc):
                raise
            # one bad file fails the whole batch: try them one by one
        out: list[torch.Tensor | None] = []
        for it in items:
            try:
                out.append(self.decoders.decode_jpeg(it.data, mode="RGB", device=self.device))
            except RuntimeError as exc:
                if is_gpu_memory_error(exc):
                    raise
                out.append(None)
        return out


def merge_decoded(chunk, decoded, to_device):
    """``chunk`` (a :class:`~featkit.data.loader.DecodedChunk`) with the GPU-decoded crops merged in input order.

    ``to_device`` moves the chunk's CPU-decoded crops to the GPU decoder's device.
    """
    g_positions, g_crops, g_sizes, g_failures = decoded
    positions = chunk.positions + g_positions
    order = sorted(range(len(positions)), key=positions.__getitem__)
    pixels = torch.cat([to_device(chunk.pixels), g_crops]) if len(chunk.positions) else g_crops
    if order != list(range(len(order))):
        pixels = pixels[torch.tensor(order, device=pixels.device)]
    sizes = chunk.sizes + g_sizes
    return dataclasses.replace(chunk, positions=[positions[i] for i in order], pixels=pixels,
                               sizes=[sizes[i] for i in order], failures=sorted(chunk.failures + g_failures),
                               encoded=[])
