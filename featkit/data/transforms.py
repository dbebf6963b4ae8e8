"""Preprocessing split in two: per-image work on uint8 pixels (in loader workers), normalisation per batch.

Workers hand over uint8 crops (4× less to copy between processes than float32); the batch is converted and
normalised on the device that runs the model, with the same arithmetic as torchvision's
``ImageClassification`` transform (divide by 255, subtract mean, divide by std).
"""

from __future__ import annotations

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from featkit.backbones.spec import Preprocess
from featkit.data.decode import DEFAULT_MAX_PIXELS, ImageSource, decode_source, resized_pixels


def crop_image(image: Image.Image, pre: Preprocess) -> torch.Tensor:
    """Resize the shorter side, centre-crop, and return a uint8 (3, crop, crop) tensor."""
    if resized_pixels(image.size, pre.resize) > DEFAULT_MAX_PIXELS:
        return TF.pil_to_tensor(crop_first(image, pre))
    image = TF.resize(image, pre.resize, interpolation=InterpolationMode(pre.interpolation), antialias=True)
    image = TF.center_crop(image, pre.crop)
    return TF.pil_to_tensor(image)


def load_crop(source: ImageSource, pre: Preprocess, *, draft: bool = True,
              name: str | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Decode ``source`` (JPEG draft decoding down to the resize size when ``draft``) and crop it.

    Args:
        source: a file path, an image file's bytes, a PIL image or a uint8 array.
        pre: the preprocessing.
        draft: decode JPEG files and bytes at the smallest DCT scale still at least the resize size.
        name: how an in-memory source is called in error messages.

    Returns:
        The uint8 crop and the decoded image's (width, height).

    Raises:
        featkit.data.decode.DecodeError: the source is not a usable image.
    """
    image = decode_source(source, min_side=pre.resize if draft else None, name=name)
    return crop_image(image, pre), image.size


def crop_first(image: Image.Image, pre: Preprocess) -> Image.Image:
    """The centre crop of ``image`` resized, computed from the source region it covers (``crop``² pixels made).

    For shapes no photo has: resizing a 1 × 10000 image to 256 on its short side first would make 655 Mpixels
    (2 GB) only to keep 224². Same geometry as resize-then-crop, and the same filter over the source region.
    """
    width, height = image.size
    resized = (pre.resize, int(pre.resize * height / width)) if width <= height else \
        (int(pre.resize * width / height), pre.resize)
    left = int(round((resized[0] - pre.crop) / 2.0))
    top = int(round((resized[1] - pre.crop) / 2.0))
    sx, sy = width / resized[0], height / resized[1]
    box = (left * sx, top * sy, (left + pre.crop) * sx, (top + pre.crop) * sy)
    # the PIL filter TF.resize itself uses for this interpolation
    return image.resize((pre.crop, pre.crop), resample=TF.pil_modes_mapping[InterpolationMode(pre.interpolation)],
                        box=box)


def normalize_batch(batch: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """uint8 (N, 3, H, W) → normalised float32 on the batch's device."""
    mean = torch.tensor(pre.mean, device=batch.device).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, device=batch.device).view(1, -1, 1, 1)
    return batch.float().div_(255).sub_(mean).div_(std)
