"""``inspect_backbone``: the per-layer table of a registered backbone, its totals, at a chosen depth and dtype."""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from featkit.backbones.registry import describe, meta_module
from featkit.backbones.spec import BackboneSpec
from featkit.choices import InspectDepth, values
from featkit.errors import InputError, unknown
from featkit.inspect.groups import group_rows
from featkit.inspect.layers import DTYPE_BYTES, LayerRow, layer_rows

DEPTHS = values(InspectDepth)
BACKWARD_FACTOR = 2  # training keeps the forward's activations and about as much again for their gradients


@dataclass(frozen=True)
class InspectConfig:
    """What to inspect: ``input_size`` None means the backbone's default (227 for alexnet2012, else mostly 224)."""

    model: str
    input_size: int | None = None
    depth: str = "layer"
    dtype: str = "float32"


@dataclass(frozen=True)
class Totals:
    """Whole-network figures per image (the same at every depth)."""

    weights: int
    biases: int
    memory: int  # values stored by the forward pass, input included
    memory_bytes: int
    macs: int

    @property
    def parameters(self) -> int:
        return self.weights + self.biases

    @property
    def training_bytes(self) -> int:
        """Forward plus backward, the rough ×2 of the course notes."""
        return BACKWARD_FACTOR * self.memory_bytes

    @classmethod
    def of(cls, rows: list[LayerRow]) -> Totals:
        return cls(sum(r.weights for r in rows), sum(r.biases for r in rows), sum(r.memory for r in rows),
                   sum(r.memory_bytes for r in rows), sum(r.macs for r in rows))


@dataclass(frozen=True)
class Inspection:
    """The table ``featkit inspect`` prints, and what it was computed for."""

    model: str
    description: str
    input_size: int
    depth: str
    dtype: str
    rows: tuple[LayerRow, ...]
    totals: Totals

    @property
    def bytes_per_value(self) -> int:
        return DTYPE_BYTES[self.dtype]


def label_taps(rows: list[LayerRow], spec: BackboneSpec) -> list[LayerRow]:
    """Put each tap on the row whose output it is (a container tap, like ResNet's ``layer1``, on its last row)."""
    index = {r.name: i for i, r in enumerate(rows)}
    labels: dict[int, list[str]] = {}
    for tap in spec.taps:
        i = index.get(tap.node)
        if i is None:
            inside = [j for j, r in enumerate(rows) if r.module.startswith(tap.node + ".")]
            i = inside[-1] if inside else index.get(tap.name)  # ResNet's avgpool tap is the flatten after it
        if i is not None:
            labels.setdefault(i, []).extend((tap.name,) if tap.name != rows[i].name else tap.aliases)
    return [replace(r, taps=tuple(labels[i])) if i in labels else r for i, r in enumerate(rows)]


def inspect_module(model: nn.Module, input_size: int, *, depth: str = "layer", dtype: str = "float32",
                   name: str = "", description: str = "", spec: BackboneSpec | None = None) -> Inspection:
    """Inspect any image model (best built on the meta device) on a square RGB input of ``input_size``."""
    if depth not in DEPTHS:
        raise unknown("depth", depth, DEPTHS)
    if dtype not in DTYPE_BYTES:
        raise unknown("dtype", dtype, DTYPE_BYTES)
    name = name or type(model).__name__
    try:
        rows = layer_rows(model, input_size, dtype)
    except (RuntimeError, AssertionError, ValueError) as exc:  # too small for the pooling, or a fixed-size model
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{name} cannot run on a {input_size}×{input_size} input ({reason}).") from exc
    if spec is not None:
        rows = label_taps(rows, spec)
    return Inspection(name, description, input_size, depth, dtype, tuple(group_rows(model, rows, depth)),
                      Totals.of(rows))


def inspect_backbone(config: InspectConfig) -> Inspection:
    """The table for a registered backbone, computed on the meta device (no weights, no arithmetic)."""
    spec = describe(config.model)  # unknown names: the "did you mean" error
    size = config.input_size or spec.input_size
    return inspect_module(meta_module(config.model), size, depth=config.depth, dtype=config.dtype,
                          name=spec.name, description=spec.description, spec=spec)
