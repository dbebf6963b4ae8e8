"""Weights files: RELIABILITY rows 1-5 and the download path of featkit.backbones.checkpoints."""

from __future__ import annotations

import builtins
import hashlib
import logging
import os
import pickle
import shlex
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from featkit.backbones import checkpoints as ck
from featkit.errors import WeightsError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SQUEEZENET = SHARED / "weights" / "squeezenet1_1-imagenet.pth"
SQUEEZENET_SHA256 = "a8955a3357b226bc373f689696ab95d6113197bb412ae59930af73a175a7f29d"


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


@pytest.fixture
def sd() -> dict[str, torch.Tensor]:
    return tiny_model().state_dict()


def refusal(path) -> str:
    """Load ``path``, expecting a one-line WeightsError; return its message."""
    with pytest.raises(WeightsError) as info:
        ck.load_state_dict_file(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- row 1: malicious pickles -------------------------------------------------------------------------------


class Payload:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker: Path) -> dict[str, Payload]:
    write = f"open({str(marker)!r}, 'w').write('pwned')"
    shell = f"touch {shlex.quote(str(marker))}"
    return {
        "exec": Payload(exec, (write,)),
        "eval": Payload(eval, (write,)),
        "os.system": Payload(os.system, (shell,)),
        "subprocess.run": Payload(subprocess.run, (["touch", str(marker)],)),
        "builtins.open": Payload(builtins.open, (str(marker), "w")),
        "nested pickle": Payload(pickle.loads, (pickle.dumps(Payload(os.system, (shell,)), protocol=2),)),
    }


KINDS = list(payloads(Path("m")))


@pytest.mark.parametrize("kind", KINDS)
def test_payloads_are_live(tmp_path, kind):
    """Control: plain pickle runs each payload, so the refusals below are meaningful."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(payloads(marker)[kind], protocol=2))
    assert marker.exists()


@pytest.mark.parametrize("force_unsafe_env", [False, True])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("kind", KINDS)
def test_malicious_pickle_refused_and_never_runs(tmp_path, monkeypatch, kind, legacy, force_unsafe_env):
    if force_unsafe_env:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    evil = {"conv.weight": torch.ones(2), "extra": payloads(marker)[kind]}
    torch.save(evil, path, _use_new_zipfile_serialization=not legacy)
    message = refusal(path)
    if legacy:  # refused unread: a legacy file carries no checksum (row 2)
        assert "is not a plain state_dict checkpoint (it is a legacy torch file from before torch 1.6" in message
    else:
        assert "is not a plain state_dict checkpoint (it asks to run code or build objects: global " in message
        assert "weights_only=True only" in message
    assert not marker.exists()


def test_full_model_pickle_names_the_class(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(tiny_model(), path)
    assert "build objects: global torch.nn.modules.container.Sequential)" in refusal(path)


def test_weights_only_is_always_explicit_and_no_unsafe_unpickler_runs(tmp_path, monkeypatch, sd):
    """Proof that nothing unpickles with weights_only=False, even with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    calls = []
    real_load = torch.load

    def spy_load(*args, **kwargs):
        calls.append(kwargs)
        assert kwargs.get("weights_only") is True
        return real_load(*args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("full unpickling or TorchScript was reached")

    monkeypatch.setattr(torch, "load", spy_load)
    for name in ("Unpickler", "load", "loads"):  # the stdlib unpickler is only used when weights_only=False
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch.jit, "load", forbidden)

    torch.save(sd, tmp_path / "a.pth")
    torch.save(sd, tmp_path / "b.pth", _use_new_zipfile_serialization=False)
    save_file(sd, tmp_path / "c.safetensors")
    for name in ("a.pth", "c.safetensors"):
        assert same(ck.load_state_dict_file(tmp_path / name), sd)
    assert "legacy torch file" in refusal(tmp_path / "b.pth")  # refused unread
    torch.save({"x": Payload(os.system, ("true",))}, tmp_path / "evil.pth")
    refusal(tmp_path / "evil.pth")
    assert len(calls) == 2 and all(c["weights_only"] is True for c in calls)


