"""``featkit extract --engine ray``: a run's partitions on a Ray actor pool, one loaded model per actor.

The driver (this process) holds the store's lock and plans the partitions exactly as ``--procs`` does
(:mod:`featkit.extraction.plan`). Each actor loads the model once and decodes inside itself, as Ray's
batch-inference guides do. A partition is one task, which writes one v2 segment into the store's folder, so every
node must see that folder (a shared file system). The driver merges sealed segments in partition order. Row
numbers and bytes are therefore those of a local run.

When an actor dies, Ray restarts it and retries its task, which computes that partition again (the rows come
out the same). When the driver is killed, the next run merges the sealed segments and resumes the others after
their last committed shard. Sizing: Ray sets an
actor's ``OMP_NUM_THREADS`` from its ``num_cpus``, so ``--cpus-per-actor`` is the torch threads each model gets.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter, deque
from pathlib import Path

import pandas as pd

from featkit.errors import FeatkitError, StoreError
from featkit.extraction.config import ExtractConfig
from featkit.extraction.plan import Partition
from featkit.store import segments as sg

MAX_RESTARTS = 3  # per actor, and retries per task: a task that keeps killing actors is a bug, not bad luck
READY_SECONDS = 600  # an autoscaling cluster may take minutes to add a node; longer means it never will


def import_ray():
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise FeatkitError("--engine ray needs Ray: pip install 'featkit[ray]'.") from None
    return ray


class Extractor:
    """A Ray actor's body: one model, and the partitions it is handed (see :func:`run_ray`)."""

    def __init__(self, root: str, cfg: ExtractConfig):
        import ray

        from featkit._device import THREADS_ENV
        from featkit.extraction.embed import Embedder

        assigned = ray.get_runtime_context().get_assigned_resources()
        os.environ[THREADS_ENV] = str(max(1, int(assigned.get("CPU", 1))))  # featkit._device applies it
        device = "cuda" if assigned.get("GPU", 0) > 0 else "cpu"
        # decode on this actor's threads, between batches: decoder processes inside an actor would oversubscribe
        self.embedder = Embedder(dataclasses.replace(cfg, device=device, procs=1, workers=0, engine="local"))
        self.root, self.where = Path(root), f"{ray.get_runtime_context().get_node_id()[:8]}/{device}"

    def partition(self, number: int, manifest, taps: dict, inputs: pd.DataFrame,
                  unlisted: pd.DataFrame | None) -> tuple[int, int, dict, float, str]:
        from featkit.extraction.run import write_partition
        from featkit.store.writer import SegmentWriter

        segment = SegmentWriter(self.root, manifest, taps, lambda: None)
        started = time.perf_counter()
        computed, reasons = write_partition(segment, self.embedder, inputs, unlisted, lambda n: None)
        return number, computed, dict(reasons), time.perf_counter() - started, self.where


def start_ray(ray, address: str | None) -> bool:
    """Join ``address``, or start a local Ray for this run; True when this run started it (and stops it)."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # featkit does not report usage on its users' behalf
    kwargs: dict = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    try:
        # "local": a new Ray for this run, never one RAY_ADDRESS or a running cluster would point it at
        ray.init(address=address or "local", **kwargs)
    except (ConnectionError, RuntimeError, ValueError, OSError) as exc:
        where = address or "a local Ray"
        raise FeatkitError(f"Cannot start or join {where}: {str(exc).splitlines()[0][:200]}") from None
    return True


def _check_fits(ray, cfg: ExtractConfig) -> None:
    """Refuse actor sizes that no node of the cluster has (Ray would wait for them forever)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("CPU", 0) >= cfg.cpus_per_actor and r.get("GPU", 0) >= cfg.gpus_per_actor for r in nodes):
        largest: dict = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
        raise FeatkitError(f"No Ray node has {cfg.cpus_per_actor:g} CPU and {cfg.gpus_per_actor:g} GPU for an actor "
                           f"(the largest has {largest.get('CPU', 0):g} CPU, {largest.get('GPU', 0):g} GPU); lower "
                           "--cpus-per-actor / --gpus-per-actor.")


