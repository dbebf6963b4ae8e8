"""Nothing featkit reads blocks on a FIFO, a socket or a device file (RELIABILITY row 27; images: row 11).

``open()`` on a named pipe waits for a writer forever and ``/dev/zero`` never ends, so the cases run in a child
process with a timeout (or a thread, where only a FIFO is read): a hang fails the test instead of the suite. Each
path a user names (weights, the card beside them, list files, recipes, data cards, query vectors) is refused at
once in one line naming the path and what it is. (An image that is such a file is skipped and recorded: row 11,
tests/test_decode.py and tests/test_bad_inputs.py.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import write_images

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo") or not hasattr(socket, "AF_UNIX"),
                                reason="needs FIFOs and Unix sockets")

TIMEOUT = 60  # seconds; a child still running then is blocked
KINDS = {"fifo": "a named pipe (FIFO)", "socket": "a socket", "device": "a device file", "directory": "a directory"}
ATTEMPT = """
import json, sys
from featkit.errors import FeatkitError

def attempt(fn, *args):
    try:
        fn(*args)
    except FeatkitError as exc:
        return str(exc)
    return None
"""


def special(folder: Path, kind: str, name: str) -> Path:
    """Make ``folder/name`` a FIFO, a Unix socket, a symlink to a device, or a directory."""
    path = folder / name
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        cwd = os.getcwd()
        os.chdir(folder)  # a relative address: tmp paths can be longer than a socket address allows
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(name)
        finally:
            os.chdir(cwd)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    return path


def specials(folder: Path, suffix: str, kinds=tuple(KINDS)) -> dict[str, Path]:
    folder.mkdir(exist_ok=True)
    return {kind: special(folder, kind, f"{kind}{suffix}") for kind in kinds}


def run(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT,
                              env={**os.environ, "FEATKIT_DEBUG": "0", **(env or {})})
    except subprocess.TimeoutExpired:
        pytest.fail(f"blocked for {TIMEOUT} s: {' '.join(args)}")


def attempts(code: str, paths: list[Path], env: dict | None = None) -> list[str | None]:
    """Run ``code`` (which prints json of attempt(...) results for sys.argv[1:]) in a child; its messages."""
    proc = run([sys.executable, "-c", ATTEMPT + code, *map(str, paths)], env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_weights_and_their_card_that_are_not_a_file_are_refused_at_once(tmp_path):
    """Weights, the card beside them, and a run directory whose model.pth is a FIFO: refused, never waited on."""
    import torch

    from featkit.backbones.card import WeightsCard, write_card
    from featkit.backbones.spec import Preprocess

    weights = {**specials(tmp_path / "w", ".pth"), "urandom": Path("/dev/urandom")}
    cards = {}
    for kind in KINDS:
        folder = tmp_path / kind
        folder.mkdir()
        torch.save({"w": torch.zeros(1)}, folder / "model.pth")
        cards[kind] = special(folder, kind, "model.json")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "recipe.json").write_text("{}")
    special(run_dir, "fifo", "model.pth")
    write_card(run_dir / "model.pth", WeightsCard("squeezenet1_1", ("a", "b"), Preprocess(resize=72, crop=64),
                                                  sha256="0" * 64))
    messages = attempts("""
from featkit.backbones.weights import load_backbone_weights
print(json.dumps([attempt(load_backbone_weights, "squeezenet1_1", p) for p in sys.argv[1:]]))
""", [*weights.values(), *(card.parent / "model.pth" for card in cards.values()), run_dir])
    for (kind, path), message in zip(weights.items(), messages[:5], strict=True):
        what = KINDS.get(kind, "a device file")
        assert message == f"weights path {path} is {what}, not a file; pass the weights file itself", kind
    for (kind, card), message in zip(cards.items(), messages[5:9], strict=True):
        assert message == (f"The weights card {card} is {KINDS[kind]}, not a file; move it away to load model.pth "
                           f"as plain weights."), kind
    assert messages[9:] == [f"weights path {run_dir / 'model.pth'} is a named pipe (FIFO), not a file; pass the "
                            f"weights file itself"]


def test_list_files_that_are_not_a_file_are_refused_at_once(tmp_path):
    paths = [path for suffix in (".csv", ".tsv", ".parquet", ".txt")
             for path in specials(tmp_path / suffix[1:], suffix, ("fifo", "socket", "device")).values()]
    messages = attempts("""
