"""Shared fixtures: tiny generated images, and the real data in ../shared (skipped with a reason if absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import write_images

# $FEATKIT_SHARED: where a GPU machine, which gets the checkout alone, was handed a copy of ../shared
SHARED = Path(os.environ.get("FEATKIT_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")
SQUEEZENET_WEIGHTS = SHARED / "weights" / "squeezenet1_1-imagenet.pth"
HYMENOPTERA = SHARED / "data" / "hymenoptera_160"


@pytest.fixture(scope="session")
def shared_weights() -> Path:
    if not SQUEEZENET_WEIGHTS.exists():
        pytest.skip(f"needs the real SqueezeNet weights at {SQUEEZENET_WEIGHTS} "
                    f"(present in CI, not in a user checkout)")
    return SQUEEZENET_WEIGHTS


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    if not HYMENOPTERA.exists():
        pytest.skip(f"needs the ants/bees photos at {HYMENOPTERA} (present in CI, not in a user checkout)")
    return HYMENOPTERA


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    return write_images(tmp_path / "imgs")


if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several test processes share the cores: one math thread each (also for their subprocesses) avoids
    # oversubscribed OpenMP thread pools spinning against each other.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
