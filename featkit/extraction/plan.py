"""A run's inputs cut into partitions, one per store segment, the same way whoever computes them.

The inputs still to compute (in input order) are cut every ``SEGMENT_SHARDS × shard_rows`` inputs. The cut
depends on nothing else (not on ``--procs``, the devices, or which worker takes which partition), so every
worker count writes the same segments with the same bytes, and a rerun after a kill plans the partitions it has
not merged exactly as before: each one's digest lets it find and resume the segment a killed worker left.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd

SEGMENT_SHARDS = 4  # shards' worth of inputs per partition: a worker's unit of work, and a segment's size


@dataclass(frozen=True)
class Partition:
    """Inputs ``start`` to ``stop`` of the run's pending table, which become segment ``number``.

    Attributes:
        number: the segment it becomes (``seg-NNNNNN``).
        start, stop: its rows of the pending table.
        sha256: of its inputs (paths, sizes, mtimes, fingerprints), the shard size and the listing failures it
            records.
        last: the run's last partition: it also records the inputs that could not even be listed.
    """

    number: int
    start: int
    stop: int
    sha256: str
    last: bool

    @property
    def inputs(self) -> int:
        return self.stop - self.start


def partitions(pending: pd.DataFrame, unlisted: pd.DataFrame, shard_rows: int, first_segment: int, *,
               whole: bool = False) -> list[Partition]:
    """The partitions of ``pending``, numbered from ``first_segment``; one partition with ``whole`` (a v1 store).

    A run with nothing to compute but listing failures to record has one empty partition.
    """
    size = len(pending) if whole else SEGMENT_SHARDS * shard_rows
    bounds = list(range(0, len(pending), max(1, size))) or [0]
    if not len(pending) and not len(unlisted):
        return []
    parts = []
    for k, start in enumerate(bounds):
        stop = min(len(pending), start + size) if bounds[-1] != start else len(pending)
        last = k == len(bounds) - 1
        parts.append(Partition(first_segment + k, start, stop,
                               _digest(pending.iloc[start:stop], unlisted if last else None, shard_rows), last))
    return parts


def _digest(inputs: pd.DataFrame, unlisted: pd.DataFrame | None, shard_rows: int) -> str:
    h = hashlib.sha256(f"shard_rows={shard_rows}\n".encode())
    for row in inputs[["path", "bytes", "mtime_ns", "fingerprint"]].itertuples(index=False):
        h.update(f"{row.path}\0{row.bytes}\0{row.mtime_ns}\0{row.fingerprint}\n".encode("utf-8", "surrogateescape"))
    if unlisted is not None:
        for path in unlisted["path"]:
            h.update(f"unlisted\0{path}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()
