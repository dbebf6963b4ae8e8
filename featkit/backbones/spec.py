"""Frozen tables that describe a backbone: its taps, where they sit in the torchvision graph, and its preprocessing.

Every family module (alexnet.py, vgg.py, resnet.py, squeezenet.py) declares its taps as data here; the
extractor, `featkit taps` and the tests all read the same table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from featkit.errors import unknown

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to ``resize``, centre-crop ``crop``, scale to [0, 1], normalise."""

    resize: int
    crop: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    def as_dict(self) -> dict:
        return {"resize": self.resize, "crop": self.crop, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation}

    @classmethod
    def from_dict(cls, data: object) -> Preprocess:
        """The inverse of :meth:`as_dict`; raises ``ValueError`` naming the field that is missing or malformed."""
        if not isinstance(data, dict):
            raise ValueError(f"preprocess: expected an object, got {type(data).__name__}")
        for key in ("resize", "crop"):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"preprocess.{key}: expected an integer >= 1, got {value!r}")
        for key in ("mean", "std"):
            value = data.get(key)
            if (not isinstance(value, list) or len(value) != 3
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                raise ValueError(f"preprocess.{key}: expected a list of 3 numbers, got {value!r}")
        if data.get("interpolation") not in INTERPOLATIONS:
            raise ValueError(f"preprocess.interpolation: expected one of {', '.join(INTERPOLATIONS)}, "
                             f"got {data.get('interpolation')!r}")
        if any(v <= 0 for v in data["std"]):
            raise ValueError(f"preprocess.std: expected numbers > 0, got {data['std']!r}")
        return cls(resize=data["resize"], crop=data["crop"], mean=tuple(float(v) for v in data["mean"]),
                   std=tuple(float(v) for v in data["std"]), interpolation=data["interpolation"])


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
    _index: dict[str, TapSpec] = field(init=False, repr=False, compare=False)  # set by __post_init__

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
