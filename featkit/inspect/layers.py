"""Per-layer facts of a network, read off the real module in one forward pass with hooks on every module.

Run on the meta device, the pass costs no memory and no arithmetic but yields every output's true shape.
A row is one call of a leaf module (a module called twice, like ResNet's shared ReLU, gives two rows named as
torch.fx names them: ``relu``, ``relu_1``), plus a call of a container whose forward makes a tensor of its
own (Fire's and Inception's concatenations) or that holds parameters directly (ViT's position embedding).

What the columns count:

* **activations**: values in the row's output, per image.
* **memory**: values the row newly stores, per image: every tensor the forward creates, counted once, as the
  classic hand calculations do. An output that is its input (ReLU(inplace=True), eval-mode dropout, an
  in-place residual ``+=``), a view of it (flatten, permute), or a copy of it (an adaptive pool to the size
  its input already has) adds nothing; a tensor made between modules by a function (a concatenation in a
  forward) is counted at the first row that reads it. This is what backward would keep, not the inference
  peak, which frees tensors as it goes.
* **MACs**: multiply-accumulates of convolutions and Linear layers (and attention's projections and matrix
  products); pooling, normalisation, activations and additions are not counted (they are small next to them).
* **weights / biases**: parameters named ``*bias`` are biases, all others weights; a module that never runs
  (attention's ``out_proj``, used through its weight) gives its parameters to the closest one that does.
* **params**: both, as lecture slides write them: a weight with its bias is ``(fan-in + 1)*out``
  (``(11*11*3 + 1)*96 = 34,944``), a norm's scale and shift ``2*C``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from featkit.choices import ActivationDType
from featkit.inspect.receptive import Field, Pair, is_identity_pool, merge, propagate

# StrEnum keys: looked up by the plain strings too
DTYPE_BYTES: dict[str, int] = {ActivationDType.float32: 4, ActivationDType.float16: 2, ActivationDType.bfloat16: 2}


@dataclass(frozen=True)
class LayerRow:
    """One row of the table (a layer, or a group of them at ``--depth block|stage``).

    Attributes:
        name: module path (``features.0``; ``_N`` for its (N+1)-th call), or the group's name.
        kind: module class (``Conv2d``), or what the group holds (``Conv2d+ReLU``, ``Bottleneck``, ``stage``).
        module: module path the row belongs to (for grouping).
        taps: featkit tap names whose output this row is.
        shape: output per image (C, H, W for maps).
        activations: output values per image.
        memory: values this row newly stores per image (see the module docstring).
        memory_bytes: ``memory`` at the inspected dtype.
        weights, biases: parameter counts.
        weight_formula: how ``weights`` comes about, e.g. ``(3*3*64)*128 = 73,728``.
        param_formula: how weights and biases together come about, e.g. ``(3*3*64 + 1)*128 = 73,856``.
        macs: multiply-accumulates per image.
        field: receptive field of one output unit (None where unknown).
    """

    name: str
    kind: str
    module: str
    taps: tuple[str, ...]
    shape: tuple[int, ...]
    activations: int
    memory: int
    memory_bytes: int
    weights: int
    biases: int
    weight_formula: str
    param_formula: str
    macs: int
    field: Field | None

    @property
    def params(self) -> int:
        return self.weights + self.biases


@dataclass(frozen=True)
class _Call:
    path: str
    index: int
    module: nn.Module
    leaf: bool
    shape: tuple[int, ...]
    memory: int
    macs: int
    field: Field
    in_map: tuple[int, ...]  # C, H, W of the map a flattened input comes from, for Linear's formula


def _first_tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return next((v for v in value if isinstance(v, torch.Tensor)), None)
    return None


def _storage(t: torch.Tensor) -> torch.Tensor:
    return t._base if t._base is not None else t  # a view shares its base's storage


def macs_of(module: nn.Module, inp: torch.Tensor | None, out: torch.Tensor) -> int:
    """Multiply-accumulates of one call for one image (the pass runs on a batch of one)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return out.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    if isinstance(module, nn.MultiheadAttention) and inp is not None:
        e = module.embed_dim
        seq = inp.numel() // e
        return 4 * seq * e * e + 2 * seq * seq * e  # q, k, v, out projections; scores; weighted sum
    return 0


