#!/usr/bin/env bash
# Set up (first run only) and start the triage node with its embedded defaults: SQLite under
# ./triage-data, the DICOM listener on 127.0.0.1:11112 as AE TRIAGE. No service needs starting first.
# Every setting can be overridden with TRIAGE_<NAME> variables (see: .venv/bin/triage config --describe).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/ops/setup.sh"
exec "$repo/.venv/bin/triage" serve "$@"
