"""Feature store format v2: segments, each committed by its own small manifest, and the store's commit log.

```
STORE/
  manifest.json                          # format, version 2, settings, taps: rewritten only when taps change
  log.jsonl                              # the commit log: one JSON line appended (and fsynced) per event
  segments/seg-NNNNNN/segment.json       # the segment's manifest, rewritten after each of its shards
  segments/seg-NNNNNN/features/<tap>/part-NNNNN.npy
  segments/seg-NNNNNN/metadata/part-NNNNN.parquet   # row = the row's number within its segment
  segments/seg-NNNNNN/failures/part-NNNNN.parquet
```
A segment is written by one worker from one partition of a run's inputs (see :mod:`featkit.extraction.plan`);
committing a shard rewrites only that segment's ``segment.json`` (a few shards), so its cost does not grow with
the store. A finished segment is *merged* by appending a line to ``log.jsonl``; the order of those lines gives
every row its number, so the rows and bytes of a store do not depend on which worker wrote which segment. Lines
of the log:

- ``{"segment": NAME, "rows": [r0, r1, ...], "failures": [f0, f1, ...]}``: a merged segment and its shards' sizes;
- ``{"retire": [row, ...]}``: rows whose files changed or disappeared (readers skip them);
- ``{"run": {...}}`` and ``{"run_end": {...}}``: what each ``featkit extract`` did.

A kill can leave a last line without its newline (or, after a power cut, with garbage): it was never committed,
readers ignore it and the next writer cuts it off. Any other malformed line is damage.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featkit._atomic import fsync_dir, json_bytes
from featkit._files import is_sha256, not_a_file, read_json
from featkit.errors import StoreError
from featkit.store import format as fmt
from featkit.store.settings import StoreSettings

VERSION = 2
LOG = "log.jsonl"
SEGMENTS = "segments"
SEGMENT_MANIFEST = "segment.json"
SEGMENT_FORMAT = "featkit-segment"
MAX_LINE = 2**24  # bytes: a line longer than this is damage, not a segment's record


def segment_name(number: int) -> str:
    return f"seg-{number:06d}"


def segment_dir(root: Path, name: str) -> Path:
    return root / SEGMENTS / name


def _plain_segment(name: object) -> bool:
    return isinstance(name, str) and name.startswith("seg-") and fmt.plain_name(name)


@dataclass
class StoreLog:
    """What ``log.jsonl`` says: the merged segments in row order, retired rows and the runs."""

    segments: list[tuple[str, list[int], list[int]]] = field(default_factory=list)  # name, shard rows, failures
    retired: set[int] = field(default_factory=set)
    runs: list[dict] = field(default_factory=list)
    committed_bytes: int = 0  # the length of the log up to its last committed line

    @property
    def rows(self) -> int:
        return sum(sum(r) for _, r, _ in self.segments)

    @property
    def failures(self) -> int:
        return sum(sum(f) for _, _, f in self.segments)


def read_log(root: Path) -> StoreLog:
    """Replay ``root/log.jsonl`` (a missing log is an empty store).

    Raises:
        StoreError: a committed line is malformed, names a segment twice, or retires a row the store lacks.
    """
    path = root / LOG
    log = StoreLog()
    if (what := not_a_file(path)) not in (None, "missing"):
        raise StoreError(f"{path} is {what}, not a featkit store log.")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return log
    except OSError as exc:
        raise StoreError(f"Cannot read {path}: {exc.strerror or exc}.") from None
    end = data.rfind(b"\n") + 1  # what follows the last newline was never committed
    names: set[str] = set()
    rows = 0
    for number, line in enumerate(data[:end].split(b"\n")[:-1], start=1):
        try:
            if len(line) > MAX_LINE:
                raise ValueError("too long")
            entry = json.loads(line)
        except (ValueError, RecursionError):
            raise _damaged(path, number, "is not a JSON object") from None
        problem = _entry_problem(entry, names, rows)
        if problem:
            raise _damaged(path, number, problem)
        if "segment" in entry:
            log.segments.append((entry["segment"], entry["rows"], entry["failures"]))
            names.add(entry["segment"])
            rows += sum(entry["rows"])
        elif "retire" in entry:
            log.retired.update(entry["retire"])
        elif "run" in entry:
            log.runs.append(dict(entry["run"]))
        elif log.runs:
            log.runs[-1].update(entry["run_end"])
    log.committed_bytes = end
    return log


def _damaged(path: Path, line: int, problem: str) -> StoreError:
    return StoreError(f"{path} is damaged: line {line} {problem}. Restore it, or recompute the store with "
                      f"featkit extract ... -o {path.parent} --overwrite.")


def _entry_problem(entry: object, names: set[str], rows: int) -> str:
    if not isinstance(entry, dict) or len(entry) != (3 if "segment" in entry else 1):
        return "is not one of the log's records (segment, retire, run, run_end)"
    if "segment" in entry:
        name, shard_rows, fails = entry["segment"], entry.get("rows"), entry.get("failures")
        if not _plain_segment(name):
            return f"names {str(name)[:80]!r}, which is not a segment name (seg-NNNNNN)"
        if name in names:
            return f"merges {name} a second time"
        if name != segment_name(len(names)):
            return f"merges {name} where the next segment is {segment_name(len(names))}"
        if (not isinstance(shard_rows, list) or not isinstance(fails, list) or len(shard_rows) != len(fails)
                or not all(fmt.is_count(n) for n in [*shard_rows, *fails])):
            return "must give rows and failures as lists of counts, one per shard"
        if rows + sum(shard_rows) > fmt.MAX_COUNT:
            return f"brings the store past {fmt.MAX_COUNT} rows"
        return ""
    if "retire" in entry:
        retired = entry["retire"]
        if not isinstance(retired, list) or not all(fmt.is_count(r) and r < rows for r in retired):
            return "must retire a list of row numbers of segments merged before it"
        return ""
    if "run" in entry or "run_end" in entry:
        return "" if isinstance(next(iter(entry.values())), dict) else "must hold an object"
    return "is not one of the log's records (segment, retire, run, run_end)"


def append_log(root: Path, entry: dict, committed_bytes: int | None = None) -> int:
    """Append one line to ``root/log.jsonl`` and make it durable; returns the log's new length.

    ``committed_bytes``: where the last committed line ends; a torn line a kill left after it is cut off first.

    Raises:
        StoreError: the write failed (disk full, ...); the log keeps its committed lines.
    """
    path = root / LOG
    line = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            end = committed_bytes if committed_bytes is not None else os.fstat(fd).st_size
            if os.fstat(fd).st_size != end:
                os.ftruncate(fd, end)
            os.lseek(fd, end, os.SEEK_SET)
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if committed_bytes == 0:  # a new log: its name must survive a power cut too
            fsync_dir(root)
    except OSError as exc:
        raise StoreError(f"Cannot write {path}: [Errno {exc.errno}] {exc.strerror or exc}. Earlier shards are "
                         "intact; fix the cause (e.g. free disk space) and rerun the same command to resume.") from None
    return end + len(line)


@dataclass
class SegmentManifest:
    """A segment's ``segment.json``: which inputs it was made from, its settings, and its committed shards."""

    name: str
    settings_sha256: str
    inputs: int  # how many inputs its partition holds
    inputs_sha256: str  # of the partition (paths, sizes, mtimes, fingerprints), so a rerun knows it is the same
    shards: list[dict] = field(default_factory=list)  # index, rows, failures, consumed, files {rel: sha256}
    sealed: bool = False  # every input of the partition is in its shards

    @property
    def consumed(self) -> int:
        """Inputs of the partition that the committed shards hold (as rows or failures)."""
        return self.shards[-1]["consumed"] if self.shards else 0

    @property
    def rows(self) -> int:
        return sum(s["rows"] for s in self.shards)

    def to_json(self) -> dict:
        return {"format": SEGMENT_FORMAT, "version": VERSION, "name": self.name,
                "settings_sha256": self.settings_sha256, "inputs": self.inputs, "inputs_sha256": self.inputs_sha256,
                "sealed": self.sealed, "shards": self.shards}


