"""Transformer taps: ViT tokens and Swin's H×W×C maps pool to one vector; ViT's penultimate is its class token."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import write_images
from typer.testing import CliRunner

import featkit
from featkit._device import resolve_runtime
from featkit.backbones.registry import build_module, describe
from featkit.backbones.weights import load_backbone_weights
from featkit.choices import Pool
from featkit.cli.app import app
from featkit.errors import ParameterError
from featkit.extraction.engine import TapExtractor, pool_features

CPU = resolve_runtime("cpu", "fp32")
VIT_LAST = "encoder.ln"  # the encoder's output after its final LayerNorm: 197 tokens × 768
SWIN_STAGE = "features.3.1.add_1"  # Swin-T's second stage output: 28×28×192 at 224, channels last


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    return load_backbone_weights("vit_b_16", "random")[0]


def test_generic_taps_carry_their_layout_and_no_parameters():
    vit_spec, swin_spec = describe("vit_b_16"), describe("swin_t")
    assert (vit_spec.tap(VIT_LAST).shape, vit_spec.tap(VIT_LAST).layout) == ((197, 768), "tokens")
    assert (vit_spec.tap("conv_proj").layout, vit_spec.tap("penultimate").layout) == ("chw", "vector")
    assert (swin_spec.tap(SWIN_STAGE).shape, swin_spec.tap(SWIN_STAGE).layout) == ((28, 28, 192), "hwc")
    assert (swin_spec.tap("permute").shape, swin_spec.tap("permute").layout) == ((768, 7, 7), "chw")
    # parameters read in the graph (the class token, the position embedding) are not features of an image
    assert "class_token" not in vit_spec.tap_names and "encoder.encoder_pos_embedding" not in vit_spec.tap_names


def test_token_and_channels_last_dims_are_the_channels_not_the_flattened_tensor():
    vit_last = describe("vit_b_16").tap(VIT_LAST)
    assert vit_last.dims("none") == 197 * 768 == 151_296
    assert {pool: vit_last.dims(pool) for pool in ("cls", "mean", "avg", "max", "gem")} == dict.fromkeys(
        ("cls", "mean", "avg", "max", "gem"), 768)
    swin = describe("swin_t").tap(SWIN_STAGE)
    assert (swin.dims("none"), swin.dims("avg"), swin.dims("mean")) == (28 * 28 * 192, 192, 192)
    resnet = describe("resnet18").tap("layer3")  # CNN maps: unchanged, and mean is avg
    assert (resnet.dims("none"), resnet.dims("avg"), resnet.dims("mean")) == (256 * 14 * 14, 256, 256)


def test_vit_penultimate_is_the_class_token_after_the_final_norm(vit):
    spec = describe("vit_b_16")
    penultimate = spec.tap("penultimate")  # the graph node getitem_5
    extractor = TapExtractor(vit, [penultimate, spec.tap(VIT_LAST)], CPU, pool="cls")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    out = extractor(x)
    with torch.inference_mode():  # torchvision's VisionTransformer.forward, up to what heads.head reads
        tokens = vit._process_input(x)
        tokens = torch.cat([vit.class_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        class_token = vit.encoder(tokens)[:, 0]
    torch.testing.assert_close(out[penultimate.name], class_token)
    torch.testing.assert_close(out[VIT_LAST], class_token)  # --pool cls on the last tokens is the same vector


def test_pools_on_vit_tokens_reduce_the_token_axis(vit):
    tap = describe("vit_b_16").tap(VIT_LAST)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    tokens = TapExtractor(vit, [tap], CPU, pool="none")(x)[VIT_LAST].reshape(1, 197, 768)
    pooled = {pool.value: pool_features(tokens, pool, tap.pooled_axes(pool)) for pool in Pool}
    assert {pool: tuple(v.shape) for pool, v in pooled.items()} == {pool: (1, tap.dims(pool)) for pool in Pool}
    torch.testing.assert_close(pooled["cls"], tokens[:, 0])
    torch.testing.assert_close(pooled["avg"], tokens.mean(dim=1))  # every token, the class token included
    assert torch.equal(pooled["mean"], pooled["avg"])
    torch.testing.assert_close(pooled["max"], tokens.amax(dim=1))


def test_vit_token_tap_with_avg_stores_768_values_per_image(tmp_path):
    images = write_images(tmp_path / "imgs", classes=1, per_class=1)
    featkit.extract(images, tmp_path / "s", model="vit_b_16", weights="random", layers=[VIT_LAST, "penultimate"],
                    pool="avg", workers=0, device="cpu")
    store = featkit.open_features(tmp_path / "s")
    assert store[VIT_LAST].shape == (1, 768) == (1, describe("vit_b_16").tap(VIT_LAST).dims("avg"))  # not 151,296
    assert store["penultimate"].shape == (1, 768)


def test_swin_stage_avg_is_the_mean_over_its_positions():
    tap = describe("swin_t").tap(SWIN_STAGE)
    torch.manual_seed(0)
    swin = build_module("swin_t").eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    flat = TapExtractor(swin, [tap], CPU, pool="none")(x)[SWIN_STAGE].numpy()
    avg = TapExtractor(swin, [tap], CPU, pool="avg")(x)[SWIN_STAGE].numpy()
    positions = flat.reshape(8, 8, 192)  # H×W×C at 64: W is not a channel axis
    assert avg.shape == (1, 192)
    np.testing.assert_allclose(avg[0], positions.mean(axis=(0, 1)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ParameterError, match=r"tap 'features.3.1.add_1' \(an H×W×C map, no class token\)"):
        TapExtractor(swin, [tap], CPU, pool="cls")


def test_cls_on_a_cnn_map_is_a_one_line_error(tmp_path):
    with pytest.raises(ParameterError) as error:
        featkit.embed(np.zeros((32, 32, 3), np.uint8), model="squeezenet1_1", weights="random",
                      layers=["fire9", "logits"], pool="cls", device="cpu")
    assert str(error.value) == ("The 'pool' parameter of tap 'fire9' (a C×H×W map, no class token) must be avg, "
                                "max, gem, mean or none. Got 'cls' instead.")
    images = write_images(tmp_path / "imgs", classes=1, per_class=1)
    result = CliRunner().invoke(app, ["extract", "--model", "resnet18", "--layer", "layer3", "--pool", "cls",
                                      "--weights", "random", str(images), "-o", str(tmp_path / "s")])
    assert result.exit_code == 1 and isinstance(result.exception, ParameterError)
    assert "no class token" in str(result.exception) and "\n" not in str(result.exception)
    assert not (tmp_path / "s").exists()


def test_taps_command_shows_pooled_dims_for_vit_tokens():
    output = CliRunner().invoke(app, ["taps", "vit_b_16", "--pool", "mean"], catch_exceptions=False).output
    row = next(line for line in output.splitlines() if f" {VIT_LAST} " in line)
    assert "197×768" in row and "tokens" in row and " 768 " in row and "3,072" in row and "151,296" not in row
    cls = CliRunner().invoke(app, ["taps", "resnet18", "--pool", "cls"], catch_exceptions=False).output
    assert "does not apply to 6 map tap(s)" in cls and "layer3" in cls
