"""A damaged manifest ends in one featkit error, never a Python one (RELIABILITY.md row 24).

hypothesis mutates the real JSON files featkit writes (a feature store's manifest, an index's, a fine-tune run's
recipe.json and a weights card) in two ways, 1,000 cases each per reader: 1–3-byte edits of the raw bytes, and
structural edits (keys renamed or deleted at any depth, values replaced by values of other types, negative or
huge numbers, strings, lists and objects, a value or the whole file wrapped in a list, a value nested thousands
deep). Opening the damaged file the way featkit's commands do may work (the damage hit a free-text field) or
raise a FeatkitError naming a file of that directory, on one line; nothing else escapes and nothing hangs.
The plain example tests at the end go through the CLI: exit code 1, one line naming the file and the field.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import write_images
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import featkit
from featkit.backbones.card import FORMAT as CARD_FORMAT
from featkit.backbones.card import WeightsCard, read_card
from featkit.cli import index as index_cmd
from featkit.cli.app import main as featkit_main
from featkit.errors import FeatkitError
from featkit.finetune import rundir
from featkit.finetune.recipe import resolve_recipe, with_overrides
from featkit.finetune.trainer import Trainer
from featkit.index import Index
from featkit.store.writer import StoreWriter

FAST = {"model": "squeezenet1_1", "weights": "random", "device": "cpu", "workers": 0, "pool": "avg", "seed": 7}
FUZZ = settings(max_examples=1000, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])
CASE_SECONDS = 10  # far above what one case takes: a case that runs this long is a hang


# ---- the real files, written once -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A store of two taps, an index over it, a fine-tune run directory and a weights card."""
    root = tmp_path_factory.mktemp("made")
    featkit.extract(write_images(root / "imgs", per_class=3), root / "store", layers=["fire9", "logits"], **FAST)
    Index.build(root / "store", tap="fire9").save(root / "index")
    photos = root / "photos"
    write_images(photos / "train", per_class=2, size=(40, 36))
    write_images(photos / "val", per_class=1, size=(40, 36), seed=2)
    recipe = with_overrides(resolve_recipe("transfer-fastai"),
                            ["model=squeezenet1_1", "weights=random", "epochs=2", "batch_size=2"])
    trainer = Trainer(recipe, photos, root / "run", device="cpu", workers=0)  # writes recipe.json, trains nothing
    card = WeightsCard(model="squeezenet1_1", classes=("c0", "c1"), preprocess=trainer.pre, recipe=recipe.name,
                       epochs=2, val_acc=0.5)
    rundir.write_weights(trainer.run.weights, trainer.model.state_dict(), card)
    store = root / "store"
    return {"store": store, "segment": store, "log": store, "index": root / "index", "run": root / "run",
            "card": root / "run"}


# ---- opening, as featkit's commands do ----------------------------------------------------------------------

def open_store(root: Path) -> None:
    """Open it, read its failures and every tap's vectors, and reopen it with the writer that resumes extraction."""
    store = featkit.open_features(root)
    len(store.failures)
    for tap in store.taps:
        np.asarray(store[tap][:2])
    with StoreWriter(root, store.settings) as writer:
        writer.committed()


def open_index(root: Path) -> None:
    """``featkit index info`` and a search by vector."""
    with contextlib.redirect_stdout(io.StringIO()):
        index_cmd.info(root)
    index = Index.open(root)
    repr(index)
    index.search_vectors(np.ones(index.manifest["dim"], np.float32), k=3)


def open_run(root: Path) -> None:
    """What ``featkit finetune --resume RUN`` reads from the run's manifest."""
    rundir.read_manifest(root)


def open_card(root: Path) -> None:
    """What ``--weights RUN/model.pth`` reads from the card beside the weights.

    A file that still says it is a card is never taken for no card (the weights would load with a default
    preprocessing and no class names).
    """
    card = read_card(root / "model.pth")
    assert card is not None or CARD_FORMAT.encode() not in (root / "model.json").read_bytes()


READERS: dict[str, tuple[str, Callable[[Path], None]]] = {  # the file each reader reads, in its directory
    "store": ("manifest.json", open_store),
    "segment": ("segments/seg-000000/segment.json", open_store),  # a v2 segment's manifest
    "log": ("log.jsonl", open_store),  # the v2 store's log: JSON lines, so byte edits only
    "index": ("manifest.json", open_index),
    "run": ("recipe.json", open_run),
    "card": ("model.json", open_card),
}


