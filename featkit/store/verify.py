"""A store's files against its manifest: cheap checks on every open, and re-hashing on request.

The manifest commits each shard, so a shard file that disagrees with it was damaged afterwards (a truncated
copy, a flipped bit, a file swapped in by hand). Opening a store checks what costs a ``stat`` and a header read
per file: each ``.npy`` file's shape, dtype and size against the shard's rows and the tap's dims and dtype, and
each table's row count, so a damaged shard is refused with one line instead of being read misaligned.
:func:`verify_store` (``featkit verify STORE``) re-hashes every file against the sha256 the manifest recorded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from numpy.lib import format as npy

from featkit._files import BadFile, Recorded, Verified, not_a_file, verify_files
from featkit.errors import StoreError
from featkit.store import format as fmt

_HEADERS = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}  # the versions np.save writes
_SOURCE = re.compile(r"^Could not open Parquet input source '.*?': ")


def damaged(root: Path, problems: list[str]) -> StoreError:
    """The one refusal for a store whose files disagree with its manifest: names the files, says what to do."""
    shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10:,} more" if len(problems) > 10 else "")
    return StoreError(f"The feature store {root} is damaged: {shown}. `featkit verify {root}` lists every damaged "
                      f"file; copy the store again, or recompute it with `featkit extract ... -o {root} --overwrite`.")


def npy_problem(path: Path, rows: int, dims: int, dtype: str) -> str:
    """What is wrong with the ``.npy`` file at ``path`` as a (rows, dims) array of ``dtype``; "" if nothing.

    Reads the header only (a ``stat`` and a few hundred bytes), so opening stays fast for thousands of shards.
    """
    if (what := not_a_file(path)) is not None:
        return f"is {what}, not a .npy file"
    try:
        with open(path, "rb") as f:
            version = npy.read_magic(f)
            if version not in _HEADERS:
                return f"is a version {version[0]}.{version[1]} .npy file, which featkit does not write"
            shape, _, found = _HEADERS[version](f)
            header, size = f.tell(), os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    except Exception as exc:  # noqa: BLE001 - numpy's header parser raises ValueError, SyntaxError, TokenError, ...
        return f"is not a .npy file ({_reason(exc)})"
    if found != np.dtype(dtype):
        return f"holds {found} values where the manifest says {dtype}"
    if shape != (rows, dims):
        return f"holds {' × '.join(f'{n:,}' for n in shape)} values where the manifest says {rows:,} × {dims:,}"
    expected = header + rows * dims * found.itemsize
    if size != expected:
        return f"is {size:,} bytes where its header and the manifest make {expected:,}"
    return ""


def rows_problem(found: int, rows: int) -> str:
    return "" if found == rows else f"holds {found:,} rows where the manifest says {rows:,}"


def table_problem(path: Path, rows: int) -> str:
    """What is wrong with the parquet table at ``path`` as one of ``rows`` rows; "" if nothing (footer only)."""
    if (what := not_a_file(path)) is not None:
        return f"is {what}, not a parquet table"
    try:
        with pq.ParquetFile(path) as table:
            found = table.metadata.num_rows
    except FileNotFoundError:
        return "is missing"
    except Exception as exc:  # noqa: BLE001 - pyarrow raises OSError, ValueError, KeyError, ... on a damaged file
        return f"is not a readable parquet table ({_reason(exc)})"
    return rows_problem(found, rows)


def _reason(exc: Exception) -> str:
    """The parser's reason, short: its first line, without the path (the message names it already)."""
    lines = str(exc).splitlines()
    return _SOURCE.sub("", lines[0] if lines else "")[:120] or type(exc).__name__


def read_table(root: Path, rel: str, rows: int, first_row: int | None = None) -> pd.DataFrame:
    """The table at ``root / rel``, refused unless it holds ``rows`` rows (numbered from ``first_row``, if given).

    Raises:
        StoreError: the file is missing, not a regular file, not parquet, or of another length (:func:`damaged`).
    """
    path = root / rel
    if (what := not_a_file(path)) is not None:
        raise damaged(root, [f"{path} is {what}, not a parquet table"])
    try:
        frame = pd.read_parquet(path)
    except FileNotFoundError:
        raise damaged(root, [f"{path} is missing"]) from None
    except Exception as exc:  # noqa: BLE001 - pyarrow raises OSError, ValueError, KeyError, ... on a damaged file
        raise damaged(root, [f"{path} is not a readable parquet table ({_reason(exc)})"]) from None
    problem = rows_problem(len(frame), rows)
    if not problem and first_row is not None:
        numbered = frame["row"].to_numpy() if "row" in frame else np.empty(0)
        if not np.array_equal(numbered, np.arange(first_row, first_row + rows)):
            problem = f"does not number its rows {first_row:,} to {first_row + rows - 1:,} as the manifest's shards do"
    if problem:
        raise damaged(root, [f"{path} {problem}"])
    return frame