def write_segment_manifest(root: Path, segment: SegmentManifest) -> None:
    fmt.write_file(segment_dir(root, segment.name) / SEGMENT_MANIFEST, json_bytes(segment.to_json(), indent=None))


def read_segment_manifest(root: Path, name: str) -> SegmentManifest | None:
    """The manifest of segment ``name``; None if it has none (a segment that never committed a shard).

    Raises:
        StoreError: the manifest is damaged (names the file and the field).
    """
    path = segment_dir(root, name) / SEGMENT_MANIFEST
    try:
        m = read_json(path)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise _segment_damaged(path, str(exc).removeprefix("is ")) from None
    if not isinstance(m, dict) or m.get("format") != SEGMENT_FORMAT or m.get("version") != VERSION:
        raise _segment_damaged(path, f"it is not a {SEGMENT_FORMAT} version {VERSION} manifest")
    if m.get("name") != name:
        raise _segment_damaged(path, f"name must be {name!r}")
    for key in ("settings_sha256", "inputs_sha256"):
        if not is_sha256(m.get(key)):
            raise _segment_damaged(path, f"{key} must be a sha256 (64 hex digits)")
    if not fmt.is_count(m.get("inputs")) or not isinstance(m.get("sealed"), bool):
        raise _segment_damaged(path, "inputs must be a count and sealed true or false")
    if problem := fmt.shards_problem(m.get("shards"), consumed_up_to=m["inputs"]):
        raise _segment_damaged(path, problem)
    return SegmentManifest(name, m["settings_sha256"], m["inputs"], m["inputs_sha256"], m["shards"], m["sealed"])


