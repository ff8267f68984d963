"""``triage``: the one command-line entry point for everything an operator does.

Each part of the product registers its own subcommands (``register(subparsers)`` in its ``cli``
module), so this file stays a table of contents and heavy imports (torch, pynetdicom) happen only
when the subcommand that needs them runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from ops.config import ConfigError

_PARTS = ("ops.commands", "workers.cli", "engine.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triage",
        description=(
            "COVID-19 triage node beside a PACS: receives chest CT and X-ray studies by DICOM C-STORE, "
            "analyses complete studies with attention CNNs and sends a Structured Report and heatmaps "
            "back. Settings come from TRIAGE_<NAME> environment variables or a TOML file (--config); "
            "'triage config' lists them."
        ),
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML file of settings (names as in 'triage config', lower case); environment wins.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in _PARTS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name not in (module_name, module_name.split(".")[0]):
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except ConfigError as exc:
        print(f"triage: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
