"""Fine-tuning recipes: a TOML file read once into a frozen, validated :class:`Recipe`.

Every problem is a one-line :class:`RecipeError` naming the file and the dotted key. ``--set key=value``
overrides are parsed by the type of the field they set (``optim.lr=0.05``, ``optim.nesterov=true``).
Recipes are looked up in ``$FEATKIT_RECIPES`` (``os.pathsep``-separated folders) first, then in the package's own
``featkit/recipes/`` (shipped in the wheel), like the data cards.
"""

from __future__ import annotations

import dataclasses
import sys
import tomllib
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featkit._files import not_a_file
from featkit._search_path import search_dirs
from featkit.errors import FeatkitError, did_you_mean, unknown

ENV_VAR = "FEATKIT_RECIPES"
TRAINABLE = ("head", "last", "all")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "plateau", "cosine", "one_cycle")
MONITORS = ("val_acc", "val_loss")


class RecipeError(FeatkitError):
    """A recipe file or override that is not a valid recipe."""


@dataclass(frozen=True)
class Head:
    """The new classifier (its size comes from the data's classes)."""

    dropout: float = 0.0  # p of the model's dropout layers; added before the head where the model has none


@dataclass(frozen=True)
class Freeze:
    """What trains: ``head`` only, the ``last`` ``last_stages`` stages + head, or ``all``.

    ``head_epochs`` > 0 trains only the head for that many epochs first, then switches to ``train`` (the
    schedule restarts for the second phase, with its learning rates times ``unfrozen_lr_scale``).
    """

    train: str = "all"
    last_stages: int = 1
    head_epochs: int = 0
    unfrozen_lr_scale: float = 1.0


@dataclass(frozen=True)
class Optim:
    """Optimiser. ``lr`` is the head's; stage k of n gets ``lr * backbone_lr_ratio ** ((n - k) / n)``."""

    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    decay_norm_and_bias: bool = True  # false: no weight decay on norm weights and biases
    backbone_lr_ratio: float = 1.0


@dataclass(frozen=True)
class Schedule:
    """Learning-rate schedule per step: constant, plateau (÷ on a stalled metric), cosine, one_cycle; + warmup."""

    name: str = "constant"
    warmup_epochs: float = 0.0
    plateau_factor: float = 0.1
    plateau_patience: int = 2
    min_lr_ratio: float = 0.0  # cosine floor, relative to the peak
    one_cycle_pct: float = 0.25  # share of the phase spent rising
    one_cycle_div: float = 25.0  # start at lr / div; end at lr / (div * 1e4), as torch's OneCycleLR


@dataclass(frozen=True)
class Data:
    """Transforms. 0 sizes mean the model's own preprocessing (e.g. 224 crop of a 256 resize)."""

    train_crop: int = 0
    min_scale: float = 0.08  # RandomResizedCrop's lower area bound
    hflip: bool = True
    eval_resize: int = 0
    eval_crop: int = 0


@dataclass(frozen=True)
class Ema:
    decay: float = 0.0  # 0: off; else evaluate and save the exponential moving average of the weights


@dataclass(frozen=True)
class EarlyStop:
    patience: int = 0  # epochs without improvement of ``monitor`` before stopping; 0: never stop early
    monitor: str = "val_acc"


@dataclass(frozen=True)
class Recipe:
    """A complete, validated fine-tuning recipe."""

    name: str = "custom"
    description: str = ""
    model: str = "resnet50"
    weights: str = "imagenet"
    epochs: int = 5
    batch_size: int = 32  # global: split over the processes of a torchrun
    seed: int = 0
    label_smoothing: float = 0.0
    amp: bool = True  # mixed precision on GPUs (bf16, or fp16 with a grad scaler); fp32 on CPUs
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0: at the end of each epoch only
    head: Head = field(default_factory=Head)
    freeze: Freeze = field(default_factory=Freeze)
    optim: Optim = field(default_factory=Optim)
    schedule: Schedule = field(default_factory=Schedule)
    data: Data = field(default_factory=Data)
    ema: Ema = field(default_factory=Ema)
    early_stop: EarlyStop = field(default_factory=EarlyStop)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _positive(v) -> bool:
    return v > 0


