"""Uploaded query images, embedded by one thread that owns the model, several requests to a forward pass.

Under load, requests queue while a batch is computed, and the next batch takes all of them (up to the model's
batch size): 200 concurrent uploads cost about 200 / batch forward passes instead of 200, and the model is never
entered by two threads at once. A query alone is embedded at once.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from featkit.errors import FeatkitError
from featkit.extraction.embed import Embedder


class RejectedImage(FeatkitError):
    """An uploaded image that featkit's decoder refuses; ``reason`` is a decode reason code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass
class _Job:
    data: bytes
    done: Future = field(default_factory=Future)


class QueryEmbedder:
    """Embeds uploaded image bytes into the indexed tap's vectors on a background thread.

    Args:
        embedder: the index's embedder (same model, weights, tap, pooling and preprocessing as the indexed items).
        tap: the indexed tap.
        max_batch: uploads embedded together at most (default: the embedder's batch size).
    """

    def __init__(self, embedder: Embedder, tap: str, *, max_batch: int | None = None):
        self.embedder, self.tap = embedder, tap
        self.max_batch = max_batch or embedder.config.batch_size
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="featkit-serve-embed", daemon=True)
        self._thread.start()

    def submit(self, data: bytes) -> Future:
        """A future of the upload's vector (1-D float32), or of :class:`RejectedImage`."""
        job = _Job(data)
        self._jobs.put(job)
        return job.done

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            jobs = [job]
            while len(jobs) < self.max_batch:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._jobs.put(None)  # stop after this batch
                    break
                jobs.append(more)
            self._embed([j for j in jobs if j.done.set_running_or_notify_cancel()])

    def _embed(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        try:
            result = self.embedder([j.data for j in jobs], names=["the upload"] * len(jobs))
        except Exception as exc:  # noqa: BLE001 - a failed batch fails its requests; the thread must live on
            for j in jobs:
                j.done.set_exception(exc)
            return
        vectors = np.asarray(result[self.tap], dtype=np.float32)
        for row, position in enumerate(result.positions.tolist()):
            jobs[position].done.set_result(vectors[row])
        failures = result.failures
        for position, reason, message in zip(failures["position"].tolist(), failures["reason"].tolist(),
                                             failures["message"].tolist(), strict=True):
            jobs[position].done.set_exception(RejectedImage(str(reason), str(message)))