from featkit.data.sources import list_inputs
print(json.dumps([attempt(list_inputs, p) for p in sys.argv[1:]]))
""", paths)
    for path, message in zip(paths, messages, strict=True):
        kind = path.stem
        assert message == f"List file {path} is {KINDS[kind]}, not a file; pass the list file itself.", path


def test_recipes_and_data_cards_that_are_not_a_file_are_refused_at_once(tmp_path):
    recipes = specials(tmp_path / "recipes", ".toml")
    cards = specials(tmp_path / "cards", ".md", ("fifo",))
    messages = attempts("""
from featkit.datasets.cards import list_cards
from featkit.finetune.recipe import resolve_recipe
print(json.dumps([attempt(resolve_recipe, p) for p in sys.argv[1:]] + [attempt(resolve_recipe, "fifo"),
                  attempt(list_cards)]))
""", list(recipes.values()), env={"FEATKIT_RECIPES": str(tmp_path / "recipes"),
                                   "FEATKIT_DATA_CARDS": str(tmp_path / "cards")})
    for (kind, path), message in zip(recipes.items(), messages[:4], strict=True):
        assert message == f"Recipe {path} is {KINDS[kind]}, not a file; pass the recipe file itself.", kind
    fifo = "is a named pipe (FIFO), not a file;"
    assert messages[-2] == f"Recipe {recipes['fifo']} {fifo} pass the recipe file itself."
    assert messages[-1] == f"Data card {cards['fifo']} {fifo} move it out of the cards folder."


def test_the_probe_overlap_check_does_not_open_a_fifo(tmp_path):
    """Probing compares the bytes of same-size files on both sides; a fitted image now a FIFO is not read."""
    import pandas as pd

    from featkit.probes.splits import shared_files

    fifo = special(tmp_path, "fifo", "a.jpg")
    other = tmp_path / "b.jpg"
    other.write_bytes(b"x" * 5)
    fitted, test = pd.DataFrame({"path": [str(fifo)], "bytes": [5]}), pd.DataFrame({"path": [str(other)], "bytes": [5]})
    result: list = []
    worker = threading.Thread(target=lambda: result.append(shared_files(fitted, test)), daemon=True)
    worker.start()
    worker.join(20)
    if not result:  # blocked in open(): a writer that opens and closes the FIFO lets it go
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("shared_files blocked on a FIFO")
    assert result == [()]


def test_the_cli_refuses_in_one_line(tmp_path):
    """``featkit`` with a FIFO as --weights (which hung forever before), list file, recipe or query vectors."""
    images = write_images(tmp_path / "imgs", per_class=1)
    fifos = tmp_path / "f"
    fifos.mkdir()
    for name in ("w.pth", "list.csv", "r.toml", "q.npy"):
        os.mkfifo(fifos / name)
    commands = [
        ["extract", str(images), "-o", str(tmp_path / "s"), "--model", "squeezenet1_1", "--weights",
         str(fifos / "w.pth"), "--workers", "0", "-q"],
        ["extract", str(fifos / "list.csv"), "-o", str(tmp_path / "s"), "--weights", "random", "-q"],
        ["finetune", "--recipe", str(fifos / "r.toml"), "--data", str(images), "-o", str(tmp_path / "run")],
        ["search", str(tmp_path / "some.index"), str(fifos / "q.npy")],
    ]
    proc = run([sys.executable, "-c", """
import contextlib, io, json, sys
from featkit.cli.app import main
results = []
for args in json.loads(sys.argv[1]):
    sys.argv, err = ["featkit", *args], io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            results.append((exc.code, err.getvalue()))
print(json.dumps(results))
""", json.dumps(commands)])
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == len(commands)
    for (code, err), name in zip(results, ("w.pth", "list.csv", "r.toml", "q.npy"), strict=True):
        line = err.strip()
        assert code == 1 and len(line.splitlines()) == 1 and "Traceback" not in line, (name, code, err)
        assert line.startswith("error: ") and f"{fifos / name} is a named pipe (FIFO), not a file; pass the " in line
    assert not (tmp_path / "s").exists() and not (tmp_path / "run").exists()
