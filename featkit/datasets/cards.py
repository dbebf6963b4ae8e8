"""Data cards: one Markdown file with YAML front matter per dataset, read into a frozen :class:`DataCard`.

The canonical cards ship inside the package, in ``featkit/data_cards/``. :func:`card_dirs` says where they are
looked for: the folders in ``$FEATKIT_DATA_CARDS`` (``os.pathsep``-separated) first, then the package's own. A
card found earlier in that order shadows a later one of the same name.

Every problem with a card is an :class:`~featkit.errors.InputError` whose one line names the file and the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from featkit._files import not_a_file
from featkit._search_path import search_dirs
from featkit.errors import InputError, unknown

ENV_VAR = "FEATKIT_DATA_CARDS"
CARD_METRICS = ("top1", "mean_per_class")  # what a dataset's protocol reports
LOADER_KINDS = ("torchvision", "folder", "embedded")
ALL_SPLITS = "all"  # a loader-args key meaning "the whole dataset; the card's split_protocol carves the splits"

# key -> (allowed Python types, may be null)
SCHEMA: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), False),
    "title": ((str,), False),
    "task": ((str,), False),
    "classes": ((int,), True),
    "splits": ((dict,), True),
    "image_size": ((str,), False),
    "source": ((str,), True),
    "license": ((str,), False),
    "citation": ((str,), True),
    "metric": ((str,), False),
    "loader": ((dict,), False),
    "archives": ((list,), False),
    "split_protocol": ((dict,), True),
    "protocol_notes": ((str,), False),
    "gotchas": ((list,), False),
}
LOADER_SCHEMA: dict[str, tuple[tuple[type, ...], bool]] = {
    "kind": ((str,), False),
    "torchvision_class": ((str,), True),
    "args": ((dict,), False),
    "layout": ((str,), True),
}
ARCHIVE_SCHEMA: dict[str, tuple[tuple[type, ...], bool]] = {
    "file": ((str,), False),
    "url": ((str,), True),
    "md5": ((str,), True),
}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Loader:
    """How featkit reads the dataset: a torchvision class with per-split arguments, or a folder layout."""

    kind: str  # one of LOADER_KINDS
    torchvision_class: str | None  # name in torchvision.datasets, e.g. "CIFAR10"
    args: Mapping[str, Mapping[str, Any]]  # split (or "all") -> constructor kwargs besides root/download/transform
    layout: str | None  # folder layout, for folder/embedded loaders


@dataclass(frozen=True)
class Archive:
    """One downloaded file; ``md5`` is None where torchvision itself has no checksum for it."""

    file: str
    url: str | None
    md5: str | None


@dataclass(frozen=True)
class DataCard:
    """A dataset's card: the front matter as typed fields, plus the Markdown body and the file it came from."""

    name: str
    title: str
    task: str
    classes: int | None  # None: depends on the user's data (imagefolder)
    splits: Mapping[str, int] | None  # official split name -> image count
    image_size: str
    source: str | None
    license: str
    citation: str | None
    metric: str  # "top1" or "mean_per_class"
    loader: Loader
    archives: tuple[Archive, ...]
    split_protocol: Mapping[str, Any] | None  # how featkit carves splits where there is no official one
    protocol_notes: str
    gotchas: tuple[str, ...]
    body: str
    path: Path


def _fail(path: Path, key: str, problem: str) -> InputError:
    return InputError(f"Bad data card {path}: key '{key}' {problem}.")


def _type_name(types: tuple[type, ...], nullable: bool) -> str:
    names = {int: "an integer", str: "a string", dict: "a mapping", list: "a list"}
    text = " or ".join(names[t] for t in types)
    return f"{text} or null" if nullable else text


