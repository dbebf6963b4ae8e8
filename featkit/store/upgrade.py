"""``featkit store upgrade``: rewrite a v1 store as v2 in place, atomically.

The v1 shards become one segment (``segments/seg-000000``) by hard links, so nothing is copied where the file
system links (a copy where it does not). The new ``log.jsonl`` and the segment's manifest are written beside the
v1 files, which a v1 reader ignores; replacing ``manifest.json`` is the one step that makes the store v2. A kill
before it leaves the v1 store as it was, a kill after it a v2 store with v1 folders that nothing reads, which
the next upgrade (or writer) deletes. Row numbers, features, failures, retired rows and runs stay the same.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from featkit._atomic import json_bytes, write_bytes
from featkit.errors import StoreError
from featkit.store import format as fmt
from featkit.store import segments as sg
from featkit.store.lock import StoreLock
from featkit.store.verify import npy_problem, table_problem
from featkit.store.writer import now

V1_FOLDERS = ("features", "metadata", "failures")


@dataclass(frozen=True)
class Upgraded:
    root: Path
    was: int  # the format version found
    shards: int
    rows: int
    linked: bool  # hard links (False: the file system refused them, the files were copied)


def upgrade_store(root: str | os.PathLike) -> Upgraded:
    """Rewrite the v1 store at ``root`` as v2 in place; a v2 store is left as it is.

    Raises:
        StoreError: not a store, another process writes to it, or a shard file disagrees with the manifest (it is
            refused before anything changes: ``featkit verify`` names every bad file).
    """
    root = Path(root)
    found = fmt.read_manifest(root)
    if found is None:
        raise StoreError(f"{root} is not a featkit feature store (no {fmt.MANIFEST}).")
    lock = StoreLock(root)
    try:
        manifest, settings = fmt.read_manifest(root) or found  # again, under the lock
        if manifest["version"] != 1:
            remove_v1_folders(root)  # what a kill right after an upgrade's commit left
            return Upgraded(root, manifest["version"], 0, 0, True)
        shards = manifest["shards"]
        _check_files(root, manifest)
        name = sg.segment_name(0)
        shutil.rmtree(root / sg.SEGMENTS, ignore_errors=True)  # a killed upgrade's
        directory = sg.segment_dir(root, name)
        linked = True
        consumed = 0
        records = []
        for shard in shards:
            for rel in shard["files"]:
                linked &= _link(root / rel, directory / rel)
            consumed += shard["rows"] + shard["failures"]
            records.append({**shard, "consumed": consumed})
        segment = sg.SegmentManifest(name, sg.settings_digest(settings), consumed, "0" * 64, records, sealed=True)
        if shards:
            sg.write_segment_manifest(root, segment)
        lines = [{"run": run} for run in manifest.get("runs", [])]
        if shards:
            lines.append({"segment": name, "rows": [s["rows"] for s in shards],
                          "failures": [s["failures"] for s in shards]})
        if manifest.get("stale_rows"):
            lines.append({"retire": sorted(manifest["stale_rows"])})
        write_bytes(root / sg.LOG, b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in lines))
        upgraded = {"format": fmt.FORMAT, "version": sg.VERSION, "created": manifest.get("created", now()),
                    "upgraded": now(), "taps": manifest["taps"], "settings": manifest["settings"]}
        lock.check()
        fmt.write_file(root / fmt.MANIFEST, json_bytes(upgraded))  # the commit point
        remove_v1_folders(root)
        return Upgraded(root, 1, len(shards), sum(s["rows"] for s in shards) - len(manifest.get("stale_rows", [])),
                        linked)
    finally:
        lock.release()


def remove_v1_folders(root: Path) -> None:
    """Delete v1's shard folders from a v2 store (an upgrade, or a kill right after one, left them)."""
    for folder in V1_FOLDERS:
        shutil.rmtree(root / folder, ignore_errors=True)


def _check_files(root: Path, manifest: dict) -> None:
    problems = []
    for shard in manifest["shards"]:
        i = shard["index"]
        problems += [f"{root / rel} is missing" for rel in shard["files"] if not (root / rel).is_file()]
        for tap, meta in manifest["taps"].items():
            if problem := npy_problem(root / fmt.feature_path(tap, i), shard["rows"], meta["dims"], meta["dtype"]):
                problems.append(f"{root / fmt.feature_path(tap, i)} {problem}")
        for rel, rows in ((fmt.metadata_path(i), shard["rows"]), (fmt.failures_path(i), shard["failures"])):
            if problem := table_problem(root / rel, rows):
                problems.append(f"{root / rel} {problem}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5:,} more" if len(problems) > 5 else "")
        raise StoreError(f"Cannot upgrade {root}: {shown}. Nothing was changed; `featkit verify {root}` lists every "
                         "damaged file.")


def _link(source: Path, target: Path) -> bool:
    """``target`` as a hard link to ``source`` (True), or a copy where links are refused (False)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        return True
    except OSError:
        fmt.write_file(target, source.read_bytes())
        return False
