"""featkit predict: the top-k classes of images, named by ImageNet or a fine-tuned run, as torchvision computes them."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision import models
from typer.testing import CliRunner

import featkit
from featkit.backbones.card import WeightsCard, write_card
from featkit.backbones.registry import build_module
from featkit.backbones.spec import Preprocess
from featkit.cli.app import app
from featkit.cli.app import main as featkit_main

IMAGENET = models.SqueezeNet1_1_Weights.IMAGENET1K_V1
FAST = {"device": "cpu", "workers": 0}  # squeezenet1_1 on the CPU, decoding in this process
runner = CliRunner()


@pytest.fixture(scope="module")
def val_predictions(shared_weights, hymenoptera):
    """featkit's top-5 with the real SqueezeNet weights (a plain state_dict file) for every bee and 12 ant photos."""
    ants = sorted((hymenoptera / "val" / "ants").iterdir())[:12]
    return featkit.predict([hymenoptera / "val" / "bees", *ants], model="squeezenet1_1", weights=str(shared_weights),
                           k=5, **FAST)


def reference_probs(weights_path, paths) -> np.ndarray:
    """A hand-written torchvision forward: squeezenet1_1 with the state_dict, its ImageNet transforms, softmax."""
    model = models.squeezenet1_1()
    model.load_state_dict(torch.load(weights_path, weights_only=True))
    transform = IMAGENET.transforms()
    with torch.inference_mode():
        x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
        return torch.softmax(model.eval()(x).double(), dim=1).numpy()


def test_predictions_agree_with_a_hand_written_torchvision_forward(val_predictions, shared_weights):
    top1 = val_predictions[val_predictions["rank"] == 1]
    paths = top1["path"].tolist()[::4] + top1["path"].tolist()[-12:]  # every 4th bee, and the 12 ants
    ref = reference_probs(shared_weights, paths)
    mine = top1.set_index("path").loc[paths]
    assert (mine["index"].to_numpy() == ref.argmax(axis=1)).all()  # same top-1 class for every image
    for i, path in enumerate(paths[:6]):  # and the same probabilities for all five classes
        rows = val_predictions[val_predictions["path"] == path]
        np.testing.assert_allclose(rows["prob"], ref[i, rows["index"]], rtol=0, atol=1e-4)


def test_most_bee_photos_have_bee_in_their_top_5(val_predictions):
    bees = val_predictions[val_predictions["path"].str.contains("/bees/")]
    hit = bees.groupby("path")["label"].agg(lambda labels: "bee" in set(labels))
    assert len(hit) == 83 and hit.mean() >= 0.6  # the shared README measured 72 %


def test_an_imagenet_state_dict_file_without_card_gets_the_imagenet_names(val_predictions):
    frame = val_predictions
    assert list(frame.columns) == ["path", "rank", "label", "index", "prob"]
    assert (frame["label"] == np.asarray(IMAGENET.meta["categories"])[frame["index"]]).all()
    assert "bee" in set(frame["label"]) and "ant" in set(frame["label"])
    assert frame.groupby("path")["rank"].apply(list).map(lambda r: r == [1, 2, 3, 4, 5]).all()
    assert (frame.groupby("path")["prob"].apply(lambda p: p.is_monotonic_decreasing)).all()


def fine_tuned_run(root, classes=("ant", "bee", "wasp")):
    """A ``featkit finetune`` run directory as extraction reads it: recipe.json, model.pth and its card."""
    root.mkdir()
    (root / "recipe.json").write_text("{}")
    torch.manual_seed(0)
    torch.save(build_module("squeezenet1_1", num_classes=len(classes)).state_dict(), root / "model.pth")
    write_card(root / "model.pth", WeightsCard("squeezenet1_1", classes, Preprocess(resize=72, crop=64)))
    return root


def test_a_fine_tuned_run_names_its_classes_and_k_is_lowered_to_their_number(tiny_folder, tmp_path):
    run = fine_tuned_run(tmp_path / "run")
    for weights in (run, run / "model.pth"):
        frame = featkit.predict(tiny_folder, model="squeezenet1_1", weights=str(weights), k=5, **FAST)
        assert frame.attrs["k"] == 3 and len(frame) == 8 * 3
        assert (frame["label"] == np.array(["ant", "bee", "wasp"])[frame["index"]]).all()
        np.testing.assert_allclose(frame.groupby("path")["prob"].sum(), 1.0, rtol=1e-12)


def test_random_weights_label_classes_by_index_and_bad_inputs_are_listed(tiny_folder):
    (tiny_folder / "c0" / "notes.txt").write_text("not a photo")
    frame = featkit.predict([tiny_folder, b"\x89PNG broken"], model="squeezenet1_1", weights="random", k=2, **FAST)
    assert len(frame) == 8 * 2 and (frame["label"] == frame["index"].astype(str)).all()
    failures = frame.attrs["failures"]
    assert sorted(failures["path"].str.rsplit("/", n=1).str[-1]) == ["<image 9>", "notes.txt"]


def cli(*args: str):
    return runner.invoke(app, ["predict", "--model", "squeezenet1_1", "--device", "cpu", "-q", *args],
                         catch_exceptions=False)


def test_cli_csv_json_and_table(tiny_folder, tmp_path):
    result = cli(str(tiny_folder), "-w", "random", "-k", "3", "--csv", str(tmp_path / "top.csv"))
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "top.csv")
    assert list(table.columns) == ["path", "rank", "label", "index", "prob"] and len(table) == 8 * 3
    assert "wrote" in result.stderr and "random weights" not in result.stdout
    assert "--weights random: these predictions carry no meaning" in result.stderr

    result = cli(str(tiny_folder / "c0" / "000.png"), "-w", "random", "-k", "2", "--json")
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [r["rank"] for r in records] == [1, 2] and set(records[0]) == {"path", "rank", "label", "index", "prob"}

    result = cli(str(tiny_folder / "c0"), "-w", "random", "-k", "2")
    assert result.exit_code == 0 and "000.png" in result.stdout and "003.png" in result.stdout


def test_cli_reports_a_non_image_and_carries_on(tiny_folder):
    (tiny_folder / "c1" / "notes.txt").write_text("not a photo")
    result = cli(str(tiny_folder), "-w", "random", "--json")
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and "notes.txt" in skipped[0] and "not_an_image" in skipped[0]
    assert len(json.loads(result.stdout)) == 8 * 5


def main(monkeypatch, *args: str) -> int:
    """``featkit ARGS`` through the console entry point, in this process; returns the exit code."""
    monkeypatch.setattr(sys, "argv", ["featkit", *args])
    monkeypatch.setenv("FEATKIT_DEBUG", "0")
    with pytest.raises(SystemExit) as exited:
        featkit_main()
    return exited.value.code


@pytest.mark.parametrize(("make", "extra", "message"), [
    ("bad", [], "error: None of the 2 images could be read (not_an_image 2)."),
    ("good", ["-k", "0"], "error: The 'k' parameter of predict must be an int >= 1. Got 0 instead."),
])
def test_cli_errors_are_one_line(tmp_path, tiny_folder, monkeypatch, capsys, make, extra, message):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.txt").write_text("hello")
    (folder / "b.jpg").write_bytes(b"\xff\xd8 truncated")
    target = folder if make == "bad" else tiny_folder
    assert main(monkeypatch, "predict", str(target), "-m", "squeezenet1_1", "-w", "random", "--device", "cpu", "-q",
                *extra) == 1
    err = capsys.readouterr().err.strip()
    assert err == message
