"""Index directory format v1: the FAISS file, the id table and the manifest, saved so a kill never breaks it.

```
NAME.index/
  manifest.json             # written last: the commit point; names the current generation's files + sha256
  index-000003.faiss        # faiss.write_index output (generation 3)
  ids-000003.parquet        # id, path, label, store, row (faiss id → image; no pickle anywhere)
```

A save writes the next generation's files beside the current ones (each through a temp file, fsync, rename),
then replaces ``manifest.json`` atomically, then deletes the older generation. A kill at any moment leaves a
manifest that names complete files of one generation: the previous index, or the new one.

Opening checks the manifest, the file sizes and the sha256 of both files before ``faiss.read_index`` sees a
byte, so a truncated, bit-flipped or swapped-in file is refused with one line instead of a FAISS crash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from featkit._atomic import TMP_SUFFIX, write_bytes, write_json, writing
from featkit._faiss import faiss
from featkit._files import Recorded, Verified, file_problem, sha256_file, verify_files
from featkit.errors import SearchIndexError, WriteError
from featkit.store.format import parquet_bytes

FORMAT = "featkit-index"
VERSION = 1
MANIFEST = "manifest.json"
ID_COLUMNS = ["id", "path", "label", "store", "row"]


def _write_faiss(index: faiss.Index, path: Path) -> tuple[str, int]:
    """``faiss.write_index`` through a temp file, fsync and rename; returns (sha256, bytes)."""
    try:
        with writing(path) as tmp:
            faiss.write_index(index, str(tmp))
            digest, size = sha256_file(tmp), tmp.stat().st_size
    except RuntimeError as exc:  # FAISS's own I/O errors
        raise SearchIndexError(f"Cannot write {path}: {exc}. The previous index (if any) is intact.") from None
    return digest, size


def read_manifest(root: Path) -> dict:
    """The manifest of the index directory ``root``; refuses anything that is not a featkit index v1."""
    if root.is_file():
        raise SearchIndexError(f"{root} is a file, not a featkit index directory. "
                               f"Build one with: featkit index build STORE -o {root}")
    path = root / MANIFEST
    if not path.exists():
        raise SearchIndexError(f"{root} is not a featkit index (no {MANIFEST}). "
                               f"Build one with: featkit index build STORE -o {root}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SearchIndexError(f"{path} is not readable JSON ({exc}); "
                               f"rebuild the index with featkit index build.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SearchIndexError(f"{root} is not a featkit index (its {MANIFEST} is not a '{FORMAT}' manifest).")
    if manifest.get("version") != VERSION:
        raise SearchIndexError(f"{root} is a featkit index of format version {manifest.get('version')}; "
                               f"this featkit reads version {VERSION}. Rebuild it with featkit index build.")
    return manifest


_FILES = {"index": "FAISS index", "ids": "id table"}  # manifest key → what the file is


def _recorded(root: Path, manifest: dict, key: str) -> Recorded:
    entry = manifest["files"][key]
    return Recorded(root / entry["name"], entry["sha256"], entry["bytes"])


def _verified(root: Path, manifest: dict, key: str) -> Path:
    file = _recorded(root, manifest, key)
    if (problem := file_problem(*file)) is not None:
        raise SearchIndexError(f"The {_FILES[key]} file {file.path} is {problem}. Rebuild the index with "
                               f"featkit index build.")
    return file.path


def verify(root: Path, *, progress: bool = False) -> Verified:
    """Re-hash the index's files against the sizes and sha256 its manifest recorded (``featkit verify``)."""
    manifest = read_manifest(root)
    return verify_files(root, "index", [_recorded(root, manifest, key) for key in _FILES], progress=progress)


@dataclass
class Loaded:
    manifest: dict
    index: faiss.Index
    ids: pd.DataFrame


def load(root: Path) -> Loaded:
    """Read an index directory, verifying every checksum before FAISS parses the file."""
    manifest = read_manifest(root)
    ids_path = _verified(root, manifest, "ids")
    index_path = _verified(root, manifest, "index")
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as exc:
        raise SearchIndexError(f"FAISS cannot read {index_path} ({str(exc).splitlines()[0]}). "
                               f"Rebuild the index.") from None
    if index.d != manifest["index_dim"] or index.ntotal != manifest["count"]:
        raise SearchIndexError(f"{index_path} holds {index.ntotal:,} × {index.d}-d vectors but the manifest says "
                               f"{manifest['count']:,} × {manifest['index_dim']}-d. Rebuild the index.")
    ids = pd.read_parquet(ids_path)
    if list(ids.columns) != ID_COLUMNS or len(ids) != manifest["count"]:
        raise SearchIndexError(f"{ids_path} does not match the manifest ({len(ids):,} rows). Rebuild the index.")
    return Loaded(manifest, index, ids)


def check_target(root: Path, overwrite: bool) -> None:
    """Refuse to write an index over something that is not one, or over an index without ``overwrite``."""
    if root.is_file():
        raise SearchIndexError(f"{root} is a file; choose a directory name for the index (e.g. photos.index).")
    if not root.exists() or not any(root.iterdir()):
        return
    if not (root / MANIFEST).exists():
        raise SearchIndexError(f"{root} exists and is not a featkit index; choose another -o (nothing was written).")
    read_manifest(root)
    if not overwrite:
        raise SearchIndexError(f"{root} already holds an index. Use --overwrite to replace it, "
                               f"or featkit index add to extend it.")


def save(root: Path, index: faiss.Index, ids: pd.DataFrame, manifest: dict) -> dict:
    """Write ``index`` and ``ids`` as the next generation of ``root``, then commit ``manifest`` naming them.

    Returns:
        The manifest as written (with ``files`` and ``generation`` filled in).
    """
    previous = read_manifest(root) if (root / MANIFEST).exists() else None
    generation = (previous["generation"] + 1) if previous else 1
    index_name, ids_name = f"index-{generation:06d}.faiss", f"ids-{generation:06d}.parquet"
    ids_data = parquet_bytes(ids[ID_COLUMNS])
    try:
        root.mkdir(parents=True, exist_ok=True)
        index_sha, index_bytes = _write_faiss(index, root / index_name)
        ids_sha = write_bytes(root / ids_name, ids_data)
        manifest = {**manifest, "format": FORMAT, "version": VERSION, "generation": generation,
                    "count": int(index.ntotal), "index_dim": int(index.d),
                    "files": {"index": {"name": index_name, "sha256": index_sha, "bytes": index_bytes},
                              "ids": {"name": ids_name, "sha256": ids_sha, "bytes": len(ids_data)}}}
        _commit(root, manifest)
    except (WriteError, OSError) as exc:
        detail = str(exc) if isinstance(exc, WriteError) else f"Cannot write {root}: {exc.strerror or exc}."
        raise SearchIndexError(f"{detail} The previous index (if any) is intact.") from None
    keep = {index_name, ids_name, MANIFEST}
    for leftover in root.iterdir():  # older generations, and temp files of a save that was killed
        if leftover.name not in keep and leftover.is_file() and (leftover.suffix in (".faiss", ".parquet", TMP_SUFFIX)):
            leftover.unlink(missing_ok=True)
    return manifest


def _commit(root: Path, manifest: dict) -> None:
    """The commit point: the atomic rename of the manifest."""
    write_json(root / MANIFEST, manifest)
