"""Subcommands of ``triage`` that run the node itself: listen, db, config, bench."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ops.config import Settings, load_settings
from ops.logs import configure


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    configure(settings.log_level, settings.log_format)
    return settings


def cmd_listen(args: argparse.Namespace) -> int:
    from ops.node import run_node

    settings = _settings(args)
    if args.config is not None:  # extra listener processes read the same file
        os.environ["TRIAGE_CONFIG"] = str(args.config.resolve())
    return run_node(settings, with_worker=False, grace_seconds=args.grace)


def cmd_serve(args: argparse.Namespace) -> int:
    from ops.node import run_node

    settings = _settings(args)
    if args.config is not None:  # the worker child (and extra listener processes) read the same file
        os.environ["TRIAGE_CONFIG"] = str(args.config.resolve())
    return run_node(settings, with_worker=True, grace_seconds=args.grace)


def cmd_worker(args: argparse.Namespace) -> int:
    import socket

    from db.migrate import upgrade
    from db.session import make_engine
    from workers.celery_app import QUEUE, make_celery

    settings = _settings(args)
    if args.config is not None:  # prefork children build their context from the environment
        os.environ["TRIAGE_CONFIG"] = str(args.config.resolve())
    upgrade(make_engine(settings.resolved_database_url, durable=settings.durable_commit))
    app = make_celery(settings)
    app.set_default()
    pool = args.pool or settings.worker_pool
    if settings.preload_models:
        from workers.preload import install

        install(pool)
    app.worker_main([
        "worker", "--loglevel", settings.log_level, "--pool", pool,
        "--concurrency", str(settings.worker_concurrency), "--queues", QUEUE,
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "--hostname", f"triage-{os.getpid()}@{socket.gethostname()}",
    ])
    return 0


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

    return run_ingest_benchmark(count=args.count, shared_data=args.data, keep=args.keep, rounds=args.rounds,
                                senders=args.senders)


def cmd_bench_pipeline(args: argparse.Namespace) -> int:
    from ops.bench.pipeline import run_pipeline_benchmark

    return run_pipeline_benchmark(slices=args.slices, shared_data=args.data, first_study=args.first_study)


def cmd_bench_inference(args: argparse.Namespace) -> int:
    from ops.bench.inference import run_inference_benchmark

    batches = [int(b) for b in args.batches.split(",")] if args.batches else None
    return run_inference_benchmark(args.models.split(","), batches, seconds=args.seconds, rounds=args.rounds,
                                   paper_width=args.paper_width, shared_data=args.data)


def cmd_bench_fuzz(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from ops.bench.fuzz import default_seeds, fuzz, print_report

    data = Path(args.data) if args.data else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    with tempfile.TemporaryDirectory() as tmp:
        report = fuzz(default_seeds(data, Path(tmp)), args.count, seed=args.seed, log_every=10_000)
    print_report(report)
    return 1 if report.findings else 0


def cmd_bench_reliability(args: argparse.Namespace) -> int:
    from ops.bench.reliability import run_reliability_benchmark

    return run_reliability_benchmark(args.pytest_args)


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
        "completion, the outbox dispatcher and an analysis worker (a supervised child process). With no "
        "settings it uses SQLite under ./triage-data (database and queue) and listens on 127.0.0.1:11112 "
        "as TRIAGE. SIGTERM drains running associations and the running job, then stops.",
    )
    serve.add_argument("--grace", type=float, default=30.0,
                       help="seconds running associations get to finish on SIGTERM (default 30)")
    serve.set_defaults(func=cmd_serve)

    worker = subparsers.add_parser(
        "worker",
        help="run an analysis and export worker (Celery) alone, for production",
        description="Consume analysis and export jobs from TRIAGE_BROKER_URL (Redis in production; the "
        "embedded SQLite broker under TRIAGE_DATA_DIR otherwise): select the series, run the model, write "
        "the SR and SC objects and send them to TRIAGE_DESTINATIONS. SIGTERM finishes the running job.",
    )
    worker.add_argument("--pool", default=None, choices=["prefork", "solo", "threads"],
                        help="Celery pool (default TRIAGE_WORKER_POOL: prefork)")
    worker.set_defaults(func=cmd_worker)

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
    ingest.add_argument("--rounds", type=int, default=4,
                        help="rounds, each sending to every receiver in turn, the order reversed every other "
                             "round (default 4)")
    ingest.add_argument("--senders", type=int, default=1,
                        help="storescu processes sending at once, one association each (default 1; storescp then "
                             "runs with --fork)")
    ingest.set_defaults(func=cmd_bench_ingest)
    pipeline = bench_sub.add_parser(
        "pipeline",
        help="latency from the last C-STORE to the SR in the PACS (Orthanc), per stage",
        description="Start 'triage serve' and Orthanc on loopback, send a CT study (real NY-SBU slices, "
        "new UIDs) and the real CR, and time each until the SR is stored in Orthanc, minus the quiet period, "
        "with the time of every stage (select, decode, preprocess, infer, explain, build, export).",
    )
    pipeline.add_argument("--slices", type=int, default=100)
    pipeline.add_argument("--data", default=None, help="shared data folder (default ../shared/data)")
    pipeline.add_argument("--first-study", action="store_true",
                          help="time the first studies of a just-started node, models loaded at first use vs "
                               "preloaded, instead of a warm node")
    pipeline.set_defaults(func=cmd_bench_pipeline)
    inference = bench_sub.add_parser(
        "inference",
        help="every inference runtime side by side with eager PyTorch fp32, per model",
        description="Per model: runtime, precision, batch, slices/s, p50/p99 batch latency and the ratio to "
        "eager PyTorch fp32 measured in the same run (interleaved rounds); then the per-slice time of decode, "
        "preprocess and infer for real 512x512 CT slices, and the inference time of a 300-slice study.",
    )
    inference.add_argument("--models", default="deep-ct-net,ct-net,deep-cxr-net")
    inference.add_argument("--batches", default=None, help="comma-separated (default 1,8,32 on CPU; 1,64,256 on GPU)")
    inference.add_argument("--seconds", type=float, default=6.0, help="measuring time per row")
    inference.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    inference.add_argument("--paper-width", action="store_true",
                           help="the papers' full-width networks with random weights instead of the committed ones")
    inference.add_argument("--data", default=None, help="shared data folder (default ../shared/data)")
    inference.set_defaults(func=cmd_bench_inference)
    fuzzing = bench_sub.add_parser(
        "fuzz",
        help="mutation fuzzing of the parse, decode and preprocess path",
        description="Mutate real DICOM files (bit flips, truncation, inserted and deleted chunks, rewritten "
        "lengths) and run each through the listener's parser, the engine's decoder and preprocessing. Any "
        "outcome other than a result or a documented refusal, or an input taking over 10 s, is a finding.",
    )
    fuzzing.add_argument("-n", "--count", type=int, default=100_000)
    fuzzing.add_argument("--seed", type=int, default=0)
    fuzzing.add_argument("--data", default=None, help="shared data folder (default ../shared/data)")
    fuzzing.set_defaults(func=cmd_bench_fuzz)
    reliability = bench_sub.add_parser(
        "reliability",
        help="fault and bad-input suites at full size, as a table (needs the test extras)",
        description="Run the fault tests (listener and worker SIGKILL, Redis and PACS outages, database "
        "unavailable, disk full) and the bad-input tests (hostile corpus, 100,000 fuzzed inputs) with real "
        "processes on loopback, and print: scenario, sent, acknowledged, stored, analysed, lost, duplicated.",
    )
    reliability.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. -x)")
    reliability.set_defaults(func=cmd_bench_reliability)
