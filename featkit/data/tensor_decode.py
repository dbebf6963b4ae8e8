"""The tensor decoder (``--decoder tensor``): JPEGs into uint8 tensors by libjpeg-turbo, resized as tensor ops.

JPEG files whose pixels come out of libjpeg as they are (RGB or greyscale, no DCT scaling wanted) are decoded by
TorchCodec's ``decode_jpeg``. TorchCodec, not ``torchvision.io``: torchvision 0.29 deprecates its own image
decoders in favour of TorchCodec's (from 0.16), which bundle libjpeg-turbo and nvJPEG and are where the
batched GPU decoder lives on. Every other image (PNG, GIF, WebP, TIFF, CMYK JPEGs, and JPEGs at least twice the
resize size, which libjpeg decodes at 1/2, 1/4 or 1/8 scale through Pillow's draft, as the ``pil`` decoder
does) is decoded by featkit's own decoder, so modes are converted exactly as there.

Then every image is resized (antialiased, ``torchvision.transforms.v2``) and centre-cropped as a uint8 tensor,
in channels-last memory, the layout the model reads. The checks of :mod:`featkit.data.decode` all hold: the
header is read (and the pixel count checked) before any pixel; a file TorchCodec refuses is decoded again by
featkit's decoder, which either succeeds or names the same reason the ``pil`` decoder would.
"""

from __future__ import annotations

import io
import os
from typing import IO, Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode

from featkit.backbones.spec import Preprocess
from featkit.data import jpeg
from featkit.data.decode import (
    DEFAULT_MAX_PIXELS,
    DecodeError,
    ImageHeader,
    ImageSource,
    _decode,
    _display,
    decode_source,
    open_image_file,
    probe_image,
    resized_pixels,
)
from featkit.errors import FeatkitError

JPEG_FORMATS = ("JPEG", "MPO")  # MPO: libjpeg decodes the first image, as Pillow does
_PLAIN_MODES = ("RGB", "L")  # what libjpeg hands over as RGB without featkit's mode conversions


def libjpeg_decodes(header: ImageHeader, min_side: int | None) -> bool:
    """True when TorchCodec's libjpeg decode gives this image's pixels as they are (else Pillow decodes it).

    Not for CMYK/YCCK (Pillow's conversion is featkit's), nor where draft decoding would scale the DCT: that is
    the case when both sides are at least twice ``min_side``.
    """
    if header.format not in JPEG_FORMATS or header.mode not in _PLAIN_MODES:
        return False
    return min_side is None or min(header.size) < 2 * min_side


def torchcodec_decoders() -> Any:
    """TorchCodec's decoders module, or one featkit error saying how to get it."""
    try:
        from torchcodec import decoders
    except (ImportError, OSError, RuntimeError) as exc:  # OSError/RuntimeError: built for another torch
        why = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise FeatkitError(f"--decoder tensor/nvjpeg need TorchCodec (pip install 'torchcodec>=0.16' matching "
                           f"torch {torch.__version__.split('+')[0]}): {why}") from None
    return decoders


