"""Recipes: every shipped file validates; broken ones and bad --set overrides fail with one line naming the key."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from featkit.cli.app import app
from featkit.errors import UnknownNameError
from featkit.finetune.recipe import (
    RecipeError,
    load_recipe,
    recipe_from_dict,
    recipe_paths,
    resolve_recipe,
    with_overrides,
)
from featkit.finetune.schedule import LRSchedule

SHIPPED = ("alexnet-2012", "vgg-2014", "resnet-2015", "linear-head", "last-stage", "transfer-fastai", "full-finetune")


def test_every_shipped_recipe_is_found_and_validates():
    paths = recipe_paths()
    assert set(SHIPPED) <= set(paths)
    for name in SHIPPED:
        recipe = load_recipe(paths[name])
        assert recipe.name == name and recipe.description


def test_paper_recipes_keep_the_papers_hyper_parameters():
    alex, vgg, res = (resolve_recipe(n) for n in ("alexnet-2012", "vgg-2014", "resnet-2015"))
    assert (alex.optim.momentum, alex.optim.weight_decay, alex.head.dropout, alex.batch_size) == (0.9, 5e-4, 0.5, 128)
    assert (vgg.batch_size, vgg.optim.weight_decay, vgg.schedule.name) == (256, 5e-4, "plateau")
    assert (res.optim.momentum, res.optim.weight_decay, res.head.dropout, res.batch_size) == (0.9, 1e-4, 0.0, 256)
    assert all(r.schedule.plateau_factor == 0.1 for r in (alex, vgg, res))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mine.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "message"), [
    ("epochs = 3\nlearning_rate = 0.1\n", "unknown key 'learning_rate'"),
    ("[optim]\nlr = -0.1\n", "key 'optim.lr' must be positive, got -0.1"),
    ("[optim]\nlr = 'fast'\n", "key 'optim.lr' must be a number, got 'fast' (str)"),
    ("epochs = 2.5\n", "key 'epochs' must be an integer"),
    ("[optim]\nnesterov = 1\n", "key 'optim.nesterov' must be true or false"),
    ("[schedule]\nname = 'cosin'\n", "key 'schedule.name' must be one of constant, plateau, cosine, one_cycle"),
    ("[optim]\nmomentun = 0.9\n", "unknown key 'optim.momentun'. Did you mean 'momentum'?"),
    ("optim = 3\n", "key 'optim' must be a table"),
    ("epochs = 2\n[freeze]\nhead_epochs = 2\n", "key 'freeze.head_epochs' (2) must be below 'epochs'"),
    ("epochs = [\n", "is not valid TOML"),
])
def test_a_broken_recipe_names_the_key(tmp_path, text, message):
    with pytest.raises(RecipeError) as info:
        load_recipe(_write(tmp_path, text))
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert "mine.toml" in str(info.value)


def test_overrides_are_type_checked_dotted_keys():
    base = resolve_recipe("last-stage")
    r = with_overrides(base, ["optim.lr=0.05", "epochs=7", "optim.nesterov=true", "model=resnet18",
                              "optim.betas=[0.8, 0.9]"])
    assert (r.optim.lr, r.epochs, r.optim.nesterov, r.model, r.optim.betas) == (0.05, 7, True, "resnet18", (0.8, 0.9))
    assert base.optim.lr == 0.01  # frozen recipes are never changed in place
    with pytest.raises(RecipeError, match="key 'epochs' must be an integer"):
        with_overrides(base, ["epochs=many"])
    with pytest.raises(RecipeError, match="unknown key 'optim.lrate'"):
        with_overrides(base, ["optim.lrate=1"])
    with pytest.raises(RecipeError, match="must be positive"):
        with_overrides(base, ["optim.lr=0"])
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        with_overrides(base, ["optim.lr"])
    with pytest.raises(RecipeError, match="is a table"):
        with_overrides(base, ["optim=3"])


def test_unknown_recipe_name_suggests_the_closest():
    with pytest.raises(UnknownNameError, match="Did you mean 'last-stage'"):
        resolve_recipe("last-stag")


def test_recipes_env_var_adds_a_folder_that_shadows_the_repo(tmp_path, monkeypatch):
    (tmp_path / "last-stage.toml").write_text('description = "my own"\n')
    (tmp_path / "tiny.toml").write_text('description = "tiny"\nepochs = 1\n')
    monkeypatch.setenv("FEATKIT_RECIPES", str(tmp_path))
    assert resolve_recipe("last-stage").description == "my own"
    out = CliRunner().invoke(app, ["recipes"]).output
    assert "tiny" in out and "transfer-fastai" in out


def test_recipes_command_lists_each_with_its_description():
    result = CliRunner().invoke(app, ["recipes"])
    assert result.exit_code == 0
    for name in SHIPPED:
        assert name in result.output
    assert "discriminative" in result.output


def _lrs(recipe, steps=10):
    s = LRSchedule(recipe, steps)
    return [s.lr_at(e, i) for e in range(recipe.epochs) for i in range(steps)]


def test_schedules_shape_the_learning_rate():
    base = recipe_from_dict({"epochs": 4, "optim": {"lr": 0.1}})
    cosine = _lrs(with_overrides(base, ["schedule.name=cosine", "schedule.warmup_epochs=1"]))
    assert cosine[0] == pytest.approx(0.01) and cosine[9] == pytest.approx(0.1)  # linear warm-up over epoch 1
    assert cosine[-1] < 0.002 and all(a >= b for a, b in itertools.pairwise(cosine[10:]))
    cycle = _lrs(with_overrides(base, ["schedule.name=one_cycle"]))
    peak = max(range(len(cycle)), key=cycle.__getitem__)
    assert cycle[0] == pytest.approx(0.1 / 25) and peak == 10 and cycle[-1] < 1e-4
    fastai = with_overrides(resolve_recipe("transfer-fastai"), ["epochs=3"])
    lrs = _lrs(fastai)
    assert max(lrs[:10]) == pytest.approx(0.002, rel=0.05)  # phase 1: the head alone, its own cycle
    assert max(lrs[10:]) == pytest.approx(0.001, rel=0.05)  # phase 2 restarts at half the rate


def test_plateau_divides_by_ten_after_patience():
    r = recipe_from_dict({"epochs": 10, "optim": {"lr": 0.1}, "schedule": {"name": "plateau", "plateau_patience": 1}})
    s = LRSchedule(r, 5)
    for epoch, loss in enumerate([1.0, 0.9, 0.95, 0.93]):
        s.end_epoch(epoch, loss)
    assert math.isclose(s.lr_at(4, 0), 0.01)
    state = s.state_dict()
    t = LRSchedule(r, 5)
    t.load_state_dict(state)
    assert t.lr_at(4, 0) == s.lr_at(4, 0)
