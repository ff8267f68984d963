"""Migrations against SQLite and PostgreSQL: they apply, re-apply, and match the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import alembic_config, current_revision, upgrade
from db.models import Base


def test_migrations_create_every_table(sessions: sessionmaker[Session]) -> None:
    engine = sessions.kw["bind"]
    head = ScriptDirectory.from_config(alembic_config(str(engine.url))).get_current_head()
    assert current_revision(engine) == head
    tables = set(inspect(engine).get_table_names())
    assert {"studies", "series", "instances", "jobs", "outbox", "results", "exports"} <= tables
    upgrade(engine)  # a second start is a no-op
    assert current_revision(engine) == head
    assert "export_attempts" in tables


def test_models_and_migrations_agree(sessions: sessionmaker[Session]) -> None:
    engine = sessions.kw["bind"]
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == [], "models changed without a migration: run alembic revision --autogenerate"


def test_sqlite_runs_in_wal_with_full_sync(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from db.session import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
