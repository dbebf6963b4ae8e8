"""Fine-tuning runs on tiny generated images: every recipe, the run directory, weights that flow back into extract."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from helpers import write_images
from test_finetune_recipe import SHIPPED
from typer.testing import CliRunner

from featkit.backbones.checkpoints import load_state_dict_file
from featkit.backbones.weights import load_backbone_weights
from featkit.cli.app import app
from featkit.errors import FeatkitError, WeightsError
from featkit.finetune.recipe import resolve_recipe, with_overrides
from featkit.finetune.trainer import Trainer, predict_logits
from featkit.store.reader import open_features

TINY = ["weights=random", "batch_size=8", "data.train_crop=64", "data.eval_resize=72", "data.eval_crop=64"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """``photos/{train,val}/{c0,c1,c2}``: 8 training and 2 validation images per class."""
    root = tmp_path_factory.mktemp("photos")
    write_images(root / "train", classes=3, per_class=8, size=(80, 72), seed=1)
    write_images(root / "val", classes=3, per_class=2, size=(80, 72), seed=2)
    return root


def tiny(name: str, *sets: str, model: str = "squeezenet1_1"):
    recipe = resolve_recipe(name)
    epochs = ["epochs=2"] if recipe.freeze.head_epochs else ["epochs=1"]
    return with_overrides(recipe, [f"model={model}", *TINY, *epochs, *sets])


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", SHIPPED)
def test_each_recipe_runs_and_writes_a_complete_run_directory(photos, tmp_path, name):
    recipe = tiny(name, "batch_size=24")  # 24 training images: one step per epoch
    trainer = Trainer(recipe, photos, tmp_path / "run")
    result = trainer.fit()
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"recipe.json", "metrics.csv", "curves.png", "last.pt", "best.pt",
                                               "model.pth", "model.json"}
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "val_acc", "lr", "images_per_s"]
    assert len(rows) == recipe.epochs == len(result.history)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = torch.load(run / "last.pt", weights_only=True)  # only tensors and plain data
    assert state["progress"]["epoch"] == recipe.epochs
    _, info = load_backbone_weights("squeezenet1_1", str(run))
    assert info.num_classes == 3 and info.categories == ("c0", "c1", "c2")
    assert info.preprocess.crop == 64 and info.preprocess.resize == 72


def test_a_frozen_backbone_does_not_change_and_the_head_does(photos, tmp_path):
    trainer = Trainer(tiny("linear-head", "epochs=2", model="resnet18"), photos, tmp_path / "run")
    before = _params(trainer.model)
    trainer.fit()
    after = _params(trainer.model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}  # BatchNorm running statistics of the frozen backbone too


def test_last_stage_trains_only_the_last_stage_and_head(photos, tmp_path):
    trainer = Trainer(tiny("last-stage", "freeze.last_stages=2"), photos, tmp_path / "run")
    before = _params(trainer.model)
    trainer.fit()
    changed = {k.split(".")[1] for k, v in _params(trainer.model).items() if not torch.equal(before[k], v)}
    assert changed == {"11", "12", "1"}  # features.11 (fire8), features.12 (fire9), classifier.1 (the head)


def test_head_epochs_freeze_the_backbone_first_then_train_it(photos, tmp_path):
    recipe = tiny("transfer-fastai", "epochs=2")
    trainer = Trainer(recipe, photos, tmp_path / "run")
    before = _params(trainer.model)
    history = []
    trainer.fit(on_epoch=lambda row: history.append(_params(trainer.model)))
    assert torch.equal(history[0]["features.0.weight"], before["features.0.weight"])  # epoch 1: head only
    assert not torch.equal(history[1]["features.0.weight"], before["features.0.weight"])  # epoch 2: unfrozen
    assert trainer.optimizer.param_groups[0]["lr_mult"] == pytest.approx(0.01)  # discriminative: first stage


def test_weight_decay_skips_norms_and_biases_when_the_recipe_says(photos, tmp_path):
    trainer = Trainer(tiny("full-finetune", model="resnet18"), photos, tmp_path / "run")
    for group in trainer.optimizer.param_groups:
        one_d = all(p.ndim == 1 for p in group["params"])
        assert group["weight_decay"] == (0.0 if one_d else 1e-4)


def test_fine_tuned_weights_give_the_trainers_logits_in_featkit_extract(photos, tmp_path):
    trainer = Trainer(tiny("last-stage", "epochs=2"), photos, tmp_path / "run")
    trainer.fit()
    logits, _ = predict_logits(trainer.eval_model, trainer.val_loader, trainer.runtime, trainer.pre)
    result = CliRunner().invoke(app, ["extract", str(photos / "val"), "-o", str(tmp_path / "feats"), "--model",
                                      "squeezenet1_1", "--weights", str(tmp_path / "run"), "--layer", "logits",
                                      "--workers", "0", "-q"])
    assert result.exit_code == 0, result.output
    store = open_features(tmp_path / "feats")
    order = {p: i for i, p in enumerate(trainer.folder.val.paths)}
    rows = [order[p] for p in store.rows["path"]]
    extracted = torch.from_numpy(store["logits"][:].copy())
    assert extracted.shape == (6, 3)
    torch.testing.assert_close(extracted, logits[rows], atol=1e-4, rtol=1e-4)
    weights_file = CliRunner().invoke(app, ["extract", str(photos / "val"), "-o", str(tmp_path / "f2"), "--model",
                                            "squeezenet1_1", "--weights", str(tmp_path / "run" / "model.pth"),
                                            "--layer", "fire9", "--pool", "avg", "--workers", "0", "-q"])
    assert weights_file.exit_code == 0, weights_file.output


def test_run_weights_refuse_another_architecture(photos, tmp_path):
    Trainer(tiny("linear-head"), photos, tmp_path / "run").fit()
    with pytest.raises(WeightsError,
                       match="fine-tuned from squeezenet1_1, not squeezenet1_0; pass --model squeezenet1_1"):
        load_backbone_weights("squeezenet1_0", str(tmp_path / "run"))
    assert "classifier.1.weight" in load_state_dict_file(tmp_path / "run" / "best.pt")


def test_finetune_cli_summary_per_epoch_and_refuses_to_overwrite(photos, tmp_path):
    args = ["finetune", "--recipe", "last-stage", "--model", "squeezenet1_1", "--data", str(photos),
            "-o", str(tmp_path / "run"), *[a for s in [*TINY, "epochs=2"] for a in ("--set", s)]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "epoch 1/2  train_loss" in result.output and "epoch 2/2" in result.output and "img/s" in result.output
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "already holds a fine-tuning run" in str(again.exception)
    done = CliRunner().invoke(app, ["finetune", "--resume", str(tmp_path / "run")])
    assert done.exit_code == 0 and "best val acc" in done.output


def test_bad_data_folders_get_one_line_errors(tmp_path):
    write_images(tmp_path / "flat", classes=2, per_class=2)
    with pytest.raises(FeatkitError, match="no train and val folders"):
        Trainer(tiny("linear-head"), tmp_path / "flat", tmp_path / "run")
    write_images(tmp_path / "odd" / "train", classes=2, per_class=2)
    write_images(tmp_path / "odd" / "val", classes=3, per_class=1)
    with pytest.raises(FeatkitError, match="classes with no training images: c2"):
        Trainer(tiny("linear-head"), tmp_path / "odd", tmp_path / "run")


def test_dropout_goes_before_a_head_that_has_none_without_changing_the_weight_names():
    from featkit.backbones.registry import build_module
    from featkit.finetune.model import set_dropout

    model = build_module("resnet18", num_classes=3)
    keys = list(model.state_dict())
    set_dropout(model, "fc", 0.5)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    assert list(model.state_dict()) == keys


def test_a_data_card_name_needs_its_prepared_folder(tmp_path, monkeypatch):
    from featkit.finetune.data import read_folder

    monkeypatch.setenv("FEATKIT_DATA", str(tmp_path))
    with pytest.raises(FeatkitError, match="run `featkit data prepare cifar10` first"):
        read_folder("cifar10")
    write_images(tmp_path / "cifar10" / "images" / "train", classes=2, per_class=1)
    write_images(tmp_path / "cifar10" / "images" / "test", classes=2, per_class=1)
    assert read_folder("cifar10").classes == ("c0", "c1")


def test_ctrl_c_before_the_first_checkpoint_says_so_and_resume_starts_again(photos, tmp_path, monkeypatch):
    from featkit.errors import Interrupted

    def stopped(self, *args):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_train_epoch", stopped)
        with pytest.raises(Interrupted, match=r"Interrupted in epoch 1, step 0: no checkpoint was written yet: "
                                              r"resuming starts again .* featkit finetune --resume .*run"):
            Trainer(tiny("linear-head"), photos, tmp_path / "run").fit()
    assert not (tmp_path / "run" / "last.pt").exists()
    result = Trainer(tiny("linear-head"), photos, tmp_path / "run", resume=True).fit()  # no loop of refusals
    assert len(result.history) == 1 and (tmp_path / "run" / "model.pth").exists()


def test_a_diverged_training_stops_in_one_line_and_writes_no_nan_weights(photos, tmp_path, monkeypatch):
    """A loss of NaN stops the run: its weights would be refused by every loader (RELIABILITY row 28)."""
    from featkit.errors import FeatkitError

    trainer = Trainer(tiny("linear-head"), photos, tmp_path / "run")
    criterion = trainer.criterion
    monkeypatch.setattr(trainer, "criterion", lambda logits, y: criterion(logits, y) * float("nan"))
    with pytest.raises(FeatkitError, match=r"Training diverged in epoch 1, step 1: the loss is nan\. No final weights "
                                           r"were written\. .*--set optim\.lr="):
        trainer.fit()
    assert not (tmp_path / "run" / "model.pth").exists()


def test_with_a_grad_scaler_a_non_finite_loss_is_a_skipped_step_not_a_stop(photos, tmp_path, monkeypatch):
    """fp16's scaler skips the step of an overflow and lowers its scale: the run goes on, its mean loss stays finite."""
    trainer = Trainer(tiny("linear-head"), photos, tmp_path / "run")
    criterion, calls = trainer.criterion, []

    def first_overflows(logits, y):
        calls.append(1)
        return criterion(logits, y) * (float("inf") if len(calls) == 1 else 1.0)

    monkeypatch.setattr(trainer, "criterion", first_overflows)
    monkeypatch.setattr(trainer.scaler, "is_enabled", lambda: True)  # as with fp16 on a GPU
    step = trainer.scaler.step
    monkeypatch.setattr(trainer.scaler, "step", lambda optimizer: step(optimizer) if len(calls) > 1 else None)
    result = trainer.fit()
    assert len(calls) > 1 and all(math.isfinite(r["train_loss"]) for r in result.history)


def test_learning_curves_of_one_epoch_show_a_point_at_epoch_1():
    from featkit.finetune.rundir import curves_figure

    fig = curves_figure([{"epoch": 1, "train_loss": 1.0, "val_loss": 0.9, "val_acc": 0.5}], "one epoch")
    for ax in fig.axes:
        assert list(ax.get_xticks()) == [1] and ax.get_xlim() == (0.5, 1.5)
    many = curves_figure([{"epoch": e, "train_loss": 1.0, "val_loss": 0.9, "val_acc": 0.5} for e in range(1, 41)], "")
    assert all(float(t).is_integer() for t in many.axes[0].get_xticks())
