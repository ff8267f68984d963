"""A small, thread-safe memory of recently seen keys, bounded so a node that runs for months does not grow.

The listener remembers per series what saves work on the next instance of it: the row ids of the study
and series (``listener.server``) and that the series folder exists with its entries fsynced
(``listener.storage``). Associations add to it at once, hence the lock; reads take none (a dict look-up is
atomic in CPython).
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Recent(Generic[K, V]):
    """At most ``limit`` keys with their values, the oldest added forgotten first."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._items: dict[K, V] = {}
        self._lock = threading.Lock()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        """Remember ``value`` for ``key`` (a key already known keeps its place in the order)."""
        with self._lock:
            if key not in self._items and len(self._items) >= self._limit:
                self._items.pop(next(iter(self._items)))
            self._items[key] = value
