"""Which weights a backbone runs with, where they come from, and the preprocessing they expect.

``--weights imagenet`` (torchvision's recommended weights, from the torch hub cache), ``random`` (seeded),
a file, or a ``featkit finetune`` run directory (its ``model.pth``, with the class names and eval
preprocessing its ``model.json`` card records, and checked against the sha256 the card records). Files are loaded
only through :mod:`featkit.backbones.checkpoints` (``weights_only=True``, NaN and inf refused).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision import models as tvm

from featkit.backbones import checkpoints
from featkit.backbones.card import card_path, read_card, resolve_weights_path
from featkit.backbones.registry import build_module, describe
from featkit.backbones.spec import Preprocess
from featkit.errors import WeightsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightsInfo:
    """Provenance of the weights a model was built with (goes into every manifest)."""

    kind: str  # imagenet | random | file
    id: str  # e.g. "ResNet50_Weights.IMAGENET1K_V2", "random(seed=0)", a file path
    sha256: str
    preprocess: Preprocess
    num_classes: int
    categories: tuple[str, ...] | None = None

    def as_dict(self) -> dict:
        return {"kind": self.kind, "id": self.id, "sha256": self.sha256, "num_classes": self.num_classes,
                "preprocess": self.preprocess.as_dict()}


def default_weights_enum(name: str):
    """Torchvision's recommended weights for ``name`` or None (curated names included)."""
    try:
        return tvm.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        return None


def preprocess_for(name: str) -> Preprocess:
    """The preprocessing of the model's recommended ImageNet weights (also used for random and file weights)."""
    enum = default_weights_enum(name)
    if enum is None:
        spec = describe(name)
        return Preprocess(resize=spec.resize_size or round(spec.input_size * 256 / 224), crop=spec.input_size)
    t = enum.transforms()
    return Preprocess(
        resize=int(t.resize_size[0]),
        crop=int(t.crop_size[0]),
        mean=tuple(float(v) for v in t.mean),
        std=tuple(float(v) for v in t.std),
        interpolation=t.interpolation.value,
    )


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """A content hash of tensors (for weights that have no file, e.g. seeded random init)."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        if t.numel():
            # numpy's stubs give ndarray __buffer__ only for Python >= 3.12; it is a buffer on 3.11 too
            h.update(t.view(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]
    return h.hexdigest()


def _classes_in(state: dict[str, torch.Tensor], logits_module: str) -> int | None:
    weight = state.get(f"{logits_module}.weight")
    return int(weight.shape[0]) if weight is not None else None


def load_backbone_weights(name: str, weights: str = "imagenet", *, seed: int = 0,
                          download: bool = True) -> tuple[torch.nn.Module, WeightsInfo]:
    """Build ``name`` in eval mode with ``weights`` = ``imagenet`` | ``random`` | a file path.

    Raises:
        WeightsError: the weights are not cached and cannot be downloaded, are not a plain state_dict,
            or do not fit the architecture.
    """
    spec = describe(name)
    preprocess = preprocess_for(name)
    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_module(name)
        info = WeightsInfo("random", f"random(seed={seed})", state_dict_sha256(model.state_dict()), preprocess, 1000)
        return model.eval(), info
    if weights == "imagenet":
        enum = default_weights_enum(name)
        if enum is None:
            raise WeightsError(f"torchvision has no ImageNet weights for {name}. "
                               f"Pass --weights random or --weights FILE.")
        path = checkpoints.fetch_checkpoint(enum.url, download=download)
        state = checkpoints.load_state_dict_file(path)
        model = build_module(name, num_classes=len(enum.meta["categories"]))
        checkpoints.check_state_dict(model, state, source=str(path), model_name=name)
        model.load_state_dict(state)
        info = WeightsInfo("imagenet", f"{type(enum).__name__}.{enum.name}", checkpoints.sha256_file(path),
                           preprocess, len(enum.meta["categories"]), tuple(enum.meta["categories"]))
        return model.eval(), info
    path = Path(weights).expanduser()
    if not path.exists():
        raise WeightsError(f"Weights '{weights}' are neither 'imagenet', 'random' nor an existing file.")
    path = resolve_weights_path(path)  # a fine-tuning run directory stands for its final weights
    categories = None
    card = read_card(path)
    if card is not None:  # fine-tuned weights: their class names, and the preprocessing they were evaluated with
        if card.model != name:
            raise WeightsError(f"Weights {path} were fine-tuned from {card.model}, not {name}; "
                               f"pass --model {card.model}.")
        categories, preprocess = card.classes, card.preprocess
        if card.sha256 is not None and (actual := checkpoints.sha256_file(path)) != card.sha256:
            raise WeightsError(f"{path} does not match the sha256 its {card_path(path).name} records: the file was "
                               f"changed or damaged since it was written (sha256 {actual[:12]}…, recorded "
                               f"{card.sha256[:12]}…); copy it again from where the fine-tune ran, or rerun it.")
    state = checkpoints.load_state_dict_file(path)
    num_classes = _classes_in(state, spec.logits_module) or 1000
    model = build_module(name, num_classes=num_classes)
    checkpoints.check_state_dict(model, state, source=str(path), model_name=name)
    model.load_state_dict(state)
    log.info("loaded %s weights from %s (%d classes)", name, path, num_classes)
    return model.eval(), WeightsInfo("file", str(path.resolve()), checkpoints.sha256_file(path), preprocess,
                                     num_classes, categories)
