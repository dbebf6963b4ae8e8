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

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from featkit._atomic import TMP_SUFFIX, write_bytes, write_json, writing
from featkit._faiss import faiss
from featkit._files import Recorded, Verified, file_problem, is_sha256, read_json, sha256_file, verify_files
from featkit.choices import IndexKind, SearchMetric, values
from featkit.errors import SearchIndexError, WriteError
from featkit.store.format import MAX_COUNT, is_count, parquet_bytes, plain_name

FORMAT = "featkit-index"
VERSION = 1
MANIFEST = "manifest.json"
ID_COLUMNS = ["id", "path", "label", "store", "row"]
# the search knobs featkit tunes and records (featkit.index.kinds); k_factor: IVF-PQ candidates re-ranked per result
SEARCH_PARAMS = ("nprobe", "efSearch", "k_factor")


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
    try:
        manifest = read_json(path)
    except FileNotFoundError:
        raise SearchIndexError(f"{root} is not a featkit index (no {MANIFEST}). "
                               f"Build one with: featkit index build STORE -o {root}") from None
    except ValueError as exc:
        raise SearchIndexError(f"{path} {exc}; rebuild the index with featkit index build.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        what = f"the format of {path} is not '{FORMAT}'" if isinstance(manifest, dict) else \
            f"{path} holds a JSON {type(manifest).__name__}, not an object"
        raise SearchIndexError(f"{root} is not a featkit index ({what}).")
    if manifest.get("version") != VERSION:
        raise SearchIndexError(f"{root} is a featkit index of format version {str(manifest.get('version'))[:20]!r}; "
                               f"this featkit reads version {VERSION}. Rebuild it with featkit index build.")
    if problem := _problem(manifest):
        raise SearchIndexError(f"{path} is damaged: {problem}. Rebuild the index with featkit index build.")
    return manifest


def _shown(value: object) -> str:
    """A value for an error message: scalars as written, containers by their kind (never a huge repr)."""
    return repr(value)[:80] if isinstance(value, (str, int, float, type(None))) else f"a JSON {type(value).__name__}"


def _problem(m: dict) -> str:
    """The first field of the manifest ``m`` that featkit reads and finds missing or malformed; "" if none."""
    for key, low in (("generation", 1), ("count", 0), ("index_dim", 1), ("dim", 1), ("next_id", 0),
                     ("training_size", 0)):
        if not is_count(m.get(key), low):
            return f"{key} must be an integer from {low} to {MAX_COUNT}, got {_shown(m.get(key))}"
    if "pca" not in m or (m["pca"] is not None and not is_count(m["pca"], 1)):
        return f"pca must be null or an integer >= 1, got {_shown(m.get('pca'))}"
    if m["dim"] != m["index_dim"] or m["next_id"] < m["count"]:
        return "dim must equal index_dim, and next_id be at least count"
    for key, choices in (("kind", values(IndexKind)[1:]), ("metric", values(SearchMetric))):  # kinds without auto
        if m.get(key) not in choices:
            return f"{key} must be one of {', '.join(choices)}, got {_shown(m.get(key))}"
    for key in ("factory", "faiss_version"):
        if not isinstance(m.get(key), str):
            return f"{key} must be a string, got {_shown(m.get(key))}"
    recall = m.get("recall_at_10")
    if not (isinstance(recall, (int, float)) and not isinstance(recall, bool) and 0 <= recall <= 1):
        return f"recall_at_10 must be a number from 0 to 1, got {_shown(recall)}"
    params = m.get("search_params")
    if not isinstance(params, dict) or not all(k in SEARCH_PARAMS and is_count(v, 1) for k, v in params.items()):
        return f"search_params must map {' or '.join(SEARCH_PARAMS)} to an integer >= 1, got {_shown(params)}"
    source = m.get("source")
    if (not isinstance(source, dict) or not isinstance(source.get("tap"), str)
            or not isinstance(source.get("weights_path"), (str, type(None)))
            or not isinstance(source.get("stores"), list) or not all(isinstance(p, str) for p in source["stores"])):
        return "source must be an object with tap, settings, weights_path (null or a path) and stores (paths)"
    files = m.get("files")
    for key, suffix in _FILE_SUFFIX.items():
        entry = files.get(key) if isinstance(files, dict) else None
        if not isinstance(entry, dict):
            return f"files.{key} must be an object with name, sha256 and bytes"
        if not plain_name(entry.get("name")) or not entry["name"].endswith(suffix):
            return (f"files.{key}.name must be the name of a {suffix} file in the index directory, "
                    f"got {_shown(entry.get('name'))}")
        if not is_sha256(entry.get("sha256")):
            return f"files.{key}.sha256 must be 64 hex digits, got {_shown(entry.get('sha256'))}"
        if not is_count(entry.get("bytes")):
            return f"files.{key}.bytes must be an integer from 0 to {MAX_COUNT}, got {_shown(entry.get('bytes'))}"
    return ""


_FILE_SUFFIX = {"index": ".faiss", "ids": ".parquet"}
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
    if len(ids) and ids["id"].max() >= manifest["next_id"]:  # the next add would reuse ids
        raise SearchIndexError(f"{root / MANIFEST} is damaged: next_id must be above every id of {ids_path}. "
                               "Rebuild the index with featkit index build.")
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
