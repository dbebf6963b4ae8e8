"""A cheap fingerprint of an input file's content, so that a rerun notices edits its size and mtime don't show.

An edit that keeps the size and restores the mtime (``os.utime``, ``touch -r``, ``rsync -t`` of a same-size
file) looks unchanged by ``stat``. Hashing every file whole would make each rerun read the whole dataset, so
the fingerprint reads the first and last 64 KiB only: every image format keeps its header at the start, and
the end of the compressed data at the end. An edit confined to the middle of a file over 128 KiB goes unseen.
A WebDataset sample's image is fingerprinted from its bytes in the shard, the same way.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from featkit.data import shards

SPAN = 1 << 16  # bytes read from each end of a file
# O_NONBLOCK: a FIFO opens at once instead of waiting for a writer (and is then refused by fstat)
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def fingerprint(path: str | os.PathLike) -> str:
    """The sha256 (first 32 hex digits) of the file's size, first and last 64 KiB; "" if it is not a readable file.

    A FIFO, device or directory gives "" at once, without waiting on it.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except NotADirectoryError:  # maybe a WebDataset sample: shard.tar/member
        return _member_fingerprint(path)
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return ""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return ""
        return _digest(fd, 0, st.st_size)
    except OSError:
        return ""
    finally:
        os.close(fd)


def _digest(fd: int, start: int, size: int) -> str:
    digest = hashlib.sha256(size.to_bytes(8, "little"))  # SHA-NI: twice as fast as blake2b here
    digest.update(os.pread(fd, min(SPAN, size), start))
    if size > SPAN:
        digest.update(os.pread(fd, SPAN, start + max(SPAN, size - SPAN)))
    return digest.hexdigest()[:32]


def _member_fingerprint(path: str | os.PathLike) -> str:
    """:func:`fingerprint` of a shard member's bytes, as if it were a file of its own."""
    found = shards.split_member(path)
    member = shards.member_info(path) if found is not None else None
    if found is None or member is None:
        return ""
    try:
        fd = os.open(found[0], _OPEN_FLAGS)
    except OSError:
        return ""
    try:
        return _digest(fd, member.offset, member.size)
    except OSError:
        return ""
    finally:
        os.close(fd)


def fingerprints(paths: Iterable[str | os.PathLike]) -> list[str]:
    """:func:`fingerprint` of each path, read and hashed on up to 4 threads (both release the GIL).

    On 2 cores: 246 µs a file on one thread, 122 on two, 101 on four, 157 on sixteen (the GIL's hand-offs).
    """
    paths = list(paths)
    if len(paths) < 64:
        return [fingerprint(p) for p in paths]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    out: list[str] = []
    with ThreadPoolExecutor(min(4, cores), thread_name_prefix="featkit-fingerprint") as pool:
        for start in range(0, len(paths), 8192):  # a slice at a time: a future per path of millions is gigabytes
            out += pool.map(fingerprint, paths[start:start + 8192])
    return out
