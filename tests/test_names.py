"""Names and provenance across commands: a tap name or alias extract accepted works wherever a store's tap is
named, and a store remembers where its weights file was."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_images
from typer.testing import CliRunner

import featkit
from featkit.cli.app import app
from featkit.errors import UnknownNameError
from featkit.index import Index
from featkit.index.dedup import find_duplicates

runner = CliRunner()


@pytest.fixture(scope="module")
def resnet_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("names")
    write_images(root / "imgs" / "train", classes=2, per_class=4)
    write_images(root / "imgs" / "test", classes=2, per_class=2, seed=1)
    featkit.extract(root / "imgs", root / "s", model="resnet18", weights="random", layers=["res5", "pool5"],
                    pool="avg", device="cpu", workers=0)
    return root / "s"


def test_aliases_extract_accepted_name_the_stored_taps_everywhere(resnet_store):
    store = featkit.open_features(resnet_store)
    assert store.taps == ["layer4", "avgpool"]
    np.testing.assert_array_equal(np.asarray(store["pool5"]), np.asarray(store["avgpool"]))
    assert store.resolve_tap("conv5_x") == "layer4" and store.resolve_tap("res5") == "layer4"
    with pytest.raises(UnknownNameError, match="Unknown tap 'pool6' for the store .*Did you mean 'pool5'"):
        store["pool6"]
    assert Index.build(resnet_store, tap="pool5").tap == "avgpool"
    assert find_duplicates(resnet_store, tap="res5", threshold=0.9999).empty
    probed = runner.invoke(app, ["probe", str(resnet_store), "--tap", "pool5", "--json"], catch_exceptions=False)
    assert probed.exit_code == 0 and json.loads(probed.output)["tap"] == "avgpool"
    shown = runner.invoke(app, ["info", str(resnet_store)], catch_exceptions=False).output
    assert "tap avgpool (also pool5, penultimate)" in shown and "tap layer4 (also res5, conv5_x)" in shown
    assert "12 rows, 1 shard" in shown and "2 classes" in shown


def test_info_lists_skipped_files_and_speaks_json(tmp_path):
    write_images(tmp_path / "imgs", classes=1, per_class=2)
    (tmp_path / "imgs" / "c0" / "bad.jpg").write_text("not an image")
    featkit.extract(tmp_path / "imgs", tmp_path / "s", model="squeezenet1_1", weights="random", device="cpu",
                    workers=0, layers=["fire9"], pool="avg")
    out = runner.invoke(app, ["info", str(tmp_path / "s"), "--failures"], catch_exceptions=False).output
    assert "skipped 1 file: not_an_image 1" in out and "bad.jpg: not_an_image" in out
    data = json.loads(runner.invoke(app, ["info", str(tmp_path / "s"), "--json", "--failures"]).output)
    assert data["rows"] == 2 and data["failures"][0]["reason"] == "not_an_image"
    assert data["taps"]["fire9"]["aliases"] == ["penultimate"]


def fire9_files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("features/fire9/*")}


def test_a_tap_is_added_to_a_store_without_recomputing_the_others(tmp_path, monkeypatch):
    write_images(tmp_path / "imgs", classes=2, per_class=5)
    opts = {"model": "squeezenet1_1", "weights": "random", "device": "cpu", "workers": 0, "pool": "avg",
            "shard_rows": 4}
    featkit.extract(tmp_path / "imgs", tmp_path / "s", layers=["fire9"], **opts)
    fire9 = fire9_files(tmp_path / "s")
    featkit.extract(tmp_path / "imgs", tmp_path / "alone", layers=["fire5"], **opts)

    from featkit.store.writer import StoreWriter

    real = StoreWriter.add_tap_shard
    calls = {"n": 0}

    def interrupted(self, *args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # Ctrl-C after the first shard got its new tap
        return real(self, *args)

    from featkit.errors import Interrupted

    monkeypatch.setattr(StoreWriter, "add_tap_shard", interrupted)
    with pytest.raises(Interrupted, match="fire5 not yet added to every shard"):
        featkit.extract(tmp_path / "imgs", tmp_path / "s", layers=["fire5"], **opts)
    assert featkit.open_features(tmp_path / "s").taps == ["fire9"]  # not part of the store until complete
    monkeypatch.setattr(StoreWriter, "add_tap_shard", real)
    result = featkit.extract(tmp_path / "imgs", tmp_path / "s", layers=["fire5"], **opts)
    assert result.added_taps == ("fire5",) and result.backfilled == 6 and result.computed == 0  # resumed: 2 shards
    store = featkit.open_features(tmp_path / "s")
    assert store.taps == ["fire9", "fire5"]
    assert fire9_files(tmp_path / "s") == fire9
    alone = np.asarray(featkit.open_features(tmp_path / "alone")["fire5"])
    np.testing.assert_allclose(np.asarray(store["fire5"]), alone, rtol=1e-5, atol=1e-6)
    write_images(tmp_path / "imgs", classes=1, per_class=7, seed=3)  # more images later: every tap computed
    again = featkit.extract(tmp_path / "imgs", tmp_path / "s", layers=["fire9"], **opts)
    assert again.added_taps == () and again.computed > 0
    assert featkit.open_features(tmp_path / "s")["fire5"].shape[0] == len(featkit.open_features(tmp_path / "s"))


def test_a_store_remembers_its_weights_file_for_search_by_image_and_pixels(tmp_path):
    from PIL import Image

    from featkit.backbones.registry import build_module

    torch.save(build_module("squeezenet1_1").state_dict(), tmp_path / "mine.pth")
    write_images(tmp_path / "imgs", classes=2, per_class=3)
    featkit.extract(tmp_path / "imgs", tmp_path / "s", model="squeezenet1_1", weights=str(tmp_path / "mine.pth"),
                    layers=["fire9"], pool="avg", device="cpu", workers=0)
    assert featkit.open_features(tmp_path / "s").settings.weights.path == str(tmp_path / "mine.pth")
    index = Index.build(tmp_path / "s")  # no weights= : the store knows where its file is
    query = sorted((tmp_path / "imgs" / "c1").iterdir())[0]
    by_path = index.search(str(query), k=2, device="cpu")
    pixels = np.asarray(Image.open(query).convert("RGB"))
    by_pixels = index.search(pixels, k=2, device="cpu")
    assert by_path["path"].iloc[0] == str(query) == by_pixels["path"].iloc[0]
    (tmp_path / "mine.pth").rename(tmp_path / "moved.pth")
    with pytest.raises(featkit.FeatkitError, match="It was at .*mine.pth, which is gone or has changed since"):
        Index.open(index.save(tmp_path / "i.index")).search(str(query), k=1)



def test_index_remove_takes_paths_relative_to_here(tmp_path, monkeypatch):
    write_images(tmp_path / "imgs", classes=1, per_class=3)
    featkit.extract(tmp_path / "imgs", tmp_path / "s", model="squeezenet1_1", weights="random", layers=["fire9"],
                    pool="avg", device="cpu", workers=0)
    index = Index.build(tmp_path / "s", kind="flat")
    monkeypatch.chdir(tmp_path)
    assert index.remove(["imgs/c0/001.png"]) == 1 and len(index) == 2


def test_adding_a_big_map_tap_to_a_default_store_and_index_add_after_it(tmp_path):
    write_images(tmp_path / "imgs", classes=1, per_class=3)
    opts = {"model": "squeezenet1_1", "weights": "random", "device": "cpu", "workers": 0}
    featkit.extract(tmp_path / "imgs", tmp_path / "s", layers=["fire9"], **opts)  # pool none: 86,528 values
    index = Index.build(tmp_path / "s", kind="flat")
    result = featkit.extract(tmp_path / "imgs", tmp_path / "s", layers=["fire5"], **opts)  # shard size shrinks
    assert result.added_taps == ("fire5",) and featkit.open_features(tmp_path / "s").taps == ["fire9", "fire5"]
    write_images(tmp_path / "imgs", classes=1, per_class=5, seed=9)
    again = featkit.extract(tmp_path / "imgs", tmp_path / "s", **opts)  # no --layer: the store's taps, none added
    assert again.added_taps == () and again.computed == 5
    assert index.add(tmp_path / "s") == 2  # the store now holds another tap too: still the same fire9 vectors


def test_mean_is_avg_and_a_ctrl_c_is_not_an_exception(tmp_path):
    from featkit.errors import Interrupted

    write_images(tmp_path / "imgs", classes=1, per_class=2)
    opts = {"model": "squeezenet1_1", "weights": "random", "device": "cpu", "workers": 0, "layers": ["fire9"]}
    featkit.extract(tmp_path / "imgs", tmp_path / "s", pool="mean", **opts)
    assert featkit.open_features(tmp_path / "s").settings.pool == "avg"
    assert featkit.extract(tmp_path / "imgs", tmp_path / "s", pool="avg", **opts).unchanged == 2
    assert not issubclass(Interrupted, Exception)


def test_a_token_tap_pooled_before_pooling_was_recorded_is_refused_in_one_line(tmp_path):
    from featkit.store.settings import StoreSettings

    write_images(tmp_path / "imgs", classes=1, per_class=1, size=(64, 64))
    opts = {"model": "vit_b_16", "weights": "random", "device": "cpu", "workers": 0, "layers": ["encoder.ln"],
            "pool": "avg"}
    featkit.extract(tmp_path / "imgs", tmp_path / "s", **opts)
    settings = featkit.open_features(tmp_path / "s").settings
    assert settings.taps[0].pooled == "tokens"
    old = json.loads((tmp_path / "s" / "manifest.json").read_text())
    del old["settings"]["taps"][0]["pooled"]  # as featkit wrote it when avg stored ViT tokens flattened
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(old))
    assert StoreSettings.from_json(old["settings"], "x") != settings
    with pytest.raises(featkit.FeatkitError, match=r"other settings \(taps: encoder.ln → encoder.ln \(tokens\)\)"):
        featkit.extract(tmp_path / "imgs", tmp_path / "s", **opts)
