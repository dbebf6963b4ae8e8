"""Extraction into the store: contents, taps in one pass, pooling, dtypes, refusals, determinism, input changes."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import store_bytes, write_images

import featkit
from featkit._device import cpu_has_bf16, resolve_runtime
from featkit.backbones.registry import build_module, describe
from featkit.errors import FeatkitError, StoreError
from featkit.extraction.engine import TapExtractor

FAST = dict(model="squeezenet1_1", weights="random", workers=0, batch_size=4, device="cpu")


def test_store_layout_rows_and_labels(tiny_folder, tmp_path):
    result = featkit.extract(tiny_folder, tmp_path / "s", layers=["fire9", "logits"], pool="avg", **FAST)
    assert result.computed == 8 and result.failed == 0
    store = featkit.open_features(tmp_path / "s")
    assert store.taps == ["fire9", "logits"]
    assert store["fire9"].shape == (8, 512) and store["logits"].shape == (8, 1000)
    assert list(store.rows["label"]) == ["c0"] * 4 + ["c1"] * 4
    assert store.rows["path"].map(lambda p: Path(p).name).tolist() == ["000.png", "001.png", "002.png", "003.png"] * 2
    assert (store.rows[["width", "height"]].to_numpy() == [48, 40]).all()
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["settings"]["weights"]["sha256"] == result.weights.sha256 and len(result.weights.sha256) == 64
    assert {"torch", "torchvision", "pillow", "featkit"} <= set(store.runs[-1]["versions"])
    # other tools read the shard folders directly
    shard = np.load(tmp_path / "s" / "segments" / "seg-000000" / "features" / "fire9" / "part-00000.npy")
    np.testing.assert_array_equal(shard, np.asarray(store["fire9"]))


def test_split_column_from_train_val_layout(tmp_path):
    write_images(tmp_path / "d" / "train", per_class=2)
    write_images(tmp_path / "d" / "val", per_class=1)
    featkit.extract(tmp_path / "d", tmp_path / "s", **FAST)
    rows = featkit.open_features(tmp_path / "s").rows
    assert rows["split"].tolist() == ["train"] * 4 + ["val"] * 2
    assert rows["label"].tolist() == ["c0", "c0", "c1", "c1", "c0", "c1"]


def test_list_file_input_with_labels_and_relative_paths(tiny_folder, tmp_path):
    files = sorted(tiny_folder.rglob("*.png"))[:3]
    (tmp_path / "list.csv").write_text("path,label\n" + "".join(f"{os.path.relpath(f, tmp_path)},x{i}\n"
                                                                for i, f in enumerate(files)))
    featkit.extract(tmp_path / "list.csv", tmp_path / "s", **FAST)
    rows = featkit.open_features(tmp_path / "s").rows
    assert rows["path"].tolist() == [str(f) for f in files] and rows["label"].tolist() == ["x0", "x1", "x2"]


def test_image_type_is_decided_by_content_not_extension(tmp_path):
    write_images(tmp_path / "d", classes=1, per_class=2, fmt="png")
    png = tmp_path / "d" / "c0" / "000.png"
    png.rename(png.with_suffix(".jpg"))
    (tmp_path / "d" / "c0" / "notes.jpg").write_text("not an image")
    featkit.extract(tmp_path / "d", tmp_path / "s", **FAST)
    store = featkit.open_features(tmp_path / "s")
    assert len(store) == 2
    assert store.failures[["reason"]].to_dict("records") == [{"reason": "not_an_image"}]


@pytest.mark.parametrize("pool", ["none", "avg", "max", "gem"])
def test_pooling_of_a_spatial_tap(tiny_folder, tmp_path, pool):
    featkit.extract(tiny_folder, tmp_path / pool, layers=["fire9"], pool=pool, **FAST)
    feats = np.asarray(featkit.open_features(tmp_path / pool)["fire9"])
    assert feats.shape == (8, 512 * 13 * 13 if pool == "none" else 512)
    if pool != "none":
        flat = np.asarray(featkit.open_features(tmp_path / pool)["fire9"])
        assert (flat >= 0).all()  # Fire outputs are post-ReLU, so every pooled value is too


def test_pool_values_match_the_flattened_map(tiny_folder, tmp_path):
    featkit.extract(tiny_folder, tmp_path / "none", layers=["fire9"], pool="none", **FAST)
    featkit.extract(tiny_folder, tmp_path / "avg", layers=["fire9"], pool="avg", **FAST)
    featkit.extract(tiny_folder, tmp_path / "max", layers=["fire9"], pool="max", **FAST)
    maps = np.asarray(featkit.open_features(tmp_path / "none")["fire9"]).reshape(8, 512, 13 * 13)
    np.testing.assert_allclose(np.asarray(featkit.open_features(tmp_path / "avg")["fire9"]), maps.mean(2),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(featkit.open_features(tmp_path / "max")["fire9"]), maps.max(2))


def test_l2_and_float16_storage(tiny_folder, tmp_path):
    featkit.extract(tiny_folder, tmp_path / "s", layers=["fire9"], pool="avg", l2=True, dtype="float16", **FAST)
    feats = featkit.open_features(tmp_path / "s")["fire9"]
    assert feats.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(np.asarray(feats, dtype=np.float32), axis=1), 1.0, rtol=2e-3)


def test_several_taps_come_from_one_forward_pass_that_stops_at_the_deepest():
    spec = describe("squeezenet1_1")
    ex = TapExtractor(build_module("squeezenet1_1").eval(), [spec.tap("pool1"), spec.tap("fire3")],
                      resolve_runtime("cpu"))
    targets = {str(n.target) for n in ex.body.graph.nodes if n.op == "call_module"}
    assert "features.4.expand3x3" in targets  # fire3 computed
    assert not any(t.startswith(("features.5", "features.6", "classifier")) for t in targets)  # nothing after it


def test_inplace_relu_does_not_corrupt_pre_activation_taps(tiny_folder, tmp_path):
    featkit.extract(tiny_folder, tmp_path / "s", model="alexnet", layers=["fc7_pre", "fc7"], weights="random",
                    workers=0, batch_size=4, device="cpu")
    store = featkit.open_features(tmp_path / "s")
    pre, post = np.asarray(store["fc7_pre"]), np.asarray(store["fc7"])
    assert (pre < 0).any()
    np.testing.assert_array_equal(post, np.maximum(pre, 0))


def test_rerun_with_other_settings_is_refused_unless_overwrite(tiny_folder, tmp_path):
    featkit.extract(tiny_folder, tmp_path / "s", layers=["fire9"], pool="avg", **FAST)
    before = store_bytes(tmp_path / "s")
    with pytest.raises(StoreError, match=r"other settings \(pool: avg → max\)\. .*--overwrite"):
        featkit.extract(tiny_folder, tmp_path / "s", layers=["fire9"], pool="max", **FAST)
    with pytest.raises(StoreError, match="other settings"):
        featkit.extract(tiny_folder, tmp_path / "s", layers=["fire9"], pool="avg", **{**FAST, "seed": 1})
    assert store_bytes(tmp_path / "s") == before
    featkit.extract(tiny_folder, tmp_path / "s", layers=["fire9"], pool="max", overwrite=True, **FAST)
    assert featkit.open_features(tmp_path / "s").settings.pool == "max"


def test_second_writer_is_refused(tiny_folder, tmp_path):
    from featkit.store.writer import StoreWriter

    featkit.extract(tiny_folder, tmp_path / "s", **FAST)
    with (StoreWriter(tmp_path / "s", featkit.open_features(tmp_path / "s").settings),
          pytest.raises(StoreError, match="Another featkit process is writing")):
        featkit.extract(tiny_folder, tmp_path / "s", **FAST)


def test_same_inputs_twice_and_zero_vs_two_workers_are_bitwise_equal(tiny_folder, tmp_path):
    featkit.extract(tiny_folder, tmp_path / "a", layers=["fire9", "logits"], pool="gem", **FAST)
    featkit.extract(tiny_folder, tmp_path / "b", layers=["fire9", "logits"], pool="gem", **FAST)
    featkit.extract(tiny_folder, tmp_path / "c", layers=["fire9", "logits"], pool="gem", **{**FAST, "workers": 2})
    assert store_bytes(tmp_path / "a") == store_bytes(tmp_path / "b") == store_bytes(tmp_path / "c")


def test_batch_size_changes_results_only_within_rounding(tiny_folder, tmp_path):
    featkit.extract(tiny_folder, tmp_path / "a", layers=["logits"], **FAST)
    featkit.extract(tiny_folder, tmp_path / "b", layers=["logits"], **{**FAST, "batch_size": 3})
    np.testing.assert_allclose(np.asarray(featkit.open_features(tmp_path / "a")["logits"]),
                               np.asarray(featkit.open_features(tmp_path / "b")["logits"]), rtol=1e-5, atol=1e-5)


def test_rerun_computes_only_new_or_changed_files_and_retires_old_rows(tiny_folder, tmp_path):
    featkit.extract(tiny_folder, tmp_path / "s", **FAST)
    again = featkit.extract(tiny_folder, tmp_path / "s", **FAST)
    assert (again.computed, again.unchanged) == (0, 8)
    write_images(tmp_path / "extra", classes=1, per_class=1, seed=5)
    shutil.copy(tmp_path / "extra" / "c0" / "000.png", tiny_folder / "c1" / "new.png")  # added
    (tiny_folder / "c0" / "001.png").unlink()  # deleted
    changed = tiny_folder / "c0" / "002.png"
    shutil.copy(tiny_folder / "c1" / "003.png", changed)  # modified (new content, new mtime)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    result = featkit.extract(tiny_folder, tmp_path / "s", **FAST)
    assert (result.computed, result.changed, result.removed, result.unchanged) == (2, 1, 1, 6)
    store = featkit.open_features(tmp_path / "s")
    names = sorted(Path(p).relative_to(tiny_folder).as_posix() for p in store.rows["path"])
    assert names == sorted(Path(p).relative_to(tiny_folder).as_posix() for p in tiny_folder.rglob("*.png"))
    assert len(store["fire9"]) == len(store.rows) == 8
    # the changed file's live row has the new content's features (equal to its twin c1/003.png)
    feats, rows = np.asarray(store["fire9"]), store.rows.reset_index(drop=True)
    twin = rows.index[rows["path"].str.endswith("c1/003.png")][0]
    mine = rows.index[rows["path"].str.endswith("c0/002.png")][0]
    np.testing.assert_array_equal(feats[mine], feats[twin])
    again = featkit.extract(tiny_folder, tmp_path / "s", **FAST)  # retired rows are not reported twice
    assert (again.computed, again.changed, again.removed, again.unchanged) == (0, 0, 0, 8)


def test_unknown_model_tap_and_bad_options_are_one_line_errors(tiny_folder, tmp_path):
    with pytest.raises(FeatkitError, match="Did you mean 'fc7'"):
        featkit.extract(tiny_folder, tmp_path / "s", model="vgg16", layers=["fc_7"], weights="random")
    with pytest.raises(FeatkitError, match="The 'pool' parameter of extract must be one of none, avg, max, gem, "
                                           "cls, mean. Got 'average' instead."):
        featkit.extract(tiny_folder, tmp_path / "s", pool="average", **{k: v for k, v in FAST.items()})
    with pytest.raises(FeatkitError, match="fp16 needs a GPU"):
        featkit.extract(tiny_folder, tmp_path / "s", precision="fp16", **FAST)
    with pytest.raises(FeatkitError, match="Input not found"):
        featkit.extract(tmp_path / "nope", tmp_path / "s", **FAST)
    assert not (tmp_path / "s").exists()


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16 (AVX512-BF16/AMX)")
def test_bf16_precision_stays_close_to_fp32(tiny_folder, tmp_path):
    featkit.extract(tiny_folder, tmp_path / "a", layers=["fire9"], pool="avg", **FAST)
    featkit.extract(tiny_folder, tmp_path / "b", layers=["fire9"], pool="avg", precision="bf16", **FAST)
    a, b = (np.asarray(featkit.open_features(tmp_path / k)["fire9"]) for k in "ab")
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99