class Hang(BaseException):
    """A case ran for CASE_SECONDS (a BaseException: no ``except Exception`` in featkit swallows it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def alarm(*_) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_opens_or_refuses(reader: str, work: Path, data: bytes) -> None:
    """Write ``data`` as the reader's file in ``work`` and open it: success, or one featkit error line."""
    name, opener = READERS[reader]
    (work / name).write_bytes(data)
    try:
        with time_limit(CASE_SECONDS):
            opener(work)
    except FeatkitError as exc:
        message = str(exc)
        assert "\n" not in message and str(work) in message, message


@pytest.fixture(scope="module")
def workdirs(made, tmp_path_factory) -> dict[str, tuple[Path, bytes, object]]:
    """reader → (a copy of its directory to damage, the file's original bytes, its parsed JSON)."""
    out = {}
    for reader, (name, _) in READERS.items():
        work = tmp_path_factory.mktemp(reader) / made[reader].name
        shutil.copytree(made[reader], work)
        raw = (work / name).read_bytes()
        out[reader] = (work, raw, json.loads(raw) if name.endswith(".json") else None)
    return out


# ---- damage -----------------------------------------------------------------------------------------------

JSON_BYTES = b'"{}[]:,0123456789-+.eE \\/ntrufalsNI'


@st.composite
def byte_edits(draw, raw: bytes) -> bytes:
    """1–3 bytes replaced, inserted or deleted; the new bytes are often ones JSON gives a meaning."""
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data) - 1))
        byte = draw(st.one_of(st.sampled_from(JSON_BYTES), st.integers(0, 255)))
        how = draw(st.sampled_from(["replace", "insert", "delete"]))
        if how == "replace":
            data[at] = byte
        elif how == "insert":
            data.insert(at, byte)
        else:
            del data[at]
    return bytes(data)


ODD_VALUES = [None, True, False, 0, -1, 1, 0.5, -0.0, 2**31, 2**53 + 1, 2**63, -(2**63), 2**64, 10**30, 10**400,
              -(10**400), 1e30, -1e30, 1e308, math.nan, math.inf, -math.inf, "", "x", "0", "-1", "null", "../x",
              "/etc/passwd", "a" * 5000, [], [1], ["x"], [[]], [None], {}, {"x": 1}, {"": None}]
odd_values = st.one_of(st.sampled_from(ODD_VALUES), st.integers(), st.floats(), st.text(max_size=12),
                       st.lists(st.one_of(st.integers(), st.text(max_size=4)), max_size=3),
                       st.dictionaries(st.text(max_size=6), st.integers(), max_size=2))
NEST = "\0nest\0"  # a placeholder replaced by the nesting in the JSON text