def _non_negative(v) -> bool:
    return v >= 0


def _unit(v) -> bool:
    return 0 <= v < 1


def _one_of(choices: tuple[str, ...]):
    def check(v) -> bool:
        return v in choices
    check.__doc__ = f"one of {', '.join(choices)}"
    return check


# dotted key -> (check, what it must be); keys without an entry only need the right type
RULES = {
    "epochs": (_positive, "a positive integer"),
    "batch_size": (_positive, "a positive integer"),
    "label_smoothing": (_unit, "in [0, 1)"),
    "checkpoint_every": (_non_negative, "0 or a positive integer"),
    "head.dropout": (_unit, "in [0, 1)"),
    "freeze.train": (_one_of(TRAINABLE), f"one of {', '.join(TRAINABLE)}"),
    "freeze.last_stages": (_positive, "a positive integer"),
    "freeze.head_epochs": (_non_negative, "0 or a positive integer"),
    "freeze.unfrozen_lr_scale": (_positive, "positive"),
    "optim.name": (_one_of(OPTIMIZERS), f"one of {', '.join(OPTIMIZERS)}"),
    "optim.lr": (_positive, "positive"),
    "optim.momentum": (_unit, "in [0, 1)"),
    "optim.betas": (lambda v: all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    "optim.weight_decay": (_non_negative, "0 or positive"),
    "optim.backbone_lr_ratio": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "schedule.name": (_one_of(SCHEDULES), f"one of {', '.join(SCHEDULES)}"),
    "schedule.warmup_epochs": (_non_negative, "0 or positive"),
    "schedule.plateau_factor": (lambda v: 0 < v < 1, "in (0, 1)"),
    "schedule.plateau_patience": (_non_negative, "0 or a positive integer"),
    "schedule.min_lr_ratio": (_unit, "in [0, 1)"),
    "schedule.one_cycle_pct": (lambda v: 0 < v < 1, "in (0, 1)"),
    "schedule.one_cycle_div": (lambda v: v >= 1, "at least 1"),
    "data.train_crop": (_non_negative, "0 (the model's crop) or a positive integer"),
    "data.min_scale": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "data.eval_resize": (_non_negative, "0 (the model's resize) or a positive integer"),
    "data.eval_crop": (_non_negative, "0 (the model's crop) or a positive integer"),
    "ema.decay": (_unit, "0 (off) or in (0, 1)"),
    "early_stop.patience": (_non_negative, "0 (off) or a positive integer"),
    "early_stop.monitor": (_one_of(MONITORS), f"one of {', '.join(MONITORS)}"),
}


def _type_text(tp) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, "two numbers")


