"""One predictor shared by the jobs of a worker process, filling batches from every study waiting.

A GPU is only fast on full batches, and a study's last batch is rarely full; when several studies
are being analysed at once (a worker with the threads pool and concurrency > 1), their slices share
batches. Callers preprocess on their own threads and hand prepared slices to one inference thread,
so preprocessing of the next chunk overlaps inference of the last. Order within a study is kept and
each slice's score is the one the predictor alone would give (the tests compare them).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["BatchStats", "BatchingPredictor"]


@dataclass
class BatchStats:
    """Counters since start: how full the batches were and how often studies shared one."""

    batches: int = 0
    slices: int = 0
    shared_batches: int = 0  # batches holding slices of more than one caller

    @property
    def mean_batch(self) -> float:
        return self.slices / self.batches if self.batches else 0.0


@dataclass
class _Chunk:
    rows: Any  # (n, C, S, S) array or tensor prepared by the predictor
    caller: int
    future: Future[NDArray[np.float32]]


def _concat(parts: list[Any]) -> Any:
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import torch

    return torch.cat(parts)


class BatchingPredictor:
    """Thread-safe scoring through one :class:`~engine.predictor.Predictor`.

    Parameters
    ----------
    predictor
        The loaded predictor; its ``batch_size`` is the batch this fills.
    linger_s
        How long the inference thread waits for more slices when a batch is not full. A few
        milliseconds against ~10 ms (GPU) to ~100 ms (CPU) per batch.
    """

    def __init__(self, predictor: Any, *, batch_size: int | None = None, linger_s: float = 0.002) -> None:
        self.predictor = predictor
        self.batch_size = batch_size or predictor.batch_size
        self.linger_s = linger_s
        self.stats = BatchStats()
        self._queue: queue.Queue[_Chunk] = queue.Queue()
        self._callers = 0
        self._carry: tuple[_Chunk, int] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="batching-predictor", daemon=True)
        self._thread.start()

    def __getattr__(self, name: str) -> Any:  # model_name, threshold, runtime... of the predictor
        return getattr(self.predictor, name)

    def submit(self, rows: Any, caller: int) -> Future[NDArray[np.float32]]:
        """Queue prepared rows (from ``predictor.prepare``); the future gives their probabilities."""
        future: Future[NDArray[np.float32]] = Future()
        if len(rows) == 0:
            future.set_result(np.zeros((0,), np.float32))
        else:
            self._queue.put(_Chunk(rows, caller, future))
        return future

    def new_caller(self) -> int:
        """An id that marks one study's slices (for the shared-batch statistics)."""
        with self._lock:
            self._callers += 1
            return self._callers

    def predict_images(self, images: Sequence[NDArray],
                       stage: Callable[[str], AbstractContextManager[Any]] | None = None) -> NDArray[np.float32]:
        """Score greyscale images, preprocessing chunk k+1 while chunk k is inferred.

        ``stage(name)``, if given, times "preprocess" (this thread preparing batches) and "infer"
        (then waiting for the scores); with the overlap the two need not add up to the wall time.
        """
        timed = stage or (lambda name: nullcontext())
        caller = self.new_caller()
        futures = []
        for i in range(0, len(images), self.batch_size):
            with timed("preprocess"):
                rows = self.predictor.prepare(images[i:i + self.batch_size])
            futures.append(self.submit(rows, caller))
        with timed("infer"):
            parts = [f.result() for f in futures]
        return np.concatenate(parts) if parts else np.zeros((0,), np.float32)

    def _take(self) -> list[tuple[_Chunk, int, int]]:
        """Chunks (or parts of one) adding up to at most a batch: (chunk, start, stop)."""
        taken: list[tuple[_Chunk, int, int]] = []
        size = 0
        if self._carry is not None:
            chunk, start = self._carry
            self._carry = None
        else:
            chunk, start = self._queue.get(), 0
        while True:
            stop = min(len(chunk.rows), start + self.batch_size - size)
            taken.append((chunk, start, stop))
            size += stop - start
            if stop < len(chunk.rows):  # the rest of this chunk leads the next batch
                self._carry = (chunk, stop)
                return taken
            if size >= self.batch_size:
                return taken
            try:
                chunk, start = self._queue.get(timeout=self.linger_s), 0
            except queue.Empty:
                return taken

    def _serve(self) -> None:
        pending: dict[int, list[NDArray[np.float32]]] = {}
        while True:
            taken = self._take()
            try:
                probs = self.predictor.predict(_concat([c.rows[a:b] for c, a, b in taken]))
            except Exception as exc:  # hand the failure to every study in the batch
                for c, _, _ in taken:
                    if not c.future.done():
                        c.future.set_exception(exc)
                    pending.pop(id(c), None)
                if self._carry is not None and self._carry[0].future.done():
                    self._carry = None
                continue
            self.stats.batches += 1
            self.stats.slices += len(probs)
            self.stats.shared_batches += len({c.caller for c, _, _ in taken}) > 1
            offset = 0
            for c, a, b in taken:
                parts = pending.setdefault(id(c), [])
                parts.append(probs[offset:offset + b - a])
                offset += b - a
                if b == len(c.rows):
                    pending.pop(id(c))
                    if not c.future.done():
                        c.future.set_result(np.concatenate(parts))
