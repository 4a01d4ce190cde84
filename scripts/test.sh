#!/usr/bin/env bash
# The test command: installs and starts what the tests need (a private
# PostgreSQL cluster's binaries, the local BigQuery emulator), then runs
# every test of the workspace. Safe to run again; caches under .ci-cache/.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTACT_SYNC_CACHE="${CONTACT_SYNC_CACHE:-$PWD/.ci-cache}"
mkdir -p "$CONTACT_SYNC_CACHE"

# Each store that needs a real peer has a setup script; it installs what is
# missing and prints `export NAME=value` lines for the tests.
for setup in scripts/postgres/setup.sh scripts/bigquery/setup.sh; do
  if [ -f "$setup" ]; then
    echo "== $setup"
    env_lines=$(bash "$setup")
    eval "$env_lines"
  fi
done

echo "== cargo test --workspace"
cargo test --workspace -- --test-threads="${TEST_THREADS:-2}"