def nodes(value, path=()) -> Iterator[tuple]:
    """The path of every value in a JSON document (keys and list positions), the document itself first."""
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from nodes(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from nodes(child, (*path, i))


def _value_at(doc, path: tuple):
    """The value at ``path``, or None where an edit before changed the document above it."""
    for step in path:
        if isinstance(doc, dict) and step in doc or isinstance(doc, list) and type(step) is int and step < len(doc):
            doc = doc[step]
        else:
            return None
    return doc


def structural_edits(original) -> st.SearchStrategy[bytes]:
    """1–3 edits of the parsed document at any depth, written back as JSON text."""
    text = json.dumps(original)
    where = st.sampled_from(list(nodes(original)))  # paths of the original; an edit may remove some

    @st.composite
    def edited(draw) -> bytes:
        doc, nest = json.loads(text), ""
        for _ in range(draw(st.integers(1, 3))):
            path = draw(where)
            how = draw(st.sampled_from(["rename", "delete", "replace", "replace", "wrap", "nest", "duplicate"]))
            if not path:  # the document itself
                if how == "nest":
                    nest = "[" * draw(st.sampled_from([1000, 100_000]))
                    doc = NEST
                elif how in ("wrap", "duplicate"):
                    doc = [doc] if how == "wrap" else [doc, doc]
                else:
                    doc = copy.deepcopy(draw(odd_values))
                continue
            parent, key = _value_at(doc, path[:-1]), path[-1]
            if not isinstance(parent, (dict, list)) or key not in (parent if isinstance(parent, dict) else
                                                                   range(len(parent))):
                continue  # an edit before removed it
            if how == "rename" and isinstance(parent, dict):
                new = draw(st.one_of(st.just(f"{key}z"), st.just(str(key).upper()), st.text(max_size=8),
                                     st.sampled_from(["../x", "", "name", "files", "shards", "rows", "index"])))
                parent[new] = parent.pop(key)
            elif how == "delete":
                del parent[key]
            elif how == "wrap":
                parent[key] = [parent[key]]
            elif how == "duplicate" and isinstance(parent, list):
                parent.append(copy.deepcopy(parent[key]))
            elif how == "nest" and not nest:
                depth = draw(st.sampled_from([2, 50, 500, 990, 5000, 100_000]))
                nest = draw(st.sampled_from(["[", '{"a":'])) * depth
                parent[key] = NEST
            else:
                parent[key] = copy.deepcopy(draw(odd_values))
        out = json.dumps(doc, indent=1)
        if nest:
            close = "]" * nest.count("[") + "}" * nest.count("{")
            out = out.replace(json.dumps(NEST), nest + "1" + close)
        return out.encode()

    return edited()


# ---- the fuzz tests: each reader, both kinds of damage ------------------------------------------------------

JSON_READERS = [r for r, (name, _) in READERS.items() if name.endswith(".json")]


@pytest.mark.parametrize(("reader", "edits"),
                         [(r, "bytes") for r in READERS] + [(r, "structure") for r in JSON_READERS])
def test_a_damaged_manifest_raises_only_featkit_errors(reader, edits, workdirs):
    work, raw, doc = workdirs[reader]

    @FUZZ
    @given(data=byte_edits(raw) if edits == "bytes" else structural_edits(doc))
    def case(data: bytes) -> None:
        check_opens_or_refuses(reader, work, data)

    case()


# ---- through the CLI: exit code 1, one line naming the file and the field, no traceback ----------------------

COMMANDS = {  # how a user meets each file: {dir} is the damaged copy
    "store": ["info", "{dir}"],
    "segment": ["info", "{dir}"],
    "index": ["search", "{dir}", "{dir}/../query.npy"],
    "run": ["finetune", "--resume", "{dir}"],
    "card": ["extract", "{dir}/../imgs", "--model", "squeezenet1_1", "--weights", "{dir}/model.pth", "-o",
             "{dir}/../out", "--device", "cpu"],
}


def renamed(path: tuple) -> Callable[[object], str]:
    def damage(doc) -> str:
        parent = _value_at(doc, path[:-1])
        parent[f"{path[-1]}z"] = parent.pop(path[-1])
        return json.dumps(doc)
    return damage


def nested(key: str) -> Callable[[object], str]:
    def damage(doc) -> str:
        doc[key] = NEST
        return json.dumps(doc).replace(json.dumps(NEST), "[" * 100_000 + "]" * 100_000)
    return damage


@pytest.mark.parametrize(("reader", "damage", "field"), [
    ("segment", renamed(("shards",)), "shards"),
    ("store", renamed(("taps", "fire9")), "taps"),
    ("index", renamed(("files",)), "files"),
    ("run", renamed(("recipe",)), "recipe"),
    ("card", renamed(("format",)), "format"),
    *[(reader, lambda doc: json.dumps([doc]), "") for reader in JSON_READERS],
    *[(reader, nested(key), "") for reader, key in [("store", "taps"), ("segment", "shards"), ("index", "source"),
                                                     ("run", "recipe"), ("card", "classes")]],
], ids=[*[f"{r}-renamed" for r in ("segment", "store-tap", "index", "run", "card")],
        *[f"{r}-list" for r in JSON_READERS], *[f"{r}-deep" for r in JSON_READERS]])
def test_a_damaged_file_is_one_cli_error_line_naming_file_and_field(reader, damage, field, made, tmp_path,
                                                                    monkeypatch, capsys):
    work = tmp_path / "work"
    shutil.copytree(made[reader], work)
    write_images(tmp_path / "imgs", per_class=1)
    np.save(tmp_path / "query.npy", np.ones((1, 512), np.float32))
    name = READERS[reader][0]
    (work / name).write_text(damage(json.loads((work / name).read_text())))
    args = [a.format(dir=work) for a in COMMANDS[reader]]
    monkeypatch.setattr(sys, "argv", ["featkit", *args])
    monkeypatch.setenv("FEATKIT_DEBUG", "0")
    with pytest.raises(SystemExit) as exited:
        featkit_main()
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 1, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert str(work / name) in err and field in err, err
