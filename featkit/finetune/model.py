"""The network a fine-tune trains: a backbone with its pretrained weights and a new head sized from the data.

The model is torchvision's own architecture built with ``num_classes`` = the data's classes, so its
state_dict has the same keys as the backbone's (taps keep their names) and the saved weights load back with
:func:`featkit.backbones.weights.load_backbone_weights`.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from featkit.backbones.registry import build_module, describe
from featkit.backbones.spec import Preprocess
from featkit.backbones.weights import WeightsInfo, load_backbone_weights, preprocess_for
from featkit.finetune.recipe import Recipe

log = logging.getLogger(__name__)


def build_model(recipe: Recipe, num_classes: int) -> tuple[nn.Module, WeightsInfo]:
    """The recipe's model with its initial weights everywhere but the head, which is new (seeded init)."""
    source, info = load_backbone_weights(recipe.model, recipe.weights, seed=recipe.seed)
    head = describe(recipe.model).logits_module
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = build_module(recipe.model, num_classes=num_classes)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith(f"{head}.")}
    missing, _ = model.load_state_dict(state, strict=False)
    new = [k for k in missing if not k.startswith(f"{head}.")]
    if new:  # cannot happen for one architecture; a guard against a wrong logits_module in a spec
        raise RuntimeError(f"{recipe.model}: weights outside the head were not loaded: {new[:5]}")
    set_dropout(model, head, recipe.head.dropout)
    return model, info


def set_dropout(model: nn.Module, head: str, p: float) -> None:
    """Set ``p`` on the dropout layers of the classifier block.

    They are AlexNet's and VGG's fc6/fc7, SqueezeNet's and EfficientNet's before the head; where the block has none
    (ResNet), drop the head's input in training.
    """
    block = model.get_submodule(head.split(".")[0])
    layers = [m for m in block.modules() if isinstance(m, nn.Dropout)]
    for m in layers:
        m.p = p
    if not layers and p > 0:  # a hook, not a new layer: the state_dict keeps torchvision's keys
        model.get_submodule(head).register_forward_pre_hook(
            lambda module, args: (F.dropout(args[0], p, module.training),))


def eval_preprocess(recipe: Recipe) -> Preprocess:
    """The model's own preprocessing, with the recipe's eval sizes where it sets them."""
    base = preprocess_for(recipe.model)
    return Preprocess(resize=recipe.data.eval_resize or base.resize, crop=recipe.data.eval_crop or base.crop,
                      mean=base.mean, std=base.std, interpolation=base.interpolation)


def train_crop(recipe: Recipe) -> int:
    return recipe.data.train_crop or preprocess_for(recipe.model).crop
