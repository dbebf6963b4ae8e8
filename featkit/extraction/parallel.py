"""One ``featkit extract`` on several processes: one per GPU, or CPU workers splitting the cores.

The parent holds the store's lock, plans the partitions (:mod:`featkit.extraction.plan`) and hands them out one
at a time; each worker (a spawned process with its own model on its own device) writes a partition's segment and
seals it; the parent merges sealed segments in partition order, so row numbers and bytes are those of a run on
one process. A worker that dies has its partition handed to another, which resumes the segment after its last
committed shard. Workers die with the parent (``PR_SET_PDEATHSIG`` on Linux, and a check before each shard), so a
``kill -9`` of the parent leaves only unmerged segments, which the next run resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import signal
import sys
import time
from collections import Counter, deque
from multiprocessing import get_context
from multiprocessing.connection import wait

import pandas as pd

from featkit.errors import FeatkitError, StoreError
from featkit.extraction.config import ExtractConfig
from featkit.extraction.plan import Partition
from featkit.store import segments as sg

POLL_SECONDS = 0.2
MAX_RESTARTS = 3  # per worker slot: a worker that keeps dying is a bug or a bad device, not bad luck


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(1)


def _worker(slot: int, root: str, cfg: ExtractConfig, device: str, procs: int, parent: int, tasks, results) -> None:
    """Take partitions from ``tasks`` until None; report progress, sealed segments and errors on ``results``.

    ``results`` is this worker's own pipe to the parent.
    """
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    from pathlib import Path

    from featkit._device import bind_worker
    from featkit.extraction.embed import Embedder
    from featkit.extraction.run import write_partition
    from featkit.store.writer import SegmentWriter

    def parent_alive() -> None:
        if os.getppid() != parent:
            os._exit(1)

    try:
        bind_worker(device, procs)
        if cfg.workers is None:
            # decode on this worker's share of the cores, on threads between batches: on an H200, decoder processes
            # started inside a worker process fed AlexNet 85 img/s where threads fed it 619
            cfg = dataclasses.replace(cfg, workers=0)
        embedder = Embedder(dataclasses.replace(cfg, device=device, procs=1))
        results.send(("ready", slot))
        while (task := tasks.get()) is not None:
            number, manifest, taps, inputs, unlisted = task
            segment = SegmentWriter(Path(root), manifest, taps, parent_alive)
            started = time.perf_counter()
            computed, reasons = write_partition(segment, embedder, inputs, unlisted,
                                                lambda n: results.send(("progress", slot, n)))
            results.send(("sealed", slot, number, computed, dict(reasons), time.perf_counter() - started))
    except FeatkitError as exc:
        results.send(("error", slot, type(exc).__name__, str(exc)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which says it in one line
        results.send(("error", slot, "", f"{type(exc).__name__}: {exc}"))


def _error(kind: str, message: str, device: str) -> Exception:
    """A worker's error, as the featkit error it raised (its message is already one line), else a RuntimeError."""
    import featkit.errors

    cls = getattr(featkit.errors, kind, None) if kind else None
    if isinstance(cls, type) and issubclass(cls, FeatkitError):
        return cls(message)
    return RuntimeError(f"A worker on {device} failed: {message}")


