"""A cheap fingerprint of an input file's content, so that a rerun notices edits its size and mtime don't show.

An edit that keeps the size and restores the mtime (``os.utime``, ``touch -r``, ``rsync -t`` of a same-size
file) looks unchanged by ``stat``. Hashing every file whole would make each rerun read the whole dataset, so
the fingerprint reads the first and last 64 KiB only: every image format keeps its header at the start, and
the end of the compressed data at the end. An edit confined to the middle of a file over 128 KiB goes unseen.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

SPAN = 1 << 16  # bytes read from each end of a file
# O_NONBLOCK: a FIFO opens at once instead of waiting for a writer (and is then refused by fstat)
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def fingerprint(path: str | os.PathLike) -> str:
    """The sha256 (first 32 hex digits) of the file's size, first and last 64 KiB; "" if it is not a readable file.

    A FIFO, device or directory gives "" at once, without waiting on it.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return ""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return ""
        digest = hashlib.sha256(st.st_size.to_bytes(8, "little"))  # SHA-NI: twice as fast as blake2b here
        digest.update(os.pread(fd, SPAN, 0))
        if st.st_size > SPAN:
            digest.update(os.pread(fd, SPAN, max(SPAN, st.st_size - SPAN)))
        return digest.hexdigest()[:32]
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
