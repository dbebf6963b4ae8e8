"""Shared fixtures: tiny generated images, and the real data in ../shared (skipped with a reason if absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SQUEEZENET_WEIGHTS = SHARED / "weights" / "squeezenet1_1-imagenet.pth"
HYMENOPTERA = SHARED / "data" / "hymenoptera_160"


@pytest.fixture(scope="session")
def shared_weights() -> Path:
    if not SQUEEZENET_WEIGHTS.exists():
        pytest.skip(f"needs the real SqueezeNet weights at {SQUEEZENET_WEIGHTS} (present in CI, not in a user checkout)")
    return SQUEEZENET_WEIGHTS


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    if not HYMENOPTERA.exists():
        pytest.skip(f"needs the ants/bees photos at {HYMENOPTERA} (present in CI, not in a user checkout)")
    return HYMENOPTERA


def write_images(root: Path, classes: int = 2, per_class: int = 4, size: tuple[int, int] = (48, 40), seed: int = 0,
                 fmt: str = "png") -> Path:
    """``root/c<k>/<i>.<fmt>``: smooth random colour fields (distinct per class) so features differ per image."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    for k in range(classes):
        folder = root / f"c{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            freq = rng.uniform(0.05, 0.3, size=3)
            phase = rng.uniform(0, 6.28, size=3)
            img = np.stack([127 + 120 * np.sin(freq[c] * (xx + k * 7) + phase[c] + yy * 0.1 * (c + 1)) for c in range(3)], -1)
            Image.fromarray(img.astype(np.uint8)).save(folder / f"{i:03d}.{fmt}")
    return root


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    return write_images(tmp_path / "imgs")


if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several test processes share the cores: one math thread each (also for their subprocesses) avoids
    # oversubscribed OpenMP thread pools spinning against each other.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
