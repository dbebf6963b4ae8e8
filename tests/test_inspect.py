"""featkit inspect: the classic hand calculations, reproduced from the real modules on the meta device."""

from __future__ import annotations

import csv
import io
import json

import pytest
from torch import nn
from typer.testing import CliRunner

from featkit.backbones.registry import curated_backbones, meta_module
from featkit.cli.app import app
from featkit.errors import InputError, UnknownNameError
from featkit.inspect import InspectConfig, Inspection, inspect_backbone, layer_rows

runner = CliRunner()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def by_tap(result: Inspection) -> dict:
    return {tap: row for row in result.rows for tap in row.taps}


@pytest.fixture(scope="module")
def vgg16() -> Inspection:
    return inspect_backbone(InspectConfig("vgg16"))


def test_vgg16_rows_match_the_classic_table(vgg16):
    rows = by_tap(vgg16)
    conv1 = rows["conv1_1_pre"]
    assert conv1.shape == (64, 224, 224) and conv1.activations == 3_211_264 and conv1.weights == 1_728
    assert rows["conv2_2_pre"].weight_formula == "(3*3*128)*128 = 147,456"
    assert rows["conv2_1_pre"].weight_formula == "(3*3*64)*128 = 73,728" and rows["conv2_1_pre"].biases == 128
    assert (rows["conv3_1_pre"].weights, rows["conv3_2_pre"].weights) == (294_912, 589_824)
    assert (rows["conv4_1_pre"].weights, rows["conv4_2_pre"].weights) == (1_179_648, 2_359_296)
    assert rows["fc6_pre"].weight_formula == "(7*7*512)*4096 = 102,760,448"
    assert (rows["fc7_pre"].weights, rows["fc8"].weights) == (16_777_216, 4_096_000)
    assert vgg16.totals.parameters == 138_357_544


def test_vgg16_activation_memory_is_the_exact_sum_of_its_rows(vgg16):
    stored = [r for r in vgg16.rows if r.memory]
    assert len(stored) == 1 + 13 + 5 + 3  # input, convs, pools, fcs: in-place ReLUs, dropout, avgpool add nothing
    assert all(r.memory == r.activations for r in stored)
    assert vgg16.totals.memory == 15_237_608
    assert vgg16.totals.memory_bytes == 60_950_432 and round(vgg16.totals.memory_bytes / 1e6) == 61
    assert vgg16.totals.training_bytes == 2 * vgg16.totals.memory_bytes
    assert vgg16.totals.macs == 15_470_264_320


def test_alexnet2012_is_the_2012_paper_network():
    result = inspect_backbone(InspectConfig("alexnet2012"))
    assert result.input_size == 227
    rows = by_tap(result)
    assert rows["conv1_pre"].shape == (96, 55, 55) and rows["conv1_pre"].params == (11 * 11 * 3 + 1) * 96 == 34_944
    assert rows["pool1"].shape == (96, 27, 27) and rows["pool1"].params == 0
    shapes = {"conv2": (256, 27, 27), "pool2": (256, 13, 13), "conv3": (384, 13, 13), "conv4": (384, 13, 13),
              "conv5": (256, 13, 13), "pool5": (256, 6, 6)}
    assert {tap: rows[tap].shape for tap in shapes} == shapes
    assert rows["norm1"].kind == "LocalResponseNorm" and rows["fc6_pre"].weight_formula == "(6*6*256)*4096 = 37,748,736"


def test_three_stacked_3x3_convolutions_see_7x7():
    rows = layer_rows(nn.Sequential(*(nn.Conv2d(3, 3, 3, padding=1) for _ in range(3))), 16)
    assert [r.field.size for r in rows[1:]] == [(3, 3), (5, 5), (7, 7)]
    assert rows[-1].field.jump == (1, 1)


def test_vgg16_pool5_sees_212_pixels_at_stride_32(vgg16):
    pool5 = by_tap(vgg16)["pool5"]
    assert pool5.field.size == (212, 212) and pool5.field.jump == (32, 32)


