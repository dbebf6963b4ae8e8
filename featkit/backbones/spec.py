"""Frozen tables that describe a backbone: its taps, where they sit in the torchvision graph, and its preprocessing.

Every family module (alexnet.py, vgg.py, resnet.py, squeezenet.py) declares its taps as data here; the
extractor, `featkit taps` and the tests all read the same table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from featkit.errors import invalid_parameter, unknown

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_SIDE = 16_384  # pixels a side that a recorded resize or crop may ask for; more is a damaged record
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
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
                raise ValueError(f"preprocess.{key}: expected an integer from 1 to {MAX_SIDE}, got {repr(value)[:40]}")
        for key in ("mean", "std"):
            value = data.get(key)
            if (not isinstance(value, list) or len(value) != 3
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= 1e6
                               for v in value)):  # abs: no NaN, no infinity, no int too big for a float
                raise ValueError(f"preprocess.{key}: expected a list of 3 finite numbers, got {repr(value)[:80]}")
        if data.get("interpolation") not in INTERPOLATIONS:
            raise ValueError(f"preprocess.interpolation: expected one of {', '.join(INTERPOLATIONS)}, "
                             f"got {data.get('interpolation')!r}")
        if any(v <= 0 for v in data["std"]):
            raise ValueError(f"preprocess.std: expected numbers > 0, got {data['std']!r}")
        return cls(resize=data["resize"], crop=data["crop"], mean=tuple(float(v) for v in data["mean"]),
                   std=tuple(float(v) for v in data["std"]), interpolation=data["interpolation"])


TapLayout = Literal["chw", "hwc", "tokens", "vector"]


class LayoutFacts(NamedTuple):
    axes: int  # axes of one image's output
    pooled: tuple[int, ...]  # those a pool other than none reduces: positions or tokens, never channels
    words: str


# How one image's output of a tap is laid out decides what ``--pool`` does to it. A ``vector`` (fc7, logits,
# or any tensor not listed here, such as a 5-D reshape) is stored flattened whatever the pool.
LAYOUTS: dict[str, LayoutFacts] = {
    "chw": LayoutFacts(3, (1, 2), "a C×H×W map"),  # CNNs
    "hwc": LayoutFacts(3, (0, 1), "an H×W×C map"),  # channels last: Swin's stages, ConvNeXt's block interiors
    "tokens": LayoutFacts(2, (0,), "T×D tokens"),  # ViT; ``cls`` takes token 0, the class token
}


@dataclass(frozen=True)
class TapSpec:
    """One named place in a network whose output featkit can extract.

    Attributes:
        name: featkit's name for the tap (``fc7``, ``layer3``, ...).
        node: the torchvision FX graph node (or module path, whose last operation is taken).
        shape: output shape for one image at the backbone's default input size, without the batch axis.
        aliases: other names users know the same tap by (``pool5`` for ResNet's ``avgpool``).
        note: one short phrase for `featkit taps` (e.g. "post-ReLU").
        layout: how ``shape`` is laid out, which decides what each pool does (see ``LAYOUTS``); by default a
            C×H×W map for three axes, else a vector, as in every CNN table.
    """

    name: str
    node: str
    shape: tuple[int, ...]
    aliases: tuple[str, ...] = ()
    note: str = ""
    layout: TapLayout = None  # type: ignore[assignment]  # None: from the shape, in __post_init__

    def __post_init__(self) -> None:
        layout = self.layout or ("chw" if len(self.shape) == 3 else "vector")
        if layout != "vector" and (layout not in LAYOUTS or LAYOUTS[layout].axes != len(self.shape)):
            raise ValueError(f"tap '{self.name}': layout {layout!r} does not fit shape {self.shape}")
        object.__setattr__(self, "layout", layout)

    @property
    def is_spatial(self) -> bool:
        """True for maps (C×H×W or H×W×C), which ``--pool`` reduces to C values."""
        return self.layout in ("chw", "hwc")

    @property
    def flat_dims(self) -> int:
        return math.prod(self.shape)

    def pooled_axes(self, pool: str) -> tuple[int, ...]:
        """The axes of one image's output that ``pool`` reduces (none: the output is stored flattened).

        Raises:
            ParameterError: ``cls`` on a map, which has no class token (Swin's included).
        """
        if pool == "cls" and self.is_spatial:
            raise invalid_parameter("pool", f"tap '{self.name}' ({LAYOUTS[self.layout].words}, no class token)",
                                    "avg, max, gem, mean or none", pool)
        facts = LAYOUTS.get(self.layout)
        return facts.pooled if facts is not None and pool != "none" else ()

    def dims(self, pool: str) -> int:
        """Feature length stored per image for this tap under a pooling choice (what the extractor stores)."""
        reduced = self.pooled_axes(pool)
        return math.prod(n for axis, n in enumerate(self.shape) if axis not in reduced)


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
