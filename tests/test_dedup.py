"""Train/test leaks between two stores (``featkit dedup STORE --against STORE2``) on real photos with the real
SqueezeNet weights: planted re-encoded and resized copies, and only they, are found at the default threshold;
stores whose vectors were computed otherwise are refused in one line."""

from __future__ import annotations

import inspect
import json
import shutil

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

import featkit
from featkit.cli import index as index_cli
from featkit.cli.app import app
from featkit.errors import SearchIndexError
from featkit.index.dedup import LEAK_COLUMNS, THRESHOLD, find_duplicates, find_leaks

pytestmark = pytest.mark.usefixtures("shared_weights", "hymenoptera")
runner = CliRunner()
# (class, index among the first ten train photos): re-encoded at JPEG quality 75 (measured 0.961-0.986 cosine to
# their original) or resized to 3/4 and saved at quality 90 (0.960-0.972); distinct photos here reach 0.71
REENCODED = [("ants", 2), ("bees", 5), ("bees", 9)]
RESIZED = [("ants", 0), ("ants", 6), ("bees", 3)]


def extract(folder, out, weights_file, **options):
    options = {"layers": ["fire9"], "pool": "avg", "weights": str(weights_file), **options}
    featkit.extract(folder, out, model="squeezenet1_1", device="cpu", batch_size=32, **options)
    return out


@pytest.fixture(scope="module")
def stores(tmp_path_factory, shared_weights, hymenoptera):
    """A "train" store of 20 photos and a "test" store of 16 other photos plus 6 edited copies of train photos."""
    root = tmp_path_factory.mktemp("leaks")
    leaks = {}
    for label in ("ants", "bees"):
        train_photos = sorted((hymenoptera / "train" / label).iterdir())[:10]
        (root / "train" / label).mkdir(parents=True)
        (root / "test" / label).mkdir(parents=True)
        for path in train_photos:
            shutil.copy(path, root / "train" / label / path.name)
        for path in sorted((hymenoptera / "val" / label).iterdir())[:8]:
            shutil.copy(path, root / "test" / label / path.name)
        for name, i in REENCODED + RESIZED:
            if name != label:
                continue
            image = Image.open(train_photos[i]).convert("RGB")
            copy = root / "test" / label / f"leak_{train_photos[i].stem}.jpg"
            if (name, i) in RESIZED:
                image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.BICUBIC)
            image.save(copy, quality=75 if (name, i) in REENCODED else 90)
            leaks[train_photos[i].name] = copy.name
    train = extract(root / "train", root / "train_store", shared_weights)
    # another tap beside fire9: a store's other taps do not change its fire9 vectors
    test = extract(root / "test", root / "test_store", shared_weights, layers=["fire9", "fire8"])
    return {"root": root, "train": train, "test": test, "leaks": leaks, "weights": shared_weights}


def names(column: pd.Series) -> list[str]:
    return [p.rsplit("/", 1)[-1] for p in column]


def test_against_reports_the_planted_leaks_and_only_them(stores, tmp_path):
    out = tmp_path / "leaks.csv"
    result = runner.invoke(app, ["dedup", str(stores["train"]), "--against", str(stores["test"]), "-o", str(out),
                                 "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = (f"6 images of {stores['train']} have a near-duplicate in {stores['test']} at cosine ≥ {THRESHOLD}; "
               f"wrote {out}")
    assert " ".join(result.output.split()).startswith(summary)  # rich wraps lines at 200 columns
    table = pd.read_csv(out)
    assert list(table.columns) == LEAK_COLUMNS
    assert dict(zip(names(table["path"]), names(table["against_path"]), strict=True)) == stores["leaks"]
    assert table["score"].is_monotonic_decreasing and (table["score"] >= THRESHOLD).all()
    assert (table["matches"] == 1).all() and (table["label"] == table["against_label"]).all()

    as_json = runner.invoke(app, ["dedup", str(stores["train"]), "--against", str(stores["test"]), "--json", "-q"],
                            catch_exceptions=False)
    assert pd.DataFrame(json.loads(as_json.output))["path"].tolist() == table["path"].tolist()


def test_either_store_may_be_the_larger_and_batches_do_not_change_the_result(stores):
    forward = find_leaks(stores["train"], stores["test"])  # 20 against 22: the train store is searched
    backward = find_leaks(stores["test"], stores["train"], tap="fire9")  # 22 against 20: the train store is indexed
    assert dict(zip(names(backward["path"]), names(backward["against_path"]), strict=True)) == {
        copy: original for original, copy in stores["leaks"].items()}
    assert sorted(backward["score"]) == pytest.approx(sorted(forward["score"]), abs=1e-5)
    pd.testing.assert_frame_equal(find_leaks(stores["train"], stores["test"], batch_size=3), forward)
    assert find_leaks(stores["train"], stores["test"], threshold=0.999).empty


@pytest.mark.parametrize("options, change", [({"pool": "max"}, "pool: avg → max"),
                                             ({"weights": "random"}, "weights.kind: file → random")])
def test_stores_embedded_otherwise_are_refused_in_one_line(stores, tmp_path, options, change):
    other = extract(stores["root"] / "test" / "ants", tmp_path / "other", stores["weights"], **options)
    result = runner.invoke(app, ["dedup", str(stores["train"]), "--against", str(other)])
    assert result.exit_code == 1 and isinstance(result.exception, SearchIndexError)
    message = str(result.exception)
    assert change in message and "computed its fire9 vectors differently" in message and "\n" not in message


def test_the_cli_and_the_library_share_the_calibrated_default():
    cli_default = inspect.signature(index_cli.dedup).parameters["threshold"].default
    assert cli_default == THRESHOLD == inspect.signature(find_duplicates).parameters["threshold"].default == 0.92
