#!/usr/bin/env bash
# The README's SQLite -> SQLite job (`seed`, then `run --initial-sync --once`,
# then a cycle with 10 contacts edited in local.db) with the state database
# on SQLite (the default) and on Postgres (`[state] url`), side by side, on a
# private PostgreSQL with its DEFAULT durability (fsync and
# synchronous_commit on). Not part of the test suite.
#
#   scripts/bench/state-backends.sh                   # 100k contacts, 3 runs
#   scripts/bench/state-backends.sh --contacts 100000 --runs 3
#
# Per run and backend, in a fresh directory (the order alternating between
# runs): wall clock, client CPU (user + sys) and peak RSS of the `run`
# process (/usr/bin/time), and for Postgres the server's CPU (every server
# process, exited backends included).
#
# Env: CS (default target/release/contact-sync), WORK (default: a new temp
# dir, deleted at the end unless KEEP=1).
set -euo pipefail
cd "$(dirname "$0")/../.."
n=100000
runs=3
while [[ $# -gt 0 ]]; do
  case "$1" in
    --contacts) n="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
cs="$(realpath "${CS:-target/release/contact-sync}")"
[[ -x "$cs" ]] || { echo "build it first: cargo build --release -p contact-sync" >&2; exit 1; }

find_bindir() {
  if [[ -n "${CONTACT_SYNC_PG_BINDIR:-}" && -x "$CONTACT_SYNC_PG_BINDIR/initdb" ]]; then echo "$CONTACT_SYNC_PG_BINDIR"; return; fi
  if command -v pg_config >/dev/null && [[ -x "$(pg_config --bindir)/initdb" ]]; then pg_config --bindir; return; fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1
}
bindir="$(find_bindir)"
[[ -x "$bindir/initdb" ]] || { echo "no PostgreSQL found (apt-get install postgresql-15)" >&2; exit 1; }
work="${WORK:-$(mktemp -d /tmp/state-backends.XXXXXX)}"
mkdir -p "$work"
as_pg=()
if [[ "$(id -u)" == 0 ]]; then as_pg=(runuser -u postgres --); chown postgres "$work"; fi
pgdata="$work/pgdata"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"${as_pg[@]}" "$bindir/initdb" -D "$pgdata" -U postgres -A trust -E UTF8 --locale=C >/dev/null
cat >>"$pgdata/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$work'
CONF
"${as_pg[@]}" "$bindir/pg_ctl" -D "$pgdata" -l "$work/server.log" -w -t 60 start >/dev/null
cleanup() {
  "${as_pg[@]}" "$bindir/pg_ctl" -D "$pgdata" -m fast -w stop >/dev/null 2>&1 || true
  [[ "${KEEP:-0}" == 1 ]] || rm -rf "$work"
}
trap cleanup EXIT
base="postgres://postgres@127.0.0.1:$port"
psql_() { "$bindir/psql" -X -q -v ON_ERROR_STOP=1 "$base/postgres" "$@"; }
echo "server: $(psql_ -At -c "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings WHERE name IN ('fsync','synchronous_commit','full_page_writes','shared_buffers','server_version')")"
echo "host: $(nproc) cores; contact-sync: $cs"

server_cpu() {
  python3 - "$pgdata/postmaster.pid" <<'PY'
import os, sys
pid = int(open(sys.argv[1]).readline())
tck = os.sysconf("SC_CLK_TCK")
def stat(p):
    s = open(f"/proc/{p}/stat").read()
    return s[s.rindex(")") + 2:].split()
f = stat(pid)
total = sum(int(x) for x in f[11:15])
for d in os.listdir("/proc"):
    if d.isdigit():
        try:
            g = stat(d)
        except OSError:
            continue
        if int(g[1]) == pid:
            total += int(g[11]) + int(g[12])
print(total / tck)
PY
}

# One job: prints "label initial_wall initial_cpu initial_rss_mb initial_server_cpu cycle_wall cycle_cpu cycle_server_cpu".
job() {
  local label="$1" run="$2" dir="$work/$1-$2" url=""
  mkdir -p "$dir"
  printf '[stores.local]\nkind = "sqlite"\n' >"$dir/c.toml"
  if [[ "$label" == postgres ]]; then
    local db="state_$run"
    psql_ -c "CREATE DATABASE $db"
    url="$base/$db"
    printf '[state]\nurl = { env = "STATE_DB_URL" }\n' >>"$dir/c.toml"
  fi
  (cd "$dir" && STATE_DB_URL="$url" "$cs" --config c.toml seed --contacts "$n" >/dev/null 2>&1)
  local s0 s1 s2
  s0="$(server_cpu)"
  (cd "$dir" && STATE_DB_URL="$url" /usr/bin/time -f "%e %U %S %M" -o "$dir/t1" \
    "$cs" --config c.toml run --initial-sync --once >/dev/null 2>"$dir/log1")
  s1="$(server_cpu)"
  python3 - "$dir/contact-sync-data/local.db" "$n" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1]); n = int(sys.argv[2])
for i in range(10):
    c.execute("UPDATE contacts SET job_title = 'Benchmarker' WHERE contact_id = ?", (f"c{i * (n // 10):09d}",))
c.commit()
PY
  (cd "$dir" && STATE_DB_URL="$url" /usr/bin/time -f "%e %U %S %M" -o "$dir/t2" \
    "$cs" --config c.toml run --once >/dev/null 2>"$dir/log2")
  s2="$(server_cpu)"
  read -r w1 u1 y1 m1 <"$dir/t1"
  read -r w2 u2 y2 _ <"$dir/t2"
  python3 -c "
print('%-8s %5s  initial: %6.2f s wall, %6.2f s CPU, %4.0f MB, server %6.2f s | cycle (10 edits): %5.2f s wall, %5.2f s CPU, server %5.2f s' % (
  '$label', 'run$run', $w1, $u1 + $y1, $m1 / 1024, $s1 - $s0, $w2, $u2 + $y2, $s2 - $s1))"
  rm -rf "$dir"
}

for run in $(seq 1 "$runs"); do
  if (( run % 2 )); then order="sqlite postgres"; else order="postgres sqlite"; fi
  for b in $order; do job "$b" "$run"; done
done
