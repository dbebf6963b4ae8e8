"""What made a store's numbers: its settings as a typed, frozen record, read from and written to its manifest.

A store never mixes two settings; an index records the settings of the store it was built from, so that query
images are embedded the same way. Everything that reads a manifest goes through :meth:`StoreSettings.from_json`,
which refuses a malformed one with a single :class:`~featkit.errors.StoreError` naming the file and the field.

JSON schema versions: 2 adds ``decoder`` (written only when it is not ``pil``, and only then is the schema 2, so
that a featkit that knows no decoders refuses such a store instead of mixing pixels into it); 1 adds ``schema`` and
``weights.seed``; 0 (no ``schema`` key, stores written before it) is read as well, the seed of random weights then
coming from their id, ``random(seed=N)``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from featkit._files import is_sha256
from featkit.backbones.spec import Preprocess
from featkit.choices import Decoder, DType, Pool, Precision, WeightsKind, values
from featkit.errors import StoreError

SCHEMA = 2  # 2: the decoder is recorded (only stores not made with pil say 2, so older featkits refuse them)
RECORDED_DECODERS = tuple(d.value for d in Decoder if d != Decoder.auto)
_LEGACY_SEED = re.compile(r"random\(seed=(-?\d+)\)")


@dataclass(frozen=True)
class WeightsRecord:
    """Which weights computed the features: their kind, a readable id, the sha256 of their values, head size.

    Attributes:
        kind: ``imagenet``, ``random`` or ``file``.
        id: torchvision's enum name (``ResNet50_Weights.IMAGENET1K_V2``), ``random(seed=N)``, or a file name.
        sha256: of the weights file, or of the tensors for random weights.
        num_classes: outputs of the model's head.
        seed: the seed of random weights (None for the other kinds).
        path: where a weights file was, as an absolute path, so later commands can load it again (its sha256
            decides whether it still is the same file; the path is not part of the settings' identity).
    """

    kind: str
    id: str
    sha256: str
    num_classes: int
    seed: int | None = None
    path: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class TapRecord:
    """A tap as the store recorded it: featkit's name, the graph node it was read at, and its other names.

    The aliases (``pool5`` for ResNet's ``avgpool``, ``logits`` for ``fc8``) let every command name a stored tap
    the way ``featkit extract`` accepted it, without the model's tap table.
    """

    name: str
    node: str
    aliases: tuple[str, ...] = field(default=(), compare=False)
    # "tokens" or "hwc" where a pool reduced a ViT's tokens or a channels-last map (before featkit recorded it,
    # such taps were stored flattened whatever the pool); empty for C×H×W maps and vectors, as always
    pooled: str = ""


@dataclass(frozen=True)
class StoreSettings:
    """Everything that determines the stored numbers, and the shard size that makes a resumed run bitwise equal.

    Attributes:
        model: backbone name.
        weights: which weights.
        preprocess: resize, crop, normalisation.
        taps: the taps extracted, in order.
        pool, l2, dtype, precision, draft: how features were computed and stored (see ``featkit extract``).
        decoder: what decoded and resized the images, ``pil``, ``tensor`` or ``nvjpeg`` (never ``auto``); written
            to the manifest only when it is not ``pil``, so stores made before it was recorded read the same.
        fold_bn: BatchNorm folded into the preceding convolutions (always, in stores written since it is recorded).
        shard_rows: rows per shard (0: not recorded, as in index manifests written before it was).
    """

    model: str
    weights: WeightsRecord
    preprocess: Preprocess
    taps: tuple[TapRecord, ...]
    pool: str
    l2: bool
    dtype: str
    precision: str
    draft: bool
    fold_bn: bool = True
    shard_rows: int = 0
    decoder: str = "pil"

    @property
    def tap_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.taps)

    def __getitem__(self, key: str):
        raise TypeError(f"StoreSettings is a typed record: use settings.{key} (or settings.to_json()[{key!r}]).")

    def to_json(self) -> dict:
        """The manifest's ``settings`` object."""
        return self._json(identity_only=False)

    def _json(self, *, identity_only: bool) -> dict:
        weights = {k: v for k, v in dataclasses.asdict(self.weights).items() if v is not None}
        taps = [{"name": t.name, "node": t.node, **({"pooled": t.pooled} if t.pooled else {}),
                 **({"aliases": list(t.aliases)} if t.aliases else {})} for t in self.taps]
        if identity_only:  # what equality compares: no file locations, no alternative names
            weights.pop("path", None)
            taps = [{k: v for k, v in tap.items() if k != "aliases"} for tap in taps]
        schema = 1 if self.decoder == Decoder.pil else SCHEMA  # pil stores keep the bytes (and digests) they had
        return {"schema": schema, "model": self.model, "weights": weights, "preprocess": self.preprocess.as_dict(),
                "taps": taps, "pool": self.pool, "l2": self.l2, "dtype": self.dtype, "precision": self.precision,
                "draft": self.draft,
                # identity: always, so that a diff names it; on disk: not for pil, the bytes of older stores
                **({"decoder": self.decoder} if identity_only or self.decoder != Decoder.pil else {}),
                "fold_bn": self.fold_bn, "shard_rows": self.shard_rows}

    def for_tap(self, tap: str) -> StoreSettings:
        """These settings as if only ``tap`` had been extracted: what its vectors depend on.

        Two stores holding other taps besides ``tap`` compare equal here when they computed ``tap`` alike.
        """
        return dataclasses.replace(self, taps=tuple(t for t in self.taps if t.name == tap))

    def tap(self, name: str) -> TapRecord | None:
        """The recorded tap called ``name`` or having it as an alias, or None."""
        return next((t for t in self.taps if name == t.name or name in t.aliases), None)

    @classmethod
    def from_json(cls, data: Any, source: str, *, field: str = "settings") -> StoreSettings:
        """Read a manifest's ``settings`` object; ``source`` names the file and ``field`` the object in errors.

        Raises:
            StoreError: a field is missing, of the wrong type, or outside its choices (one line: file and field).
        """
        try:
            return _parse(data)
        except _Bad as bad:
            where = f"{field}.{bad.field}" if bad.field else field
            raise StoreError(f"{source} is damaged: {where} {bad.problem}.") from None

    def vectors_equal(self, other: StoreSettings) -> bool:
        """True when both would compute the same vectors for the same image (shard size and file names aside)."""
        return not self.diff(other, vectors_only=True)

    def diff(self, other: StoreSettings, *, vectors_only: bool = False, limit: int | None = None) -> list[str]:
        """What differs, one ``field: old → new`` line each (``pool: avg → max``).

        Args:
            other: the settings compared with (the "new" side).
            vectors_only: leave out what does not change the vectors: the shard size, and the file name of
                file weights (their sha256 is compared).
            limit: at most this many lines.
        """
        mine, theirs = _flat(self._json(identity_only=True)), _flat(other._json(identity_only=True))
        skip = {"schema"}
        if vectors_only:
            skip |= {"shard_rows"} | ({"weights.id"} if self.weights.kind == other.weights.kind == "file" else set())
        lines = [f"{key}: {_show(mine.get(key))} → {_show(theirs.get(key))}"
                 for key in dict.fromkeys([*mine, *theirs]) if key not in skip and mine.get(key) != theirs.get(key)]
        return lines[:limit] if limit is not None else lines


class _Bad(Exception):
    def __init__(self, field: str, problem: str):
        super().__init__(field, problem)
        self.field, self.problem = field, problem


def _field(data: dict, key: str, kind: type | tuple[type, ...], prefix: str = "", *, default: Any = ...) -> Any:
    if key not in data:
        if default is not ...:
            return default
        raise _Bad(prefix + key, "is missing")
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (bool not in kinds and isinstance(value, bool)) or not isinstance(value, kinds):
        raise _Bad(prefix + key, f"must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}"[:200])
    return value


def _choice(data: dict, key: str, choices: tuple[str, ...], prefix: str = "") -> str:
    value = _field(data, key, str, prefix)
    if value not in choices:
        raise _Bad(prefix + key, f"must be one of {', '.join(choices)}, got {value!r}"[:200])
    return value


def _parse(data: Any) -> StoreSettings:
    if not isinstance(data, dict):
        raise _Bad("", f"must be an object, got {type(data).__name__}")
    schema = _field(data, "schema", int, default=0)
    if schema not in (0, 1, SCHEMA):
        raise _Bad("schema", f"is {schema}; this featkit reads {SCHEMA} and earlier")
    w = _field(data, "weights", dict)
    kind = _choice(w, "kind", values(WeightsKind), "weights.")
    wid = _field(w, "id", str, "weights.")
    seed = _field(w, "seed", (int, type(None)), "weights.", default=None)
    weights_path = _field(w, "path", (str, type(None)), "weights.", default=None)
    if kind == "random" and seed is None:
        old_id = _LEGACY_SEED.fullmatch(wid)  # schema 0 kept the seed in the id only
        seed = int(old_id.group(1)) if old_id else 0
    num_classes = _field(w, "num_classes", int, "weights.")
    if num_classes < 1:
        raise _Bad("weights.num_classes", f"must be >= 1, got {num_classes}")
    sha = _field(w, "sha256", str, "weights.")
    if not is_sha256(sha):
        raise _Bad("weights.sha256", "must be 64 hex digits")
    try:
        preprocess = Preprocess.from_dict(_field(data, "preprocess", dict))
    except ValueError as exc:
        field, _, problem = str(exc).partition(": ")
        raise _Bad(field, problem) from None
    taps = _field(data, "taps", list)
    if not taps:
        raise _Bad("taps", "is empty")
    records = []
    for i, tap in enumerate(taps):
        if not isinstance(tap, dict):
            raise _Bad(f"taps[{i}]", "must be an object with name and node")
        aliases = _field(tap, "aliases", list, f"taps[{i}].", default=[])
        if not all(isinstance(a, str) for a in aliases):
            raise _Bad(f"taps[{i}].aliases", "must be a list of names")
        pooled = _field(tap, "pooled", str, f"taps[{i}].", default="")
        records.append(TapRecord(_field(tap, "name", str, f"taps[{i}]."), _field(tap, "node", str, f"taps[{i}]."),
                                 tuple(aliases), pooled))
    if schema == 0:  # written before the schema: without some keys (computed unfolded, in fp32); 0/1 for booleans
        data = {"fold_bn": False, "precision": "fp32", **data}
        data |= {k: bool(data[k]) for k in ("l2", "draft", "fold_bn") if type(data.get(k)) is int and data[k] in (0, 1)}
    shard_rows = _field(data, "shard_rows", int, default=0)
    if shard_rows < 0:
        raise _Bad("shard_rows", f"must be >= 0, got {shard_rows}")
    return StoreSettings(
        model=_field(data, "model", str),
        weights=WeightsRecord(kind, wid, sha, num_classes, seed if kind == "random" else None,
                              weights_path if kind == "file" else None),
        preprocess=preprocess, taps=tuple(records), pool=_choice(data, "pool", values(Pool)),
        l2=_field(data, "l2", bool), dtype=_choice(data, "dtype", values(DType)),
        precision=_choice(data, "precision", values(Precision)), draft=_field(data, "draft", bool),
        fold_bn=_field(data, "fold_bn", bool), shard_rows=shard_rows,
        decoder=_choice(data, "decoder", RECORDED_DECODERS) if "decoder" in data else Decoder.pil.value,
    )


def _flat(obj: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join((f"{v['name']} ({v['pooled']})" if v.get("pooled") else v["name"])
                         if isinstance(v, dict) and "name" in v else _show(v) for v in value) or "-"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
