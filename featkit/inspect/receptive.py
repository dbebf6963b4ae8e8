"""Receptive field and jump of one output unit with respect to the input image, from layer geometry.

Along a path of convolutions and poolings, a unit's field grows by ``(kernel - 1) · dilation · jump`` at each
layer and the jump (input pixels between neighbouring units) multiplies by the stride:

    size_out = size_in + (k - 1) · d · jump_in        jump_out = jump_in · s

Padding shifts where a field is centred but not its size, so it does not enter. Pointwise layers (norms,
activations, dropout, LRN, which mixes channels only) pass the field on unchanged. A unit that reads the
whole map (a Linear layer on a flattened map, a global pool, attention) sees the field of the whole map,
which can exceed the image: it counts the padding too.

Branches (ResNet's shortcut, Inception's towers, Fire's expand 1×1 / 3×3) join by taking the largest field
and jump over the branches at the output's resolution, which for a residual block is the main path's. A
global gate (squeeze-and-excitation's pooled branch) is not a path: the map it scales keeps its field.
Spatial mixing done by functions rather than modules (Swin's window attention and patch merging) is not
seen, so such networks get lower bounds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torch.nn.modules.utils import _pair

Pair = tuple[int, int]

WINDOWED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)
ADAPTIVE = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass(frozen=True)
class Field:
    """What one unit of a map sees.

    Attributes:
        size: receptive field (height, width) in input pixels.
        jump: input pixels between neighbouring units (the map's cumulative stride).
        extent: the map's own (height, width); (1, 1) once the map is reduced to a vector.
    """

    size: Pair
    jump: Pair
    extent: Pair

    @classmethod
    def of_input(cls, height: int, width: int) -> Field:
        return cls((1, 1), (1, 1), (height, width))

    def windowed(self, kernel: Pair, stride: Pair, dilation: Pair, extent: Pair) -> Field:
        """The field after a sliding window (convolution or pooling)."""
        size = tuple(r + (k - 1) * d * j for r, k, d, j in zip(self.size, kernel, dilation, self.jump, strict=True))
        jump = tuple(j * s for j, s in zip(self.jump, stride, strict=True))
        return Field(size, jump, extent)  # type: ignore[arg-type]

    def whole_map(self) -> Field:
        """The field of a unit that reads every position of this map."""
        return self.windowed(self.extent, self.extent, (1, 1), (1, 1))


def merge(fields: Iterable[Field], extent: Pair | None = None) -> Field:
    """Join branches: the largest field and jump over them (the main path of a residual block)."""
    fields = list(fields)
    size = tuple(max(f.size[i] for f in fields) for i in range(2))
    jump = tuple(max(f.jump[i] for f in fields) for i in range(2))
    return Field(size, jump, extent or max(fields, key=lambda f: f.size).extent)  # type: ignore[arg-type]


def _adaptive_window(size_in: int, size_out: int) -> tuple[int, int]:
    """(largest window, stride) of PyTorch's adaptive pooling along one axis; stride rounded down if uneven."""
    window = max(math.ceil((i + 1) * size_in / size_out) - (i * size_in) // size_out for i in range(size_out))
    return window, max(1, size_in // size_out)


def is_identity_pool(module: nn.Module, inp: torch.Tensor | None, out: torch.Tensor) -> bool:
    """An adaptive pool to the size its input already has (VGG's avgpool at 224) computes nothing."""
    return isinstance(module, ADAPTIVE) and inp is not None and inp.shape == out.shape


def propagate(module: nn.Module, field: Field, inp: torch.Tensor | None, out: torch.Tensor) -> Field:
    """The field of ``module``'s output given the field of its input."""
    if isinstance(module, WINDOWED):
        stride = module.stride if module.stride else module.kernel_size  # pools default stride to the kernel
        dilation = getattr(module, "dilation", 1)
        return field.windowed(_pair(module.kernel_size), _pair(stride), _pair(dilation),
                              cast(Pair, tuple(out.shape[-2:])))
    if isinstance(module, ADAPTIVE) and inp is not None and out.dim() >= 3:
        if is_identity_pool(module, inp, out):
            return field
        axes = [_adaptive_window(i, o) for i, o in zip(inp.shape[-2:], out.shape[-2:], strict=True)]
        return field.windowed((axes[0][0], axes[1][0]), (axes[0][1], axes[1][1]), (1, 1),
                              cast(Pair, tuple(out.shape[-2:])))
    if isinstance(module, nn.Linear) and inp is not None and inp.dim() == 2:
        return field.whole_map()  # a flattened map: every unit reads every position
    if isinstance(module, nn.MultiheadAttention):
        return field.whole_map()
    return field  # pointwise (also Linear on channels-last maps, as in ConvNeXt and ViT)
