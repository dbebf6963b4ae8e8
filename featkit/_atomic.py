"""Atomic file writes, for every file featkit writes: a temp file beside the target, fsync, rename, fsync the folder.

A reader (or a run resumed after ``kill -9``) sees either the old file or the whole new one, never a part, and a
committed rename survives a power cut. Temp files end in :data:`TMP_SUFFIX`; writers that own a folder (the
feature store, an index) delete leftovers of a killed write when they open it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from featkit.errors import WriteError

TMP_SUFFIX = ".tmp"


def fsync_dir(path: Path) -> None:
    """Make the names in the folder ``path`` (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path: Path) -> Path:
    return path.with_name(path.name + TMP_SUFFIX)


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path`` to write to (by any library); it becomes ``path`` when the block ends.

    Raises:
        WriteError: the write failed (disk full, quota, permissions); names the path and errno. The temp file is
            removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WriteError(f"Cannot write {path}: [Errno {exc.errno}] {exc.strerror or exc}.") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically; returns its sha256 (hex)."""
    with writing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def json_bytes(obj: Any, *, indent: int | None = 1, sort_keys: bool = False, default=None) -> bytes:
    """``obj`` as UTF-8 JSON with a final newline, as featkit writes every manifest."""
    return (json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default) + "\n").encode()


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1, sort_keys: bool = False,
               default=None) -> str:
    """Write ``obj`` as JSON (see :func:`json_bytes`) to ``path`` atomically; returns its sha256."""
    return write_bytes(path, json_bytes(obj, indent=indent, sort_keys=sort_keys, default=default))
