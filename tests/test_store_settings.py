"""A store's settings as a typed record: round trip, what differs, stores written before the schema, and damaged
manifests that end in one StoreError naming the file and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import as_v1_store, read_all

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
    (lambda m: m["taps"]["fire9"].update(dims=0), "taps.fire9 must be an object with dims (an integer >= 1)"),
    (lambda m: m["taps"].update(pool5=m["taps"]["fire9"]), "taps: 'pool5' is not one of settings.taps"),
])
def test_a_damaged_manifest_is_one_store_error_naming_file_and_field(store, damage, field):
    damage_and_open(store, "manifest.json", damage, field)


@pytest.mark.parametrize("damage, field", [  # what only a v1 manifest holds: its shards, counts and retired rows
    (lambda m: m.update(rows=-3), "rows must be an integer >= 0"),
    (lambda m: m["shards"][0].pop("files"), "shards[0] must be an object"),
    (lambda m: m["shards"][0].update(index=0.0), "shards[0] must be an object with index 0"),
    (lambda m: m.update(stale_rows=[2**63]), "stale_rows must be a list of row numbers"),
    (lambda m: m["shards"][0]["files"].update({"../x.npy": "0" * 64}), "shards[0].files: '../x.npy' is not a file"),
])
def test_a_damaged_v1_manifest_is_one_store_error_naming_file_and_field(store, damage, field, tmp_path):
    damage_and_open(as_v1_store(store, tmp_path / "v1"), "manifest.json", damage, field)


@pytest.mark.parametrize("damage, field", [  # a v2 segment's manifest, read when the segment is first read
    (lambda m: m.update(settings_sha256="0" * 64), "was written with other settings"),
    (lambda m: m["shards"][0].update(index=1), "shards[0] must be an object with index 0"),
    (lambda m: m["shards"][0]["files"].update({"../x.npy": "0" * 64}), "shards[0].files: '../x.npy' is not a file"),
    (lambda m: m["shards"][0].update(consumed=-1), "shards[0].consumed must be a count"),
    (lambda m: m.update(name="seg-000009"), "name must be 'seg-000000'"),
    (lambda m: m.update(format="something"), "is not a featkit-segment version 2 manifest"),
])
def test_a_damaged_segment_manifest_is_one_store_error_naming_file_and_field(store, damage, field):
    damage_and_open(store, "segments/seg-000000/segment.json", damage, field)


@pytest.mark.parametrize("line, field", [
    ('{"segment": "seg-000000", "rows": [8], "failures": [0]}', "merges seg-000000 a second time"),
    ('{"segment": "../x", "rows": [1], "failures": [0]}', "which is not a segment name"),
    ('{"segment": "seg-000001", "rows": [-1], "failures": [0]}', "lists of counts"),
    ('{"retire": [99]}', "row numbers of segments merged before it"),
    ('{"delete": "everything"}', "is not one of the log's records"),
    ('[1, 2]', "is not one of the log's records"),
    ('{"segment": ', "is not a JSON object"),
])
def test_a_damaged_log_line_is_one_store_error_naming_file_and_line(store, line, field):
    lines = (store / "log.jsonl").read_text().splitlines()
    (store / "log.jsonl").write_text("\n".join([*lines[:2], line, *lines[2:]]) + "\n")
    with pytest.raises(StoreError) as info:
        featkit.open_features(store)
    message = str(info.value)
    assert "\n" not in message and f"{store / 'log.jsonl'} is damaged: line 3 " in message and field in message


def test_a_torn_last_line_of_the_log_was_never_committed(store):
    """A kill (or power cut) mid-append leaves a last line without its newline: readers ignore it."""
    before = len(featkit.open_features(store))
    with open(store / "log.jsonl", "ab") as log:
        log.write(b'{"retire": [0, 1, 2')
    assert len(featkit.open_features(store)) == before


def damage_and_open(store: Path, rel: str, damage, field: str) -> None:
    manifest = json.loads((store / rel).read_text())
    damage(manifest)
    (store / rel).write_text(json.dumps(manifest))
    with pytest.raises(StoreError) as info:
        read_all(store)
    message = str(info.value)
    assert "\n" not in message and str(store / rel) in message and field in message, message


def test_deep_nesting_and_a_json_list_are_store_errors(store):
    (store / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(StoreError, match="not readable JSON"):
        featkit.open_features(store)
    (store / "manifest.json").write_text("[1, 2]")
    with pytest.raises(StoreError, match="not a featkit feature store"):
        featkit.open_features(store)
