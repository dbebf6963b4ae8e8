"""Where FAISS runs: on every visible GPU when the ``gpu`` extra is installed and one is present, else the CPU.

HNSW has no FAISS GPU implementation and stays on the CPU. A GPU clone that FAISS cannot make (an index type or
PQ size without a GPU kernel) falls back to the CPU with a log line, so the same commands work everywhere.
"""

from __future__ import annotations

import logging

from featkit._faiss import faiss

log = logging.getLogger(__name__)


def gpu_count() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def to_gpu(index: faiss.Index, kind: str) -> faiss.Index:
    """A GPU copy of ``index`` when a GPU is visible and FAISS supports ``kind`` there; otherwise ``index``."""
    if kind == "hnsw" or gpu_count() == 0:
        return index
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError) as exc:
        log.info("FAISS cannot run this %s index on the GPU (%s); using the CPU", kind, str(exc).splitlines()[0])
        return index


def to_cpu(index: faiss.Index) -> faiss.Index:
    """A CPU copy (what ``faiss.write_index`` and ``remove_ids`` need)."""
    if gpu_count() == 0:
        return index
    try:
        return faiss.index_gpu_to_cpu(index)
    except (RuntimeError, AttributeError):
        return index  # already a CPU index


def parameter_space() -> faiss.ParameterSpace:
    """The object that sets ``nprobe``/``efSearch``: the GPU-aware one sets them on CPU indexes too."""
    if gpu_count() and hasattr(faiss, "GpuParameterSpace"):
        return faiss.GpuParameterSpace()
    return faiss.ParameterSpace()
