#!/usr/bin/env bash
# Stops (and with --delete removes) the cluster started by start-cluster.sh.
set -euo pipefail
data="${PGDATA_DIR:-/tmp/contact-sync-pg}"
bindir="$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
as_pg=()
[[ "$(id -u)" == 0 ]] && as_pg=(runuser -u postgres --)
if [[ -f "$data/data/PG_VERSION" ]]; then
  "${as_pg[@]}" "$bindir/pg_ctl" -D "$data/data" -m fast -w stop >&2 || true
fi
if [[ "${1:-}" == "--delete" ]]; then
  rm -rf "$data"
fi
