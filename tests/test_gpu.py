"""On a CUDA GPU: same features as the CPU (up to TF32/autocast rounding), mixed precision, auto device choice.

Skipped on machines without CUDA (CI has none); run on a GPU machine with ``pytest tests/test_gpu.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import featkit
from featkit._device import resolve_runtime

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

COMMON = dict(model="resnet50", weights="random", layers=["layer3", "avgpool"], pool="avg", batch_size=16)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def cpu_store(tmp_path_factory):
    from helpers import write_images

    images = write_images(tmp_path_factory.mktemp("gpu") / "imgs", classes=2, per_class=20, size=(96, 80))
    out = images.parent / "cpu"
    featkit.extract(images, out, device="cpu", **COMMON)
    return images, featkit.open_features(out)


def test_auto_device_picks_the_gpu():
    assert resolve_runtime("auto").device.type == "cuda"


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_gpu_features_match_cpu_features(cpu_store, tmp_path, precision):
    images, cpu = cpu_store
    result = featkit.extract(images, tmp_path / precision, device="auto", precision=precision, **COMMON)
    assert "cuda" in result.device
    gpu = featkit.open_features(tmp_path / precision)
    assert gpu.rows["path"].tolist() == cpu.rows["path"].tolist()
    floor = 0.999 if precision == "fp32" else 0.99
    for tap in COMMON["layers"]:
        assert cosine(np.asarray(gpu[tap]), np.asarray(cpu[tap])).min() > floor, tap


def test_gpu_runs_are_deterministic_across_worker_counts(cpu_store, tmp_path):
    images, _ = cpu_store
    torch.backends.cudnn.benchmark = False
    featkit.extract(images, tmp_path / "a", device="cuda", workers=0, **COMMON)
    featkit.extract(images, tmp_path / "b", device="cuda", workers=4, **COMMON)
    np.testing.assert_allclose(np.asarray(featkit.open_features(tmp_path / "a")["avgpool"]),
                               np.asarray(featkit.open_features(tmp_path / "b")["avgpool"]), rtol=1e-4, atol=1e-5)
