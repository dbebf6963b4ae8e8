"""Stages of a backbone, what trains in each phase, and the optimiser's parameter groups.

A *stage* is a block the network is built from: a container module (ResNet's ``layer1``..``layer4``, a
SqueezeNet Fire module, an EfficientNet stage), or a run of plain layers closed by a pooling layer (VGG's
and AlexNet's conv groups, ``fc6`` + ``fc7``). The head is the final classifier layer (the backbone's
``logits_module``), which the data's classes size.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from featkit.finetune.recipe import Recipe

_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


@dataclass(frozen=True)
class Stages:
    """Module paths of the backbone's stages (input to output) and of the head."""

    backbone: tuple[tuple[str, ...], ...]
    head: str


def _units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    units = []
    for name, child in model.named_children():
        # `features`-like sequences are opened up; a sequence of residual blocks (ResNet's layerN) is one unit
        if isinstance(child, nn.Sequential) and any(isinstance(c, nn.Sequential) or not list(c.children())
                                                    for c in child):
            units += [(f"{name}.{n}", c) for n, c in child.named_children()]
        else:
            units.append((name, child))
    return units


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def find_stages(model: nn.Module, head: str) -> Stages:
    """Split ``model`` into stages (see the module docstring); ``head`` is excluded from them."""
    stages: list[tuple[str, ...]] = []
    run: list[str] = []
    for name, unit in _units(model):
        if name == head or head.startswith(f"{name}."):
            if name != head:  # a container holding the head (e.g. ViT's heads): its other layers form a stage
                rest = [f"{name}.{n}" for n, c in unit.named_children() if f"{name}.{n}" != head and _has_params(c)]
                if rest:
                    stages.append(tuple(rest))
            continue
        is_container = bool(list(unit.children()))
        if is_container and _has_params(unit):
            if run:
                stages.append(tuple(run))
                run = []
            stages.append((name,))
        elif _has_params(unit):
            run.append(name)
        elif isinstance(unit, _POOLS) and run:
            stages.append(tuple(run))
            run = []
    if run:
        stages.append(tuple(run))
    return Stages(tuple(stages), head)


def _stage_of(param_name: str, stages: Stages) -> int:
    """Index of the stage holding a parameter; ``len(backbone)`` for the head; 0 for parameters of the root."""
    if param_name.startswith(f"{stages.head}."):
        return len(stages.backbone)
    for i, paths in enumerate(stages.backbone):
        if any(param_name.startswith(f"{p}.") for p in paths):
            return i
    return 0


def trainable_stages(recipe: Recipe, n_backbone: int, epoch: int) -> set[int]:
    """Stage indices (``n_backbone`` = the head) that train in ``epoch``."""
    head = {n_backbone}
    if epoch < recipe.freeze.head_epochs or recipe.freeze.train == "head":
        return head
    if recipe.freeze.train == "last":
        return head | set(range(max(0, n_backbone - recipe.freeze.last_stages), n_backbone))
    return head | set(range(n_backbone))


def set_trainable(model: nn.Module, stages: Stages, active: set[int]) -> None:
    """``requires_grad`` on the parameters of the active stages only (the frozen prefix then builds no graph)."""
    for name, p in model.named_parameters():
        p.requires_grad_(_stage_of(name, stages) in active)


def frozen_modules(model: nn.Module, stages: Stages, active: set[int]) -> list[nn.Module]:
    """Modules of frozen stages: kept in eval mode so their BatchNorm statistics stay the pretrained ones."""
    return [model.get_submodule(p) for i, paths in enumerate(stages.backbone) if i not in active for p in paths]


def _no_decay_names(model: nn.Module) -> set[str]:
    names = set()
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if isinstance(module, _NORMS) or p.ndim <= 1:
                names.add(f"{mname}.{pname}" if mname else pname)
    return names


def param_groups(model: nn.Module, stages: Stages, recipe: Recipe) -> list[dict]:
    """Every parameter in a group (frozen ones too, so the optimiser's layout never changes on unfreezing).

    Each group carries ``lr_mult`` (its share of the schedule's learning rate: geometric from
    ``backbone_lr_ratio`` at the first stage up to 1 at the head) and its weight decay.
    """
    n = len(stages.backbone)
    no_decay = set() if recipe.optim.decay_norm_and_bias else _no_decay_names(model)
    buckets: dict[tuple[int, bool], list] = {}
    for name, p in model.named_parameters():
        buckets.setdefault((_stage_of(name, stages), name in no_decay), []).append(p)
    groups = []
    for (stage, exempt), params in sorted(buckets.items(), key=lambda kv: kv[0]):
        mult = 1.0 if stage == n else recipe.optim.backbone_lr_ratio ** ((n - stage) / n)
        groups.append({"params": params, "lr_mult": mult, "stage": stage,
                       "weight_decay": 0.0 if exempt else recipe.optim.weight_decay})
    return groups
