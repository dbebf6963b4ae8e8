"""Which weights a backbone runs with: ImageNet from the hub cache (and its download path), seeded random, files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import SqueezeNet1_1_Weights

import featkit
from featkit.backbones import weights as weights_mod
from featkit.backbones.weights import load_backbone_weights
from featkit.errors import WeightsError


@dataclasses.dataclass
class FakeWeightsEnum:
    """Stands in for a torchvision Weights enum whose URL points at a prepared local copy."""

    url: str
    name: str = "IMAGENET1K_V1"
    meta: dict = dataclasses.field(default_factory=lambda: dict(SqueezeNet1_1_Weights.IMAGENET1K_V1.meta))

    def transforms(self):
        return SqueezeNet1_1_Weights.IMAGENET1K_V1.transforms()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return tmp_path / "hub"


@pytest.fixture
def published(shared_weights, tmp_path, monkeypatch):
    """The real SqueezeNet weights "published" at a file:// URL named like torchvision's (name-<sha256 prefix>.pth)."""
    digest = hashlib.sha256(shared_weights.read_bytes()).hexdigest()
    server = tmp_path / "server"
    server.mkdir()
    target = server / f"squeezenet1_1-{digest[:8]}.pth"
    shutil.copy(shared_weights, target)
    enum = FakeWeightsEnum(url=target.as_uri())
    monkeypatch.setattr(weights_mod, "default_weights_enum", lambda name: enum)
    return target, digest


def test_imagenet_weights_download_into_the_hub_cache_then_load_from_it(published, hub, tiny_folder, tmp_path):
    source, digest = published
    model, info = load_backbone_weights("squeezenet1_1", "imagenet")
    cached = hub / "checkpoints" / source.name
    assert cached.exists() and info.sha256 == digest and info.kind == "imagenet"
    assert info.categories[309] == "bee"
    source.unlink()  # offline from now on: the cache alone must serve
    featkit.extract(tiny_folder, tmp_path / "s", model="squeezenet1_1", weights="imagenet", workers=0, download=False)
    assert featkit.open_features(tmp_path / "s").settings.weights.sha256 == digest


def test_a_replaced_cached_file_is_refused_with_the_file_to_delete(published, hub):
    source, _ = published
    (hub / "checkpoints").mkdir(parents=True)
    cached = hub / "checkpoints" / source.name
    torch.save(torch.nn.Linear(2, 2).state_dict(), cached)
    with pytest.raises(WeightsError, match=rf"expected one starting with {source.stem.split('-')[1]}.*{cached.name}"):
        load_backbone_weights("squeezenet1_1", "imagenet")


def test_random_weights_are_seeded(tmp_path):
    _, a = load_backbone_weights("squeezenet1_1", "random", seed=0)
    _, b = load_backbone_weights("squeezenet1_1", "random", seed=0)
    _, c = load_backbone_weights("squeezenet1_1", "random", seed=1)
    assert a.sha256 == b.sha256 != c.sha256 and a.id == "random(seed=0)"


def test_weights_file_with_module_prefix_and_a_new_head_loads_and_keeps_tap_names(tmp_path, tiny_folder):
    torch.manual_seed(3)
    from featkit.backbones.registry import build_module

    net = build_module("squeezenet1_1", num_classes=5)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}  # saved from DataParallel
    torch.save(state, tmp_path / "finetuned.pth")
    save_file(net.state_dict(), tmp_path / "finetuned.safetensors")
    for name in ("finetuned.pth", "finetuned.safetensors"):
        out = tmp_path / f"s_{name}"
        featkit.extract(tiny_folder, out, model="squeezenet1_1", layers=["logits", "fire9"], pool="avg",
                        weights=str(tmp_path / name), workers=0)
        store = featkit.open_features(out)
        assert store["logits"].shape == (8, 5)
        assert store.settings.weights.num_classes == 5
        assert store.settings.weights.sha256 == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
    a, b = (np.asarray(featkit.open_features(tmp_path / f"s_{n}")["fire9"])
            for n in ("finetuned.pth", "finetuned.safetensors"))
    np.testing.assert_array_equal(a, b)


def test_weights_of_another_architecture_are_a_clear_error(tmp_path):
    torch.save(torch.nn.Linear(3, 4).state_dict(), tmp_path / "other.pth")
    with pytest.raises(WeightsError, match=r"do not fit squeezenet1_1: \d+ missing .* 2 unexpected \(weight, bias\)"):
        load_backbone_weights("squeezenet1_1", str(tmp_path / "other.pth"))


def test_a_card_beside_weights_gives_their_classes_and_preprocessing_and_a_damaged_one_is_one_line(tmp_path):
    from featkit.backbones.card import WeightsCard, card_path, write_card
    from featkit.backbones.registry import build_module
    from featkit.backbones.spec import Preprocess

    torch.save(build_module("squeezenet1_1", num_classes=3).state_dict(), tmp_path / "model.pth")
    pre = Preprocess(resize=160, crop=144, interpolation="bicubic")
    write_card(tmp_path / "model.pth", WeightsCard("squeezenet1_1", ("ant", "bee", "wasp"), pre, "last-stage", 4, 0.9))
    _, info = load_backbone_weights("squeezenet1_1", str(tmp_path / "model.pth"))
    assert info.categories == ("ant", "bee", "wasp") and info.preprocess == pre
    with pytest.raises(WeightsError, match="fine-tuned from squeezenet1_1, not resnet18; pass --model squeezenet1_1"):
        load_backbone_weights("resnet18", str(tmp_path / "model.pth"))
    card = json.loads(card_path(tmp_path / "model.pth").read_text())
    for damage, field in (({"classes": "ant"}, "classes"), ({"preprocess": {**card["preprocess"], "crop": -1}},
                                                           "preprocess.crop"), ({"model": None}, "model")):
        card_path(tmp_path / "model.pth").write_text(json.dumps({**card, **damage}))
        with pytest.raises(WeightsError) as info_:
            load_backbone_weights("squeezenet1_1", str(tmp_path / "model.pth"))
        message = str(info_.value)
        assert "\n" not in message and "model.json" in message and field in message
    card_path(tmp_path / "model.pth").write_text('{"not": "a featkit card"}')  # any other JSON there: plain weights
    assert load_backbone_weights("squeezenet1_1", str(tmp_path / "model.pth"))[1].categories is None
