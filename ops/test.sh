#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine and run them.
#  - the project and its test extras in .venv (ops/setup.sh)
#  - the real peers from Debian: dcmtk (storescu, storescp, echoscu), dicom3tools (dciodvfy),
#    Orthanc (a test PACS), PostgreSQL and Redis servers, eatmydata (the ingest bench's listener without
#    its flushes) (installed when missing and running as root)
#  - PostgreSQL and Redis on loopback: started when installed but not running (the fixtures also do)
# Extra arguments go to pytest, e.g. ops/test.sh -k listener -x
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

need=()
command -v storescu >/dev/null || need+=(dcmtk)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
command -v Orthanc >/dev/null || need+=(orthanc)
command -v eatmydata >/dev/null || need+=(eatmydata)  # the ingest bench's listener without its flushes
command -v redis-server >/dev/null || need+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ]; then
    echo "test: installing ${need[*]} from Debian ..." >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
  else
    echo "test: missing ${need[*]}: install them (apt-get install ${need[*]}); their tests will skip" >&2
  fi
fi

TRIAGE_SETUP_TEST=1 "$repo/ops/setup.sh"

# PostgreSQL and Redis on loopback (the project's fixtures start private ones where these fail)
if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null && command -v pg_ctlcluster >/dev/null \
   && ls /etc/postgresql/*/main >/dev/null 2>&1; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start >&2 || true
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && command -v redis-server >/dev/null; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >&2 || true
fi

exec "$repo/.venv/bin/python" -m pytest -p no:cacheprovider "$@"
