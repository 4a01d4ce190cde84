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
# - Console: headless Chromium and chromedriver (Debian packages, installed
#   with apt when missing) for crates/cli/tests/console.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CI="${CI:-true}"
export CONTACT_SYNC_CACHE="${CONTACT_SYNC_CACHE:-$PWD/.ci-cache}"
mkdir -p "$CONTACT_SYNC_CACHE"

echo "== PostgreSQL"
export PGDATA_DIR="${PGDATA_DIR:-$CONTACT_SYNC_CACHE/pg-$$}"
# The set-up's exports are captured first: `eval "$(…)"` would run an empty
# string and carry on when the set-up fails.
trap 'bash scripts/postgres/stop-cluster.sh --delete >/dev/null 2>&1 || true' EXIT
if ! pg_env="$(bash scripts/postgres/start-cluster.sh --install)"; then
    echo "test.sh: PostgreSQL set-up failed (its messages are above); stopping" >&2
    exit 1
fi
eval "$pg_env"
if [ -z "${CONTACT_SYNC_PG_URL:-}" ]; then
    echo "test.sh: the PostgreSQL set-up exported no CONTACT_SYNC_PG_URL; stopping" >&2
    exit 1
fi
echo "PostgreSQL at ${CONTACT_SYNC_PG_URL%%\?*}"

echo "== BigQuery emulator"
# One DuckDB thread per emulator: local-bigquery 0.4.0 can hang for good
# when a query calling its Python functions (FARM_FINGERPRINT: the sweep)
# runs a parallel scan (see scripts/bigquery/start.sh); a writers test run
# took 384 s and then failed with "error sending request" that way, 23 s
# with one thread.
export CONTACT_SYNC_BQ_DUCKDB_THREADS="${CONTACT_SYNC_BQ_DUCKDB_THREADS:-1}"
if ! bq_env="$(bash scripts/bigquery/setup.sh)"; then
    echo "test.sh: BigQuery emulator set-up failed (its messages are above); stopping" >&2
    exit 1
fi
eval "$bq_env"

echo "== Headless Chromium for the console's browser test"
if ! browser_env="$(bash scripts/browser/setup.sh)"; then
    echo "test.sh: Chromium set-up failed (its messages are above); stopping" >&2
    exit 1
fi
eval "$browser_env"

echo "== cargo test --workspace"
cargo test --workspace --all-features -- --test-threads="${TEST_THREADS:-2}"
