"""``--depth block|stage``: layer rows grouped by the network's own structure, for any torchvision CNN.

**Blocks.** A block is the outermost module below the root with a forward of its own (ResNet's
``Bottleneck``, SqueezeNet's ``Fire``, MobileNet's ``InvertedResidual``, Inception's towers) — unless it holds
a run of such modules in a Sequential/ModuleList (ViT's encoder, DenseNet's dense blocks): that is a stage,
and its members are the blocks. Layers outside any block (plain Sequentials such as VGG's ``features``) are
grouped where they sit: each convolution, Linear or pooling layer starts a block, and the norms, activations,
dropout and LRN after it join it (VGG's conv+ReLU, AlexNet's conv+ReLU+LRN, a pool on its own).

**Stages.** Blocks at one resolution form a stage: a block with parameters that lowers the resolution starts
a new stage (ResNet's ``layer2.0``); a parameter-free one (a pool) ends the stage it pools, so VGG's stages are
the blocks between its pools, each ending with its pool, and ResNet's are the stem, ``layer1``..``layer4``.
From the first adaptive pool outside a block, or the first output that is no longer a map, on is the
``head``. A stage that is exactly one module's rows takes that module's name (``layer3``), others are
numbered. Resolutions are read as (C, H, W): channels-last blocks (Swin) are not split into stages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from featkit.inspect.layers import LayerRow
from featkit.inspect.receptive import ADAPTIVE

PLAIN = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
STARTERS = (nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention, nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d,
            *ADAPTIVE)


@dataclass(frozen=True)
class Group:
    """Consecutive rows shown as one: ``container`` when they are one module's call (a Bottleneck)."""

    name: str
    kind: str
    rows: tuple[LayerRow, ...]
    container: bool = False


def _has_own_forward(module: nn.Module) -> bool:
    return (next(module.children(), None) is not None
            and type(module).forward not in (nn.Sequential.forward, nn.Module.forward))


def _is_stack(module: nn.Module) -> bool:
    holders = (module, *module.children())
    return any(isinstance(h, PLAIN) and sum(map(_has_own_forward, h.children())) >= 2 for h in holders)


def _prefixes(path: str) -> list[str]:
    parts = path.split(".") if path else []
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def block_owner(modules: dict[str, nn.Module], path: str) -> str | None:
    """The block module a row at module ``path`` belongs to, or None outside any block."""
    for prefix in _prefixes(path):
        module = modules[prefix]
        if _has_own_forward(module) and not _is_stack(module):
            return prefix
    return None


def blocks(model: nn.Module, rows: list[LayerRow]) -> list[Group]:
    """Rows grouped into blocks (the input row stays on its own)."""
    modules = dict(model.named_modules())
    groups: list[list] = []  # [key, rows, starter row or None]
    for row in rows:
        if row.name == "input":
            groups.append([("input",), [row], row])
            continue
        owner = block_owner(modules, row.module)
        if owner is not None:
            key = ("block", owner)
            if groups and groups[-1][0] == key:
                groups[-1][1].append(row)
            else:
                groups.append([key, [row], None])
            continue
        parent = row.module.rpartition(".")[0]
        starter = isinstance(modules[row.module], STARTERS)
        last = groups[-1] if groups else None
        if last and last[0] == ("run", parent) and not (starter and last[2] is not None):
            last[1].append(row)
            last[2] = last[2] or (row if starter else None)
        else:
            groups.append([("run", parent), [row], row if starter else None])
    out = []
    for key, members, starter in groups:
        if key[0] == "block":
            out.append(Group(key[1], type(modules[key[1]]).__name__, tuple(members), container=True))
        else:
            kinds = list(dict.fromkeys(r.kind for r in members))
            out.append(Group((starter or members[0]).name, "+".join(kinds), tuple(members)))
    return out


def _is_map(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3 and shape[1] * shape[2] > 1


def _opens_head(modules: dict[str, nn.Module], group: Group) -> bool:
    pools = not group.container and any(isinstance(modules[r.module], ADAPTIVE) for r in group.rows)
    return pools or not _is_map(group.rows[-1].shape)


def _stage_name(rows: list[LayerRow], all_rows: list[LayerRow], number: int) -> str:
    """The outermost module whose rows are exactly this stage's (``layer3``), else ``stage{number}``."""
    mine = set(map(id, rows))
    for prefix in _prefixes(_common_module(rows)):
        if all(id(r) in mine for r in all_rows if r.module == prefix or r.module.startswith(prefix + ".")):
            return prefix
    return f"stage{number}"


def _common_module(rows: list[LayerRow] | tuple[LayerRow, ...]) -> str:
    common = rows[0].module.split(".")
    for row in rows[1:]:
        parts = row.module.split(".")
        n = next((i for i, (a, b) in enumerate(zip(common, parts, strict=False)) if a != b),
                 min(len(common), len(parts)))
        common = common[:n]
    return ".".join(common)


def stages(model: nn.Module, groups: list[Group], rows: list[LayerRow]) -> list[Group]:
    """Blocks grouped into stages and the head (see the module docstring)."""
    modules = dict(model.named_modules())
    out: list[Group] = []
    current: list[LayerRow] = []
    head: list[LayerRow] = []
    closed, resolution = False, None

    def flush() -> None:
        if current:
            out.append(Group(_stage_name(current, rows, len(out)), "stage", tuple(current)))
            current.clear()

    for group in groups:
        if group.rows[0].name == "input":
            out.append(group)
            continue
        if head or _opens_head(modules, group):
            head.extend(group.rows)
            continue
        shape = group.rows[-1].shape
        lower = resolution is not None and math.prod(shape[1:]) < math.prod(resolution)
        has_params = any(r.params for r in group.rows)
        if closed or (lower and has_params):
            flush()
        current.extend(group.rows)
        closed, resolution = lower and not has_params, shape[1:]
    flush()
    if head:
        out.append(Group("head", "head", tuple(head)))
    return out


def collapse(group: Group) -> LayerRow:
    """One row for a group: its output is its last row's; memory, parameters and MACs add up."""
    rows = group.rows
    if len(rows) == 1 and rows[0].name == group.name and not group.container:
        return rows[0]
    last = rows[-1]
    tapped = [r for r in rows if r.taps]  # VGG's fc6 block ends with a dropout: its taps are the ReLU's
    weighted = [r for r in rows if r.weights]
    owning = [r for r in rows if r.params]
    return LayerRow(
        name=group.name, kind=group.kind, module=_common_module(rows), taps=tapped[-1].taps if tapped else (),
        shape=last.shape,
        activations=last.activations, memory=sum(r.memory for r in rows),
        memory_bytes=sum(r.memory_bytes for r in rows),
        weights=sum(r.weights for r in rows), biases=sum(r.biases for r in rows),
        weight_formula=weighted[0].weight_formula if len(weighted) == 1 else "",
        param_formula=owning[0].param_formula if len(owning) == 1 else "",
        macs=sum(r.macs for r in rows), field=last.field,
    )


def group_rows(model: nn.Module, rows: list[LayerRow], depth: str) -> list[LayerRow]:
    """The table at ``depth`` = ``layer`` (every row), ``block`` or ``stage``."""
    if depth == "layer":
        return rows
    grouped = blocks(model, rows)
    if depth == "stage":
        grouped = stages(model, grouped, rows)
    return [collapse(g) for g in grouped]
