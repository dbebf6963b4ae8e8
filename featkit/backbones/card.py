"""The weights card, and the run directory that stands for its final weights.

The weights card is the JSON file beside fine-tuned weights that says what they are.

``featkit finetune`` writes ``RUN/model.pth`` (a plain state_dict) and ``RUN/model.json`` (its card: the model it
was fine-tuned from, the class names, the eval preprocessing, the sha256 of model.pth's bytes). ``--weights RUN``
or ``--weights RUN/model.pth`` then extracts with the right head, class names and preprocessing, once the file's
sha256 matches. The card format is owned here, below
fine-tuning, so that loading weights never imports the trainer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from featkit._atomic import write_json
from featkit._files import is_sha256, not_a_file
from featkit.backbones.spec import Preprocess
from featkit.errors import WeightsError

FORMAT = "featkit-finetuned-weights"
VERSION = 1
# The names a fine-tuning run directory uses for its manifest and its final and best weights.
RUN_MANIFEST = "recipe.json"
RUN_WEIGHTS = "model.pth"
RUN_BEST = "best.pt"


@dataclass(frozen=True)
class WeightsCard:
    """What a fine-tuned weights file is.

    Attributes:
        model: the backbone it was fine-tuned from (its architecture, with a new head).
        classes: the head's class names, in output order.
        preprocess: the eval preprocessing it was validated with.
        recipe: the recipe that trained it.
        epochs: epochs trained.
        val_acc: validation accuracy at the end (None: no epoch finished).
        sha256: the hex sha256 of the weights file's bytes as written (None: not recorded); checked on loading.
    """

    model: str
    classes: tuple[str, ...]
    preprocess: Preprocess
    recipe: str = ""
    epochs: int = 0
    val_acc: float | None = None
    sha256: str | None = None

    def as_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "model": self.model, "classes": list(self.classes),
                "preprocess": self.preprocess.as_dict(), "recipe": self.recipe, "epochs": self.epochs,
                "val_acc": self.val_acc, **({"sha256": self.sha256} if self.sha256 is not None else {})}


def card_path(weights: Path) -> Path:
    """Where the card of the weights file ``weights`` is: beside it, with the suffix ``.json``."""
    return weights.with_suffix(".json")


def write_card(weights: Path, card: WeightsCard) -> None:
    """Write the card of ``weights`` atomically."""
    write_json(card_path(weights), card.as_dict())


def read_card(weights: Path) -> WeightsCard | None:
    """The card beside ``weights``, or None where there is none.

    A file there that never names the card format is some other file, not a card.

    Raises:
        WeightsError: the file names the card format but is not readable JSON, or a field is missing or malformed.
    """
    path = card_path(weights)
    if (what := not_a_file(path)) is not None:  # read_text() would wait forever on a FIFO
        raise WeightsError(f"The weights card {path} is {what}, not a file; move it away to load {weights.name} "
                           f"as plain weights.")
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    try:
        data = json.loads(raw)
        problem = "" if isinstance(data, dict) and data.get("format") == FORMAT else \
            f"format: expected '{FORMAT}' in a JSON object"
    except (ValueError, RecursionError) as exc:
        problem = f"not readable JSON: {str(exc)[:120]}"
    if problem:
        if FORMAT.encode() not in raw:  # another file that happens to sit there
            return None
        raise WeightsError(f"The weights card {path} is damaged ({problem}); restore it, or delete it to load "
                           f"{weights.name} as plain weights.")
    try:
        if data.get("version") != VERSION:
            raise ValueError(f"version: this featkit reads version {VERSION}, got {data.get('version')!r}")
        model, classes = data.get("model"), data.get("classes")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model: expected a model name, got {model!r}")
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise ValueError("classes: expected a non-empty list of class names")
        epochs, val_acc = data.get("epochs", 0), data.get("val_acc")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs: expected an integer >= 0, got {epochs!r}")
        if val_acc is not None and (isinstance(val_acc, bool) or not isinstance(val_acc, (int, float))
                                    or not 0 <= val_acc <= 1):
            raise ValueError(f"val_acc: expected a number from 0 to 1 or null, got {repr(val_acc)[:80]}")
        sha256 = data.get("sha256")
        if sha256 is not None and not is_sha256(sha256):
            raise ValueError(f"sha256: expected 64 lowercase hex digits or no sha256, got {str(sha256)[:80]!r}")
        return WeightsCard(model=model, classes=tuple(classes), preprocess=Preprocess.from_dict(data.get("preprocess")),
                           recipe=str(data.get("recipe") or ""), epochs=epochs,
                           val_acc=None if val_acc is None else float(val_acc), sha256=sha256)
    except ValueError as exc:
        raise WeightsError(f"The weights card {path} is damaged ({exc}); restore it, or delete it to load "
                           f"{weights.name} as plain weights.") from None


def resolve_weights_path(path: Path) -> Path:
    """A fine-tuning run directory stands for its final weights file; any other path stands for itself."""
    if path.is_dir() and (path / RUN_MANIFEST).exists():
        weights = path / RUN_WEIGHTS
        if not weights.exists():
            raise WeightsError(f"Run {path} has no final weights yet ({RUN_WEIGHTS}); finish it with "
                               f"`featkit finetune --resume {path}`, or pass {path / RUN_BEST} for its best epoch.")
        return weights
    return path
