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
from featkit.data.decode import ImageSource, check_resize, decode_source, source_name


def crop_image(image: Image.Image, pre: Preprocess) -> torch.Tensor:
    """Resize the shorter side, centre-crop, and return a uint8 (3, crop, crop) tensor."""
    check_resize(image.size, pre.resize, "the image")
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
    check_resize(image.size, pre.resize, source_name(source, name))
    return crop_image(image, pre), image.size


def normalize_batch(batch: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """uint8 (N, 3, H, W) → normalised float32 on the batch's device."""
    mean = torch.tensor(pre.mean, device=batch.device).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, device=batch.device).view(1, -1, 1, 1)
    return batch.float().div_(255).sub_(mean).div_(std)
