"""``featkit probe`` reads the split column (or a --test store) and reports what users compare: accuracy."""

from __future__ import annotations

import json

import pytest
from helpers import write_images
from typer.testing import CliRunner

import featkit
from featkit.cli.app import app
from featkit.errors import InputError

runner = CliRunner()
FAST = dict(model="squeezenet1_1", weights="random", layers=["fire9"], pool="avg", device="cpu")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        write_images(root / "d" / split, classes=2, per_class=n, seed={"train": 0, "val": 1, "test": 2}[split])
    featkit.extract(root / "d", root / "all", **FAST)
    featkit.extract(root / "d" / "train", root / "train", **FAST)
    featkit.extract(root / "d" / "test", root / "test", **FAST)
    write_images(root / "flat", classes=1, per_class=2)
    featkit.extract(list((root / "flat" / "c0").iterdir()), root / "unlabelled", **FAST)
    return root


def invoke(*args: str) -> dict:
    result = runner.invoke(app, ["probe", *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_split_column_decides_train_val_and_test(stores):
    out = invoke(str(stores / "all"), "--tap", "fire9")
    assert (out["n_train"], out["n_val"], out["n_test"], out["test_split"]) == (12, 4, 6, "test")
    assert out["classes"] == ["c0", "c1"] and len(out["confusion"]) == 2 and 0.0 <= out["top1"] <= 1.0
    assert len(out["val_scores"]) == 45 and out["settings"]["model"] == "squeezenet1_1"


def test_separate_test_store_and_knn(stores):
    out = invoke(str(stores / "train"), "--test", str(stores / "test"), "--kind", "knn", "--k", "3")
    assert (out["n_train"], out["n_test"], out["k"]) == (12, 6, 3)
    assert len(out["predictions"]) == 6


def test_human_readable_summary(stores):
    result = runner.invoke(app, ["probe", str(stores / "all")], catch_exceptions=False)
    assert result.exit_code == 0 and "linear probe (C=" in result.output and "on 6 test images" in result.output


def test_a_store_without_labels_is_a_clear_error(stores):
    with pytest.raises(InputError, match="no train split|no labels"):
        runner.invoke(app, ["probe", str(stores / "unlabelled")], catch_exceptions=False)


def test_data_list_and_show_read_the_cards():
    listing = runner.invoke(app, ["data", "list"], catch_exceptions=False)
    assert listing.exit_code == 0 and "flowers102" in listing.output and "mean_per_class" in listing.output
    shown = runner.invoke(app, ["data", "show", "oxford_iiit_pet"], catch_exceptions=False)
    assert shown.exit_code == 0 and "trainval: 3,680 images" in shown.output and "OxfordIIITPet" in shown.output


def test_linear_and_knn_results_have_one_shape_and_a_store_of_several_taps_needs_tap(stores, tmp_path):
    linear, knn = invoke(str(stores / "all")), invoke(str(stores / "all"), "--kind", "knn", "--k", "3")
    assert set(linear) == set(knn) and (linear["kind"], knn["kind"]) == ("linear", "knn")
    assert knn["best_C"] is None and linear["k"] is None and len(knn["confusion"]) == 2
    featkit.extract(stores / "d", tmp_path / "two", **{**FAST, "layers": ["fire9", "fire8"]})
    with pytest.raises(featkit.FeatkitError, match=r"holds several taps \(fire9, fire8\); choose one with --tap"):
        runner.invoke(app, ["probe", str(tmp_path / "two")], catch_exceptions=False)
    assert invoke(str(tmp_path / "two"), "--tap", "fire8")["tap"] == "fire8"
