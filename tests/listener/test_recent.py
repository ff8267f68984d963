"""The listener's bounded memory of recent series (listener/recent.py)."""

from __future__ import annotations

import threading

from listener.recent import Recent


def test_the_oldest_key_added_is_forgotten_first_and_a_known_key_keeps_its_place() -> None:
    recent: Recent[str, int] = Recent(2)
    recent.put("a", 1)
    recent.put("b", 2)
    recent.put("a", 3)  # updated, still the oldest
    recent.put("c", 4)
    assert "a" not in recent and recent.get("a") is None
    assert (recent.get("b"), recent.get("c")) == (2, 4)
    assert len(recent) == 2


def test_many_threads_adding_at_once_never_pass_the_limit() -> None:
    recent: Recent[int, int] = Recent(100)

    def add(start: int) -> None:
        for key in range(start, start + 1000):
            recent.put(key, key)

    threads = [threading.Thread(target=add, args=(n * 1000,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(recent) == 100
