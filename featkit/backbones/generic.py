"""Taps for any torchvision classification model, read off its FX graph (shapes from a meta-device run).

Each tap's layout is read off its shape at the square default input, whose two spatial axes are equal: (C, S, S)
is a channels-first map, (S, S, C) a channels-last one (Swin's stages, ConvNeXt's block interiors), two axes are
ViT's (tokens, D), anything else is stored as a flat vector.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.feature_extraction import (
    create_feature_extractor,
    get_graph_node_names,
)

from featkit.backbones.spec import BackboneSpec, TapLayout, TapSpec

# Attribute holding the final classifier, in the order torchvision's families use them.
HEAD_ATTRS = ("fc", "classifier", "heads", "head")


def head_path(model: nn.Module) -> str:
    """Module path of the final classifier (the block whose input is the ``penultimate`` tap)."""
    for attr in HEAD_ATTRS:
        if isinstance(getattr(model, attr, None), nn.Module):
            return attr
    raise ValueError(f"{type(model).__name__} has none of {HEAD_ATTRS}: not a torchvision classifier")


def last_linear_path(model: nn.Module, head: str) -> str:
    """Module path of the layer whose output size is the number of classes."""
    layers = [n for n, m in model.named_modules() if n.startswith(head) and isinstance(m, (nn.Linear, nn.Conv2d))]
    return layers[-1] if layers else head


def layout_of(shape: tuple[int, ...]) -> TapLayout:
    """The layout of one image's output ``shape`` at a square input (see the module docstring)."""
    if len(shape) == 2:
        return "tokens"
    if len(shape) == 3:
        if shape[1] == shape[2]:
            return "chw"
        if shape[0] == shape[1]:
            return "hwc"
    return "vector"


def generic_spec(name: str, model: nn.Module, size: int) -> BackboneSpec:
    """Describe ``model`` (built on the meta device) with one tap per graph node, plus penultimate and logits."""
    model.eval()
    _, nodes = get_graph_node_names(model)
    nodes = [n for n in nodes if n != "x"]
    extractor = create_feature_extractor(model, return_nodes={n: n for n in nodes})
    with torch.no_grad():  # two images, to tell per-image outputs from parameters (class token, layer scale)
        outputs = extractor(torch.empty(2, 3, size, size, device="meta"))
    logits_module = last_linear_path(model, head_path(model))
    # The node just before the class-scoring layer is its input (heads are sequential).
    penultimate = nodes[nodes.index(logits_module) - 1] if logits_module in nodes else nodes[-2]
    logits = nodes[-1]
    taps: list[TapSpec] = []
    for node in nodes:
        out = outputs[node]
        if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[0] != 2:
            continue  # size queries, shape tuples, parameters: not features of an image
        aliases = tuple(a for a, n in (("penultimate", penultimate), ("logits", logits)) if n == node)
        shape = tuple(out.shape[1:])
        taps.append(TapSpec(node, node, shape, aliases=aliases, layout=layout_of(shape)))
    return BackboneSpec(
        name=name,
        family="torchvision",
        taps=tuple(taps),
        default_tap="penultimate",
        input_size=size,
        logits_module=logits_module,
        description=f"torchvision {name} (taps from its FX graph)",
    )
