"""Similar-image search on real photos with the real SqueezeNet weights: neighbours share labels, the CLI embeds a
query image exactly as the store did, planted near-copies are found, and the HTML page shows it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

import featkit
from featkit.cli.app import app
from featkit.errors import SearchIndexError
from featkit.index import Index
from featkit.index.dedup import find_duplicates

pytestmark = pytest.mark.usefixtures("shared_weights", "hymenoptera")
runner = CliRunner()


def extract(inputs, out, weights):
    featkit.extract(inputs, out, model="squeezenet1_1", layers=["fire9"], pool="avg", weights=str(weights),
                    device="cpu", batch_size=32)
    return featkit.open_features(out)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, shared_weights, hymenoptera):
    root = tmp_path_factory.mktemp("photos")
    train = extract(hymenoptera / "train", root / "train", shared_weights)
    val = extract(hymenoptera / "val", root / "val", shared_weights)
    result = runner.invoke(app, ["index", "build", str(root / "train"), "-o", str(root / "train.index"),
                                   "--weights", str(shared_weights), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return {"root": root, "train": train, "val": val, "index": root / "train.index", "weights": shared_weights}


def test_majority_label_of_five_neighbours_is_right_for_most_val_photos(photos):
    index = Index.open(photos["index"])
    val = photos["val"]
    hits = index.search(np.asarray(val["fire9"]), k=5)
    majority = hits.groupby("query")["label"].agg(lambda labels: labels.value_counts().index[0])
    accuracy = float((majority.sort_index().to_numpy() == val.rows["label"].to_numpy()).mean())
    assert accuracy >= 0.80, accuracy  # measured 0.856 (exact cosine search, avg-pooled fire9)


def test_cli_search_of_an_image_equals_search_of_its_stored_vector(photos):
    val = photos["val"]
    row = 7
    image = val.rows["path"][row]
    result = runner.invoke(app, ["search", str(photos["index"]), image, "-k", "5", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    by_image = pd.DataFrame(json.loads(result.output))
    by_vector = Index.open(photos["index"]).search(val["fire9"][row], k=5)
    assert by_image["path"].tolist() == by_vector["path"].tolist()
    np.testing.assert_allclose(by_image["score"], by_vector["score"], atol=1e-4)
    assert set(by_image.columns) == {"query", "rank", "path", "score", "label"}


def test_csv_for_a_folder_of_queries_and_an_html_page(photos, tmp_path):
    queries = tmp_path / "queries"
    queries.mkdir()
    val_paths = photos["val"].rows["path"]
    shutil.copy(val_paths[0], queries / "a<b>&'.jpg")  # a name that must be escaped in HTML
    shutil.copy(val_paths[100], queries / "b.jpg")
    (queries / "notes.jpg").write_text("not an image")
    result = runner.invoke(app, ["search", str(photos["index"]), str(queries), "-k", "3",
                                 "--csv", str(tmp_path / "out.csv"), "--html", str(tmp_path / "out.html")],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "out.csv")
    assert list(table.columns) == ["query", "rank", "path", "score", "label"]
    assert len(table) == 6 and table["label"].isin(["ants", "bees"]).all()
    page = (tmp_path / "out.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 2 + 6
    assert "a&lt;b&gt;&amp;&#x27;.jpg" in page and "a<b>" not in page
    assert "notes.jpg" in page and "not_an_image" in page  # the skipped query is listed, with its reason


def test_image_queries_need_the_same_weights_file(photos, tmp_path):
    shutil.copytree(photos["index"], tmp_path / "moved.index")
    manifest_path = tmp_path / "moved.index" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["source"]["weights_path"] = None  # e.g. an index copied to another machine
    manifest["source"]["settings"]["weights"]["path"] = "/elsewhere/squeezenet.pth"
    manifest_path.write_text(json.dumps(manifest))
    index = Index.open(tmp_path / "moved.index")
    query = photos["val"].rows["path"][0]
    with pytest.raises(SearchIndexError, match=r"sha256 a8955a3357b2…\)\. It was at /elsewhere/squeezenet.pth, which "
                                               r"is gone or has changed since\. Pass it with --weights FILE"):
        index.search(query, k=1)
    assert len(index.search(query, k=1, weights=photos["weights"])) == 1  # given where it is now
    other = tmp_path / "other.pth"
    import torch

    state = torch.load(photos["weights"], weights_only=True)
    state["features.0.bias"] = state["features.0.bias"] + 0.5
    torch.save(state, other)
    with pytest.raises(SearchIndexError, match="embedded differently"):
        index.search(query, k=1, weights=other)
    with pytest.raises(SearchIndexError, match="is not the weights file"):
        Index.build(photos["train"], weights=other)


def test_dedup_finds_reencoded_resized_and_cropped_copies_without_false_merges(photos, hymenoptera, tmp_path):
    folder = tmp_path / "dups"
    folder.mkdir()
    originals = (sorted((hymenoptera / "train" / "ants").iterdir())[:10]
                 + sorted((hymenoptera / "train" / "bees").iterdir())[:10])
    planted = {}
    for i, path in enumerate(originals):
        image = Image.open(path).convert("RGB")
        image.save(folder / f"{i:02d}.png")
        if i % 4 == 0:
            w, h = image.size
            image.save(folder / f"{i:02d}_q40.jpg", quality=40)
            image.resize((int(w * 0.6), int(h * 0.6)), Image.BICUBIC).save(folder / f"{i:02d}_small.png")
            image.crop((w // 20, h // 20, w - w // 20, h - h // 20)).save(folder / f"{i:02d}_crop.png")
            planted[i] = {f"{i:02d}.png", f"{i:02d}_q40.jpg", f"{i:02d}_small.png", f"{i:02d}_crop.png"}
    extract(folder, tmp_path / "store", photos["weights"])
    # at the default threshold (0.92): copies score 0.90-0.98 with their original (16_small, 0.902, joins its
    # group through the other copies), ≤ 0.69 with other photos; the former 0.95 left copies out of three groups
    out = tmp_path / "dupes.csv"
    result = runner.invoke(app, ["dedup", str(tmp_path / "store"), "-o", str(out), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    groups = pd.read_csv(out)
    found = {frozenset(p.rsplit("/", 1)[-1] for p in g["path"]) for _, g in groups.groupby("group")}
    assert found == {frozenset(v) for v in planted.values()}
    reps = groups.loc[groups["representative"], "path"].str.rsplit("/", n=1).str[-1]
    assert not reps.str.contains("small").any()  # the full-size copy is the one to keep
    assert find_duplicates(tmp_path / "store", threshold=0.999).empty
