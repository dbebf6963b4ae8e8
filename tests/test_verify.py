"""``featkit verify STORE|INDEX|RUN`` and ``open_features(verify=True)``: every file re-hashed, each bad one named.

RELIABILITY.md row 26 (``featkit verify`` finds every flipped byte and names the file) and row 27 (a FIFO in place
of a store file is refused, never waited on).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import as_v1_store, files_record, in_thread, shard_dir, write_feature_store

import featkit
from featkit.backbones.card import WeightsCard, read_card, write_card
from featkit.backbones.spec import Preprocess
from featkit.cli.app import main as featkit_main
from featkit.errors import FeatkitError, StoreError
from featkit.finetune import rundir
from featkit.finetune.recipe import resolve_recipe
from featkit.index import Index
from featkit.store import format as fmt
from featkit.store.reader import open_features


@pytest.fixture(scope="module", params=["v2", "v1"])
def pristine(request, tmp_path_factory) -> Path:
    v2 = write_feature_store(tmp_path_factory.mktemp("pristine") / "store", shards=(4, 4, 3))
    return v2 if request.param == "v2" else as_v1_store(v2, tmp_path_factory.mktemp("v1") / "store")


@pytest.fixture
def store(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "store"))


def files_of(store: Path) -> list[Path]:
    record = json.loads(files_record(store).read_text())
    return [shard_dir(store) / rel for shard in record["shards"] for rel in shard["files"]]


def at(store: Path, rel: str) -> Path:
    return shard_dir(store) / rel


def flip(path: Path, offset: int = -5, bit: int = 0) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 1 << bit
    path.write_bytes(bytes(raw))


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """``featkit ARGS`` through the console entry point, in process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["featkit", *args])
    monkeypatch.setenv("FEATKIT_DEBUG", "0")
    with pytest.raises(SystemExit) as exited:
        featkit_main()
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return exited.value.code, out, err


# ---- feature stores ------------------------------------------------------------------------------------------

def test_an_intact_store_verifies_with_a_one_line_summary(store, monkeypatch, capsys):
    result = featkit.verify(store)
    assert result.ok and result.kind == "feature store" and result.files == 9  # 3 shards × (npy, metadata, failures)
    assert result.bytes == sum(p.stat().st_size for p in files_of(store))
    code, out, err = cli(monkeypatch, capsys, "verify", str(store), "-q")
    assert code == 0 and err == "" and out.count("\n") == 1
    assert f"{store}: feature store ok: 9 files" in out and "MiB" in out


def test_a_flipped_bit_is_named_by_verify_and_open_with_verify(store, monkeypatch, capsys):
    npy = at(store, fmt.feature_path("feat", 1))
    flip(npy)
    assert len(open_features(store)) == 11  # sizes agree: opening without verify does not read the vectors
    with pytest.raises(StoreError, match=f"{npy}: corrupt or replaced"):
        open_features(store, verify=True)
    code, out, err = cli(monkeypatch, capsys, "verify", str(store), "-q")
    assert code == 1 and f"bad: {npy}: corrupt or replaced (its sha256 differs from the manifest's)" in err
    assert "1 of 9 files of the feature store are bad" in err and "--overwrite" in err