def _segment_damaged(path: Path, problem: str) -> StoreError:
    store = path.parent.parent.parent
    return StoreError(f"{path} is damaged: {problem}. Restore it, or recompute the store with "
                      f"featkit extract ... -o {store} --overwrite.")


OTHER_SETTINGS = "was written with other settings than the store's"


def merged_segment_problem(segment: SegmentManifest | None, rows: list[int], failures: list[int], digest: str) -> str:
    """What is wrong with a merged segment's manifest, against its log line and the store's settings; "" if nothing.

    Readers refuse such a segment before reading any of it, and ``featkit verify`` names it.
    """
    if segment is None:
        return "is missing"
    if segment.settings_sha256 != digest:
        return OTHER_SETTINGS
    if (not segment.sealed or [s["rows"] for s in segment.shards] != rows
            or [s["failures"] for s in segment.shards] != failures):
        return f"does not record the shards {LOG} merged"
    return ""


def settings_digest(settings: StoreSettings) -> str:
    """What a segment records of its store's settings, so that a store never merges segments made differently.

    Everything that determines a tap's numbers; not the list of taps (a store can add taps to its segments), the
    shard size (existing shards keep theirs) or where the weights file was.
    """
    data = settings.to_json()
    data.pop("taps", None)
    data.pop("shard_rows", None)
    data.get("weights", {}).pop("path", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class ShardTable:
    """Every committed shard of a store, in row order, held as arrays: a billion-row store has ~500,000 of them.

    ``table[i]`` is a :class:`~featkit.store.format.ShardRef`; ``starts`` the store's number of each shard's first
    row (and, last, the number of rows).
    """

    def __init__(self, root: Path, segment_names: list[str], segment_of: np.ndarray,
                 index: np.ndarray, rows: np.ndarray, failures: np.ndarray, local_first: np.ndarray):
        # a v1 store's one "segment" (named "") is the store itself; Paths are made when asked (a Path costs µs)
        self.root, self.segment_names = root, segment_names
        self.segment_of, self.index = segment_of, index
        self.rows, self.failures, self.local_first = rows, failures, local_first
        self.starts = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)

    @classmethod
    def of_log(cls, root: Path, log: StoreLog) -> ShardTable:
        counts = [len(rows) for _, rows, _ in log.segments]
        rows = np.fromiter((r for _, rs, _ in log.segments for r in rs), dtype=np.int64, count=sum(counts))
        fails = np.fromiter((f for _, _, fs in log.segments for f in fs), dtype=np.int64, count=sum(counts))
        segment_of = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        seg_starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        index = np.arange(len(rows), dtype=np.int64) - seg_starts[segment_of]
        before = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)  # rows before each shard, store-wide
        local_first = before[:-1] - before[seg_starts[:-1]][segment_of]
        names = [name for name, _, _ in log.segments]
        return cls(root, names, segment_of, index, rows, fails, local_first)

    @classmethod
    def of_v1(cls, root: Path, shards: list[dict]) -> ShardTable:
        rows = np.array([s["rows"] for s in shards], dtype=np.int64)
        fails = np.array([s["failures"] for s in shards], dtype=np.int64)
        n = len(shards)
        return cls(root, [""], np.zeros(n, dtype=np.int64), np.arange(n, dtype=np.int64), rows, fails,
                   np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64) if n else np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.rows)

    def directory(self, segment: int) -> Path:
        name = self.segment_names[segment]
        return segment_dir(self.root, name) if name else self.root

    def __getitem__(self, i: int) -> fmt.ShardRef:
        seg = int(self.segment_of[i])
        return fmt.ShardRef(self.directory(seg), int(self.index[i]), int(self.rows[i]), int(self.failures[i]),
                            int(self.starts[i]), int(self.local_first[i]), self.segment_names[seg])

    def __iter__(self) -> Iterator[fmt.ShardRef]:
        return (self[i] for i in range(len(self)))

    def segment_shards(self, name: str) -> range:
        """Positions (in this table) of the shards of segment ``name``."""
        if not hasattr(self, "_segment_number"):
            self._segment_number = {n: k for k, n in enumerate(self.segment_names)}
        k = self._segment_number[name]
        return range(int(np.searchsorted(self.segment_of, k, "left")),
                     int(np.searchsorted(self.segment_of, k, "right")))

    @property
    def total_rows(self) -> int:
        return int(self.starts[-1])
