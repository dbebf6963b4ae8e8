"""Reading files featkit did not write just now: refuse what would block before opening it, and hash what is there.

``open()`` on a named pipe waits for a writer forever, and a character device can stream without end, so every
path a user or a manifest names (weights, list files, store and index files) is checked with ``stat`` first.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


def not_a_file(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it is not a regular file ("a named pipe (FIFO)", "a directory", ...), else None.

    A missing or unreadable path gives None too: the caller's ``open`` then reports that in its own words.
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    return "not a regular file"


def read_json(path: Path) -> object:
    """The JSON document in the file at ``path``, as a manifest reader needs it: never blocks, never recurses away.

    Raises:
        FileNotFoundError: there is no file at ``path`` (the caller knows what its absence means).
        ValueError: what else is wrong, as words to follow the path: "is a named pipe (FIFO), not a JSON file",
            "cannot be read (...)", "is not readable JSON (...)" (also for nesting deeper than Python recurses).
    """
    if (what := not_a_file(path)) is not None:  # read_bytes() would wait forever on a FIFO
        raise ValueError(f"is {what}, not a JSON file")
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"is not readable JSON ({str(exc)[:200]})") from None


def is_sha256(value: object) -> bool:
    """True for a hex sha256 as featkit records them: 64 lowercase hex digits."""
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def sha256_file(path: str | os.PathLike, on_chunk: Callable[[int], object] | None = None) -> str:
    """The hex sha256 of the file at ``path``, read in 1 MiB chunks (the caller checks it is a regular file).

    ``on_chunk`` is called with the size of each chunk read (a progress bar's ``update``).
    """
    digest = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
            if on_chunk is not None:
                on_chunk(n)
    return digest.hexdigest()


class Recorded(NamedTuple):
    """A file as its manifest recorded it: where it is, its sha256 and, where the manifest keeps it, its size."""

    path: Path
    sha256: str
    size: int | None = None


class BadFile(NamedTuple):
    """A file that does not match its manifest, and how: "missing", "truncated or replaced (...)", ..."""

    path: Path
    problem: str


@dataclass(frozen=True)
class Verified:
    """What re-hashing a store, index or fine-tuning run found (see ``featkit verify``).

    Attributes:
        root: the directory verified.
        kind: "feature store", "index" or "fine-tuning run".
        files: files checked against a recorded sha256.
        bytes: bytes read to hash them.
        seconds: how long it took.
        bad: every file that is missing, not a regular file, of the wrong size or with another sha256.
        unchecked: files present for which nothing records a checksum.
    """

    root: Path
    kind: str
    files: int
    bytes: int
    seconds: float
    bad: tuple[BadFile, ...]
    unchecked: tuple[Path, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.bad


def file_problem(path: Path, sha256: str, size: int | None = None,
                 on_chunk: Callable[[int], object] | None = None) -> str | None:
    """How the file at ``path`` differs from what its manifest recorded (sha256, size), or None if it does not.

    Never blocks: a FIFO, socket, device or directory in its place is a problem, found with ``stat``.
    """
    if (what := not_a_file(path)) is not None:
        return f"{what}, not a file"
    try:
        found = os.stat(path).st_size
        if size is not None and found != size:
            return f"truncated or replaced ({found:,} bytes, the manifest says {size:,})"
        if sha256_file(path, on_chunk) != sha256:
            return "corrupt or replaced (its sha256 differs from the manifest's)"
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return None


def verify_files(root: Path, kind: str, recorded: Sequence[Recorded], *, bad: Sequence[BadFile] = (),
                 unchecked: Sequence[Path] = (), progress: bool = False) -> Verified:
    """Re-hash each ``recorded`` file; ``bad`` holds problems the caller found before hashing (a bad header)."""
    from tqdm.auto import tqdm

    def size(path: Path) -> int:
        try:
            return os.stat(path).st_size if not_a_file(path) is None else 0
        except OSError:
            return 0

    start, found, read = time.perf_counter(), list(bad), [0]
    with tqdm(total=sum(size(r.path) for r in recorded), unit="B", unit_scale=True, unit_divisor=1024,
              desc=f"verify {root.name}", disable=not progress, dynamic_ncols=True) as bar:

        def hashed(n: int) -> None:
            read[0] += n
            bar.update(n)

        for r in recorded:
            problem = file_problem(r.path, r.sha256, r.size, on_chunk=hashed)
            if problem is not None:
                found.append(BadFile(r.path, problem))
    return Verified(root, kind, len(recorded) + len(bad), read[0], time.perf_counter() - start,
                    tuple(sorted(found)), tuple(unchecked))
