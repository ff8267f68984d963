"""``python -m listener.extra_process``: one more listener process on the node's DICOM port.

Started by ``triage listen`` and ``triage serve`` when ``TRIAGE_LISTENER_PROCESSES`` is above one,
never by hand. One listener process receives on about one core (Python's GIL: ``triage bench
ingest --senders 4`` shows it); the kernel spreads new associations over every process bound to the
port with SO_REUSEPORT. This process serves C-ECHO and C-STORE exactly as the first one does, with
the same settings and database, and nothing else: the first process cleans the temporary folder
before this one starts, completes studies and dispatches the outbox.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
from collections.abc import Sequence

from db.session import make_engine, make_sessionmaker
from listener.service import build_listener, freeze_startup_heap, wait_for_signal
from ops.config import ConfigError, load_settings
from ops.logs import configure

_PR_SET_PDEATHSIG = 1  # prctl option: the signal this process gets when its parent dies


def _stop_with_parent(parent: int) -> bool:
    """Have the kernel send SIGTERM when the node process dies, even by SIGKILL (Linux prctl), so no
    orphan keeps serving the port; False if the parent is already gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: SO_REUSEPORT sharing is refused there anyway
    return os.getppid() == parent


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m listener.extra_process")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds to finish C-STOREs on SIGTERM")
    parser.add_argument("--parent", type=int, default=None, help="pid of the node process that started this one")
    args = parser.parse_args(argv)
    if args.parent is not None and not _stop_with_parent(args.parent):
        return 0
    try:
        settings = load_settings()  # the first process's environment, TRIAGE_CONFIG and TRIAGE_PORT included
    except ConfigError as exc:
        print(f"triage listener process: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_level, settings.log_format)
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url, durable=settings.durable_commit))
    listener, _ = build_listener(settings, sessions, first=False)
    listener.start()
    freeze_startup_heap()
    try:
        wait_for_signal()
    finally:
        listener.stop(args.grace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
