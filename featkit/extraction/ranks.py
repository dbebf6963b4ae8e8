"""``featkit extract`` under ``torchrun``: each rank takes its share of the partitions, rank 0 merges.

Rank 0 holds the store's lock, plans the partitions (as one process would) and sends the plan to every rank
(``broadcast_object_list`` over gloo); rank ``r`` computes partitions ``r, r + world, ...`` into their segments on
its own device (``cuda:LOCAL_RANK`` where there are GPUs); rank 0 merges each sealed segment in partition order.
The store is bitwise the one a single process writes. If a rank dies, torchrun stops them all; a rerun resumes
every segment after its last committed shard.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from featkit._device import distributed_backend
from featkit.extraction.config import ExtractConfig
from featkit.store import segments as sg

POLL_SECONDS = 0.2


def torchrun_world() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when torchrun started this process with more than one rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def join(local_rank: int, cfg: ExtractConfig) -> ExtractConfig:
    """Join the process group; the config this rank computes with (its own GPU where ``device`` is auto/cuda)."""
    if not dist.is_initialized():
        backend = distributed_backend(local_rank) if cfg.device in ("auto", "cuda") else "gloo"
        dist.init_process_group("gloo" if backend != "nccl" else backend, timeout=timedelta(days=1))
    if cfg.device in ("auto", "cuda") and distributed_backend(local_rank) == "nccl":
        return dataclasses.replace(cfg, device=f"cuda:{local_rank}")
    return cfg


def share(plan: object, rank: int) -> object:
    """Rank 0's ``plan`` on every rank."""
    box = [plan if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def compute_share(root: Path, embedder, plan: dict, rank: int, world: int, bar) -> tuple[int, Counter]:
    """Compute this rank's partitions into their segments (sealed, not merged)."""
    from featkit.extraction.run import write_partition
    from featkit.store.writer import SegmentWriter

    computed = 0
    reasons: Counter = Counter()
    for k, part in enumerate(plan["parts"]):
        if k % world != rank:
            continue
        segment = SegmentWriter(root, plan["manifests"][k], plan["taps"])
        bar.update(segment.consumed)
        rows, why = write_partition(segment, embedder, plan["pending"].iloc[part.start:part.stop],
                                    plan["unlisted"] if part.last else None, bar.update)
        computed += rows
        reasons.update(why)
    return computed, reasons


def merge_all(writer, parts) -> None:
    """Rank 0: merge every partition's segment in order, waiting for the other ranks to seal theirs."""
    for part in parts:
        name = sg.segment_name(part.number)
        while True:
            found = sg.read_segment_manifest(writer.root, name)
            if found is not None and found.sealed:
                break
            time.sleep(POLL_SECONDS)
        writer.merge(name)


def totals(computed: int, reasons: Counter) -> tuple[int, Counter]:
    """Every rank's rows and failure reasons, summed (on every rank)."""
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (computed, dict(reasons)))
    return sum(c for c, _ in gathered), sum((Counter(r) for _, r in gathered), Counter())


def leave() -> None:
    dist.barrier()
    dist.destroy_process_group()