def test_every_bad_file_is_named_at_once_and_a_fifo_never_blocks(store, monkeypatch, capsys):
    bad = {
        at(store, fmt.feature_path("feat", 0)): "corrupt or replaced",
        at(store, fmt.metadata_path(1)): "not a readable parquet table",
        at(store, fmt.failures_path(1)): "missing",
        at(store, fmt.feature_path("feat", 2)): "a named pipe (FIFO), not a .npy file",
        at(store, fmt.metadata_path(2)): "holds 4 rows where the manifest says 3",
    }
    paths = list(bad)
    flip(paths[0])
    paths[1].write_bytes(paths[1].read_bytes()[:100])
    paths[2].unlink()
    paths[3].unlink()
    os.mkfifo(paths[3])
    shutil.copy(at(store, fmt.metadata_path(0)), paths[4])
    result = in_thread(lambda: featkit.verify(store), timeout=10)
    assert [b.path for b in result.bad] == sorted(bad) and result.files == 9
    for b in result.bad:
        assert b.problem.startswith(bad[b.path]), b
    code, _, err = in_thread(lambda: cli(monkeypatch, capsys, "verify", str(store), "-q"), timeout=10)
    assert code == 1 and [line for line in err.splitlines() if line.startswith("bad: ")] == \
        [f"bad: {b.path}: {b.problem}" for b in result.bad]
    with pytest.raises(StoreError) as refused:
        in_thread(lambda: open_features(store, verify=True), timeout=10)
    assert all(str(p) in str(refused.value) for p in bad) and "\n" not in str(refused.value)


def test_verify_finds_every_sampled_bit_flip_in_every_file(store):
    """Row 26's attack: a bit flipped at 40 places in each file of the store, one at a time; each is named."""
    rng = np.random.default_rng(0)
    tried = 0
    for path in files_of(store):
        data = path.read_bytes()
        for offset in rng.choice(len(data), min(40, len(data)), replace=False):
            flip(path, int(offset), int(rng.integers(8)))
            assert [b.path for b in featkit.verify(store).bad] == [path], (path, offset)
            path.write_bytes(data)
            tried += 1
    assert tried == 9 * 40 and featkit.verify(store).ok


def test_a_manifest_naming_a_file_outside_its_shard_is_not_read(store, tmp_path):
    outside = tmp_path / "outside.npy"
    outside.write_bytes(b"secret")
    record = json.loads(files_record(store).read_text())
    record["shards"][0]["files"]["../outside.npy"] = "0" * 64
    files_record(store).write_text(json.dumps(record))
    try:
        result = featkit.verify(store)
    except StoreError as refused:  # the manifest's own validation may refuse the name first
        assert "\n" not in str(refused)
    else:  # a segment's manifest: named bad, nothing of it read
        assert [b.path for b in result.bad] == [files_record(store)] and "'../outside.npy'" in result.bad[0].problem


# ---- indexes -------------------------------------------------------------------------------------------------

@pytest.fixture
def index(store, tmp_path) -> Path:
    return Index.build(store, kind="flat").save(tmp_path / "photos.index")


@pytest.mark.parametrize("which", ["index", "ids"])
def test_a_flipped_byte_in_an_index_file_is_named(index, which, monkeypatch, capsys):
    assert featkit.verify(index).ok and featkit.verify(index).files == 2
    path = index / json.loads((index / "manifest.json").read_text())["files"][which]["name"]
    flip(path, len(path.read_bytes()) // 2)
    result = featkit.verify(index)
    assert [(b.path, b.problem.split(" (")[0]) for b in result.bad] == [(path, "corrupt or replaced")]
    code, _, err = cli(monkeypatch, capsys, "verify", str(index), "-q")
    assert code == 1 and f"bad: {path}: corrupt or replaced" in err and "index build" in err


def test_a_truncated_index_file_is_named_with_its_size(index):
    path = index / json.loads((index / "manifest.json").read_text())["files"]["index"]["name"]
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:10])
    assert featkit.verify(index).bad[0].problem == f"truncated or replaced (10 bytes, the manifest says {size:,})"


# ---- fine-tuning runs ----------------------------------------------------------------------------------------

@pytest.fixture
def run(tmp_path) -> Path:
    """A finished run's files as ``featkit finetune`` writes them (the training itself is not needed here)."""
    run = rundir.RunDir(tmp_path / "run")
    run.root.mkdir()
    rundir.write_manifest(run, {"recipe": resolve_recipe("linear-head").as_dict(), "data": str(tmp_path.resolve())})
    rundir.write_metrics(run, [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "val_acc": 0.5, "lr": 0.1,
                                "images_per_s": 10.0}])
    state = {"fc.weight": torch.randn(2, 4), "fc.bias": torch.zeros(2)}
    rundir.write_weights(run.weights, state, WeightsCard("resnet18", ("a", "b"), Preprocess(8, 8)))
    return run.root


