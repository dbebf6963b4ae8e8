"""Acceptance: fine-tuning the real SqueezeNet 1.1 ImageNet weights on the ants/bees photos learns the task,
and clearly better than the same recipe from random weights (needs ../shared; skipped without it)."""

from __future__ import annotations

import time

import pytest

from featkit.finetune.recipe import resolve_recipe, with_overrides
from featkit.finetune.trainer import Trainer

# The photos' shorter side is 160 px: evaluating on the whole 160 px centre square (instead of upscaling to
# 256 and cropping 224) halves the work per image and keeps the test's run time down.
SETTINGS = ["model=squeezenet1_1", "epochs=3", "batch_size=16", "optim.lr=0.003", "data.min_scale=0.5",
            "data.train_crop=160", "data.eval_resize=160", "data.eval_crop=160"]


@pytest.mark.slow
def test_last_stage_from_imagenet_weights_reaches_087_and_beats_random_weights(shared_weights, hymenoptera, tmp_path):
    started = time.perf_counter()
    pretrained = Trainer(with_overrides(resolve_recipe("last-stage"), [*SETTINGS, f"weights={shared_weights}"]),
                         hymenoptera, tmp_path / "imagenet").fit()
    seconds = time.perf_counter() - started
    scratch = Trainer(with_overrides(resolve_recipe("last-stage"), [*SETTINGS, "weights=random"]),
                      hymenoptera, tmp_path / "random").fit()
    accs = [row["val_acc"] for row in pretrained.history]
    print(f"imagenet: {accs} in {seconds:.0f} s; random: {[row['val_acc'] for row in scratch.history]}")
    assert max(accs) >= 0.87
    assert pretrained.history[-1]["val_acc"] >= scratch.history[-1]["val_acc"] + 0.15
