"""The backbone registry: curated families with hand-named taps, and every other torchvision classifier.

``list_backbones()`` names them, ``describe(name)`` returns the tap table, ``create_backbone`` builds the
network with its weights (see :mod:`featkit.backbones.weights`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn
from torchvision import models as tvm

from featkit.backbones.alexnet import alexnet_spec
from featkit.backbones.alexnet2012 import AlexNet2012, alexnet2012_spec
from featkit.backbones.generic import generic_spec
from featkit.backbones.resnet import DEPTHS, resnet_spec
from featkit.backbones.spec import BackboneSpec
from featkit.backbones.squeezenet import LAYOUT as SQUEEZENET_LAYOUT
from featkit.backbones.squeezenet import squeezenet_spec
from featkit.backbones.vgg import PLANS as VGG_PLANS
from featkit.backbones.vgg import vgg_spec
from featkit.errors import unknown

_CURATED: dict[str, Callable[..., BackboneSpec]] = {}
_BUILDERS: dict[str, Callable[..., nn.Module]] = {}  # architectures torchvision does not have


def register_backbone(name: str, make_spec: Callable[..., BackboneSpec],
                      build: Callable[..., nn.Module] | None = None) -> None:
    """Add a curated backbone. Registering a name twice is a programming error and raises.

    Args:
        name: registry name; a torchvision model name unless ``build`` is given.
        make_spec: returns the tap table; takes ``size`` (the square input) as a keyword.
        build: ``build(num_classes=...)`` returns the randomly initialised architecture, for networks that
            torchvision does not build.
    """
    if name in _CURATED:
        raise ValueError(f"backbone '{name}' is already registered")
    _CURATED[name] = make_spec
    if build is not None:
        _BUILDERS[name] = build


register_backbone("alexnet", alexnet_spec)
register_backbone("alexnet2012", alexnet2012_spec, build=AlexNet2012)
for _vgg in VGG_PLANS:
    register_backbone(_vgg, functools.partial(vgg_spec, _vgg))
    register_backbone(f"{_vgg}_bn", functools.partial(vgg_spec, f"{_vgg}_bn"))
for _depth in DEPTHS:
    register_backbone(f"resnet{_depth}", functools.partial(resnet_spec, _depth))
for _sq in SQUEEZENET_LAYOUT:
    register_backbone(_sq, functools.partial(squeezenet_spec, _sq))


def curated_backbones() -> list[str]:
    return list(_CURATED)


def torchvision_classifiers() -> list[str]:
    return sorted(tvm.list_models(module=tvm))


def list_backbones() -> list[str]:
    """Curated backbones first (in family order), then every other torchvision classifier."""
    extra = [n for n in torchvision_classifiers() if n not in _CURATED]
    return curated_backbones() + extra


def default_input_size(name: str) -> int:
    """The crop size the model's recommended weights were trained at (224 unless torchvision says otherwise)."""
    try:
        return int(tvm.get_model_weights(name).DEFAULT.transforms().crop_size[0])
    except (ValueError, KeyError, AttributeError):
        return 224


def build_module(name: str, num_classes: int = 1000) -> nn.Module:
    """The bare architecture (random init): torchvision's, or the registered builder's."""
    check_name(name)
    if name in _BUILDERS:
        return _BUILDERS[name](num_classes=num_classes)
    kwargs: dict = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    if name.startswith("vit_"):  # ViT's position embeddings fix the input size its weights expect
        kwargs["image_size"] = default_input_size(name)
    return tvm.get_model(name, num_classes=num_classes, **kwargs)


def check_name(name: str) -> None:
    if name not in _CURATED and name not in torchvision_classifiers():
        raise unknown("model", name, list_backbones(), see="featkit models")


def describe_at(name: str, size: int) -> BackboneSpec:
    """A curated backbone's tap table for a square input of ``size`` pixels (shapes scale with the input)."""
    if name not in _CURATED:
        raise ValueError(f"{name} is not a curated backbone")
    return _CURATED[name](size=size)


@functools.cache
def describe(name: str) -> BackboneSpec:
    """The tap table of a backbone (curated, or read off the torchvision graph)."""
    check_name(name)
    if name in _CURATED:
        return _CURATED[name]()
    return generic_spec(name, meta_module(name), default_input_size(name))


def meta_module(name: str) -> nn.Module:
    """The architecture on the meta device: shapes and parameter counts without allocating or initialising."""
    try:
        with torch.device("meta"):
            return build_module(name)
    except NotImplementedError:  # builders that compute with tensors (RegNet) need real ones first
        return build_module(name).to("meta")