def npy_shape(path: Path) -> tuple[tuple[int, ...], str]:
    """The shape and dtype a ``.npy`` file's header gives.

    Raises:
        StoreError: the file is missing or its header unreadable (names the file).
    """
    if (what := not_a_file(path)) is not None:
        raise StoreError(f"{path} is {what}, not a .npy file.")
    try:
        with open(path, "rb") as f:
            version = npy.read_magic(f)
            shape, _, dtype = _HEADERS[version](f)
    except Exception as exc:  # noqa: BLE001 - numpy's header parser raises ValueError, SyntaxError, KeyError, ...
        raise StoreError(f"{path} is not a readable .npy file ({_reason(exc)}).") from None
    if len(shape) != 2:
        raise StoreError(f"{path} holds a {len(shape)}-d array, not rows of vectors.")
    return shape, str(dtype)


def store_shards(root: Path, manifest: dict) -> tuple[list[tuple[fmt.ShardRef, dict]], list[BadFile]]:
    """Each committed shard of the store with the files (and sha256s) recorded for it, and unreadable records.

    v1 records files in its manifest; v2 in each merged segment's manifest, which must agree with the log.
    """
    from featkit.store import segments as sg
    from featkit.store.settings import StoreSettings

    if manifest["version"] == 1:
        table = sg.ShardTable.of_v1(root, manifest["shards"])
        return [(ref, manifest["shards"][ref.index]["files"]) for ref in table], []
    log = sg.read_log(root)
    table = sg.ShardTable.of_log(root, log)
    digest = sg.settings_digest(StoreSettings.from_json(manifest["settings"], str(root / fmt.MANIFEST)))
    good: dict[str, list[dict]] = {}  # segment -> its shard records
    bad: list[BadFile] = []
    for name, rows, fails in log.segments:
        path = sg.segment_dir(root, name) / sg.SEGMENT_MANIFEST
        try:
            segment = sg.read_segment_manifest(root, name)
        except StoreError as exc:
            bad.append(BadFile(path, str(exc).split(f"{path} ", 1)[-1].split(". Restore", 1)[0]))
            continue
        if problem := sg.merged_segment_problem(segment, rows, fails, digest):
            bad.append(BadFile(path, problem))
            continue
        assert segment is not None
        good[name] = segment.shards
    return [(ref, good[ref.segment][ref.index]["files"]) for ref in table if ref.segment in good], bad


def verify_store(root: str | os.PathLike, *, progress: bool = False) -> Verified:
    """Re-hash every file of the store at ``root`` against the sha256 its manifest recorded.

    Also reports what opening it would refuse (a ``.npy`` header or table length that disagrees with the
    manifest), every bad file at once.

    Raises:
        StoreError: ``root`` is not a feature store, or its manifest or log is damaged.
    """
    root = Path(root)
    found = fmt.read_manifest(root)
    if found is None:
        raise StoreError(f"{root} is not a featkit feature store (no {fmt.MANIFEST}).")
    manifest = found[0]
    shards, bad = store_shards(root, manifest)
    recorded: list[Recorded] = []
    for ref, files in shards:
        i, d = ref.index, ref.directory
        where = f"shards[{i}].files" if manifest["version"] == 1 else f"{ref.segment}/segment.json"
        cheap = {fmt.feature_path(tap, i): npy_problem(d / fmt.feature_path(tap, i), ref.rows, meta["dims"],
                                                       meta["dtype"]) for tap, meta in manifest["taps"].items()}
        cheap[fmt.metadata_path(i)] = table_problem(d / fmt.metadata_path(i), ref.rows)
        cheap[fmt.failures_path(i)] = table_problem(d / fmt.failures_path(i), ref.failures)
        for rel in cheap.keys() - files.keys():
            bad.append(BadFile(d / rel, f"has no sha256 in the manifest ({where})"))
        for rel, sha256 in files.items():  # names and digests were checked when the manifest was read
            if cheap.get(rel):
                bad.append(BadFile(d / rel, cheap[rel].removeprefix("is ")))
            else:
                recorded.append(Recorded(d / rel, sha256))
    return verify_files(root, "feature store", recorded, bad=bad, progress=progress)