def test_a_run_verifies_its_weights_and_says_which_files_carry_no_checksum(run, monkeypatch, capsys):
    card = read_card(run / "model.pth")
    assert card is not None and card.sha256 == featkit._files.sha256_file(run / "model.pth")
    result = featkit.verify(run)
    assert result.ok and result.files == 1 and result.kind == "fine-tuning run"
    assert [p.name for p in result.unchecked] == ["metrics.csv", "model.json", "recipe.json"]
    code, out, _ = cli(monkeypatch, capsys, "verify", str(run), "-q")
    assert code == 0 and "no checksum recorded for: metrics.csv, model.json, recipe.json" in out
    flip(run / "model.pth", 40)
    code, _, err = cli(monkeypatch, capsys, "verify", str(run), "-q")
    assert code == 1 and f"bad: {run / 'model.pth'}: corrupt or replaced" in err


def test_weights_without_a_recorded_sha256_are_listed_as_unchecked(run):
    write_card(run / "model.pth", WeightsCard("resnet18", ("a", "b"), Preprocess(8, 8)))  # an older card
    result = featkit.verify(run)
    assert result.ok and result.files == 0 and "model.pth" in [p.name for p in result.unchecked]


def test_missing_final_weights_are_named(run):
    if read_card(run / "model.pth").sha256 is None:
        pytest.skip("this featkit's fine-tuning records no sha256 of model.pth yet")
    (run / "model.pth").unlink()
    assert [(b.path.name, b.problem) for b in featkit.verify(run).bad] == [("model.pth", "missing")]


# ---- what verify takes ---------------------------------------------------------------------------------------

def test_a_folder_that_is_none_of_them_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    with pytest.raises(FeatkitError, match="not a feature store, index or fine-tuning run"):
        featkit.verify(tmp_path)
    code, _, err = cli(monkeypatch, capsys, "verify", str(tmp_path))
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: ")


def test_json_output_lists_each_bad_file(store, monkeypatch, capsys):
    flip(at(store, fmt.metadata_path(0)))
    code, out, _ = cli(monkeypatch, capsys, "verify", str(store), "--json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False and report["files"] == 9
    assert report["bad"] == [{"path": str(at(store, fmt.metadata_path(0))), "problem": report["bad"][0]["problem"]}]


# ---- a FIFO in place of a manifest -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["store", "index", "run"])
def test_a_fifo_in_place_of_a_manifest_is_refused_at_once(kind, store, index, run, monkeypatch, capsys):
    """Row 27: ``verify``, and every command that opens the directory, refuses at once instead of waiting."""
    root, name = {"store": (store, fmt.MANIFEST), "index": (index, "manifest.json"), "run": (run, "recipe.json")}[kind]
    (root / name).unlink()
    os.mkfifo(root / name)
    with pytest.raises(FeatkitError, match="is a named pipe"):
        in_thread(lambda: featkit.verify(root), timeout=10)
    opener = {"store": lambda: open_features(root), "index": lambda: Index.open(root),
              "run": lambda: rundir.read_manifest(root)}[kind]
    with pytest.raises(FeatkitError, match=f"{name} is a named pipe"):
        in_thread(opener, timeout=10)


def test_a_damaged_index_manifest_gets_index_advice_never_a_store_s(index):
    """Advice to write a store into an index folder would replace the index: verify recognises it by its files."""
    (index / "manifest.json").write_bytes((index / "manifest.json").read_bytes()[:300])
    with pytest.raises(FeatkitError, match="index build") as refused:
        featkit.verify(index)
    assert "featkit extract" not in str(refused.value)