def orient(pixels: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (2-8) to a (..., H, W) tensor, as Pillow's transposes do."""
    if orientation == 2:
        return pixels.flip(-1)
    if orientation == 3:
        return pixels.flip(-2, -1)
    if orientation == 4:
        return pixels.flip(-2)
    if orientation == 5:
        return pixels.transpose(-2, -1)
    if orientation == 6:
        return pixels.rot90(-1, (-2, -1))
    if orientation == 7:
        return pixels.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return pixels.rot90(1, (-2, -1))
    return pixels


def resize_crop(pixels: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """uint8 ([N,] 3, H, W) → the ``crop``² centre crop of the image resized to ``pre.resize`` on its short side.

    The result is in channels-last memory, the layout a batch is computed in.
    """
    if resized_pixels((int(pixels.shape[-1]), int(pixels.shape[-2])), pre.resize) > DEFAULT_MAX_PIXELS:
        return _crop_first(pixels, pre)
    out = F.resize(pixels, [pre.resize], interpolation=InterpolationMode(pre.interpolation), antialias=True)
    out = F.center_crop(out, [pre.crop, pre.crop])
    return out.movedim(-3, -1).contiguous().movedim(-1, -3)


def _crop_first(pixels: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """:func:`featkit.data.transforms.crop_first` for uint8 ([N,] 3, H, W) pixels (shapes no photo has; rare)."""
    from featkit.data.transforms import crop_first

    batch = pixels if pixels.dim() == 4 else pixels[None]
    crops = [pil_to_chw(crop_first(Image.fromarray(p.permute(1, 2, 0).cpu().numpy()), pre)) for p in batch]
    out = torch.stack([c.movedim(0, -1) for c in crops]).movedim(-1, 1).to(pixels.device)
    return out if pixels.dim() == 4 else out[0]


def pil_to_chw(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a uint8 (3, H, W) tensor viewing its HWC pixels (channels-last memory)."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)  # np.asarray would be read-only


def decode_tensor(data: bytes, *, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                  name: str = "<bytes>") -> torch.Tensor:
    """Decode image bytes into an RGB uint8 (3, H, W) tensor, upright, with the rules of :func:`decode_bytes`.

    Raises:
        DecodeError: as :func:`featkit.data.decode.decode_bytes` would, with the same reason.
    """
    if len(data) == 0:
        raise DecodeError("empty", f"{name}: no bytes (0 bytes)")
    return decode_tensor_file(io.BytesIO(data), min_side=min_side, max_pixels=max_pixels, name=name)


def decode_tensor_file(fp: IO[bytes], *, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                       name: str = "<file>", header: ImageHeader | None = None) -> torch.Tensor:
    """:func:`decode_tensor` of an open file, whose header alone is read before the checks.

    Only a JPEG that TorchCodec decodes is then read whole; Pillow reads the others as it decodes them, as the
    ``pil`` decoder does. ``header``: what :func:`probe_image` already read of this file, if it was called.
    """
    if header is None:
        header = probe_image(fp, max_pixels=max_pixels, name=name)
    if libjpeg_decodes(header, min_side):
        data = read_all(fp, name)
        pixels = decode_jpeg_cpu(data, header)
        if pixels is not None:
            return pixels
    fp.seek(0)
    return pil_to_chw(_decode(fp, name, max_pixels, min_side))


def decode_jpeg_cpu(data: bytes, header: ImageHeader) -> torch.Tensor | None:
    """TorchCodec's upright pixels of a JPEG, or None where featkit's decoder must decode it.

    None when the file is damaged (featkit's decoder then says why, or manages where libjpeg's strictness differs)
    and when TorchCodec would orient it otherwise than Pillow: TorchCodec reads the orientation from the first
    APP1 segment whatever it holds, Pillow from the first EXIF one and then from XMP.
    """
    if not orients_like_pillow(data, header):
        return None
    try:
        pixels = torchcodec_decoders().decode_jpeg(data, mode="RGB")  # applies the EXIF orientation itself
    except RuntimeError:
        return None
    return upright(pixels, header)


def orients_like_pillow(data: bytes, header: ImageHeader) -> bool:
    """True when a libjpeg-based decoder's EXIF orientation (TorchCodec's, on a CPU or a GPU) is Pillow's, or none."""
    app1 = jpeg.first_app1(data)
    if app1 is None:
        return True  # no EXIF and no XMP: upright for both
    return app1.startswith(b"Exif\0\0") and header.exif_readable


def upright(pixels: torch.Tensor, header: ImageHeader) -> torch.Tensor:
    """TorchCodec's pixels of a JPEG with ``header``, upright: it applies an EXIF orientation, not an XMP one."""
    return pixels if header.orientation_in_exif else orient(pixels, header.orientation)


def read_all(fp: IO[bytes], name: str) -> bytes:
    fp.seek(0)
    try:
        return fp.read()
    except OSError as e:
        raise DecodeError("unreadable", f"{name}: read error: {e.strerror or e}") from None


def load_crop_tensor(source: ImageSource, pre: Preprocess, *, draft: bool = True,
                     name: str | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """:func:`featkit.data.transforms.load_crop` with the tensor decoder: the crop and the decoded (width, height)."""
    min_side = pre.resize if draft else None
    if isinstance(source, (str, os.PathLike)):
        with open_image_file(source) as fp:
            pixels = decode_tensor_file(fp, min_side=min_side, name=_display(source))
    elif isinstance(source, (bytes, bytearray, memoryview)):
        pixels = decode_tensor(bytes(source), min_side=min_side, name=_display(name or "<bytes>"))
    else:  # a PIL image or an array: already pixels, brought to RGB by featkit's decoder
        pixels = pil_to_chw(decode_source(source, name=name))
    return resize_crop(pixels, pre), (int(pixels.shape[-1]), int(pixels.shape[-2]))
