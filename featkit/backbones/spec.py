"""Frozen tables that describe a backbone: its taps and where they sit in the torchvision graph.

Every family module (alexnet.py, vgg.py, resnet.py, squeezenet.py) declares its taps as data here; the
extractor, `featkit taps` and the tests all read the same table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from featkit.errors import unknown


@dataclass(frozen=True)
class TapSpec:
    """One named place in a network whose output featkit can extract.

    Attributes:
        name: featkit's name for the tap (``fc7``, ``layer3``, ...).
        node: the torchvision FX graph node (or module path, whose last operation is taken).
        shape: output shape for one image at the backbone's default input size, without the batch axis.
        aliases: other names users know the same tap by (``pool5`` for ResNet's ``avgpool``).
        note: one short phrase for `featkit taps` (e.g. "post-ReLU").
    """

    name: str
    node: str
    shape: tuple[int, ...]
    aliases: tuple[str, ...] = ()
    note: str = ""

    @property
    def is_spatial(self) -> bool:
        """True for C×H×W maps, which ``--pool`` reduces to C values."""
        return len(self.shape) == 3

    @property
    def flat_dims(self) -> int:
        return math.prod(self.shape)

    def dims(self, pool: str) -> int:
        """Feature length stored per image for this tap under a pooling choice."""
        if self.is_spatial and pool != "none":
            return self.shape[0]
        return self.flat_dims


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: how to build it and which taps it offers.

    Attributes:
        name: registry name (matches torchvision's model name where there is one).
        family: ``alexnet``, ``vgg``, ``resnet``, ``squeezenet`` or ``torchvision`` (generic).
        taps: every tap, in forward order.
        default_tap: what ``featkit extract`` takes without ``--layer``.
        input_size: the square crop the declared shapes assume.
        logits_module: module path of the final classifier layer (its weight's first axis = classes).
        resize_size: shorter side before the centre crop, for backbones without torchvision weights whose
            training used another ratio than 256/224 (0: that ratio).
    """

    name: str
    family: str
    taps: tuple[TapSpec, ...]
    default_tap: str
    input_size: int = 224
    logits_module: str = ""
    description: str = ""
    resize_size: int = 0
    _index: dict[str, TapSpec] = field(default=None, init=False, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        index: dict[str, TapSpec] = {}
        for tap in self.taps:
            for key in (tap.name, *tap.aliases):
                if key in index:
                    raise ValueError(f"{self.name}: tap name '{key}' declared twice")
                index[key] = tap
        if self.default_tap not in index:
            raise ValueError(f"{self.name}: default tap '{self.default_tap}' is not declared")
        object.__setattr__(self, "_index", index)

    @property
    def tap_names(self) -> tuple[str, ...]:
        return tuple(self._index)

    def tap(self, name: str) -> TapSpec:
        """Look a tap up by name or alias; unknown names get the "did you mean" error."""
        try:
            return self._index[name]
        except KeyError:
            raise unknown("tap", name, self._index, context=self.name, see=f"featkit taps {self.name}") from None

    def order(self, tap: TapSpec) -> int:
        return self.taps.index(tap)


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0, ceil_mode: bool = False) -> int:
    """Output length of a convolution or pooling along one axis (PyTorch's formula)."""
    span = size + 2 * padding - kernel
    steps = -(-span // stride) if ceil_mode else span // stride
    return steps + 1