class _Tracer:
    """Forward hooks that record every module call in execution order."""

    def __init__(self, model: nn.Module, image: torch.Tensor) -> None:
        self.paths = {m: p for p, m in model.named_modules()}
        self.fields: dict[int, Field] = {id(image): Field.of_input(*image.shape[-2:])}
        self.alive = [image]  # keeps ids unique while the pass runs
        self.last = self.fields[id(image)]
        self.calls: list[_Call] = []
        self.counts: Counter[str] = Counter()
        self.starts: list[int] = []

    def pre(self, module: nn.Module, args) -> None:
        self.starts.append(len(self.calls))

    def _read(self, t: torch.Tensor) -> tuple[Field, int]:
        """The field of an input and the values it adds if no earlier call produced it."""
        key = _storage(t)
        if id(key) in self.fields:
            return self.fields[id(key)], 0
        # Made by a function between modules: no geometry is known, the latest map is the best guess.
        self.fields[id(key)] = self.last
        self.alive.append(key)
        return self.last, key.numel()

    def post(self, module: nn.Module, args, output) -> None:
        start = self.starts.pop()
        out = _first_tensor(output)
        if out is None:
            return
        inp = _first_tensor(args)
        memory, in_field = 0, self.last
        for t in (a for a in args if isinstance(a, torch.Tensor)):
            field, added = self._read(t)
            memory += added
            if t is inp:
                in_field = field
        leaf = len(self.calls) == start  # no child ran (attention calls its out_proj's weight directly)
        key = _storage(out)
        known = id(key) in self.fields
        if leaf:
            field = propagate(module, in_field, inp, out)
        elif known:
            field = self.fields[id(key)]
        else:  # a container's own tensor (concatenation, gating): join the branches at its resolution
            extent = cast(Pair, tuple(out.shape[-2:])) if out.dim() == 4 else None
            branches = [c.field for c in self.calls[start:] if extent is None or c.field.extent == extent]
            field = merge([in_field, *branches], extent)
        if not known and not is_identity_pool(module, inp, out):
            memory += out.numel()
        self.fields[id(key)] = field
        self.alive.append(key)
        self.last = field
        path = self.paths[module]
        in_map = tuple(_storage(inp).shape[1:]) if inp is not None and _storage(inp).dim() == 4 else ()
        self.calls.append(_Call(path, self.counts[path], module, leaf, tuple(out.shape[1:]), memory,
                                macs_of(module, inp, out), field, in_map))
        self.counts[path] += 1


def trace_calls(model: nn.Module, size: int) -> list[_Call]:
    """Every module call of one eval-mode forward pass of a ``size``×``size`` RGB image on the model's device."""
    device = next(model.parameters(), torch.empty(0)).device
    image = torch.empty(1, 3, size, size, device=device)
    tracer = _Tracer(model, image)
    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(tracer.pre))
        handles.append(module.register_forward_hook(tracer.post))
    try:
        with torch.no_grad():  # not inference_mode: views must keep their ``_base``
            model.eval()(image)
    finally:
        for h in handles:
            h.remove()
    return tracer.calls


def _owners(model: nn.Module, called: set[str]) -> dict[str, list[tuple[str, torch.Tensor]]]:
    """Parameters by the module whose row shows them: their own, or the closest ancestor that ran."""
    owners: dict[str, list[tuple[str, torch.Tensor]]] = {}
    seen: set[int] = set()
    for path, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:  # shared (tied) parameters count once
                continue
            seen.add(id(p))
            owner = path
            while owner and owner not in called:
                owner = owner.rpartition(".")[0]
            owners.setdefault(owner, []).append((name, p))
    return owners


def _fan_in(module: nn.Module, shape: tuple[int, ...], in_map: tuple[int, ...]) -> str | None:
    """What one output unit reads, from its weight's ``shape``: ``kh*kw*in`` for a convolution.

    A Linear reads ``in`` values, written ``h*w*c`` when they are a flattened map; None for other modules.
    """
    if isinstance(module, nn.modules.conv._ConvNd) and len(shape) >= 3:
        return "*".join(map(str, (*shape[2:], shape[1])))
    if isinstance(module, nn.Linear) and len(shape) == 2:
        if in_map and math.prod(in_map) == shape[1] and math.prod(in_map[1:]) > 1:
            c, h, w = in_map
            return f"{h}*{w}*{c}"
        return str(shape[1])
    return None


