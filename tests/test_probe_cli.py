"""``featkit probe`` reads the split column (or a --test store) and reports what users compare: accuracy."""

from __future__ import annotations

import json
import logging
import shutil

import pandas as pd
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
    return json.loads(result.stdout)


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
    with pytest.raises(InputError, match="has no labels") as err:
        runner.invoke(app, ["probe", str(stores / "unlabelled")], catch_exceptions=False)
    assert "\n" not in str(err.value)
    with pytest.raises(featkit.FeatkitError, match="Unknown tap 'fire7'"):  # the tap is checked first
        runner.invoke(app, ["probe", str(stores / "unlabelled"), "--tap", "fire7"], catch_exceptions=False)


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


# ---- a test store must be comparable and disjoint; a store without splits is held out; the report ----------


@pytest.fixture(scope="module")
def others(stores, tmp_path_factory):
    """Test stores that must be refused: other weights, other pooling, a train file by path, a renamed copy."""
    root = tmp_path_factory.mktemp("others")
    test_dir = stores / "d" / "test"
    featkit.extract(test_dir, root / "seed1", **FAST, seed=1)
    featkit.extract(test_dir, root / "max", **{**FAST, "pool": "max"})
    train_image = stores / "d" / "train" / "c1" / "002.png"
    listed = [(str(p), p.parent.name) for p in sorted(test_dir.rglob("*.png"))] + [(str(train_image), "c1")]
    pd.DataFrame(listed, columns=["path", "label"]).to_csv(root / "list.csv", index=False)
    featkit.extract(root / "list.csv", root / "by_path", **FAST)
    shutil.copytree(test_dir, root / "copied")
    shutil.copy(train_image, root / "copied" / "c1" / "renamed.png")
    featkit.extract(root / "copied", root / "by_content", **FAST)
    shutil.copytree(stores / "d", root / "one")  # one store whose test/ holds a copy of a train/ photo
    shutil.copy(stores / "d" / "train" / "c0" / "001.png", root / "one" / "test" / "c0" / "copy.png")
    featkit.extract(root / "one", root / "one_store", **FAST)
    write_images(root / "photos", classes=2, per_class=10, seed=5)  # PHOTOS/CLASS/*.png: labels, no splits
    featkit.extract(root / "photos", root / "photos_store", **FAST)
    return root


def test_a_test_store_of_other_weights_or_pooling_is_refused_naming_the_differences(stores, others):
    with pytest.raises(InputError, match=r"weights.id: random\(seed=0\) → random\(seed=1\)") as err:
        runner.invoke(app, ["probe", str(stores / "train"), "--test", str(others / "seed1")], catch_exceptions=False)
    assert str(stores / "train") in str(err.value) and str(others / "seed1") in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="pool: avg → max"):
        runner.invoke(app, ["probe", str(stores / "train"), "--test", str(others / "max"), "--kind", "knn"],
                      catch_exceptions=False)


def test_a_test_store_of_more_taps_is_compared_on_the_probed_tap_only(stores, tmp_path):
    featkit.extract(stores / "d" / "test", tmp_path / "two", **{**FAST, "layers": ["fire9", "fire8"]})
    out = invoke(str(stores / "train"), "--test", str(tmp_path / "two"), "--tap", "fire9", "--kind", "knn")
    assert (out["n_train"], out["n_test"], out["shared_files"]) == (12, 6, 0)


@pytest.mark.parametrize("store", ["by_path", "by_content"])
def test_train_and_test_sharing_a_file_is_refused_or_allowed_with_a_warning(stores, others, store, caplog):
    train_image = str(stores / "d" / "train" / "c1" / "002.png")
    args = ["probe", str(stores / "train"), "--test", str(others / store), "--kind", "knn", "--k", "3"]
    with pytest.raises(InputError, match="share 1 image") as err:
        runner.invoke(app, args, catch_exceptions=False)
    message = str(err.value)
    assert str(stores / "train") in message and str(others / store) in message and train_image in message
    assert "--allow-overlap" in message and "\n" not in message
    with caplog.at_level(logging.WARNING, logger="featkit.probes.splits"):
        out = invoke(*args[1:], "--allow-overlap")
    assert (out["n_test"], out["shared_files"]) == (7, 1)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "share 1 image" in warned[0] and "\n" not in warned[0]


def test_one_store_whose_test_split_holds_a_copy_of_a_train_image_is_refused(others):
    with pytest.raises(InputError, match=r"The train/val and test splits of .*one_store share 1 image \(e\.g\. "
                                         r".*copy\.png has the same content as .*train/c0/001\.png\)"):
        runner.invoke(app, ["probe", str(others / "one_store")], catch_exceptions=False)
    assert invoke(str(others / "one_store"), "--allow-overlap")["n_test"] == 7


def test_a_labelled_store_without_splits_is_tested_on_a_seeded_stratified_holdout(others):
    store = str(others / "photos_store")
    shown = runner.invoke(app, ["probe", store], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    assert "no split column: tested on a seeded stratified 20 % of the rows (seed 0)" in shown.output
    assert "5-fold CV on train" in shown.output and "on 4 test images (trained on 16)" in shown.output
    first, again = (invoke(store, "--seed", "3", "--test-fraction", "0.3") for _ in range(2))
    assert first["holdout"] == {"fraction": 0.3, "seed": 3} and (first["n_test"], first["n_train"]) == (6, 14)
    for key in ("top1", "best_C", "val_scores", "predictions", "confusion"):
        assert first[key] == again[key], key
    assert sorted(first["predictions"]) != [] and sum(map(sum, first["confusion"])) == 6
    with pytest.raises(featkit.FeatkitError, match="'test_fraction' parameter of probe_data"):
        runner.invoke(app, ["probe", store, "--test-fraction", "1.5"], catch_exceptions=False)


def test_report_prints_per_class_accuracy_and_the_confusion_matrix(stores):
    shown = runner.invoke(app, ["probe", str(stores / "all"), "--report", "-q"], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    assert "Per class" in shown.output and "precision" in shown.output
    assert "Confusion matrix" in shown.output and "true \\ predicted" in shown.output
    out = invoke(str(stores / "all"))
    assert [row["class"] for row in out["per_class"]] == ["c0", "c1"]
    assert [row["support"] for row in out["per_class"]] == [3, 3]
    assert [row["accuracy"] for row in out["per_class"]] == [r[i] / 3 for i, r in enumerate(out["confusion"])]
