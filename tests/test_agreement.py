"""featkit's features equal a hand-written torchvision forward on the same weights and images (rtol 1e-4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import write_images
from PIL import Image
from torchvision import models

import featkit


def reference_inputs(folder, name: str) -> torch.Tensor:
    """torchvision's own preprocessing for ``name``'s recommended weights, on the same files."""
    transform = models.get_model_weights(name).DEFAULT.transforms()
    paths = sorted(folder.rglob("*.png"))
    return torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])


def seeded(name: str) -> torch.nn.Module:
    torch.manual_seed(0)  # featkit's --weights random --seed 0 builds the same network
    return models.get_model(name).eval()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("agree"), classes=1, per_class=3, size=(120, 90))


def run_featkit(images, out, model, layers, **kw):
    featkit.extract(images, out, model=model, layers=layers, weights="random", seed=0, workers=0, device="cpu", **kw)
    store = featkit.open_features(out)
    return {tap: np.asarray(store[tap]) for tap in layers}


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))


def test_vgg16_fc7_and_fc7_pre(images, tmp_path):
    got = run_featkit(images, tmp_path / "s", "vgg16", ["fc7", "fc7_pre"])
    m = seeded("vgg16")
    with torch.inference_mode():
        x = torch.flatten(m.avgpool(m.features(reference_inputs(images, "vgg16"))), 1)
        fc7_pre = m.classifier[3](m.classifier[0](x).relu())
    close(got["fc7_pre"], fc7_pre.numpy())
    close(got["fc7"], fc7_pre.relu().numpy())


def test_alexnet_pool5(images, tmp_path):
    got = run_featkit(images, tmp_path / "s", "alexnet", ["pool5"])
    m = seeded("alexnet")
    with torch.inference_mode():
        pool5 = m.features(reference_inputs(images, "alexnet"))
    assert got["pool5"].shape == (3, 9216)
    close(got["pool5"], pool5.flatten(1).numpy())


def test_resnet50_avgpool_and_layer3(images, tmp_path):
    got = run_featkit(images, tmp_path / "s", "resnet50", ["layer3", "avgpool"], pool="avg")
    m = seeded("resnet50")
    with torch.inference_mode():
        x = m.maxpool(m.relu(m.bn1(m.conv1(reference_inputs(images, "resnet50")))))
        layer3 = m.layer3(m.layer2(m.layer1(x)))
        avgpool = torch.flatten(m.avgpool(m.layer4(layer3)), 1)
    close(got["layer3"], layer3.mean(dim=(2, 3)).numpy())
    close(got["avgpool"], avgpool.numpy())


def test_vgg11_bn_pre_activation_taps_survive_batchnorm_folding(images, tmp_path):
    got = run_featkit(images, tmp_path / "s", "vgg11_bn", ["conv1_1_pre", "conv2_1", "fc7"], pool="avg")
    m = seeded("vgg11_bn")
    with torch.inference_mode():
        x = reference_inputs(images, "vgg11_bn")
        conv1_1_pre = m.features[1](m.features[0](x))  # conv + BN, before the ReLU
        conv2_1 = m.features[:7](x)
        fc7 = m.classifier[:5](torch.flatten(m.avgpool(m.features(x)), 1))
    close(got["conv1_1_pre"], conv1_1_pre.mean(dim=(2, 3)).numpy())
    close(got["conv2_1"], conv2_1.mean(dim=(2, 3)).numpy())
    close(got["fc7"], fc7.numpy())
