"""A user's own folders, laid out the way people lay them out: symlinked split folders, stray files at the root,
split folders beside other folders, nothing to read, a store path in the wrong place."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
from helpers import write_images

import featkit
from featkit.data.sources import list_inputs
from featkit.errors import InputError

FAST = {"model": "squeezenet1_1", "weights": "random", "device": "cpu", "workers": 0, "layers": ["fire9"],
        "pool": "avg"}


@pytest.fixture
def staged(tmp_path):
    """photos/{train,val} where val is a symlink to a folder elsewhere, a README.txt and an exports/ folder."""
    real = tmp_path / "real"
    write_images(real / "train", classes=2, per_class=3)
    write_images(real / "elsewhere" / "val", classes=2, per_class=2, seed=1)
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "train").symlink_to(real / "train")  # staged with symlinks, as people do
    (photos / "val").symlink_to(real / "elsewhere" / "val")
    (photos / "README.txt").write_text("my photos\n")
    write_images(photos / "exports", classes=1, per_class=1, seed=2)
    return photos


def test_symlinked_split_folders_are_followed_and_stray_entries_left_out_in_one_warning(staged, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="featkit.data.sources"):
        result = featkit.extract(staged, tmp_path / "s", **FAST)
    store = featkit.open_features(tmp_path / "s")
    assert result.rows == 10 and result.failed == 0
    assert sorted(store.rows["split"].unique()) == ["train", "val"]
    assert sorted(store.rows["label"].unique()) == ["c0", "c1"]
    assert all(p.startswith(str(staged)) for p in store.rows["path"])  # paths as walked under the user's root
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "splits layout" in warnings[0]
    assert "exports/" in warnings[0] and "README.txt" in warnings[0]


def test_a_stray_file_beside_class_folders_keeps_the_labels(tmp_path):
    write_images(tmp_path / "photos", classes=2, per_class=2)
    (tmp_path / "photos" / "notes.md").write_text("# notes")
    table = list_inputs(tmp_path / "photos").table
    assert len(table) == 4 and sorted(table["label"].unique()) == ["c0", "c1"]


def test_layout_can_be_forced(staged):
    assert list_inputs(staged, layout="flat").table["label"].isna().all()
    classes = list_inputs(staged, layout="classes").table
    assert sorted(classes["label"].unique()) == ["exports", "train", "val"]
    with pytest.raises(InputError, match="--layout splits: .* has no split folders"):
        list_inputs(staged / "train", layout="splits")
    with pytest.raises(InputError, match="'layout' parameter of list_inputs must be one of auto, splits, classes"):
        list_inputs(staged, layout="folders")


def test_a_symlink_loop_is_recorded_never_followed(tmp_path):
    write_images(tmp_path / "photos", classes=1, per_class=2)
    os.symlink("..", tmp_path / "photos" / "c0" / "up")
    listing = list_inputs(tmp_path / "photos")
    assert len(listing.table) == 2
    assert listing.bad_names["reason"].tolist() == ["symlink_loop"]


def test_nothing_to_read_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "hidden").mkdir()
    (tmp_path / "hidden" / ".DS_Store").write_bytes(b"x")
    (tmp_path / "list.csv").write_text("path,label\n")
    for where in ("empty", "hidden", "list.csv"):
        with pytest.raises(InputError, match="^No images in .*: nothing to read"):
            featkit.extract(tmp_path / where, tmp_path / "s", **FAST)
    assert not (tmp_path / "s").exists()


def test_a_folder_of_only_bad_files_records_them_and_fails(tmp_path):
    (tmp_path / "bad").mkdir()
    for i in range(3):
        (tmp_path / "bad" / f"{i}.jpg").write_text("not an image")
    with pytest.raises(InputError, match=r"Nothing could be read: all 3 files were skipped \(not_an_image 3\)"):
        featkit.extract(tmp_path / "bad", tmp_path / "s", **FAST)
    assert len(featkit.open_features(tmp_path / "s").failures) == 3


def test_the_store_path_must_be_a_folder_outside_the_inputs(tmp_path):
    write_images(tmp_path / "photos", classes=1, per_class=2)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        featkit.extract(tmp_path / "photos", tmp_path / "file", **FAST)
    with pytest.raises(InputError, match="is inside the input folder"):
        featkit.extract(tmp_path / "photos", tmp_path / "photos" / "feats", **FAST)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "photos")
    with pytest.raises(InputError, match="is inside the input folder"):
        featkit.extract(link, tmp_path / "photos" / "feats", **FAST)
    assert not (tmp_path / "photos" / "feats").exists()
    shutil.rmtree(tmp_path / "photos")


def test_a_class_called_train_is_a_class_not_a_split(tmp_path):
    write_images(tmp_path / "voc", classes=3, per_class=2)
    for k, name in enumerate(("aeroplane", "bicycle", "train")):  # PASCAL VOC has a class "train"
        (tmp_path / "voc" / f"c{k}").rename(tmp_path / "voc" / name)
    table = list_inputs(tmp_path / "voc").table
    assert len(table) == 6 and table["split"].isna().all()
    assert sorted(set(table["label"])) == ["aeroplane", "bicycle", "train"]


def test_inputs_may_be_a_generator_and_embedding_reads_every_image(tmp_path):
    write_images(tmp_path / "photos" / "test", classes=1, per_class=2)
    write_images(tmp_path / "photos" / "holiday", classes=1, per_class=2, seed=1)
    result = featkit.extract((p for p in sorted((tmp_path / "photos").rglob("*.png"))), tmp_path / "s", **FAST)
    assert result.rows == 4
    emb = featkit.embed(tmp_path / "photos", model="squeezenet1_1", weights="random", device="cpu", layers="fire9",
                        pool="avg")  # no layout for embedding: test/ and holiday/ alike
    assert len(emb.positions) == 4


def test_smoke_runs_on_a_users_own_folder(tmp_path):
    write_images(tmp_path / "photos" / "train", classes=2, per_class=5)
    write_images(tmp_path / "photos" / "test", classes=2, per_class=3, seed=1)
    assert len(list_inputs(tmp_path / "photos", limit=3).table) == 3
    few = list_inputs(tmp_path / "photos", per_class=2).table
    assert few.groupby(["split", "label"]).size().tolist() == [2, 2, 2, 2]
    assert featkit.extract(tmp_path / "photos", tmp_path / "s", per_class=2, **FAST).rows == 8

    from featkit.finetune.data import read_folder

    folder = read_folder(tmp_path / "photos", per_class=1)
    assert (len(folder.train.paths), len(folder.val.paths)) == (2, 2)
    limited = read_folder(tmp_path / "photos", limit=6)  # the first 6 of each split
    assert (len(limited.train.paths), len(limited.val.paths)) == (6, 6)


def test_bench_smoke_runs_on_a_folder_say_so_and_weights_can_differ_per_model(tmp_path):
    from featkit.bench.config import BenchConfig
    from featkit.bench.runner import run_bench
    from featkit.reports.bench import to_frame, to_markdown, write_results

    write_images(tmp_path / "photos" / "train", classes=2, per_class=6)
    write_images(tmp_path / "photos" / "test", classes=2, per_class=4, seed=1)
    cfg = BenchConfig(models=("squeezenet1_1",), taps=("fire9",), datasets=(str(tmp_path / "photos"),),
                      output=tmp_path / "out", weights="squeezenet1_1=random", per_class=3, cache=tmp_path / "cache",
                      device="cpu", grid=(0.1, 1.0))
    assert cfg.weights_for("squeezenet1_1") == "random" and cfg.weights_for("vgg16") == "imagenet"
    report = run_bench(cfg, echo=lambda *a: None)
    assert report.rows[0].n_test == 6 and report.rows[0].n_train == 6  # 3 per class and split
    paths = write_results(report.rows, ["fire9"], tmp_path / "out", cfg.smoke)
    assert paths["markdown"].read_text().startswith(
        "**Smoke run** (at most 3 images per class per split): not a benchmark number.")
    assert "Smoke run" not in to_markdown(to_frame(report.rows))
    with pytest.raises(featkit.FeatkitError, match="The 'weights' parameter of bench must be MODEL=WEIGHTS"):
        BenchConfig(models=("resnet18",), taps=("fire9",), datasets=("digits",), output=tmp_path,
                    weights="vgg16=random")
