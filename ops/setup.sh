#!/usr/bin/env bash
# Create .venv and install the project into it; re-runs are quick no-ops unless pyproject.toml changed.
# PYTHON may name the interpreter (3.11 or newer). TRIAGE_SETUP_TEST=1 also installs the test extras.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
venv="$repo/.venv"
extras=""
[ "${TRIAGE_SETUP_TEST:-0}" = "1" ] && extras="[test]"
stamp="$venv/.installed${extras}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# an install with the test extras also satisfies a plain one
[ -z "$extras" ] && [ -f "$venv/.installed[test]" ] && [ ! "$repo/pyproject.toml" -nt "$venv/.installed[test]" ] \
  && stamp="$venv/.installed[test]"
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
  echo "setup: installing the triage node into $venv (first run takes a few minutes) ..." >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  # torch first, pinned: an open range would pull the newest CUDA build (several GB). Where a CPU
  # wheel of this version lies in pip's find-links (as on the development machines) pip takes it.
  "$venv/bin/python" -m pip install --quiet "${TRIAGE_TORCH_SPEC:-torch==2.13.0}" >&2
  "$venv/bin/python" -m pip install --quiet -e "$repo$extras" >&2
  touch "$stamp"
fi