def run_parallel(writer, cfg: ExtractConfig, devices: list[str], parts: list[Partition], pending: pd.DataFrame,
                 unlisted: pd.DataFrame, bar) -> tuple[int, Counter, dict[str, float]]:
    """Compute ``parts`` on one process per entry of ``devices``, merging each sealed segment in order.

    Returns:
        Rows computed, reasons of the files skipped, and images/s of each device (computing time only).
    """
    if not parts:  # nothing to compute: no worker to start
        return 0, Counter(), {}
    ctx = get_context("spawn")  # CUDA cannot be forked, and a forked torch can hang in its thread pools
    taps = {t: (m["dims"], m["dtype"]) for t, m in writer.taps.items()}
    todo = deque(parts)
    by_number = {p.number: p for p in parts}
    # slot -> (process, task queue, the pipe it reports on): a pipe of its own, since a worker killed while
    # writing to a queue shared by all would take the queue's lock with it and block every other worker
    workers: dict[int, tuple] = {}
    busy: dict[int, int | None] = {}  # slot -> partition number it computes
    restarts: Counter = Counter()
    sealed: set[int] = set()
    held: dict[int, int] = {}  # partition -> rows its segment held when first handed out
    next_merge = parts[0].number if parts else 0
    computed = 0
    reasons: Counter = Counter()
    images: Counter = Counter()
    seconds: Counter = Counter()

    def start(slot: int) -> None:
        tasks = ctx.Queue()
        reports, sender = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(slot, str(writer.root), cfg, devices[slot], len(devices),
                                                 os.getpid(), tasks, sender))  # not daemonic: it starts decoders
        proc.start()
        sender.close()  # the worker's end: the pipe reads as closed once the worker is gone
        workers[slot], busy[slot] = (proc, tasks, reports), None

    def handle(message, alive: bool) -> None:
        kind, slot = message[0], message[1]
        if kind == "ready" and alive:
            hand_out(slot)
        elif kind == "progress":
            bar.update(message[2])
        elif kind == "sealed":
            _, _, number, rows, why, took = message
            sealed.add(number)
            reasons.update(why)
            images[devices[slot]] += rows
            seconds[devices[slot]] += took
            if alive:
                hand_out(slot)
        elif kind == "error":
            raise _error(message[2], message[3], devices[slot])

    def read(slot: int, alive: bool = True) -> None:
        """Every report waiting in ``slot``'s pipe (a killed worker's last one may be cut off: it is dropped)."""
        reports = workers[slot][2]
        while not reports.closed and reports.poll():
            try:
                message = reports.recv()
            except (EOFError, OSError, pickle.UnpicklingError):
                reports.close()
                return
            handle(message, alive)

    def hand_out(slot: int) -> None:
        proc, tasks, _ = workers[slot]
        while todo and (todo[0].number in sealed or todo[0].number < next_merge):
            todo.popleft()  # sealed by a worker that died just after: only the merge is left
        if not todo:
            tasks.put(None)
            busy[slot] = None
            return
        part = todo.popleft()
        manifest = writer.segment_manifest(part.number, part.inputs, part.sha256)
        held.setdefault(part.number, manifest.rows)  # rows an earlier run computed: not this run's
        bar.update(manifest.consumed)
        tasks.put((part.number, manifest, taps, pending.iloc[part.start:part.stop],
                   unlisted if part.last else None))
        busy[slot] = part.number

    for slot in range(min(len(devices), max(1, len(parts)))):
        start(slot)
    try:
        while next_merge in by_number:
            live = [w[2] for w in workers.values() if not w[2].closed]
            wait(live, timeout=POLL_SECONDS)
            for slot in list(workers):
                read(slot)
            while next_merge in sealed:
                writer.merge(sg.segment_name(next_merge))
                computed += sum(writer.log.segments[-1][1]) - held[next_merge]  # a killed worker's rows too
                next_merge += 1
            for slot, (proc, _, reports) in list(workers.items()):
                if proc.exitcode is None or proc.exitcode == 0:
                    continue
                # a worker died: what it reported before counts; its partition goes to the next free worker, which
                # resumes the segment after its last committed shard (or only merges it, if it was sealed)
                read(slot, alive=False)
                reports.close()
                lost = busy.get(slot)
                if lost is not None and lost not in sealed:
                    todo.appendleft(by_number[lost])
                restarts[slot] += 1
                if restarts[slot] > MAX_RESTARTS:
                    raise StoreError(f"A worker on {devices[slot]} died {restarts[slot]} times (exit code "
                                     f"{proc.exitcode}); the shards it committed are kept: rerun to resume.")
                start(slot)
    except BaseException:  # Ctrl-C or an error: stop the workers now (each keeps its committed shards)
        for proc, _, _ in workers.values():
            if proc.is_alive():
                proc.kill()
        raise
    finally:
        for proc, tasks, _ in workers.values():
            if proc.is_alive():
                with contextlib.suppress(Exception):
                    tasks.put(None)
        deadline = time.monotonic() + 5
        for proc, _, reports in workers.values():
            reports.close()
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
    per_device = {d: round(images[d] / seconds[d], 2) for d in images if seconds[d] > 0}
    return computed, reasons, per_device
