"""Weights that hold NaN or inf are refused (RELIABILITY row 28), and featkit's own fine-tuned weights are checked
against the sha256 their card records (row 3's "corrupt checkpoint" for the files featkit writes itself)."""

from __future__ import annotations

import hashlib
import json
import struct
import sys

import pytest
import torch
from safetensors.torch import save_file

from featkit.backbones import checkpoints as ck
from featkit.backbones.card import WeightsCard, card_path, read_card
from featkit.backbones.registry import build_module
from featkit.backbones.spec import Preprocess
from featkit.backbones.weights import load_backbone_weights
from featkit.cli.app import main
from featkit.errors import WeightsError
from featkit.finetune import rundir

MODEL = "squeezenet1_1"
KEY = "features.0.weight"  # the first conv: every feature depends on it


def squeezenet_state(num_classes: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_module(MODEL, num_classes=num_classes).state_dict()


def refused(path) -> str:
    with pytest.raises(WeightsError) as info:
        load_backbone_weights(MODEL, str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def cli_error(monkeypatch, capsys, *args: str) -> str:
    """Run ``featkit ARGS`` as the console entry point does; expect exit 1 and return its one-line error."""
    monkeypatch.setattr(sys, "argv", ["featkit", *args])
    monkeypatch.setenv("FEATKIT_DEBUG", "0")
    with pytest.raises(SystemExit) as exited:
        main()
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def flip_exponent_to_all_ones(path, key: str, index: int) -> None:
    """Flip bit 30 of float32 ``key[index]`` in a safetensors file: 1.0 (exponent 127) becomes +inf."""
    raw = bytearray(path.read_bytes())
    header_len = struct.unpack("<Q", raw[:8])[0]
    start = 8 + header_len + json.loads(raw[8 : 8 + header_len])[key]["data_offsets"][0] + 4 * index
    assert struct.unpack("<f", raw[start : start + 4])[0] == 1.0
    raw[start + 3] ^= 0x40  # little-endian: the top byte holds the sign and the exponent's upper 7 bits
    assert struct.unpack("<f", raw[start : start + 4])[0] == float("inf")
    path.write_bytes(bytes(raw))


def test_one_flipped_exponent_bit_in_a_safetensors_file_is_refused(tmp_path, tiny_folder, monkeypatch, capsys):
    """The attack of issue 12: safetensors has no checksum, so the flip loaded and put inf into the features."""
    state = squeezenet_state()
    state[KEY].view(-1)[7] = 1.0
    path = tmp_path / "weights.safetensors"
    save_file(state, path)
    load_backbone_weights(MODEL, str(path))  # the intact file loads
    flip_exponent_to_all_ones(path, KEY, 7)
    message = refused(path)
    assert f"is a corrupt checkpoint (1 non-finite value (NaN or inf) in {KEY}; damaged" in message
    err = cli_error(monkeypatch, capsys, "extract", str(tiny_folder), "-o", str(tmp_path / "store"), "--model", MODEL,
                    "--weights", str(path), "--workers", "0", "-q")
    assert "non-finite value" in err and not (tmp_path / "store" / "manifest.json").exists()


@pytest.mark.parametrize("crc", [True, False], ids=["zip", "zip-without-crc"])
def test_nan_and_inf_in_a_torch_zip_are_counted_and_named(tmp_path, crc):
    """A zip's CRC-32s only prove the bytes are as saved; a file saved without them, or saved with NaN, is refused."""
    state = squeezenet_state()
    state[KEY].view(-1)[:12] = float("nan")
    state["features.3.squeeze.bias"][0] = float("-inf")
    path = tmp_path / "weights.pth"
    torch.serialization.set_crc32_options(crc)
    try:
        torch.save(state, path)
    finally:
        torch.serialization.set_crc32_options(True)
    message = refused(path)
    assert f"(13 non-finite values (NaN or inf) in {KEY} (12), features.3.squeeze.bias (1); damaged" in message
    assert message.endswith("download or copy it again.")


def test_a_batchnorm_buffer_holding_inf_is_refused_and_integer_buffers_are_not_checked(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    state = net.state_dict()
    state["1.num_batches_tracked"] = torch.tensor(2**62)  # an integer buffer: any value is fine
    torch.save(state, tmp_path / "good.pth")
    assert ck.load_state_dict_file(tmp_path / "good.pth").keys() == state.keys()
    state["1.running_var"][2] = float("inf")
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"1 non-finite value \(NaN or inf\) in 1\.running_var;"):
        ck.load_state_dict_file(tmp_path / "bad.pth")


def test_half_and_float8_tensors_are_checked(tmp_path):
    for dtype in (torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
        good = {"w": torch.tensor([0.5, -1.0, 2.0]).to(dtype)}
        save_file(good, tmp_path / "good.safetensors")
        assert torch.equal(ck.load_state_dict_file(tmp_path / "good.safetensors")["w"].float(), good["w"].float())
        save_file({"w": torch.tensor([0.5, float("nan"), 2.0]).to(dtype)}, tmp_path / "bad.safetensors")
        with pytest.raises(WeightsError, match=r"1 non-finite value \(NaN or inf\) in w;"):
            ck.load_state_dict_file(tmp_path / "bad.safetensors")


def fake_run(root, seed: int = 0):
    """A fine-tuning run directory as `featkit finetune` leaves it, without training: manifest, model.pth, card."""
    root.mkdir()
    (root / "recipe.json").write_text("{}")
    card = WeightsCard(MODEL, ("ant", "bee", "wasp"), Preprocess(resize=72, crop=64), "last-stage", 1, 0.5)
    rundir.write_weights(root / "model.pth", squeezenet_state(num_classes=3, seed=seed), card)
    return root


def test_fine_tuned_weights_record_their_sha256_and_a_changed_file_is_refused(tmp_path, tiny_folder, monkeypatch,
                                                                              capsys):
    run = fake_run(tmp_path / "run")
    weights = run / "model.pth"
    recorded = read_card(weights).sha256
    assert recorded == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert json.loads(card_path(weights).read_text())["sha256"] == recorded
    _, info = load_backbone_weights(MODEL, str(run))
    assert info.sha256 == recorded and info.categories == ("ant", "bee", "wasp")

    torch.save(squeezenet_state(num_classes=3, seed=1), weights)  # a valid checkpoint, just not the one written
    for given in (run, weights):
        message = refused(given)
        assert f"{weights} does not match the sha256 its model.json records: the file was changed or damaged" \
            in message
        assert f"recorded {recorded[:12]}" in message
    err = cli_error(monkeypatch, capsys, "extract", str(tiny_folder), "-o", str(tmp_path / "store"), "--model", MODEL,
                    "--weights", str(run), "--workers", "0", "-q")
    assert "does not match the sha256" in err


def test_a_card_without_sha256_still_loads_and_a_malformed_one_is_one_line(tmp_path):
    run = fake_run(tmp_path / "run")
    path = card_path(run / "model.pth")
    card = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in card.items() if k != "sha256"}))  # a card from before the field
    assert load_backbone_weights(MODEL, str(run))[1].categories == ("ant", "bee", "wasp")
    for bad in ("abc", card["sha256"].upper(), 12, [card["sha256"]], card["sha256"] + "0"):
        path.write_text(json.dumps({**card, "sha256": bad}))
        with pytest.raises(WeightsError, match=r"^The weights card .*model\.json is damaged \(sha256: expected 64 "):
            load_backbone_weights(MODEL, str(run))
