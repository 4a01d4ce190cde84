#!/usr/bin/env bash
# The soak benchmark (issue 15): the release contact-sync daemon runs for N
# minutes against BigQuery (the local emulator, canonical), a local SQLite
# store, a Postgres store (a private cluster) and Twenty (the fake), while
# users edit, create and delete in every store, Postgres and Twenty go down
# and come back, and the daemon is killed with SIGKILL and restarted. Then
# it settles, and every acknowledged write is checked: in canonical and
# every store, or recorded as a conflict. Exit 1 if anything was lost or
# duplicated (or a store differs from canonical), 2 if it could not run.
#
#   scripts/bench/soak.sh [--minutes N] [--contacts N] [--interval SECS] [--sweep-interval SECS] [--seed N] [--keep] ...
#
# BigQuery's fingerprint sweep runs at least every --sweep-interval (default
# 60 s; the product's default is 900 s): half the BigQuery user's edits leave
# last_updated alone and 40 % of its deletes are hard DELETEs, which only the
# sweep finds; the report counts them and how many were lost.
#
#   scripts/bench/soak.sh --help
#
# It starts what it needs itself (scripts/postgres/start-cluster.sh,
# scripts/bigquery/setup.sh and start.sh; the BigQuery emulator is cached
# under $CONTACT_SYNC_CACHE, default .ci-cache/) and stops it at the end.
# Not part of `cargo test`: it takes minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CONTACT_SYNC_CACHE="${CONTACT_SYNC_CACHE:-$PWD/.ci-cache}"
if [ $# -eq 0 ]; then
  set -- --minutes 5
fi
exec cargo bench -p contact-sync --bench soak -- "$@"
