"""Subcommands of ``triage`` that run the node itself: listen, db, config, bench."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ops.config import Settings, load_settings
from ops.logs import configure


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    configure(settings.log_level, settings.log_format)
    return settings


def cmd_listen(args: argparse.Namespace) -> int:
    from listener.service import run_listener

    return run_listener(_settings(args), grace_seconds=args.grace)


def cmd_serve(args: argparse.Namespace) -> int:
    from listener.service import run_listener

    return run_listener(_settings(args), grace_seconds=args.grace)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from db.migrate import current_revision, upgrade
    from db.session import make_engine

    settings = _settings(args)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine, args.revision)
    print(f"database at revision {current_revision(engine)}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.describe:
        for name, field in Settings.model_fields.items():
            default: Any = field.default if field.default_factory is None else field.default_factory()  # type: ignore[call-arg]
            print(f"TRIAGE_{name.upper():28} default={default!s:24} {field.description or ''}")
        return 0
    settings = load_settings(args.config)
    values = settings.model_dump(mode="json")
    values["database_url"] = settings.resolved_database_url
    print(json.dumps(values, indent=2))
    return 0


def cmd_bench_ingest(args: argparse.Namespace) -> int:
    from ops.bench.ingest import run_ingest_benchmark

    return run_ingest_benchmark(count=args.count, shared_data=args.data, keep=args.keep)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    listen = subparsers.add_parser(
        "listen",
        help="run the DICOM listener (C-ECHO, C-STORE) and study completion",
        description="Accept C-ECHO and C-STORE on TRIAGE_HOST:TRIAGE_PORT as TRIAGE_AE_TITLE, store each "
        "instance durably under TRIAGE_DATA_DIR, and queue studies that have been quiet for "
        "TRIAGE_QUIET_SECONDS. SIGTERM stops accepting and drains running associations.",
    )
    listen.add_argument("--grace", type=float, default=30.0,
                        help="seconds running associations get to finish on SIGTERM (default 30)")
    listen.set_defaults(func=cmd_listen)

    serve = subparsers.add_parser(
        "serve",
        help="run the whole node in one process with embedded defaults (what the README starts)",
        description="Everything a small site needs in one process: the DICOM listener and study "
        "completion. With no settings it uses SQLite under ./triage-data and listens on "
        "127.0.0.1:11112 as TRIAGE. SIGTERM drains running associations and stops.",
    )
    serve.add_argument("--grace", type=float, default=30.0,
                       help="seconds running associations get to finish on SIGTERM (default 30)")
    serve.set_defaults(func=cmd_serve)

    db = subparsers.add_parser("db", help="database migrations")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION")
    db_sub.required = True
    up = db_sub.add_parser("upgrade", help="apply Alembic migrations (services also do this at start)")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=cmd_db_upgrade)

    config = subparsers.add_parser("config", help="print the effective settings (validated)")
    config.add_argument("--describe", action="store_true", help="list every setting with its default")
    config.set_defaults(func=cmd_config)

    bench = subparsers.add_parser("bench", help="benchmarks (print a table with ratios)")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="BENCH")
    bench_sub.required = True
    ingest = bench_sub.add_parser(
        "ingest",
        help="C-STORE throughput: the listener vs dcmtk's storescp, side by side",
        description="Send N realistic 512x512 16-bit CT instances (built from the real NY-SBU slices "
        "with new UIDs) with dcmtk's storescu to the listener and to dcmtk's storescp, and print "
        "instances/s, MB/s and their ratio.",
    )
    ingest.add_argument("-n", "--count", type=int, default=500)
    ingest.add_argument("--data", default=None, help="shared data folder (default ../shared/data)")
    ingest.add_argument("--keep", action="store_true", help="keep the temporary folders")
    ingest.set_defaults(func=cmd_bench_ingest)
