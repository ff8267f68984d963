"""SQLAlchemy Core statements compiled once and run on the DB-API cursor: for a hot path only.

Each C-STORE runs four or five small statements and a commit. Through a Session, SQLAlchemy's
execution machinery (transaction bookkeeping, the compiled-statement cache look-up, an execution
context and a result object per statement) cost 1.2-1.5 ms of CPU per instance on the development
VM, about half of the listener's handler, against tens of microseconds of database work; with the
GIL shared with the receiving thread, that CPU is throughput. A :class:`PreparedStatement` keeps what
SQLAlchemy compiled for the engine's dialect (the SQL, the parameter order, the bind processors of
each column type, such as UTC datetimes and enums) and only fills in values per call, on a
connection from the engine's own pool (``Engine.raw_connection``), as SQLAlchemy documents for
such paths.

The statements stay SQLAlchemy Core objects built from the models, so the schema has one definition.
What runs here bypasses SQLAlchemy's execution events (``before_cursor_execute`` and the like) and
its disconnect handling: a broken PostgreSQL connection is found by the pool's pre-ping at the next
checkout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler


class PreparedStatement:
    """One Core statement, compiled for ``dialect``; :meth:`execute` runs it on a DB-API cursor.

    Every bind parameter that has no value in the statement itself must be given to :meth:`execute`
    (a missing one raises KeyError instead of writing NULL: column defaults are not applied here).
    """

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        compiled = cast(SQLCompiler, cast(ClauseElement, statement).compile(dialect=dialect))
        self.statement = statement
        self.sql = compiled.string
        self._positional = bool(compiled.positional)
        self._names: list[str] = list(compiled.positiontup or ()) if self._positional else list(compiled.params)
        self._fixed = {name: value for name, value in compiled.params.items() if value is not None}
        processors: dict[str, Callable[[Any], Any]] = {}
        for name in self._names:
            type_ = compiled.binds[name].type
            processor = type_.dialect_impl(dialect).bind_processor(dialect)  # the dialect's own type's
            if processor is not None:
                processors[name] = processor
        self._processors = processors

    def parameters(self, values: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """The DB-API parameters for ``values``, in the driver's style, each processed by its type."""
        processed: dict[str, Any] = {}
        for name in self._names:
            value = values[name] if name in values else self._fixed[name]
            processor = self._processors.get(name)
            processed[name] = processor(value) if processor is not None and value is not None else value
        return tuple(processed[name] for name in self._names) if self._positional else processed

    def execute(self, cursor: Any, values: Mapping[str, Any]) -> Any:
        cursor.execute(self.sql, self.parameters(values))
        return cursor
