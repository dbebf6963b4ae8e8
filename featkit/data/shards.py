"""WebDataset tar shards as input: each sample's image member is a row, read in place, never extracted.

A shard is a plain ``.tar`` whose members are grouped into samples by key, as WebDataset groups them (the member
name up to the first dot of its last component): ``000123.jpg`` + ``000123.json`` + ``000123.cls`` is sample
``000123``. img2dataset writes exactly that. A sample's row is its image member, and the row's path is the shard's
path joined with the member name (``/data/shards/00007.tar/000123.jpg``), so a row names where its bytes are and
every reader of a path (the decoders, fingerprints, ``featkit serve``) reads members like files. Such a path cannot
also be a file on disk: the part before the member name is a file, not a folder.

A shard's member table is read once per process from the tar headers (tarfile seeks over the data) and kept while
the tables held stay under :data:`CACHED_MEMBERS` members; a member is then read with ``pread`` at its offset,
through a bounded window, so a decoder streams it as it streams a file. Only uncompressed tars are read: a
``.tar.gz`` cannot be read at an offset.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import re
import stat
import tarfile
import threading
from collections import OrderedDict
from dataclasses import dataclass

log = logging.getLogger(__name__)

SHARD_SUFFIX = ".tar"
COMPRESSED_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
# the extensions of WebDataset's image fields (webdataset.autodecode.IMAGE_EXTENSIONS) in formats featkit decodes,
# in the order a sample with several images takes its row from; the decoder still decides by content
IMAGE_EXTENSIONS = ("jpg", "jpeg", "jpe", "jfif", "png", "apng", "webp", "ppm", "pgm", "pbm", "pnm", "bmp", "gif",
                    "tif", "tiff")
COMPRESSED_HELP = ("featkit reads WebDataset shards in place, which needs a plain .tar (JPEGs do not compress anyway); "
                   "decompress it first.")
LABEL_KEYS = ("label", "class", "target", "category", "cls")
SAMPLE_FILE_BYTES = 1 << 16  # a .cls or .json member larger than this is not read for a label
# member tables kept per process (182 B a member): 66 img2dataset shards of 10,000 samples of 3 members
CACHED_MEMBERS = 2_000_000
_KEY = re.compile(r"^((?:.*/|)[^./][^/]*?)\.([^/]*)$")  # key, extension (webdataset's base_plus_ext, no hidden)
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


class MemberError(Exception):
    """A member that cannot be read; ``reason`` is a decode reason (see ``featkit.data.decode.REASONS``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Member:
    """Where a member's bytes are in its shard."""

    offset: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Shard:
    """What the headers of a shard say.

    Attributes:
        members: its readable members by name (:func:`normal_name`), in tar order; a name written twice is the
            later copy, as ``tar -x`` leaves it; a hard link is the member it links to.
        unusable: members that are not read, and why (symbolic links, sparse files, absolute names or names with
            ``..``, links to nothing).
        broken: why reading the headers stopped before the end ("" if it did not).
    """

    members: dict[str, Member]
    unusable: dict[str, tuple[str, str]]  # name → (decode reason, why)
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


def normal_name(name: str) -> str:
    """A member name without empty or ``.`` parts (``./a//b.jpg`` → ``a/b.jpg``), as a row's path spells it."""
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def _mtime_ns(mtime: float) -> int:
    """A header's time in ns; a crafted one (NaN, infinite, past int64) is 0."""
    try:
        ns = int(mtime * 1e9)
    except (ValueError, OverflowError, TypeError):
        return 0
    return ns if 0 <= ns < 2**63 else 0


_Key = tuple[str, int, int, int]
_cache: OrderedDict[_Key, Shard] = OrderedDict()
_cached_members = 0
_cache_lock = threading.Lock()
_scanning: dict[_Key, threading.Lock] = {}


def read_shard(path: str) -> Shard:
    """The members of the shard at ``path``: from this process's cache while the file is unchanged.

    Raises:
        OSError: the shard cannot be opened or read.
    """
    global _cached_members
    st = os.stat(path)
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        # threads that want the same shard (decoders, fingerprints) wait for one scan instead of each scanning it
        created = key not in _scanning
        lock = _scanning.setdefault(key, threading.Lock())
    try:
        with lock:
            with _cache_lock:
                if key in _cache:
                    return _cache[key]
            shard = _scan(path)
            with _cache_lock:
                if key not in _cache:
                    _cached_members += len(shard.members)
                _cache[key] = shard
                while len(_cache) > 1 and _cached_members > CACHED_MEMBERS:
                    _cached_members -= len(_cache.popitem(last=False)[1].members)
        return shard
    finally:
        if created:  # the waiters' lock is the creator's to drop
            with _cache_lock:
                _scanning.pop(key, None)


def _scan(path: str) -> Shard:
    members: dict[str, Member] = {}
    unusable: dict[str, tuple[str, str]] = {}
    broken = ""
    with open(path, "rb") as fp:
        try:
            with tarfile.open(fileobj=fp, mode="r:") as tar:  # "r:": uncompressed, headers read, data seeked over
                last = -1
                while (info := tar.next()) is not None:
                    tar.members.clear()  # type: ignore[attr-defined]  # ours is the table: tarfile's would grow
                    if info.offset <= last or info.size < 0:  # a crafted size sends tarfile back to a header
                        broken = f"the header of {info.name!r} points back into the archive"
                        break
                    last = info.offset
                    _add(members, unusable, info)
                else:  # tarfile ends quietly at a damaged header, or where a copy was cut on a header's boundary
                    fp.seek(tar.offset)
                    end = fp.read(1024)
                    if len(end) < 1024 or any(end):
                        broken = f"no valid header at byte {tar.offset:,}, and no end-of-archive marker"
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # a disk's error is no damage to the shard: the caller says unreadable
                raise
            broken = f"a header points past what can be read ({exc.strerror})"
        except Exception as exc:  # noqa: BLE001 - crafted headers raise ValueError, OverflowError, TarError...
            broken = str(exc) if isinstance(exc, tarfile.TarError) and str(exc) else f"{type(exc).__name__}: {exc}"
    return Shard(members, unusable, broken)


def _add(members: dict[str, Member], unusable: dict[str, tuple[str, str]], info: tarfile.TarInfo) -> None:
    raw = info.name
    if raw.startswith("/") or ".." in raw.split("/") or "\0" in raw:
        unusable[raw] = ("bad_filename", "the member's name is absolute, climbs out with '..' or holds a NUL; not read")
        return
    name = normal_name(raw)
    members.pop(name, None)  # a name written again: the later copy, at its place in the archive
    unusable.pop(name, None)
    if info.issparse():
        unusable[name] = ("unreadable", "a sparse member (its bytes are not stored in one piece); not read")
    elif info.isreg():
        members[name] = Member(info.offset_data, info.size, _mtime_ns(info.mtime))
    elif info.islnk():
        target = members.get(normal_name(info.linkname))
        if target is None:
            unusable[name] = ("not_found", f"a hard link to {info.linkname!r}, which no member before it is")
        else:
            members[name] = target
    elif info.issym():
        unusable[name] = ("not_a_file", "a symbolic link; not followed")


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
        if whence not in (io.SEEK_SET, io.SEEK_CUR, io.SEEK_END):
            raise ValueError(f"invalid whence ({whence})")
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
        return read_shard(found[0]).members.get(normal_name(found[1]))
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
    member = found.members.get(normal_name(name))
    try:
        if member is None:
            why = found.unusable.get(normal_name(name)) or found.unusable.get(name)
            if why is not None:
                raise MemberError(why[0], f"{label}: {why[1]}")
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
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than json's parser goes
            fields = None
        if isinstance(fields, dict):
            lower = {str(k).lower(): v for k, v in fields.items()}
            if label is None:
                label = next((str(lower[k]) for k in LABEL_KEYS
                              if isinstance(lower.get(k), (str, int)) and not isinstance(lower.get(k), bool)), None)
            split = str(lower["split"]) if isinstance(lower.get("split"), str) else None
    return label, split


def _looks_like_image(name: str) -> bool:
    """Whether a member name (or a sample's field: ``jpg``, ``0.jpg``) ends in an image extension."""
    return name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS


def _sample_image(parts: dict[str, tuple[str, Member]]) -> tuple[str, Member] | None:
    """The image a sample's row is: its ``jpg`` (``png``, ...) field, else the first field ending in one (``0.jpg``)."""
    exact = next((parts[ext] for ext in IMAGE_EXTENSIONS if ext in parts), None)
    return exact or next((item for ext, item in parts.items() if _looks_like_image(ext)), None)


def list_shard(path: str) -> tuple[list[dict], list[dict]]:
    """The rows of one shard (path, label, split, bytes, mtime_ns), one per sample with an image, in tar order.

    A sample is the members sharing a key, as WebDataset groups them; its row is its image. Image members that
    share a sample with another image (``cat.0.jpg`` and ``cat.1.jpg`` are both sample ``cat``) are counted in one
    warning line, not read.

    Returns:
        The rows, and failure records (path, reason, message): image members that are links, sparse or unsafely
        named, and a shard that is no tar or breaks part-way (the samples before the break are rows).
    """
    try:
        shard = read_shard(path)
    except OSError as exc:
        return [], [{"path": path, "reason": "unreadable", "message": f"{path}: cannot read: {exc.strerror or exc}"}]
    failures = []
    for name, (reason, why) in shard.unusable.items():
        if reason == "bad_filename" or _looks_like_image(name):
            shown = f"{path}/" + name.replace("\0", "\\0")  # a NUL would cut the path short downstream
            failures.append({"path": shown, "reason": reason, "message": f"{shown}: {why}"})
    samples: dict[str, dict[str, tuple[str, Member]]] = {}
    order = {name: i for i, name in enumerate(shard.members)}  # header order (a hard link shares its data)
    for name, member in shard.members.items():
        match = _KEY.match(name)
        if match is None or "/." in "/" + name:  # no extension, or hidden
            continue
        samples.setdefault(match.group(1), {})[match.group(2).lower()] = (name, member)
    rows: list[dict] = []
    left_out = 0
    try:
        with open(path, "rb") as fp:
            def read(m: Member) -> bytes:
                return os.pread(fp.fileno(), m.size, m.offset)

            for parts in samples.values():
                image = _sample_image(parts)
                if image is None:
                    continue
                left_out += sum(1 for ext, item in parts.items() if _looks_like_image(ext) and item is not image)
                label, split = _sample_label(read, {ext: m for ext, (_, m) in parts.items()})
                rows.append({"path": f"{path}/{image[0]}", "label": label, "split": split,
                             "bytes": image[1].size, "mtime_ns": image[1].mtime_ns, "order": order[image[0]]})
    except OSError as exc:
        return [], [{"path": path, "reason": "unreadable", "message": f"{path}: cannot read: {exc.strerror or exc}"}]
    if left_out:
        log.warning("%s: %s sharing a sample with another image left out (WebDataset groups members by the "
                    "name before the first dot: cat.0.jpg and cat.1.jpg are both sample 'cat')", path,
                    "1 image member" if left_out == 1 else f"{left_out:,} image members")
    rows.sort(key=lambda row: row.pop("order"))  # tar order: the shard is read front to back
    if shard.broken:
        if shard.members or shard.unusable:
            failures.append({"path": path, "reason": "corrupt", "message": f"{path}: breaks after "
                             f"{len(shard.members) + len(shard.unusable):,} members ({shard.broken}); its samples "
                             "before that are read"})
        else:
            empty = os.path.getsize(path) == 0
            failures.append({"path": path, "reason": "empty" if empty else "not_an_image",
                             "message": f"{path}: " + ("file is empty (0 bytes)" if empty else
                                                       f"is not a tar archive ({shard.broken})")})
    return rows, failures
