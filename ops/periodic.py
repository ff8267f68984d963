"""A background thread that runs one job every few seconds and never dies of an exception.

The listener's completion sweeper and the outbox dispatcher are both such loops: the database or the
broker may be down for a while, and the loop must outlive that, backing off while it fails.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable


class Periodic:
    """Run ``job`` every ``interval`` s; after failures wait ``interval * 2**n``, at most ``max_backoff``."""

    def __init__(self, name: str, job: Callable[[], object], interval: float, *, max_backoff: float = 15.0,
                 logger: logging.Logger, quiet_errors: tuple[type[BaseException], ...] = ()) -> None:
        self._job = job
        self._interval = interval
        self._max_backoff = max(interval, max_backoff)
        self._log = logger
        self._quiet_errors = quiet_errors  # expected failures that the job has already logged
        self._failures = 0
        self._name = name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _delay(self) -> float:
        return min(self._max_backoff, self._interval * 2 ** min(self._failures, 10))

    def _run(self) -> None:
        while not self._stop.wait(self._delay()):
            try:
                self._job()
                self._failures = 0
            except self._quiet_errors:
                self._failures += 1
            except Exception:
                self._failures += 1
                self._log.exception(f"{self._name}.error", extra={"event": f"{self._name}.error"})
