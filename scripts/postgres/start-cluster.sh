#!/usr/bin/env bash
# Starts a private PostgreSQL cluster for contact-sync tests and benches and
# prints the URL to export:
#
#   eval "$(scripts/postgres/start-cluster.sh --install)"   # sets CONTACT_SYNC_PG_URL
#   cargo test -p contact-sync-postgres --features test-harness
#   scripts/postgres/stop-cluster.sh
#
# --install   apt-get install postgresql-15 when no PostgreSQL binaries are found
# Env: PGDATA_DIR (default /tmp/contact-sync-pg), PGPORT (default: a free port),
#      WAL_LEVEL (default logical).
# The cluster listens on 127.0.0.1 only, trusts local connections, runs as
# the `postgres` OS user when started by root, and uses fsync=off (test data).
set -euo pipefail

install=0
[[ "${1:-}" == "--install" ]] && install=1

find_bindir() {
  if [[ -n "${CONTACT_SYNC_PG_BINDIR:-}" && -x "${CONTACT_SYNC_PG_BINDIR}/initdb" ]]; then
    echo "$CONTACT_SYNC_PG_BINDIR"; return 0
  fi
  if command -v pg_config >/dev/null 2>&1; then
    local d; d="$(pg_config --bindir)"
    [[ -x "$d/initdb" ]] && { echo "$d"; return 0; }
  fi
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
  [[ -n "$d" && -x "$d/initdb" ]] && { echo "$d"; return 0; }
  return 1
}

if ! bindir="$(find_bindir)"; then
  if [[ $install == 1 ]]; then
    echo "installing postgresql-15 with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql-15 >&2
    bindir="$(find_bindir)" || { echo "PostgreSQL still not found after install" >&2; exit 1; }
  else
    echo "no PostgreSQL binaries found (run with --install, or apt-get install postgresql-15)" >&2
    exit 1
  fi
fi

data="${PGDATA_DIR:-/tmp/contact-sync-pg}"
port="${PGPORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
wal_level="${WAL_LEVEL:-logical}"

as_pg=()
if [[ "$(id -u)" == 0 ]]; then
  as_pg=(runuser -u postgres --)
fi

if [[ -f "$data/data/PG_VERSION" ]]; then
  echo "reusing cluster in $data" >&2
  port="$(sed -n 's/^port = \([0-9]*\).*/\1/p' "$data/data/postgresql.conf" | tail -n1)"
else
  mkdir -p "$data/data"
  [[ ${#as_pg[@]} -gt 0 ]] && chown -R postgres:postgres "$data"
  "${as_pg[@]}" "$bindir/initdb" -D "$data/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >&2
  cat >>"$data/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$data'
wal_level = $wal_level
max_replication_slots = 64
max_wal_senders = 16
max_connections = 300
fsync = off
full_page_writes = off
shared_buffers = 128MB
max_wal_size = 1GB
# A slot left behind by a test must not keep WAL until the disk is full.
max_slot_wal_keep_size = 1GB
CONF
fi

if ! "${as_pg[@]}" "$bindir/pg_ctl" -D "$data/data" status >/dev/null 2>&1; then
  "${as_pg[@]}" "$bindir/pg_ctl" -D "$data/data" -l "$data/server.log" -w -t 60 start >&2
fi
echo "export CONTACT_SYNC_PG_URL=postgres://postgres@127.0.0.1:$port/postgres"
