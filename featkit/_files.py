"""Reading files featkit did not write just now: refuse what would block before opening it, and hash what is there.

``open()`` on a named pipe waits for a writer forever, and a character device can stream without end, so every
path a user or a manifest names (weights, list files, store and index files) is checked with ``stat`` first.
"""

from __future__ import annotations

import hashlib
import os
import stat

_CHUNK = 1 << 20


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


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of the file at ``path``, read in 1 MiB chunks (the caller checks it is a regular file)."""
    digest = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()