# --- row 2: not a plain state_dict --------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated in this torch
def test_torchscript_refused_without_running_it(tmp_path, monkeypatch):
    path = tmp_path / "scripted.pth"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load was called"))
    message = refusal(path)
    assert "is not a plain state_dict checkpoint (it is a TorchScript archive" in message


LEGACY = "is not a plain state_dict checkpoint (it is a legacy torch file from before torch 1.6"
RESAVE = "re-save it in a current torch, torch.save(torch.load(path, weights_only=True), new_path)"


def test_legacy_pickle_of_non_tensors_refused(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"epoch": 3, "note": "hi"}, path, _use_new_zipfile_serialization=False)
    assert LEGACY in refusal(path)


def test_a_valid_legacy_file_is_refused_unread_and_the_hint_re_saves_it(tmp_path, monkeypatch, sd):
    """Decision (row 2): pre-1.6 (non-zip) files carry no checksum, so even a good one is refused, never unpickled."""
    path = tmp_path / "legacy.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    with monkeypatch.context() as m:
        m.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called on a legacy file"))
        m.setattr(pickle, "Unpickler", lambda *a, **k: pytest.fail("a legacy file was unpickled"))
        message = refusal(path)
    assert LEGACY in message and RESAVE in message
    torch.save(torch.load(path, weights_only=True), tmp_path / "new.pth")  # the hint, as written, works
    assert same(ck.load_state_dict_file(tmp_path / "new.pth"), sd)


def test_a_legacy_file_cut_short_is_refused(tmp_path, sd):
    full = tmp_path / "full.pth"
    torch.save(sd, full, _use_new_zipfile_serialization=False)
    data = full.read_bytes()
    path = tmp_path / "cut.pth"
    for cut in (0, 10, 16, 100, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        message = refusal(path)
        assert LEGACY in message if cut >= 16 else "is a corrupt checkpoint (the file is only" in message


def test_bare_pickle_refused(tmp_path, sd):
    path = tmp_path / "bare.pth"
    path.write_bytes(pickle.dumps(sd))
    assert "not a plain state_dict checkpoint" in refusal(path)


def test_random_bytes_refused(tmp_path):
    path = tmp_path / "random.pth"
    path.write_bytes(bytes(range(7, 256)) * 40)
    assert "is not a plain state_dict checkpoint (it starts with bytes" in refusal(path)


def test_html_named_pth_refused(tmp_path):
    path = tmp_path / "resnet18.pth"
    path.write_text("<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n")
    assert "is not a plain state_dict checkpoint (it is an HTML page, perhaps a failed download)" in refusal(path)


def test_zip_that_is_not_torch_refused(tmp_path):
    path = tmp_path / "weights.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello" * 10)
    assert "not a plain state_dict checkpoint (it is a zip archive but not a torch.save file)" in refusal(path)


def test_safetensors_name_with_other_content_refused(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"\x00" * 64)
    assert "not a plain state_dict checkpoint (it is named .safetensors but is not a safetensors file)" in refusal(path)


@pytest.mark.parametrize(
    ("obj", "why"),
    [
        ([torch.ones(1)], "it holds a list, not a dict of tensors"),
        ({}, "it holds no tensors"),
        ({1: torch.ones(1)}, "it has a key of type int"),
        ({"model": {"w": "not a tensor"}, "epoch": 1}, "its entry 'model' is a dict, not a tensor"),
    ],
)
def test_non_state_dict_contents_refused(tmp_path, obj, why):
    path = tmp_path / "odd.pth"
    torch.save(obj, path)
    assert f"is not a plain state_dict checkpoint ({why})" in refusal(path)


@pytest.mark.parametrize("key", ck.WRAPPER_KEYS)
def test_training_checkpoint_is_unwrapped(tmp_path, sd, key):
    path = tmp_path / "train.pt"
    torch.save({key: sd, "epoch": 7, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}, path)
    assert same(ck.load_state_dict_file(path), sd)


# --- row 3: corrupt files -----------------------------------------------------------------------------------


