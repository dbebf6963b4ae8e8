"""A store's settings as a typed record: round trip, what differs, stores written before the schema, and damaged
manifests that end in one StoreError naming the file and the field."""

from __future__ import annotations

import json

import pytest

import featkit
from featkit.errors import StoreError
from featkit.store.settings import StoreSettings

FAST = {"model": "squeezenet1_1", "weights": "random", "device": "cpu", "workers": 0, "layers": ["fire9"],
        "pool": "avg"}


@pytest.fixture
def store(tiny_folder, tmp_path):
    featkit.extract(tiny_folder, tmp_path / "s", seed=7, **FAST)
    return tmp_path / "s"


def test_settings_round_trip_and_say_what_differs(store):
    settings = featkit.open_features(store).settings
    assert StoreSettings.from_json(settings.to_json(), "x") == settings
    assert settings.weights.seed == 7 and settings.tap_names == ("fire9",)
    other = StoreSettings.from_json({**settings.to_json(), "pool": "max", "shard_rows": 5}, "x")
    assert settings.diff(other) == ["pool: avg → max", "shard_rows: 2048 → 5"]
    assert settings.diff(other, vectors_only=True) == ["pool: avg → max"]
    assert not settings.vectors_equal(other)


def test_a_store_written_before_the_schema_opens_and_resumes(store, tiny_folder):
    manifest = json.loads((store / "manifest.json").read_text())
    legacy = {k: v for k, v in manifest["settings"].items() if k != "schema"}
    legacy["weights"] = {k: v for k, v in legacy["weights"].items() if k != "seed"}  # schema 0: seed in the id only
    (store / "manifest.json").write_text(json.dumps({**manifest, "settings": legacy}))
    assert featkit.open_features(store).settings.weights.seed == 7
    (tiny_folder / "c0" / "000.png").touch()  # changed: recomputed into the same store
    result = featkit.extract(tiny_folder, store, seed=7, **FAST)
    assert result.computed == 1 and result.unchanged == 7


@pytest.mark.parametrize(("damage", "field"), [
    (lambda m: m["settings"].pop("pool"), "settings.pool is missing"),
    (lambda m: m["settings"].update(pool="average"), "settings.pool must be one of none, avg, max, gem"),
    (lambda m: m["settings"]["weights"].update(num_classes="10"), "settings.weights.num_classes must be int"),
    (lambda m: m["settings"]["preprocess"].update(mean=[0.5]), "settings.preprocess.mean"),
    (lambda m: m["settings"].update(taps=[]), "settings.taps is empty"),
    (lambda m: m.update(settings=["a", "list"]), "settings must be an object"),
    (lambda m: m.update(taps={"../../outside": {"dims": 4, "dtype": "float32"}}), "is not a plain tap name"),
    (lambda m: m.update(rows=-3), "rows must be an integer >= 0"),
    (lambda m: m["shards"][0].pop("files"), "shards[0] must be an object"),
    (lambda m: m["shards"][0].update(index=0.0), "shards[0] must be an object with index 0"),
    (lambda m: m.update(stale_rows=[2**63]), "stale_rows must be a list of row numbers"),
    (lambda m: m["shards"][0]["files"].update({"../x.npy": "0" * 64}), "shards[0].files: '../x.npy' is not a file"),
    (lambda m: m["taps"]["fire9"].update(dims=0), "taps.fire9 must be an object with dims (an integer >= 1)"),
    (lambda m: m["taps"].update(pool5=m["taps"]["fire9"]), "taps: 'pool5' is not one of settings.taps"),
])
def test_a_damaged_manifest_is_one_store_error_naming_file_and_field(store, damage, field):
    manifest = json.loads((store / "manifest.json").read_text())
    damage(manifest)
    (store / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError) as info:
        featkit.open_features(store)
    message = str(info.value)
    assert "\n" not in message and str(store / "manifest.json") in message and field in message, message


def test_deep_nesting_and_a_json_list_are_store_errors(store):
    (store / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(StoreError, match="not readable JSON"):
        featkit.open_features(store)
    (store / "manifest.json").write_text("[1, 2]")
    with pytest.raises(StoreError, match="not a featkit feature store"):
        featkit.open_features(store)