def _shape_formula(module: nn.Module, shape: tuple[int, ...], in_map: tuple[int, ...]) -> str:
    """``(kh*kw*in)*out`` for convolutions, ``(h*w*c)*out`` or ``in*out`` for a Linear, else the dims."""
    fan_in = _fan_in(module, shape, in_map)
    if fan_in is None:
        return "*".join(map(str, shape))
    return f"({fan_in})*{shape[0]}" if "*" in fan_in else f"{fan_in}*{shape[0]}"


def _with_bias_formula(module: nn.Module, shape: tuple[int, ...], in_map: tuple[int, ...]) -> str:
    """A weight of ``shape`` and its bias: ``(kh*kw*in + 1)*out``; a norm's scale and shift: ``2*C``."""
    if len(shape) == 1:
        return f"2*{shape[0]}"
    fan_in = _fan_in(module, shape, in_map) or "*".join(map(str, shape[1:]))
    return f"({fan_in} + 1)*{shape[0]}"


def _sum_formula(terms: list[str], total: int) -> str:
    """``terms = total``, or just the total where the one term is that number (a norm's scale)."""
    if not terms:
        return ""
    return f"{total:,}" if terms == [str(total)] else f"{' + '.join(terms)} = {total:,}"


def _weight_formula(call: _Call, weights: list[tuple[str, torch.Tensor]]) -> str:
    terms = [_shape_formula(call.module, tuple(p.shape), call.in_map) for _, p in weights]
    return _sum_formula(terms, sum(p.numel() for _, p in weights))


def _param_formula(call: _Call, params: list[tuple[str, torch.Tensor]]) -> str:
    """Weights and biases together, as ``(fan-in + 1)*out`` terms.

    A weight followed by its own bias (``weight``/``bias``, ``in_proj_weight``/``in_proj_bias``: one bias per
    output) makes one term; any other parameter is a term of its own.
    """
    terms: list[str] = []
    i = 0
    while i < len(params):
        name, p = params[i]
        shape = tuple(p.shape)
        bias = params[i + 1] if i + 1 < len(params) else None
        if (name.endswith("weight") and bias is not None and bias[0] == name.removesuffix("weight") + "bias"
                and bias[1].numel() == shape[0]):
            terms.append(_with_bias_formula(call.module, shape, call.in_map))
            i += 2
        else:
            terms.append(str(p.numel()) if name.endswith("bias") else _shape_formula(call.module, shape, call.in_map))
            i += 1
    return _sum_formula(terms, sum(p.numel() for _, p in params))


def layer_rows(model: nn.Module, size: int, dtype: str = "float32") -> list[LayerRow]:
    """The per-layer table of ``model`` for one ``size``×``size`` image, the input first."""
    itemsize = DTYPE_BYTES[dtype]
    calls = trace_calls(model, size)
    owners = _owners(model, {c.path for c in calls})
    pixels = 3 * size * size
    rows = [LayerRow(name="input", kind="Input", module="", taps=(), shape=(3, size, size), activations=pixels,
                     memory=pixels, memory_bytes=pixels * itemsize, weights=0, biases=0, weight_formula="",
                     param_formula="", macs=0, field=Field.of_input(size, size))]
    for call in calls:
        params = owners.pop(call.path, []) if call.index == 0 else []
        if not (call.leaf or params or call.memory):
            continue
        weights = [(n, p) for n, p in params if not n.endswith("bias")]
        biases = sum(p.numel() for n, p in params if n.endswith("bias"))
        name = f"{call.path}_{call.index}" if call.index else call.path
        rows.append(LayerRow(
            name=name or type(call.module).__name__, kind=type(call.module).__name__, module=call.path, taps=(),
            shape=call.shape, activations=math.prod(call.shape), memory=call.memory,
            memory_bytes=call.memory * itemsize, weights=sum(p.numel() for _, p in weights), biases=biases,
            weight_formula=_weight_formula(call, weights), param_formula=_param_formula(call, params),
            macs=call.macs, field=call.field,
        ))
    return rows