def _check_keys(path: Path, data: dict, schema: dict, prefix: str = "") -> None:
    """Unknown keys, missing keys and wrong types, against ``schema``."""
    for key in data:
        if key not in schema:
            raise _fail(path, f"{prefix}{key}", f"is not a card field (known: {', '.join(schema)})")
    for key, (types, nullable) in schema.items():
        if key not in data:
            raise _fail(path, f"{prefix}{key}", "is missing")
        value = data[key]
        ok = (value is None and nullable) or (isinstance(value, types) and not isinstance(value, bool))
        if not ok:
            got = "null" if value is None else type(value).__name__
            raise _fail(path, f"{prefix}{key}", f"must be {_type_name(types, nullable)}, got {got}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_values(path: Path, data: dict) -> None:
    """Value rules beyond types: name form, metric, counts, loader, archives, lists of strings."""
    if not _NAME.match(data["name"]):
        raise _fail(path, "name", "must be lower_snake_case")
    if data["name"] != path.stem:
        raise _fail(path, "name", f"must equal the file name '{path.stem}', got '{data['name']}'")
    if data["metric"] not in CARD_METRICS:
        raise _fail(path, "metric", f"must be one of {', '.join(CARD_METRICS)}, got '{data['metric']}'")
    if data["classes"] is not None and not _positive_int(data["classes"]):
        raise _fail(path, "classes", f"must be a positive integer, got {data['classes']!r}")
    for split, count in (data["splits"] or {}).items():
        if not isinstance(split, str) or not _positive_int(count):
            raise _fail(path, f"splits.{split}", f"must map a split name to a positive integer, got {count!r}")
    if data["source"] is not None and not data["source"].startswith(("https://", "http://")):
        raise _fail(path, "source", "must be an http(s) URL")
    for key in ("gotchas",):
        if not all(isinstance(item, str) for item in data[key]):
            raise _fail(path, key, "must be a list of strings")
    protocol = data["split_protocol"]
    if protocol is not None:
        if not isinstance(protocol.get("method"), str):
            raise _fail(path, "split_protocol.method", "must be a string")
        if not isinstance(protocol.get("seed"), int) or isinstance(protocol.get("seed"), bool):
            raise _fail(path, "split_protocol.seed", "must be an integer")


def _check_loader(path: Path, loader: dict, splits: dict | None) -> None:
    _check_keys(path, loader, LOADER_SCHEMA, "loader.")
    if loader["kind"] not in LOADER_KINDS:
        raise _fail(path, "loader.kind", f"must be one of {', '.join(LOADER_KINDS)}, got '{loader['kind']}'")
    if loader["kind"] == "torchvision" and loader["torchvision_class"] is None:
        raise _fail(path, "loader.torchvision_class", "is required when loader.kind is torchvision")
    allowed = {*(splits or {}), ALL_SPLITS}
    for split, kwargs in loader["args"].items():
        if split not in allowed:
            raise _fail(path, f"loader.args.{split}", f"must be a split of the card or '{ALL_SPLITS}'")
        if not isinstance(kwargs, dict):
            raise _fail(path, f"loader.args.{split}", "must be a mapping of constructor arguments")


def _check_archives(path: Path, archives: list) -> None:
    for i, archive in enumerate(archives):
        if not isinstance(archive, dict):
            raise _fail(path, f"archives[{i}]", "must be a mapping with file, url, md5")
        _check_keys(path, archive, ARCHIVE_SCHEMA, f"archives[{i}].")
        if archive["md5"] is not None and not _MD5.match(archive["md5"]):
            raise _fail(path, f"archives[{i}].md5", "must be 32 lower-case hex digits or null")


def _split_front_matter(path: Path, text: str) -> tuple[str, str]:
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        raise _fail(path, "---", "front matter must start on the first line with '---'")
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            return "".join(lines[1:i]), "".join(lines[i + 1 :]).strip() + "\n"
    raise _fail(path, "---", "front matter is not closed by a '---' line")


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def load_card(path: str | Path) -> DataCard:
    """Read and validate one card; raise a one-line :class:`InputError` naming the file and key on any problem."""
    import yaml

    path = Path(path)
    if (what := not_a_file(path)) is not None:  # read_text() would wait forever on a FIFO
        raise InputError(f"Data card {path} is {what}, not a file; move it out of the cards folder.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read data card {path}: {exc}") from None
    front, body = _split_front_matter(path, text)
    try:
        data = yaml.safe_load(front)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 2}" if where is not None else ""
        raise _fail(path, "---", f"front matter is not valid YAML{line}") from None
    if not isinstance(data, dict):
        raise _fail(path, "---", "front matter must be a YAML mapping")
    _check_keys(path, data, SCHEMA)
    _check_values(path, data)
    _check_loader(path, data["loader"], data["splits"])
    _check_archives(path, data["archives"])
    loader = data["loader"]
    return DataCard(
        **{k: data[k] for k in ("name", "title", "task", "classes", "image_size", "source", "license", "citation")},
        splits=_freeze(data["splits"]),
        metric=data["metric"],
        loader=Loader(loader["kind"], loader["torchvision_class"], _freeze(loader["args"]), loader["layout"]),
        archives=tuple(Archive(a["file"], a["url"], a["md5"]) for a in data["archives"]),
        split_protocol=_freeze(data["split_protocol"]),
        protocol_notes=data["protocol_notes"].strip(),
        gotchas=tuple(data["gotchas"]),
        body=body,
        path=path,
    )


def card_dirs() -> list[Path]:
    """The folders searched for cards, in order: ``$FEATKIT_DATA_CARDS`` entries, then ``featkit/data_cards/``."""
    return search_dirs(ENV_VAR, "data_cards")


def _card_paths() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in card_dirs():
        for path in sorted(folder.glob("*.md")):
            if path.stem.upper() != "README":
                found.setdefault(path.stem, path)
    if not found:
        raise InputError(
            f"No data cards found (looked in ${ENV_VAR} and featkit/data_cards/ in the package). "
            f"Set {ENV_VAR} to the folder that holds the *.md cards."
        )
    return found


def card_names() -> list[str]:
    """The names of all cards found, sorted."""
    return sorted(_card_paths())


def list_cards() -> list[DataCard]:
    """Every card found, validated, sorted by name."""
    return [load_card(path) for _, path in sorted(_card_paths().items())]


def get_card(name: str) -> DataCard:
    """The card called ``name``; an unknown name gets the standard "did you mean" error."""
    paths = _card_paths()
    if name not in paths:
        raise unknown("dataset", name, paths, see="featkit data list")
    return load_card(paths[name])
