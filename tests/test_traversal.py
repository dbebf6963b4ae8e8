"""Names read from a manifest stay inside their directory (RELIABILITY.md row 25).

Each of ≥ 30 traversal payloads (``../``, absolute paths, separators of either kind, drive letters, NUL, home and
UNC paths, encoded or look-alike dots and slashes, an over-long name) is put in every name a store or index
manifest holds: a tap, a shard's file, an index's FAISS file and its id table. Where the payload points outside
the directory, a valid decoy file waits there (an ``.npy`` of the right shape, a copy of the real ``.faiss`` or
``.parquet`` file with its sha256 and size written into the manifest), so a reader that followed the name would
succeed. Opening must end in a featkit error, and a Python audit hook on ``open`` must see no file opened outside
the directory. ``featkit index build`` on such a store is checked the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import as_v1_store, files_record, read_all, shard_dir, write_images

import featkit
from featkit.cli.app import main as featkit_main
from featkit.errors import FeatkitError
from featkit.index import Index
from featkit.store.format import npy_bytes

FAST = {"model": "squeezenet1_1", "weights": "random", "device": "cpu", "workers": 0, "pool": "avg", "seed": 7}
TAP = "fire9"

PAYLOADS = [
    "../x", "../../../outside", "..", ".", "", "../", "./x", ".hidden", "x/../../y", "features/../../x",
    "/etc/passwd", "/tmp", "/", "//server/share", "~/x", "~", "a/b", "x/",
    "a\\b", "..\\..", "..\\..\\outside", "\\\\server\\share", "C:evil", "c:\\x", "C:/x", "x\0y", "\0",
    " ../x", "\t../x", "x\n../y", "%2e%2e/x", "..%2f..%2fx", "%2e%2e%2f%2e%2e%2fx", "..;/x", "....//x",
    "\u2215etc\u2215passwd", "..\u2215x", "\uff0e\uff0e/x", "\u2024\u2024/x", "\u202e../x", "\ud800", "a" * 300,
]


class OpenWatch:
    """Every path opened while ``active`` (a Python audit hook: it sees open(), io.open_code and os.open)."""

    def __init__(self):
        self.active = False
        self.paths: list[str] = []
        sys.addaudithook(self)  # hooks cannot be removed; an inactive one costs a comparison

    def __call__(self, event: str, args) -> None:
        if self.active and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            self.paths.append(os.path.abspath(os.fsdecode(args[0])))


WATCH = OpenWatch()


@contextlib.contextmanager
def watched() -> Iterator[list[str]]:
    WATCH.paths = []
    WATCH.active = True
    try:
        yield WATCH.paths
    finally:
        WATCH.active = False


def inside(path: str, folder: Path) -> bool:
    return path == str(folder) or path.startswith(str(folder) + os.sep)


def plant(root: Path, rel: str, data: bytes) -> str | None:
    """Put ``data`` where ``rel`` (a name taken relative to ``root``) points, when that is outside ``root`` and
    somewhere a test may write; returns that place (None: the payload points nowhere plantable)."""
    target = os.path.normpath(os.path.join(root, rel))
    if inside(target, root) or not inside(target, root.parents[2]):
        return None
    try:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_bytes(data)
    except (OSError, ValueError):  # NUL, lone surrogates, over-long names: no such file can exist
        return None
    return target


def refused_without_reading_outside(root: Path, opener: Callable[[], object], targets: list[str],
                                    allowed: tuple[Path, ...] = ()) -> None:
    """``opener`` raises a featkit error and opens no file outside ``root`` (and ``allowed``): no decoy, no
    absolute target, nothing in the test's folder."""
    area = root.parents[2]
    with watched() as opened, pytest.raises(FeatkitError):
        opener()
    absolute = {os.path.normpath(t) for t in targets}
    outside = [p for p in opened if not any(inside(p, d) for d in (root, *allowed))
               and (inside(p, area) or p in absolute)]
    assert not outside, outside


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path]:
    """A store of one tap and an index over it."""
    base = tmp_path_factory.mktemp("made")
    featkit.extract(write_images(base / "imgs", per_class=2), base / "store", layers=[TAP], **FAST)
    Index.build(base / "store").save(base / "index")
    return base / "store", base / "index"


def verify(root: Path) -> None:
    """``featkit verify``, which hashes every file a manifest names: raises for a file it reports bad too."""
    checked = featkit.verify(root)
    if checked.bad:
        raise FeatkitError(f"{checked.bad[0].path} {checked.bad[0].problem}")


def copy(src: Path, tmp_path: Path) -> Path:
    """A copy three folders down in ``tmp_path``, so that ``../../../x`` still lands inside ``tmp_path``."""
    root = tmp_path / "a" / "b" / "c" / src.name
    shutil.copytree(src, root)
    return root


def edit(path: Path, change: Callable[[dict], None]) -> None:
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


