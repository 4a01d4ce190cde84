#!/usr/bin/env bash
# The test command: installs and starts what the tests need, then runs every
# test of the workspace. Safe to run again; caches under .ci-cache/.
#
# - PostgreSQL: the system's PostgreSQL 15 (installed with apt when missing);
#   a private cluster (wal_level=logical, 127.0.0.1, own data dir) is started
#   for the run and stopped at the end. Tests fail, never skip, without it.
# - BigQuery: the local-bigquery emulator in a cached venv (PyPI); each test
#   binary starts its own emulator on free loopback ports.
# - Twenty: a stateful fake (crates/twenty-fake) started by the tests; set
#   TWENTY_BASE_URL and TWENTY_API_KEY to run the Twenty suite against a
#   live workspace instead.
set -euo pipefail
cd "$(dirname "$0")/.."
export CI="${CI:-true}"
export CONTACT_SYNC_CACHE="${CONTACT_SYNC_CACHE:-$PWD/.ci-cache}"
mkdir -p "$CONTACT_SYNC_CACHE"

echo "== PostgreSQL"
export PGDATA_DIR="${PGDATA_DIR:-$CONTACT_SYNC_CACHE/pg-$$}"
eval "$(bash scripts/postgres/start-cluster.sh --install)"
trap 'bash scripts/postgres/stop-cluster.sh --delete >/dev/null 2>&1 || true' EXIT
echo "PostgreSQL at ${CONTACT_SYNC_PG_URL%%\?*}"

echo "== BigQuery emulator"
eval "$(bash scripts/bigquery/setup.sh)"

echo "== cargo test --workspace"
cargo test --workspace --all-features -- --test-threads="${TEST_THREADS:-2}"