def member_data_offset(path: Path, suffix: str) -> tuple[int, int]:
    """Return (offset, size) of the stored bytes of the zip member whose name ends with ``suffix``."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(suffix))
    raw = path.read_bytes()
    name_len = int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def flipped(path: Path, pos: int, out: Path, bit: int = 0) -> Path:
    data = bytearray(path.read_bytes())
    data[pos] ^= 1 << bit
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.01, 0.1, 0.5, 0.9, 0.99, -1])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_checkpoint_is_corrupt(tmp_path, sd, suffix, fraction):
    full = tmp_path / f"full{suffix}"
    if suffix == ".safetensors":
        save_file(sd, full)
    else:
        torch.save(sd, full)
    data = full.read_bytes()
    cut = len(data) - 1 if fraction == -1 else int(len(data) * fraction)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[:cut])
    assert "is a corrupt checkpoint (" in refusal(path)


def test_every_truncation_of_a_zip_checkpoint_is_corrupt(tmp_path, sd):
    full = tmp_path / "full.pth"
    torch.save(sd, full)
    data = full.read_bytes()
    path = tmp_path / "cut.pth"
    for cut in range(0, len(data), 3):
        path.write_bytes(data[:cut])
        assert "is a corrupt checkpoint (" in refusal(path), cut


def test_bit_flip_in_tensor_data_is_caught_by_crc(tmp_path, sd):
    """torch's zip reader skips CRC checks (the flipped file would load); featkit verifies them first."""
    full = tmp_path / "full.pth"
    torch.save(sd, full)
    offset, size = member_data_offset(full, "data/0")
    bad = flipped(full, offset + size // 2, tmp_path / "flip.pth")
    assert not torch.equal(torch.load(bad, weights_only=True)["0.weight"], sd["0.weight"])  # torch alone: silent
    message = refusal(bad)
    assert "is a corrupt checkpoint (Bad CRC-32 for file" in message and "download or copy it again" in message


def test_bit_flip_in_pickle_is_caught_by_crc(tmp_path, sd):
    full = tmp_path / "full.pth"
    torch.save(sd, full)
    offset, size = member_data_offset(full, "data.pkl")
    for pos in range(offset, offset + size, 17):
        assert "is a corrupt checkpoint (" in refusal(flipped(full, pos, tmp_path / "flip.pth", bit=4))


def test_no_bit_flip_in_a_zip_checkpoint_loads_different_values(tmp_path, sd):
    """Across the whole file, a flip either is refused or leaves every tensor identical (e.g. a timestamp)."""
    full = tmp_path / "full.pth"
    torch.save(sd, full)
    size = full.stat().st_size
    path = tmp_path / "flip.pth"
    refused = 0
    for pos in range(0, size, 5):
        try:
            loaded = ck.load_state_dict_file(flipped(full, pos, path, bit=pos % 8))
        except WeightsError:
            refused += 1
        else:
            assert same(loaded, sd), pos
    assert refused > size // 10


def test_zip_saved_without_crc_loads_and_cannot_be_verified(tmp_path, sd, caplog):
    """Documented limit: torch.save with set_crc32_options(False) writes no checksums to verify."""
    path = tmp_path / "nocrc.pth"
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(sd, path)
    finally:
        torch.serialization.set_crc32_options(True)
    with caplog.at_level(logging.INFO, logger=ck.__name__):
        assert same(ck.load_state_dict_file(path), sd)
    assert "without CRC-32 checksums" in caplog.text


def test_safetensors_header_flip_is_corrupt_but_data_flip_is_undetectable(tmp_path, sd):
    """safetensors has no checksums: header damage is caught, tensor-data damage cannot be (sha256 records it)."""
    full = tmp_path / "full.safetensors"
    save_file(sd, full)
    raw = full.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    structural = (0, 9, raw.index(b'"dtype"'), raw.index(b'"shape"'), raw.index(b"[", 20), 8 + header_len - 3)
    for pos in structural:  # a flip inside a key name only renames it: check_state_dict reports that
        assert "is a corrupt checkpoint (safetensors: " in refusal(flipped(full, pos, tmp_path / "h.safetensors", 2))
    loaded = ck.load_state_dict_file(flipped(full, full.stat().st_size - 3, tmp_path / "d.safetensors", 6))
    assert loaded.keys() == sd.keys() and not same(loaded, sd)
    assert ck.sha256_file(tmp_path / "d.safetensors") != ck.sha256_file(full)


def test_missing_and_directory_paths(tmp_path):
    with pytest.raises(WeightsError, match=r"^weights file not found: .*nope\.pth$"):
        ck.load_state_dict_file(tmp_path / "nope.pth")
    with pytest.raises(WeightsError, match=r"^weights file not found: "):
        ck.sha256_file(tmp_path / "nope.pth")
    with pytest.raises(WeightsError, match="is a directory"):
        ck.load_state_dict_file(tmp_path)


def test_safetensors_round_trip_and_sha256(tmp_path, sd):
    path = tmp_path / "w.safetensors"
    save_file(sd, path)
    assert same(ck.load_state_dict_file(path), sd)
    assert ck.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_safetensors_content_is_recognised_under_another_name(tmp_path, sd):
    path = tmp_path / "w.bin"
    save_file(sd, path)
    assert same(ck.load_state_dict_file(path), sd)


# --- row 4: keys and shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_stripped_with_one_log_line(tmp_path, sd, caplog, prefix):
    path = tmp_path / "ddp.pth"
    torch.save({prefix + k: v for k, v in sd.items()}, path)
    with caplog.at_level(logging.INFO, logger=ck.__name__):
        loaded = ck.load_state_dict_file(path)
    expected = f"Stripped the '{prefix}' prefix from the {len(sd)} keys of {path}"
    assert [r.getMessage() for r in caplog.records] == [expected]
    model = tiny_model()
    ck.check_state_dict(model, loaded, source=str(path))
    model.load_state_dict(loaded)


def test_prefix_on_some_keys_only_is_kept(tmp_path, sd):
    path = tmp_path / "mixed.pth"
    torch.save({("module." + k if i else k): v for i, (k, v) in enumerate(sd.items())}, path)
    assert sum(k.startswith("module.") for k in ck.load_state_dict_file(path)) == len(sd) - 1


def test_mismatch_lists_missing_unexpected_and_shapes_in_one_line():
    model = torchvision.models.resnet18(num_classes=10)
    state = dict(model.state_dict())
    del state["fc.weight"], state["fc.bias"]
    state["head.weight"] = torch.zeros(10, 512)
    state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    with pytest.raises(WeightsError) as info:
        ck.check_state_dict(model, state, source="/w/ft.pth", model_name="resnet18")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        "Weights /w/ft.pth do not fit resnet18: 2 missing (fc.weight, fc.bias), 1 unexpected (head.weight), "
        "1 with another shape (conv1.weight: file [64, 3, 5, 5] vs model [64, 3, 7, 7])."
    )
    assert "--weights random" in message


