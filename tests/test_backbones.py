"""Every curated (model, tap): the declared shape is the real output shape; registry behaviour."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor

from featkit.backbones.alexnet2012 import MIN_INPUT_SIZE as ALEXNET2012_MIN
from featkit.backbones.registry import (
    build_module,
    curated_backbones,
    describe,
    describe_at,
    list_backbones,
    register_backbone,
)
from featkit.backbones.weights import load_backbone_weights, preprocess_for
from featkit.errors import UnknownNameError, WeightsError

CURATED = curated_backbones()
# The unpadded 11×11 stride-4 conv1 of the 2012 AlexNet leaves pool5 nothing to pool below 67 pixels.
SMALL_INPUT = {"alexnet2012": ALEXNET2012_MIN}


def test_curated_families_are_registered():
    expected = {"alexnet", "alexnet2012", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                "squeezenet1_0", "squeezenet1_1"}
    expected |= {f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")}
    assert expected == set(CURATED)
    assert set(CURATED) < set(list_backbones())
    assert "efficientnet_b0" in list_backbones()


@pytest.mark.parametrize("name", CURATED)
def test_declared_shapes_at_the_default_input_match_a_meta_forward(name):
    spec = describe(name)
    with torch.device("meta"):
        model = build_module(name).eval()
    size = spec.input_size  # 224, and 227 for alexnet2012
    out = create_feature_extractor(model, {t.node: t.name for t in spec.taps})(
        torch.empty(1, 3, size, size, device="meta"))
    assert {t.name: tuple(out[t.name].shape[1:]) for t in spec.taps} == {t.name: t.shape for t in spec.taps}


@pytest.mark.parametrize("name", CURATED)
def test_declared_shapes_match_real_outputs_with_random_weights_on_a_small_input(name):
    size = SMALL_INPUT.get(name, 64)
    spec = describe_at(name, size)
    torch.manual_seed(0)
    model = build_module(name).eval()
    with torch.inference_mode():
        out = create_feature_extractor(model, {t.node: t.name for t in spec.taps})(torch.randn(2, 3, size, size))
    for tap in spec.taps:
        assert tuple(out[tap.name].shape) == (2, *tap.shape), tap.name
        assert torch.isfinite(out[tap.name]).all()


def test_caffe_convention_names():
    vgg = describe("vgg16")
    assert vgg.tap("pool5").node == "features.30" and vgg.tap("pool5").flat_dims == 25088
    assert vgg.tap("fc7").node == "classifier.4" and vgg.tap("fc7_pre").node == "classifier.3"
    alex = describe("alexnet")
    assert alex.tap("pool5").node == "features.12" and alex.tap("pool5").flat_dims == 9216
    assert alex.tap("fc7").node == "classifier.5" and alex.tap("fc7_pre").node == "classifier.4"
    r50 = describe("resnet50")
    assert r50.tap("res4") is r50.tap("layer3") is r50.tap("conv4_x")
    assert r50.tap("pool5").name == "avgpool" and r50.tap("pool5").shape == (2048,)
    assert describe("resnet18").tap("avgpool").shape == (512,)
    sq = describe("squeezenet1_1")
    assert sq.tap("penultimate").name == "fire9" and sq.tap("penultimate").shape == (512, 13, 13)


def test_alexnet2012_is_built_by_featkit_with_caffe_preprocessing():
    spec = describe("alexnet2012")
    assert spec.input_size == 227 and spec.tap("pool5").shape == (256, 6, 6) and spec.tap("penultimate").name == "fc7"
    assert (preprocess_for("alexnet2012").resize, preprocess_for("alexnet2012").crop) == (256, 227)
    with torch.device("meta"):
        assert build_module("alexnet2012", num_classes=5).classifier[6].out_features == 5
    with pytest.raises(ValueError, match="at least 67 pixels"):
        describe_at("alexnet2012", 64)
    with pytest.raises(WeightsError, match="no ImageNet weights for alexnet2012. Pass --weights random"):
        load_backbone_weights("alexnet2012", "imagenet")


def test_generic_torchvision_model_has_graph_taps_penultimate_and_logits():
    spec = describe("mobilenet_v3_small")
    assert spec.family == "torchvision"
    assert spec.tap("logits").shape == (1000,)
    assert spec.tap("penultimate").shape == (1024,)  # input of the last Linear
    assert spec.tap("features.12").shape == (576, 7, 7)


def test_unknown_names_say_did_you_mean_and_where_to_look():
    with pytest.raises(UnknownNameError,
                       match=r"Unknown tap 'fc_7' for vgg16\. Did you mean 'fc7'\? See: featkit taps vgg16"):
        describe("vgg16").tap("fc_7")
    with pytest.raises(UnknownNameError, match=r"Unknown model 'resnet5'\. Did you mean 'resnet50'\?.*featkit models"):
        describe("resnet5")


def test_registering_a_name_twice_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("vgg16", lambda: describe("vgg16"))
