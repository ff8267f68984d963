"""What a worker process holds between jobs: settings, database sessions, loaded models.

Built lazily on the first job of each process (Celery's prefork children included), so that a
model is loaded once per process, not once per study; a missing or corrupt weights file fails the
first job with the engine's explanation rather than a crash mid-study.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db.migrate import upgrade
from db.session import make_engine, make_sessionmaker
from ops.config import Settings, load_settings


@dataclass
class WorkerContext:
    settings: Settings
    sessions: sessionmaker[Session]
    _models: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def model(self, kind: str) -> Any:
        """The predictor for ``kind`` ("ct" or "cxr"), loaded on first use."""
        from workers.inference import load_model

        with self._lock:
            if kind not in self._models:
                self._models[kind] = load_model(kind)
            return self._models[kind]


_context: WorkerContext | None = None
_context_lock = threading.Lock()


def get_context() -> WorkerContext:
    global _context
    with _context_lock:
        if _context is None:
            settings = load_settings()
            engine = make_engine(settings.resolved_database_url, durable=settings.durable_commit)
            upgrade(engine)
            _context = WorkerContext(settings=settings, sessions=make_sessionmaker(engine))
        return _context


def reset_context() -> None:
    """Forget the context (tests that change settings between workers in one process)."""
    global _context
    with _context_lock:
        _context = None
