"""``featkit bench``: extract once, probe every tap, write CSV / Markdown / JSON / PNG; re-runs use cached features."""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest
from helpers import write_images
from PIL import Image
from typer.testing import CliRunner

import featkit.extraction.run as extraction_run
from featkit.bench.config import BenchConfig, parse_grid
from featkit.bench.runner import model_taps, run_bench
from featkit.cli.app import app
from featkit.errors import FeatkitError, InputError, UnknownNameError

runner = CliRunner()
FAST = ["--weights", "random", "--device", "cpu", "--grid", "1e-3:1:3", "--batch-size", "16"]


@pytest.fixture()
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATKIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("FEATKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture()
def extractions(monkeypatch):
    """Records the taps of every extraction bench starts."""
    calls = []
    real = extraction_run.run_extraction

    def counting(inputs, output, cfg, **kwargs):
        calls.append(cfg.taps)
        return real(inputs, output, cfg, **kwargs)

    monkeypatch.setattr(extraction_run, "run_extraction", counting)
    return calls


def bench(*args: str):
    result = runner.invoke(app, ["bench", *args, *FAST], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_bench_on_digits_writes_every_output_and_reuses_features(dirs, extractions):
    out = dirs / "out"
    args = ("--models", "squeezenet1_1,resnet18", "--taps", "fire5,fire9,layer3,avgpool", "--datasets", "digits",
            "--per-class", "5", "-o", str(out))
    first = bench(*args)
    assert sorted(extractions) == [("fire5", "fire9"), ("layer3", "avgpool")]  # one pass per model, all its taps
    table = pd.read_csv(out / "results.csv")
    assert list(zip(table["model"], table["tap"], strict=True)) == [
        ("squeezenet1_1", "fire5"), ("squeezenet1_1", "fire9"), ("resnet18", "layer3"), ("resnet18", "avgpool")]
    assert set(table["dataset"]) == {"digits"} and table["extracted"].all()
    assert table["score"].between(0, 1).all() and (table[["n_train", "n_test"]] == [50, 50]).all().all()
    assert table["dims"].tolist() == [256, 512, 256, 512]
    markdown = (out / "results.md").read_text()
    assert markdown.count("\n| digits |") == 4 and "| resnet18 | avgpool | 512 |" in markdown
    with Image.open(out / "accuracy.png") as png:
        assert png.format == "PNG" and png.size[0] > 300
    run = json.loads((out / "runs" / "digits__resnet18__avgpool__linear.json").read_text())
    assert run["config"]["seed"] == 0 and run["config"]["weights"] == "random"
    assert run["store_settings"]["model"] == "resnet18" and run["store_settings"]["pool"] == "avg"
    assert {"torch", "torchvision", "scikit-learn", "faiss", "featkit"} <= set(run["versions"])
    assert (run["probe_result"]["grid"] == pytest.approx([1e-3, 3.16e-2, 1], rel=1e-2)
            and run["probe_result"]["folds"] >= 2)
    assert "digits resnet18 avgpool" in first.output

    extractions.clear()
    second = bench(*args)
    assert extractions == []  # every (dataset, model, weights, tap, preprocessing) came from the cache
    again = pd.read_csv(out / "results.csv")
    assert not again["extracted"].any() and "4 on cached features" in second.output
    pd.testing.assert_series_equal(again["score"], table["score"])  # same features, same seeded protocol

    bench("--models", "squeezenet1_1", "--taps", "fire9,fire7", "--datasets", "digits", "--per-class", "5",
          "-o", str(out))
    assert extractions == [("fire7",)]  # only the tap no store held yet


def test_changed_folder_is_brought_up_to_date(dirs, extractions):
    data = dirs / "photos"
    for split, seed in (("train", 0), ("test", 1)):
        write_images(data / split, classes=2, per_class=4, seed=seed)
    args = ("--models", "squeezenet1_1", "--taps", "fire9", "--datasets", str(data), "--probe", "knn", "--k", "3",
            "-o", str(dirs / "out"))
    bench(*args)
    bench(*args)
    assert len(extractions) == 1
    shutil.copy(data / "test" / "c0" / "000.png", data / "test" / "c0" / "extra.png")
    bench(*args)
    assert len(extractions) == 2  # the store is updated in place with the new file only
    table = pd.read_csv(dirs / "out" / "results.csv")
    assert table["n_test"].tolist() == [9] and table["extracted"].tolist() == [True]
    assert len(list((dirs / "cache").glob("*/squeezenet1_1/*"))) == 1
    # an edit that keeps the size and restores the mtime: the content fingerprint shows it (RELIABILITY row 30)
    edited = data / "train" / "c1" / "001.png"
    st, raw = edited.stat(), bytearray(edited.read_bytes())
    raw[-20] ^= 0xFF
    edited.write_bytes(bytes(raw))
    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns))
    bench(*args)
    assert len(extractions) == 3
    # a corrupt file is recorded; once deleted, the cache is up to date again (nothing left to fingerprint)
    (data / "train" / "c0" / "bad.png").write_bytes(b"not a png")
    bench(*args)
    assert len(extractions) == 4
    (data / "train" / "c0" / "bad.png").unlink()
    bench(*args)
    bench(*args)
    assert len(extractions) == 4


def test_taps_are_matched_per_model():
    plan = model_taps(("alexnet", "resnet18"), ("pool5", "fc7", "layer4"))
    assert [asked for asked, _ in plan["alexnet"]] == ["pool5", "fc7"]
    assert plan["resnet18"] == [("pool5", "avgpool"), ("layer4", "layer4")]  # an alias is probed under its asked name
    assert model_taps(("resnet18",), ("avgpool", "pool5"))["resnet18"] == [("avgpool", "avgpool")]  # once
    with pytest.raises(UnknownNameError, match="fc77.*fc7"):
        model_taps(("alexnet",), ("fc77",))
    with pytest.raises(UnknownNameError, match="resnet18 has none of the taps fc7"):
        model_taps(("alexnet", "resnet18"), ("fc7",))


def test_bad_benchmarks_get_one_line_errors(dirs):
    def run(**kw):
        cfg = {"models": ("squeezenet1_1",), "taps": ("fire9",), "datasets": ("digits",), "output": dirs / "out",
                   "weights": "random", "per_class": 2, "device": "cpu", "grid": (1.0,)}
        return run_bench(BenchConfig(**{**cfg, **kw}), progress=False, echo=lambda *a: None)

    with pytest.raises(UnknownNameError, match="Did you mean .cifar10.") as exc:
        run(datasets=("cifar101",))
    assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="does not exist"):
        run(datasets=("./no/such/folder",))
    write_images(dirs / "flat", classes=2, per_class=2)
    with pytest.raises(InputError, match=r"bench reads .*/flat/train/CLASS/\* and .*/flat/test/CLASS/\* \(or val/\); "
                                         r".*/flat holds c0, c1\."):
        run(datasets=(str(dirs / "flat"),), per_class=None)
    assert not (dirs / "cache").exists() or not any((dirs / "cache").rglob("manifest.json"))  # checked up front
    with pytest.raises(FeatkitError, match="--models"):
        run(models=())
    with pytest.raises(FeatkitError, match="LOW:HIGH:N"):
        parse_grid("1e-3..1")
    assert parse_grid("0.1,1") == (0.1, 1.0) and len(parse_grid("1e-6:1e5:45")) == 45
    with pytest.raises(InputError, match="your own folder"):
        run(datasets=("imagefolder",))