def test_resnet50_stages_follow_its_layers_and_layer4_has_stride_32():
    result = inspect_backbone(InspectConfig("resnet50", depth="stage"))
    assert [r.name for r in result.rows] == ["input", "stage1", "layer1", "layer2", "layer3", "layer4", "head"]
    assert [r.field.jump[0] for r in result.rows[1:6]] == [4, 4, 8, 16, 32]
    layer4 = result.rows[5]
    assert layer4.shape == (2048, 7, 7) and layer4.taps == ("layer4",)
    assert layer4.field.size == (427, 427)  # main path; the shortcuts see less


def test_blocks_are_the_networks_own_units():
    resnet = inspect_backbone(InspectConfig("resnet50", depth="block"))
    assert sum(r.kind == "Bottleneck" for r in resnet.rows) == 3 + 4 + 6 + 3
    vgg = inspect_backbone(InspectConfig("vgg16", depth="block"))
    assert [r.kind for r in vgg.rows[1:4]] == ["Conv2d+ReLU", "Conv2d+ReLU", "MaxPool2d"]
    assert vgg.rows[1].taps == ("conv1_1",) and vgg.rows[1].weight_formula == "(3*3*3)*64 = 1,728"
    squeeze = inspect_backbone(InspectConfig("squeezenet1_1", depth="block"))
    assert sum(r.kind == "Fire" for r in squeeze.rows) == 8
    # expands, squeeze, concat
    assert by_tap(squeeze)["fire9"].memory == 2 * 256 * 13 * 13 + 64 * 13 * 13 + 512 * 13 * 13


@pytest.mark.parametrize("depth", ["layer", "block", "stage"])
def test_every_depth_adds_up_to_the_same_totals(vgg16, depth):
    result = inspect_backbone(InspectConfig("vgg16", depth=depth))
    assert result.totals == vgg16.totals
    assert sum(r.params for r in result.rows) == vgg16.totals.parameters
    assert sum(r.memory for r in result.rows) == vgg16.totals.memory
    assert sum(r.macs for r in result.rows) == vgg16.totals.macs


@pytest.mark.parametrize("name", curated_backbones())
def test_parameter_totals_equal_the_modules_own_count(name):
    result = inspect_backbone(InspectConfig(name))
    assert result.totals.parameters == sum(p.numel() for p in meta_module(name).parameters())


def test_any_torchvision_classifier_works():
    result = inspect_backbone(InspectConfig("mobilenet_v3_small", depth="stage"))
    assert result.totals.parameters == sum(p.numel() for p in meta_module("mobilenet_v3_small").parameters())
    assert result.rows[-1].name == "head" and result.rows[-1].shape == (1000,)
    assert result.totals.macs > 50_000_000 and result.rows[-2].field.jump == (32, 32)
    layers = inspect_backbone(InspectConfig("mobilenet_v3_small"))
    assert {"penultimate", "logits"} <= set(by_tap(layers))


def test_dtype_changes_the_bytes_not_the_values(vgg16):
    half = inspect_backbone(InspectConfig("vgg16", dtype="bfloat16"))
    assert half.totals.memory == vgg16.totals.memory and half.totals.memory_bytes == 2 * vgg16.totals.memory


def test_bad_requests_raise_featkit_errors():
    with pytest.raises(InputError, match=r"alexnet2012 cannot run on a 64×64 input"):
        inspect_backbone(InspectConfig("alexnet2012", input_size=64))
    with pytest.raises(UnknownNameError, match=r"Unknown depth 'blok'\. Did you mean 'block'\?"):
        inspect_backbone(InspectConfig("vgg16", depth="blok"))
    with pytest.raises(UnknownNameError, match=r"Unknown model 'resnet5'\. Did you mean 'resnet50'\?"):
        run("inspect", "resnet5")


