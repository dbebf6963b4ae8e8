"""WebDataset tar shards as input: each sample's image member is a row, read in place, never extracted.

A shard is a plain ``.tar`` whose members are grouped into samples by key, as WebDataset groups them (the member
name up to the first dot of its last component): ``000123.jpg`` + ``000123.json`` + ``000123.cls`` is sample
``000123``. img2dataset writes exactly that. A sample's row is its image member, and the row's path is the shard's
path joined with the member name (``/data/shards/00007.tar/000123.jpg``), so a row names where its bytes are and
every reader of a path (the decoders, fingerprints, ``featkit serve``) reads members like files. Such a path cannot
also be a file on disk: the part before the member name is a file, not a folder.

A shard's member table is read once per process from the tar headers (tarfile seeks over the data) and kept for
the few shards being read; a member is then read with ``pread`` at its offset, through a bounded window, so a
decoder streams it as it streams a file. Only uncompressed tars are read: a ``.tar.gz`` cannot be read at an
offset.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import tarfile
import threading
from collections import OrderedDict
from dataclasses import dataclass

SHARD_SUFFIX = ".tar"
COMPRESSED_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
# WebDataset's image extensions (webdataset.autodecode.IMAGE_EXTENSIONS, lowercased), in the order a sample with
# several images takes its row from
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "pgm", "pbm", "pnm", "bmp", "gif", "tif", "tiff")
LABEL_KEYS = ("label", "class", "target", "category", "cls")
SAMPLE_FILE_BYTES = 1 << 16  # a .cls or .json member larger than this is not read for a label
_CACHED_SHARDS = 16
_KEY = re.compile(r"^((?:.*/|)[^./][^/]*?)\.([^/]*)$")  # key, extension (webdataset's base_plus_ext, no hidden)
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


class MemberError(Exception):
    """A member that cannot be read; ``reason`` is a decode reason (see ``featkit.data.decode.REASONS``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Member:
    """Where a member's bytes are in its shard."""

    offset: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Shard:
    """A shard's regular-file members by name, in tar order, and why reading its headers stopped ("" if it did not)."""

    members: dict[str, Member]
    broken: str


def is_shard(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``.tar`` file (read as WebDataset shard, not as an image)."""
    return os.fspath(path).lower().endswith(SHARD_SUFFIX) and os.path.isfile(path)


def is_compressed_shard(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith(COMPRESSED_SUFFIXES) and os.path.isfile(path)


def split_member(path: str | os.PathLike) -> tuple[str, str] | None:
    """``(shard, member name)`` if ``path`` names a member of a shard on disk, else None.

    The shard is the shortest prefix ending in ``.tar`` that is a regular file, so a folder called ``x.tar`` is a
    folder.
    """
    text = os.fspath(path)
    if not isinstance(text, str):
        return None
    lower = text.lower()
    start = 0
    while (cut := lower.find(SHARD_SUFFIX + "/", start)) >= 0:
        shard, name = text[:cut + len(SHARD_SUFFIX)], text[cut + len(SHARD_SUFFIX) + 1:]
        try:
            if stat.S_ISREG(os.stat(shard).st_mode):
                return (shard, name) if name else None
        except (OSError, ValueError):
            pass
        start = cut + 1
    return None


_cache: OrderedDict[tuple[str, int, int, int], Shard] = OrderedDict()
_cache_lock = threading.Lock()
_scan_lock = threading.Lock()


def read_shard(path: str) -> Shard:
    """The members of the shard at ``path``: from this process's cache while the file is unchanged.

    Raises:
        OSError: the shard cannot be opened or read.
    """
    st = os.stat(path)
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    # one scan at a time: threads that want the same shard (decoders, fingerprints) wait for it instead of each
    # scanning it again (the scan is Python, so scans in parallel threads would not be faster anyway)
    with _scan_lock:
        with _cache_lock:
            if key in _cache:
                return _cache[key]
        shard = _scan(path)
        with _cache_lock:
            _cache[key] = shard
            while len(_cache) > _CACHED_SHARDS:
                _cache.popitem(last=False)
    return shard


def _scan(path: str) -> Shard:
    members: dict[str, Member] = {}
    broken = ""
    with open(path, "rb") as fp:
        try:
            with tarfile.open(fileobj=fp, mode="r:") as tar:  # "r:": uncompressed, headers read, data seeked over
                for info in tar:
                    if info.isfile() and info.name not in members:  # a name written twice: the first, like tar -x
                        members[info.name] = Member(info.offset_data, info.size, int(info.mtime * 1e9))
        except tarfile.ReadError as exc:  # not a tar at all, or broken after the members read so far
            broken = str(exc) or "not a tar archive"
        except (tarfile.TarError, EOFError) as exc:
            broken = str(exc) or type(exc).__name__
    return Shard(members, broken)


class _MemberReader(io.RawIOBase):
    """A read-only, seekable window of ``size`` bytes at ``offset`` of an open file."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self._fd, self._offset, self._size, self._pos = fd, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        data = os.pread(self._fd, want, self._offset + self._pos)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def member_info(path: str | os.PathLike) -> Member | None:
    """The member ``path`` names (``shard.tar/name``), or None where it is no member of a readable shard."""
    found = split_member(path)
    if found is None:
        return None
    try:
        return read_shard(found[0]).members.get(found[1])
    except OSError:
        return None


def open_member(shard: str, name: str, label: str) -> io.BufferedReader:
    """Member ``name`` of ``shard`` open for reading (the caller closes it).

    Raises:
        MemberError: no such member, the shard cannot be read, the member is empty, or the shard ends before it.
    """
    try:
        found = read_shard(shard)
        fd = os.open(shard, _OPEN_FLAGS)
    except OSError as exc:
        raise MemberError("unreadable", f"{label}: cannot read its shard: {exc.strerror or exc}") from None
    member = found.members.get(name)
    try:
        if member is None:
            cut = f" (the shard is damaged: {found.broken})" if found.broken else ""
            raise MemberError("not_found", f"{label}: no such member in {os.path.basename(shard)}{cut}")
        if member.size == 0:
            raise MemberError("empty", f"{label}: member is empty (0 bytes)")
        if os.fstat(fd).st_size < member.offset + member.size:
            raise MemberError("truncated", f"{label}: the shard ends before this member does")
    except BaseException:
        os.close(fd)
        raise
    return io.BufferedReader(_MemberReader(fd, member.offset, member.size))


def _sample_label(read, parts: dict[str, Member]) -> tuple[str | None, str | None]:
    """(label, split) of a sample from its ``.cls`` or ``.json`` member, where it has them."""
    label = split = None
    cls = parts.get("cls")
    if cls is not None and 0 < cls.size <= SAMPLE_FILE_BYTES:
        label = read(cls).decode("utf-8", "replace").strip() or None
    meta = parts.get("json")
    if meta is not None and 0 < meta.size <= SAMPLE_FILE_BYTES:
        try:
            fields = json.loads(read(meta))
        except ValueError:
            fields = None
        if isinstance(fields, dict):
            lower = {str(k).lower(): v for k, v in fields.items()}
            if label is None:
                label = next((str(lower[k]) for k in LABEL_KEYS
                              if isinstance(lower.get(k), (str, int)) and not isinstance(lower.get(k), bool)), None)
            split = str(lower["split"]) if isinstance(lower.get("split"), str) else None
    return label, split


def list_shard(path: str) -> tuple[list[dict], list[dict]]:
    """The rows of one shard (path, label, split, bytes, mtime_ns), one per sample with an image, in tar order.

    Returns:
        The rows, and failure records (path, reason, message) for a shard that is no tar or breaks part-way (the
        samples before the break are rows).
    """
    try:
        shard = read_shard(path)
    except OSError as exc:
        return [], [{"path": path, "reason": "unreadable", "message": f"{path}: cannot read: {exc.strerror or exc}"}]
    samples: dict[str, dict[str, tuple[str, Member]]] = {}
    failures = []
    for name, member in shard.members.items():
        if name.startswith("/") or ".." in name.split("/"):  # tar -x refuses these too: recorded, never read
            failures.append({"path": f"{path}/{name}", "reason": "bad_filename",
                             "message": f"{path}: member name {name!r} is absolute or climbs out with '..'; not read"})
            continue
        match = _KEY.match(name)
        if match is None or "/." in "/" + name:  # no extension, or hidden
            continue
        samples.setdefault(match.group(1), {})[match.group(2).lower()] = (name, member)
    rows: list[dict] = []
    with open(path, "rb") as fp:
        def read(m: Member) -> bytes:
            return os.pread(fp.fileno(), m.size, m.offset)

        for parts in samples.values():
            image = next((parts[ext] for ext in IMAGE_EXTENSIONS if ext in parts), None)
            if image is None:
                continue
            label, split = _sample_label(read, {ext: m for ext, (_, m) in parts.items()})
            rows.append({"path": f"{path}/{image[0]}", "label": label, "split": split,
                         "bytes": image[1].size, "mtime_ns": image[1].mtime_ns, "offset": image[1].offset})
    rows.sort(key=lambda row: row.pop("offset"))  # tar order: the shard is read front to back
    if shard.broken:
        what = "is not a tar archive" if not shard.members else f"breaks after {len(shard.members):,} members"
        failures.append({"path": path, "reason": "corrupt" if shard.members else "not_an_image",
                         "message": f"{path}: {what} ({shard.broken}); its samples before that are read"
                         if shard.members else f"{path}: {what} ({shard.broken})"})
    return rows, failures