def _actor_count(ray, cfg: ExtractConfig, parts: int) -> int:
    if cfg.actors is not None:
        return min(cfg.actors, parts)
    resources = ray.cluster_resources()
    by_cpu = int(resources.get("CPU", 1) // cfg.cpus_per_actor)
    by_gpu = int(resources.get("GPU", 0) // cfg.gpus_per_actor) if cfg.gpus_per_actor else by_cpu
    return max(1, min(by_cpu, by_gpu, parts))


def task_failure(ray, exc: BaseException) -> Exception:
    """A task's failure as one line: the featkit error it raised, else what killed it."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, FeatkitError):
        return cause
    if getattr(exc, "actor_init_failed", False) or isinstance(getattr(exc, "error_msg", None), str):
        lines = [line.strip() for line in str(exc).splitlines() if "Error" in line and ":" in line]
        return FeatkitError(f"A Ray actor could not start: {lines[-1] if lines else type(exc).__name__}")
    if isinstance(exc, ray.exceptions.RayActorError):
        return StoreError(f"A Ray actor died {MAX_RESTARTS + 1} times on one partition; the shards it committed "
                          "are kept: rerun to resume.")
    first = str(cause or exc).strip().splitlines()
    return RuntimeError(f"A Ray task failed: {first[-1] if first else type(exc).__name__}")


def run_ray(writer, cfg: ExtractConfig, parts: list[Partition], pending: pd.DataFrame, unlisted: pd.DataFrame,
            bar) -> tuple[int, Counter, dict[str, float]]:
    """Compute ``parts`` on a Ray actor pool, merging each sealed segment in order.

    Returns:
        Rows computed, reasons of the files skipped, and images/s of each actor's node and device (computing time
        only).
    """
    if not parts:
        return 0, Counter(), {}
    ray = import_ray()
    started_here = start_ray(ray, cfg.ray_address)
    taps = {t: (m["dims"], m["dtype"]) for t, m in writer.taps.items()}
    actors: list = []
    todo: deque = deque(parts)
    free: deque = deque()  # actors that are up and idle: only they are handed partitions
    starting: dict = {}  # an actor's ready ref -> the actor, until it is up
    running: dict = {}  # task ref -> (partition number, actor)
    sealed: set[int] = set()
    held: dict[int, int] = {}  # partition -> rows its segment held when handed out (an earlier run's)
    consumed: dict[int, int] = {}  # partition -> inputs an earlier run already consumed
    by_number = {p.number: p for p in parts}
    next_merge = parts[0].number
    computed = 0
    reasons: Counter = Counter()
    images: Counter = Counter()
    seconds: Counter = Counter()

    def hand_out() -> None:
        while free and todo:
            actor, part = free.popleft(), todo.popleft()
            manifest = writer.segment_manifest(part.number, part.inputs, part.sha256)
            held.setdefault(part.number, manifest.rows)
            consumed.setdefault(part.number, manifest.consumed)
            bar.update(manifest.consumed)
            ref = actor.partition.remote(part.number, manifest, taps, pending.iloc[part.start:part.stop],
                                         unlisted if part.last else None)
            running[ref] = (part.number, actor)

    try:
        _check_fits(ray, cfg)
        actor_class = ray.remote(num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor,
                                 max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)(Extractor)
        actors = [actor_class.remote(str(writer.root), cfg) for _ in range(_actor_count(ray, cfg, len(parts)))]
        starting = {actor.__ray_ready__.remote(): actor for actor in actors}
        waiting_since = time.monotonic()
        while next_merge in by_number:
            done, _ = ray.wait([*running, *starting], num_returns=1, timeout=1.0)
            if not running and not free and time.monotonic() - waiting_since > READY_SECONDS:
                raise FeatkitError(f"No Ray actor with {cfg.cpus_per_actor:g} CPU and {cfg.gpus_per_actor:g} GPU "
                                   f"started in {READY_SECONDS} s; the cluster cannot place one (lower "
                                   "--cpus-per-actor / --gpus-per-actor, or add nodes).")
            for ref in done:
                if ref in starting:
                    actor = starting.pop(ref)
                    try:
                        ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - its constructor failed (weights, device): one line
                        raise task_failure(ray, exc) from None
                    free.append(actor)
                    continue
                number, actor = running.pop(ref)
                try:
                    _, rows, why, took, where = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - Ray wraps what the task raised; said in one line
                    raise task_failure(ray, exc) from None
                sealed.add(number)
                reasons.update(why)
                images[where] += rows
                seconds[where] += took
                bar.update(by_number[number].stop - by_number[number].start - consumed[number])
                free.append(actor)
            hand_out()
            while next_merge in sealed:
                writer.merge(sg.segment_name(next_merge))
                computed += sum(writer.log.segments[-1][1]) - held[next_merge]
                next_merge += 1
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()
    per_device = {d: round(images[d] / seconds[d], 2) for d in images if seconds[d] > 0}
    return computed, reasons, per_device