def test_cli_table_shows_rows_formulas_and_totals():
    out = run("inspect", "vgg16").output
    assert "(3*3*64)*128 = 73,728" in out and "224×224×64" in out and "pool5" in out
    assert "parameters: 138,357,544" in out
    assert "15,237,608 values × 4 B = 60,950,432 B ≈ 61.0 MB forward; ≈ 121.9 MB with backward" in out


def test_cli_csv_markdown_and_json():
    rows = list(csv.DictReader(io.StringIO(run("inspect", "resnet50", "--depth", "block", "--format", "csv").output)))
    assert rows[0]["layer"] == "input" and sum(int(r["parameters"]) for r in rows) == 25_557_032
    md = run("inspect", "alexnet2012", "--format", "markdown").output
    assert "| layer | tap |" in md and "| 55×55×96 |" in md and "- parameters: 62,378,344" in md
    doc = json.loads(run("inspect", "alexnet2012", "--input", "227", "--depth", "stage", "--format", "json").output)
    assert doc["input_size"] == 227 and doc["totals"]["parameters"] == 62_378_344
    assert doc["rows"][-1]["layer"] == "head" and doc["rows"][-1]["rf"] == [355, 355]


def test_cli_plot_writes_a_png(tmp_path):
    path = tmp_path / "alexnet.png"
    result = run("inspect", "alexnet2012", "--depth", "block", "--format", "csv", "--plot", str(path))
    assert result.exit_code == 0
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def formula_total(formula: str) -> int:
    """The number a formula cell ends with (``(3*3*3 + 1)*64 = 1,792`` → 1792; ``0`` for an empty cell)."""
    return int(formula.rpartition("= ")[2].replace(",", "")) if formula else 0


def test_params_column_writes_weights_with_biases_as_lecture_slides_do():
    rows = by_tap(inspect_backbone(InspectConfig("alexnet2012")))
    assert rows["conv1_pre"].param_formula == "(11*11*3 + 1)*96 = 34,944"
    assert rows["conv1_pre"].weight_formula == "(11*11*3)*96 = 34,848"  # the weights-only formula stays
    assert rows["fc6_pre"].param_formula == "(6*6*256 + 1)*4096 = 37,752,832"
    assert rows["fc8"].param_formula == "(4096 + 1)*1000 = 4,097,000" and rows["pool1"].param_formula == ""
    resnet = inspect_backbone(InspectConfig("resnet18"))
    conv1, bn1 = resnet.rows[1:3]
    assert (conv1.param_formula, bn1.param_formula) == ("(7*7*3)*64 = 9,408", "2*64 = 128")  # no conv bias; γ, β
    vgg_block = inspect_backbone(InspectConfig("vgg16", depth="block")).rows[1]
    assert vgg_block.param_formula == "(3*3*3 + 1)*64 = 1,792"


@pytest.mark.parametrize("name", ["alexnet", "vgg16", "resnet18"])
def test_params_column_adds_up_to_torchvisions_parameter_count(name):
    doc = json.loads(run("inspect", name, "--format", "json").output)
    assert all(formula_total(r["param_formula"]) == r["parameters"] for r in doc["rows"])
    assert sum(formula_total(r["param_formula"]) for r in doc["rows"]) == sum(
        p.numel() for p in meta_module(name).parameters())


def test_params_column_in_every_format():
    table = run("inspect", "alexnet2012").output
    assert "params" in table and "(11*11*3 + 1)*96 = 34,944" in table
    csv_rows = list(csv.DictReader(io.StringIO(run("inspect", "alexnet2012", "--format", "csv").output)))
    assert csv_rows[1]["param_formula"] == "(11*11*3 + 1)*96 = 34,944" and csv_rows[1]["parameters"] == "34944"
    md = run("inspect", "alexnet2012", "--format", "markdown").output
    assert "| biases | params |" in md and "| (11*11*3 + 1)*96 = 34,944 |" in md