# ---- a feature store: its tap names and its shards' file names ----------------------------------------------

def name_the_tap(root: Path, tap: str) -> list[str]:
    """Rename the store's tap to ``tap`` everywhere a manifest names it; plant a decoy where it points."""
    shards = shard_dir(root)
    manifest = json.loads((root / "manifest.json").read_text())
    rows = json.loads(files_record(root).read_text())["shards"][0]["rows"]
    rel = f"features/{tap}/part-00000.npy"
    target = plant(root, os.path.join(os.path.relpath(shards, root), rel),
                   npy_bytes(np.ones((rows, manifest["taps"][TAP]["dims"]), np.float32)))

    def change(m: dict) -> None:
        m["taps"] = {tap: m["taps"][TAP]}
        m["settings"]["taps"][0]["name"] = tap

    def rename_file(m: dict) -> None:
        files = m["shards"][0]["files"]
        files[rel] = files.pop(f"features/{TAP}/part-00000.npy")

    edit(root / "manifest.json", change)
    edit(files_record(root), rename_file)
    return [t for t in (target, os.path.join(shards, rel)) if t]


@pytest.fixture(params=["v2", "v1"])
def store_made(request, made, tmp_path_factory) -> Path:
    if request.param == "v2":
        return made[0]
    v1 = tmp_path_factory.getbasetemp() / "v1-store"
    return v1 if v1.exists() else as_v1_store(made[0], v1)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_tap_name_never_reads_outside_the_store(payload, store_made, tmp_path):
    root = copy(store_made, tmp_path)
    targets = name_the_tap(root, payload)
    refused_without_reading_outside(root, lambda: featkit.open_features(root)[payload][:], targets)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_shard_file_name_never_reads_outside_the_store(payload, store_made, tmp_path):
    root = copy(store_made, tmp_path)
    shards = shard_dir(root)
    real = f"features/{TAP}/part-00000.npy"
    data = (shards / real).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    names = [payload, f"features/{payload}/part-00000.npy", f"{payload}/part-00000.npy"]
    targets = [t for rel in names if (t := plant(root, os.path.join(os.path.relpath(shards, root), rel), data))]

    def change(m: dict) -> None:
        m["shards"][0]["files"].update({rel: digest for rel in names})

    edit(files_record(root), change)
    refused_without_reading_outside(root, lambda: read_all(root), targets)
    refused_without_reading_outside(root, lambda: verify(root), targets)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_segment_name_in_the_log_never_reads_outside_the_store(payload, made, tmp_path):
    """v2: the log names each merged segment; a traversing name is refused before any of its files is read."""
    root = copy(made[0], tmp_path)
    log = (root / "log.jsonl").read_text().splitlines()
    at = next(i for i, line in enumerate(log) if '"segment"' in line)
    entry = json.loads(log[at])
    segment = root / "segments" / entry["segment"]
    targets = [t for rel in (payload, f"{payload}/segment.json", f"{payload}/features/{TAP}/part-00000.npy")
               if (t := plant(root, os.path.join("segments", rel), (segment / "segment.json").read_bytes()))]
    entry["segment"] = payload
    log[at] = json.dumps(entry)
    (root / "log.jsonl").write_text("\n".join(log) + "\n")
    refused_without_reading_outside(root, lambda: read_all(root), targets)
    refused_without_reading_outside(root, lambda: verify(root), targets)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_index_build_on_a_store_with_a_traversing_tap_reads_nothing_outside(payload, store_made, tmp_path,
                                                                           monkeypatch, capsys):
    root = copy(store_made, tmp_path)
    targets = name_the_tap(root, payload)
    out = tmp_path / "out.index"
    monkeypatch.setattr(sys, "argv", ["featkit", "index", "build", str(root), "-o", str(out)])
    monkeypatch.setenv("FEATKIT_DEBUG", "1")  # the FeatkitError itself, not the exit it becomes
    refused_without_reading_outside(root, featkit_main, targets, allowed=(out,))
    assert not out.exists()


# ---- an index: the names of its FAISS file and id table -------------------------------------------------------

@pytest.mark.parametrize("key", ["index", "ids"])
@pytest.mark.parametrize("payload", PAYLOADS)
def test_an_index_file_name_never_reads_outside_the_index(payload, key, made, tmp_path):
    root = copy(made[1], tmp_path)
    manifest = json.loads((root / "manifest.json").read_text())
    real = root / manifest["files"][key]["name"]
    data = real.read_bytes()
    names = [payload, payload + real.suffix, f"{payload}/{real.name}"]  # each with the real file's sha256 and size
    targets = [t for rel in names if (t := plant(root, rel, data))]
    for name in names:
        edit(root / "manifest.json", lambda m, name=name: m["files"][key].update(name=name))
        refused_without_reading_outside(root, lambda: Index.open(root), targets)
        refused_without_reading_outside(root, lambda: verify(root), targets)
