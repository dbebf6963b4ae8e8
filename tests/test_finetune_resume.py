"""kill -9 during training and during a checkpoint save, then --resume: the same final weights, bit for bit
(RELIABILITY.md row 17); and DDP over two gloo processes (torchrun) = one process with the same global batch."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import write_images
from typer.testing import CliRunner

from featkit.cli.app import app
from featkit.finetune.checkpoint import KILL_ENV, load_checkpoint

# Momentum, EMA, dropout, a head-only epoch then discriminative LRs on one-cycle, mid-epoch checkpoints:
# everything a resume has to bring back. 8 training images, batch 2: 4 steps an epoch, a checkpoint after step 3.
SETTINGS = ["weights=random", "epochs=3", "batch_size=2", "checkpoint_every=3", "ema.decay=0.9", "head.dropout=0.2",
            "data.train_crop=64", "data.eval_resize=72", "data.eval_crop=64"]
# Deterministic kernels, as RELIABILITY.md asks; argv[0] is "-c", so the CLI reads the arguments after it.
CLI = "import torch; torch.use_deterministic_algorithms(True); from featkit.cli.app import main; main()"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    write_images(root / "train", classes=2, per_class=4, size=(80, 72), seed=3)
    write_images(root / "val", classes=2, per_class=1, size=(80, 72), seed=4)
    return root


def featkit(*args: str, kill: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(KILL_ENV, None)
    if kill:
        env[KILL_ENV] = kill
    return subprocess.run([sys.executable, "-c", CLI, *args], check=False, env=env, capture_output=True, text=True,
                          timeout=600)


def start(photos: Path, run: Path, recipe: str = "transfer-fastai", settings=SETTINGS, kill: str | None = None):
    sets = [a for s in settings for a in ("--set", s)]
    return featkit("finetune", "--recipe", recipe, "--model", "squeezenet1_1", "--data", str(photos), "-o", str(run),
                   "-q", *sets, kill=kill)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pth", weights_only=True)


def metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "images_per_s"}
            for row in csv.DictReader((run / "metrics.csv").open())]


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ref") / "run"
    proc = start(photos, run)
    assert proc.returncode == 0, proc.stderr
    return run


def assert_same_run(run: Path, reference: Path) -> None:
    ours, theirs = weights(run), weights(reference)
    assert not torch.equal(ours["features.0.weight"], initial_first_conv())  # the whole network trained
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert metrics(run) == metrics(reference)


@pytest.mark.slow
def test_kill_during_training_then_resume_is_bitwise_identical(photos, tmp_path, reference):
    run = tmp_path / "run"
    killed = start(photos, run, kill="step:8")  # epoch 2, after its mid-epoch checkpoint (step 3 of 4)
    assert killed.returncode == -9, killed.stderr
    progress = load_checkpoint(run / "last.pt")["progress"]
    assert (progress["epoch"], progress["step"]) == (1, 3)
    resumed = featkit("finetune", "--resume", str(run), "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run, reference)


@pytest.mark.slow
def test_kill_during_a_checkpoint_save_leaves_the_last_one_loadable_and_resume_is_bitwise_identical(
        photos, tmp_path, reference):
    run = tmp_path / "run"
    # saves: mid-epoch 1, best 1, last 1, mid-epoch 2 <- killed with half of it written to last.pt.tmp
    killed = start(photos, run, kill="save:4")
    assert killed.returncode == -9, killed.stderr
    assert (run / "last.pt.tmp").stat().st_size > 0
    progress = load_checkpoint(run / "last.pt")["progress"]
    assert (progress["epoch"], progress["step"]) == (1, 0)
    resumed = featkit("finetune", "--resume", str(run), "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run, reference)


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["step:2", "save:1"], ids=["mid_first_epoch", "during_the_first_save"])
def test_kill_before_the_first_checkpoint_then_resume_starts_at_step_0_and_is_bitwise_identical(
        photos, tmp_path, reference, kill):
    run = tmp_path / "run"
    # The first last.pt is written after step 3. Killed before step 2, or half-way through writing that first
    # last.pt (half of it in last.pt.tmp): recipe.json is there, no checkpoint is. --resume starts at step 0.
    killed = start(photos, run, kill=kill)
    assert killed.returncode == -9, killed.stderr
    assert (run / "recipe.json").exists() and not (run / "last.pt").exists()
    assert (run / "last.pt.tmp").exists() == (kill == "save:1")
    resumed = featkit("finetune", "--resume", str(run), "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run, reference)
    assert not list(run.glob("*.tmp"))


def test_resume_of_a_finished_run_changes_nothing_and_bad_resumes_say_why(tmp_path, reference):
    before = weights(reference)
    again = CliRunner().invoke(app, ["finetune", "--resume", str(reference), "-q"])
    assert again.exit_code == 0, again.output
    assert all(torch.equal(before[k], v) for k, v in weights(reference).items())
    missing = CliRunner().invoke(app, ["finetune", "--resume", str(tmp_path)])
    assert missing.exit_code == 1 and "is not a fine-tuning run (no recipe.json)" in str(missing.exception)
    mixed = CliRunner().invoke(app, ["finetune", "--resume", str(reference), "--set", "epochs=9"])
    assert mixed.exit_code == 1 and "drop the other options" in str(mixed.exception)


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process_with_the_same_global_batch(photos, tmp_path):
    # No dropout (each process draws its own masks) and no BatchNorm in SqueezeNet: the only difference left
    # is the order of the gradient sums.
    settings = ["weights=random", "epochs=2", "batch_size=4", "head.dropout=0.0", "data.train_crop=64",
                "data.eval_resize=72", "data.eval_crop=64"]
    single = start(photos, tmp_path / "one", recipe="full-finetune", settings=settings)
    assert single.returncode == 0, single.stderr
    sets = [a for s in settings for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "featkit", "finetune", "--recipe", "full-finetune", "--model", "squeezenet1_1",
                          "--data", str(photos), "-o", str(tmp_path / "two"), "-q", *sets],
                         check=False, env=env, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "2 processes" in ddp.stderr and ddp.stderr.count("epoch 2/2") == 1  # rank 0 alone reports
    assert load_checkpoint(tmp_path / "two" / "last.pt")["progress"]["world_size"] == 2
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)
    assert not torch.equal(one["features.0.weight"], initial_first_conv())


def initial_first_conv() -> torch.Tensor:
    """The first conv's weights before training (seeded random init), to show training moved them."""
    from featkit.backbones.weights import load_backbone_weights

    model, _ = load_backbone_weights("squeezenet1_1", "random", seed=0)
    return model.state_dict()["features.0.weight"]