def test_mismatch_list_is_capped_and_counts_buffers():
    model = torchvision.models.resnet18(num_classes=10)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("layer4")}
    with pytest.raises(WeightsError) as info:
        ck.check_state_dict(model, state, source="x.pth")
    n = sum(k.startswith("layer4") for k in model.state_dict())
    message = str(info.value)
    assert f"do not fit ResNet: {n} missing (layer4.0.conv1.weight, " in message
    assert f" and {n - 5} more)" in message
    # buffers count as weights: a file missing only BatchNorm's counter is reported, naming it
    state = {k: v for k, v in model.state_dict().items() if k != "layer4.0.bn1.num_batches_tracked"}
    with pytest.raises(WeightsError, match=r"do not fit ResNet: 1 missing \(layer4\.0\.bn1\.num_batches_tracked\)"):
        ck.check_state_dict(model, state, source="x.pth")


def test_matching_state_dict_passes(sd):
    ck.check_state_dict(tiny_model(), sd, source="x.pth")


# --- row 5 and the download path ----------------------------------------------------------------------------


@pytest.fixture
def hub_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(torch.hub, "_hub_dir", torch.hub._hub_dir)  # restored after the test
    hub = tmp_path / "hub"
    torch.hub.set_dir(str(hub))
    return hub


def published(folder: Path, sd, name: str = "tiny") -> tuple[Path, str]:
    """Write ``sd`` as ``folder/<name>-<sha256[:8]>.pth`` like torchvision's files; return path and digest."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "tmp.pth"
    torch.save(sd, tmp)
    digest = ck.sha256_file(tmp)
    path = folder / f"{name}-{digest[:8]}.pth"
    tmp.rename(path)
    return path, digest


def no_download(*args, **kwargs):
    raise AssertionError("download attempted")


def test_hub_checkpoint_path_is_torchvisions_cache(hub_dir):
    url = "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"
    assert ck.hub_checkpoint_path(url) == hub_dir / "checkpoints" / "resnet50-11ad3fa6.pth"


def test_cached_file_with_matching_hash_is_returned_without_download(hub_dir, tmp_path, monkeypatch, sd):
    src, _ = published(tmp_path / "src", sd)
    url = f"https://download.example.invalid/models/{src.name}"
    cached = ck.hub_checkpoint_path(url)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(src.read_bytes())
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    assert ck.fetch_checkpoint(url) == cached
    assert same(ck.load_state_dict_file(cached), sd)


def test_replaced_cached_file_is_refused(hub_dir, tmp_path, monkeypatch, sd):
    src, digest = published(tmp_path / "src", sd)
    url = f"https://download.example.invalid/models/{src.name}"
    cached = ck.hub_checkpoint_path(url)
    cached.parent.mkdir(parents=True)
    torch.save({k: v + 1 for k, v in sd.items()}, cached)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(WeightsError) as info:
        ck.fetch_checkpoint(url)
    message = str(info.value)
    assert "\n" not in message and f"expected one starting with {digest[:8]}" in message
    assert f"its sha256 is {ck.sha256_file(cached)}" in message and f"Delete {cached} " in message
    assert cached.exists()  # featkit never deletes user files; the message says which one to delete


def test_download_through_the_real_downloader_from_a_file_url(hub_dir, tmp_path, sd):
    src, _ = published(tmp_path / "mirror", sd)
    dst = ck.fetch_checkpoint(src.as_uri())
    assert dst == hub_dir / "checkpoints" / src.name
    assert dst.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dst.parent.iterdir()) == [src.name]  # no .partial left behind
    assert ck.fetch_checkpoint(src.as_uri(), download=False) == dst


def test_download_with_wrong_hash_is_refused_and_nothing_saved(hub_dir, tmp_path, sd):
    src, digest = published(tmp_path / "mirror", sd)
    wrong = src.with_name("tiny-00000000.pth")
    src.rename(wrong)
    with pytest.raises(WeightsError) as info:
        ck.fetch_checkpoint(wrong.as_uri())
    message = str(info.value)
    assert "\n" not in message and "do not match their published hash" in message and digest in message
    assert list((hub_dir / "checkpoints").iterdir()) == []


def test_unreachable_url_gives_one_line_with_what_to_do(hub_dir, tmp_path):
    url = (tmp_path / "offline" / "resnet18-f37072fd.pth").as_uri()
    with pytest.raises(WeightsError) as info:
        ck.fetch_checkpoint(url)
    message = str(info.value)
    dst = hub_dir / "checkpoints" / "resnet18-f37072fd.pth"
    assert "\n" not in message
    assert message.startswith(f"ImageNet weights for this model are not cached ({dst}) and could not be downloaded")
    assert "--weights random / --weights FILE" in message and url in message
    assert list(dst.parent.iterdir()) == []


def test_not_cached_and_downloads_off(hub_dir, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(WeightsError, match=r"are not cached .* --weights random / --weights FILE\.$"):
        ck.fetch_checkpoint("https://download.pytorch.org/models/resnet18-f37072fd.pth", download=False)


# --- the real shared weights --------------------------------------------------------------------------------


@pytest.mark.skipif(not SQUEEZENET.is_file(), reason=f"shared SqueezeNet weights not found at {SQUEEZENET}")
def test_shared_squeezenet_weights_load_and_fit():
    assert ck.sha256_file(SQUEEZENET) == SQUEEZENET_SHA256
    state = ck.load_state_dict_file(SQUEEZENET)
    model = torchvision.models.squeezenet1_1()
    ck.check_state_dict(model, state, source=str(SQUEEZENET))
    model.load_state_dict(state)
