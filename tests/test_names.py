"""Names and provenance across commands: a tap name or alias extract accepted works wherever a store's tap is
named, and a store remembers where its weights file was."""

from __future__ import annotations

import json

import numpy as np
import pytest
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
