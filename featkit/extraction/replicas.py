"""Model replicas on a CPU: a few threads, each computing whole batches on its own share of the cores.

One forward pass on all cores leaves them idle while a batch decodes (decoding beside it stalls the model's
OpenMP barriers), and it scales imperfectly: on a 2-core EPYC, AlexNet ran 274 img/s on 2 threads against
2 × 150.6 on one thread each. With replicas, each thread decodes a chunk and then computes a batch on its own
intra-op threads, so one thread's decoding overlaps another's forward pass and no core waits for another.
Every replica shares the one model (a forward pass changes no state) and computes a batch wholly, so a batch's
numbers depend only on the threads each replica has, not on which replica ran it or how many there were.

torch's intra-op thread count belongs to each thread where torch runs on OpenMP (OpenMP's per-thread
``nthreads``, MKL's local setting), which is what makes this possible; builds on another backend don't get
replicas.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

MAX_REPLICAS = 8  # beyond this, replicas get several threads each: memory grows with every batch in flight


def replica_layout(threads: int, replicas: int | None = None, cores: int | None = None) -> tuple[int, int]:
    """(replicas, intra-op threads each) for a CPU run on ``threads`` threads of a machine with ``cores`` cores.

    ``replicas`` None: each replica gets one thread on machines of up to :data:`MAX_REPLICAS` cores, and the cores
    split evenly among that many replicas on larger ones; as many replicas as ``threads`` then hold. The threads
    each replica gets come from the machine, not from this process's share of it, so a ``--procs`` worker or a run
    on a busy machine computes each batch on the threads a whole-machine run does (and gets its numbers).
    A number asks for that many (at most one per thread); 1 is one forward pass on all threads, as without replicas.
    ``cores`` defaults to ``threads``.
    """
    threads = max(1, threads)
    if replicas is None:
        each = min(threads, -(-max(1, cores or threads) // MAX_REPLICAS))
        return threads // each, each
    replicas = max(1, min(replicas, threads))
    return replicas, threads // replicas


@functools.cache
def per_thread_counts() -> bool:
    """True where torch's intra-op thread count can differ between threads (its OpenMP backend)."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


class ReplicaPool(ThreadPoolExecutor):
    """``replicas`` threads whose torch computes on ``threads_each`` intra-op threads; the caller's count is kept.

    ``torch.set_num_threads`` sets the calling thread's count and the count threads started later take. Each
    replica sets its own, all meet, then the caller sets the later threads' count back to its own (which its own
    setting already is).
    """

    def __init__(self, replicas: int, threads_each: int):
        mine = torch.get_num_threads()
        met = threading.Barrier(replicas + 1, timeout=60)

        def start() -> None:
            # a thread's first parallel op sets its count to the later threads' count: have it happen first
            torch.get_num_threads()
            torch.set_num_threads(threads_each)
            with contextlib.suppress(threading.BrokenBarrierError):  # the caller gave up: it shuts the pool down
                met.wait()

        super().__init__(replicas, thread_name_prefix="featkit-replica", initializer=start)
        self.replicas, self.threads_each = replicas, threads_each
        try:
            for _ in range(replicas):  # each submit starts a thread, whose initializer waits for the others
                self.submit(int)
            met.wait()
        except BaseException:
            met.abort()  # free the replicas waiting for the others (Ctrl-C, a thread that could not start)
            self.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            torch.set_num_threads(mine)
