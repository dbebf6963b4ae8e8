"""The one writer of a store: an ``flock`` on the store folder itself, held while it writes.

A lock file could be deleted while a run holds it, letting a second writer lock a new one; the folder cannot be
deleted from under its writer. The kernel drops the lock when the process dies, so a killed run never blocks the
next.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from featkit.errors import StoreError

LOCK_FILE = ".lock"


class StoreLock:
    """An exclusive ``flock`` on ``root`` (or, where a folder cannot be locked, on ``root/.lock``).

    NFS emulates flock with byte-range locks, which need a file open for writing: there a ``.lock`` file is locked
    instead, and deleting it stops the writer at its next commit (:meth:`check`).

    Raises:
        StoreError: another process holds the lock, or the filesystem cannot lock at all.
    """

    def __init__(self, root: Path):
        self.root = root
        self.fd: int | None = _lock(root)
        locked = os.fstat(self.fd)
        # what must still be at its path for the writer to go on: the store folder, or the lock file held instead
        self._path = root if stat.S_ISDIR(locked.st_mode) else root / LOCK_FILE
        self._id = (locked.st_dev, locked.st_ino)

    def check(self) -> None:
        """Refuse to write once what is locked (the folder, or its lock file) was deleted or replaced.

        The path may be another writer's now.
        """
        try:
            st = os.stat(self._path)
            here: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            here = None
        if here != self._id:
            raise StoreError(f"{self.root} was deleted or replaced while this run wrote to it; nothing more is "
                             "written. Rerun to start the store again.")

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None


def _lock(root: Path) -> int:
    error: OSError | None = None
    for target, flags in ((root, os.O_RDONLY), (root / LOCK_FILE, os.O_RDWR | os.O_CREAT)):
        try:
            fd = os.open(target, flags, 0o644)
        except OSError as exc:
            error = exc
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"Another featkit process is writing to {root}; wait for it or use another -o.") from None
        except OSError as exc:
            os.close(fd)
            error = exc
    why = (error.strerror or str(error)) if error is not None else "no lock"
    raise StoreError(f"Cannot lock {root} for writing ({why}); featkit needs flock, which this filesystem refuses. "
                     "Write the store to a local disk and copy it.")