def _number(value: Any) -> bool:
    """An int or float that is a finite float: not a bool, NaN, an infinity or an int too big for a float."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= sys.float_info.max


def _coerce(where: str, key: str, value: Any, tp) -> Any:
    """``value`` as the field type ``tp`` (ints are accepted for floats), or a RecipeError."""
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: _number(value),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:  # tuple[float, float]
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(_number(v) for v in value)
        value = tuple(float(v) for v in value) if ok else value
    elif ok and tp is float:
        value = float(value)
    if not ok:
        got = type(value).__name__
        raise RecipeError(f"{where}: key '{key}' must be {_type_text(tp)}, got {repr(value)[:80]} ({got}).")
    rule = RULES.get(key)
    if rule is not None and not rule[0](value):
        raise RecipeError(f"{where}: key '{key}' must be {rule[1]}, got {repr(value)[:80]}.")
    return value


def _build(cls, data: dict, where: str, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            full = f"{prefix}{key}"
            raise RecipeError(f"{where}: unknown key '{full}'.{did_you_mean(key, names)} "
                              f"Known keys here: {', '.join(names)}.")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        tp, key = hints[name], f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            if not isinstance(data[name], dict):
                raise RecipeError(f"{where}: key '{key}' must be a table ([{key}]), got {data[name]!r}.")
            kwargs[name] = _build(tp, data[name], where, f"{key}.")
        else:
            kwargs[name] = _coerce(where, key, data[name], tp)
    return cls(**kwargs)


def _check_whole(recipe: Recipe, where: str) -> None:
    if recipe.freeze.head_epochs >= recipe.epochs and recipe.freeze.head_epochs:
        raise RecipeError(f"{where}: key 'freeze.head_epochs' ({recipe.freeze.head_epochs}) must be below "
                          f"'epochs' ({recipe.epochs}) so the unfrozen phase has epochs to run.")
    if recipe.optim.nesterov and (recipe.optim.name != "sgd" or recipe.optim.momentum == 0):
        raise RecipeError(f"{where}: key 'optim.nesterov' needs optim.name = 'sgd' and a momentum above 0.")


def recipe_from_dict(data: dict, where: str = "recipe") -> Recipe:
    """Validate a plain dict (a parsed TOML file, or a run's resolved recipe) into a Recipe."""
    recipe = _build(Recipe, data, where)
    _check_whole(recipe, where)
    return recipe


def _field_type(key: str):
    cls, parts = Recipe, key.split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            known = [f"{'.'.join(parts[:i] + [n])}" for n in hints]
            raise RecipeError(f"--set: unknown key '{key}'.{did_you_mean('.'.join(parts[:i + 1]), known)}"
                              f" Known keys: {', '.join(known)}.")
        cls = hints[part]
        if dataclasses.is_dataclass(cls) != (i < len(parts) - 1):
            what = "a table; set one of its keys, e.g. " + f"{key}.{dataclasses.fields(cls)[0].name}" \
                if dataclasses.is_dataclass(cls) else "not a table"
            raise RecipeError(f"--set: key '{'.'.join(parts[:i + 1])}' is {what}.")
    return cls


def _parse_value(key: str, text: str, tp) -> Any:
    text = text.strip()
    if tp is str:
        return text
    try:  # TOML's own value syntax: 0.05, 1e-4, true, [0.9, 0.99]
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        raise RecipeError(f"--set: key '{key}' must be {_type_text(tp)}, got {text!r}.") from None


def with_overrides(recipe: Recipe, overrides: Iterable[str]) -> Recipe:
    """Apply ``key=value`` strings (dotted keys) and re-validate the whole recipe."""
    data = recipe.as_dict()
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RecipeError(f"--set {item!r}: write it as KEY=VALUE, e.g. --set optim.lr=0.05.")
        tp = _field_type(key)
        *parents, last = key.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[last] = _parse_value(key, text, tp)
    return recipe_from_dict(data, "--set")


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate one recipe file; ``name`` defaults to the file's stem."""
    path = Path(path)
    if (what := not_a_file(path)) is not None:  # read_text() would wait forever on a FIFO
        raise RecipeError(f"Recipe {path} is {what}, not a file; pass the recipe file itself.")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RecipeError(f"Cannot read recipe {path}: {exc.strerror}.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RecipeError(f"Recipe {path} is not valid TOML: {exc}.") from None
    data.setdefault("name", path.stem)
    return recipe_from_dict(data, str(path))


def recipe_dirs() -> list[Path]:
    """Folders searched for recipes, in order: ``$FEATKIT_RECIPES`` entries, then ``featkit/recipes/``."""
    return search_dirs(ENV_VAR, "recipes")


def recipe_paths() -> dict[str, Path]:
    """Recipe name -> file; an earlier folder shadows a later one's recipe of the same name."""
    found: dict[str, Path] = {}
    for folder in recipe_dirs():
        for path in sorted(folder.glob("*.toml")):
            found.setdefault(path.stem, path)
    return found


def resolve_recipe(name_or_path: str) -> Recipe:
    """A recipe by name (``transfer-fastai``) or by path (``my.toml``)."""
    path = Path(name_or_path).expanduser()
    if path.suffix == ".toml" or path.is_file():
        if not path.exists():
            raise RecipeError(f"Recipe file not found: {path}. See: featkit recipes")
        return load_recipe(path)
    paths = recipe_paths()
    if name_or_path not in paths:
        raise unknown("recipe", name_or_path, paths, see="featkit recipes")
    return load_recipe(paths[name_or_path])
