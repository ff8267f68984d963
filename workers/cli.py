"""``triage export`` and ``triage jobs``: the operator's view of results delivery and analysis.

They read and change the node's database only (:mod:`workers.requeue`); the running node publishes
what they queue. Output is a plain table, or JSON lines with ``--json`` for scripts and monitoring.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

_EXPORT_STATES = ("pending", "retrying", "done", "failed")
_JOB_STATES = ("pending", "queued", "running", "done", "failed", "not_applicable")
_PUBLISHED = "the running node's dispatcher publishes them (triage serve, or the first triage listen process)"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``export`` and ``jobs`` to the ``triage`` CLI."""
    export = _list_and_retry(
        subparsers, "export", _EXPORT_STATES, _export_list, _export_retry,
        summary="results delivery to the PACS: list exports, re-queue failed ones, send a study again",
        description="Exports are the C-STOREs of result objects (SR, SC) to each TRIAGE_DESTINATIONS entry. One "
                    "that still fails after TRIAGE_EXPORT_MAX_ATTEMPTS is marked failed and waits for you: fix "
                    "the destination, then 'triage export retry' (a fresh retry budget).")
    p = export.add_parser("send", help="send a study's latest result objects again (to a PACS that lost them, "
                                       "or a new destination)")
    p.add_argument("study_uid", help="Study Instance UID")
    p.add_argument("--to", action="append", default=None, metavar="AE@HOST:PORT",
                   help="destination (repeatable; default: TRIAGE_DESTINATIONS)")
    p.set_defaults(func=_export_send)
    _list_and_retry(
        subparsers, "job", _JOB_STATES, _jobs_list, _jobs_retry,
        summary="analysis jobs: list them, re-queue failed ones",
        description="One job per completed study. A job whose analysis raised (a bad weights file, a bug) is marked "
                    "failed with the error and not retried on its own: fix the cause, then 'triage jobs retry'.")


def _list_and_retry(subparsers: argparse._SubParsersAction, kind: str, states: Sequence[str],  # type: ignore[type-arg]
                    list_func: Any, retry_func: Any, *, summary: str, description: str) -> Any:
    """``triage <kind> list`` and ``triage <kind> retry``; returns the actions' subparsers for more."""
    command = "export" if kind == "export" else f"{kind}s"
    parser = subparsers.add_parser(command, help=summary, description=f"{description} Re-queued work is written to "
                                                                   f"the database; {_PUBLISHED}.")
    actions = parser.add_subparsers(dest=f"{command}_command", metavar="ACTION")
    actions.required = True
    p = actions.add_parser("list", help=f"{kind}s, most recently changed first")
    p.add_argument("--state", choices=states)
    p.add_argument("--limit", type=_positive, default=50, help="at most this many rows (default 50)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=list_func)
    p = actions.add_parser("retry", help=f"re-queue failed {kind}s")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("ids", nargs="*", type=int, default=[], metavar=f"{kind.upper()}_ID")
    group.add_argument("--failed", action="store_true", help=f"every failed {kind}")
    p.set_defaults(func=retry_func)
    return actions


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def _sessions(args: argparse.Namespace) -> Any:
    from db.session import make_engine, make_sessionmaker
    from ops.config import load_settings

    settings = load_settings(args.config)
    return settings, make_sessionmaker(make_engine(settings.resolved_database_url))


def _run(action: Any) -> int:
    """Run a database action; a missing or unreachable database becomes an operator's message."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from workers.requeue import RequeueRefused

    try:
        return int(action())
    except RequeueRefused as exc:
        print(f"triage: {exc}", file=sys.stderr)
        return 1
    except (OperationalError, ProgrammingError) as exc:
        print(f"triage: the node's database cannot be read ({type(exc.orig).__name__}): check TRIAGE_DATABASE_URL "
              "(or TRIAGE_DATA_DIR for the default SQLite file) and that the node has started once "
              "('triage db upgrade' creates the tables)", file=sys.stderr)
        return 2


def _print_rows(rows: Sequence[Any], as_json: bool, columns: Sequence[tuple[str, int]]) -> None:
    if as_json:
        for row in rows:
            print(json.dumps(asdict(row), default=_json_default))
        return
    print("  ".join(f"{name:{width}}" for name, width in columns).rstrip())
    for row in rows:
        cells = []
        for name, width in columns:
            value = getattr(row, name)
            text = value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else str(value or "")
            cells.append(f"{text[:width] if width else text:{width}}")
        print("  ".join(cells).rstrip())


def _json_default(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _export_list(args: argparse.Namespace) -> int:
    from db.models import ExportState
    from workers.requeue import list_exports

    def action() -> int:
        _, sessions = _sessions(args)
        rows = list_exports(sessions, ExportState(args.state) if args.state else None, args.limit)
        _print_rows(rows, args.json, [("id", 6), ("state", 8), ("attempts", 8), ("destination", 28),
                                      ("updated_at", 19), ("study_uid", 64), ("last_error", 0)])
        return 0
    return _run(action)


def _jobs_list(args: argparse.Namespace) -> int:
    from db.models import JobState
    from workers.requeue import list_jobs

    def action() -> int:
        _, sessions = _sessions(args)
        rows = list_jobs(sessions, JobState(args.state) if args.state else None, args.limit)
        _print_rows(rows, args.json, [("id", 6), ("state", 14), ("attempts", 8), ("updated_at", 19),
                                      ("study_uid", 64), ("error", 0)])
        return 0
    return _run(action)


def _export_retry(args: argparse.Namespace) -> int:
    from workers.requeue import retry_exports

    return _retry(args, "export", retry_exports)


def _jobs_retry(args: argparse.Namespace) -> int:
    from workers.requeue import retry_jobs

    return _retry(args, "job", retry_jobs)


def _retry(args: argparse.Namespace, kind: str, retry: Any) -> int:
    def action() -> int:
        _, sessions = _sessions(args)
        ids = retry(sessions, None if args.failed else args.ids)
        print(f"re-queued {len(ids)} {kind}(s){': ' + ' '.join(map(str, ids)) if ids else ''}; {_PUBLISHED}")
        return 0
    return _run(action)


def _export_send(args: argparse.Namespace) -> int:
    from ops.config import parse_destination
    from workers.requeue import resend_study

    def action() -> int:
        settings, sessions = _sessions(args)
        destinations = args.to if args.to else list(settings.destinations)
        for destination in destinations:
            parse_destination(destination)  # ValueError names the bad one
        ids = resend_study(sessions, args.study_uid, destinations)
        print(f"queued export(s) {' '.join(map(str, ids))} to {', '.join(destinations)}; {_PUBLISHED}")
        return 0
    try:
        return _run(action)
    except ValueError as exc:
        print(f"triage export send: {exc}", file=sys.stderr)
        return 2
