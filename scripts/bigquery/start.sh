#!/usr/bin/env bash
# Starts the local BigQuery emulator installed by setup.sh on 127.0.0.1 and
# waits until it answers. Prints `export CONTACT_SYNC_BQ_URL=...` and
# `export CONTACT_SYNC_BQ_PID=...` on stdout; logs go to DATA/emulator.log.
#
#   bash scripts/bigquery/start.sh [PORT] [DATA_DIR] [GRPC_PORT]
#
# PORT defaults to 9050, GRPC_PORT to PORT+1; DATA_DIR to
# $CONTACT_SYNC_BQ_HOME/data-PORT. Project: test-project. Stop it with
# `kill $CONTACT_SYNC_BQ_PID`. With CONTACT_SYNC_BQ_WATCH_PID=<pid> set, a
# watchdog stops the emulator (and removes DATA_DIR) once that process
# exits: test binaries use it so no emulator outlives them.
#
# With CONTACT_SYNC_BQ_DUCKDB_THREADS=<n> set, the emulator's DuckDB runs
# with n threads. local-bigquery 0.4.0 can hang for good (a core busy, no
# answer) once a table has enough data files for a parallel scan: a query
# calling one of its Python functions (FARM_FINGERPRINT, …) runs them in
# DuckDB's worker threads, which wait for the GIL that the thread fetching
# the streamed result holds. A long run of DML (the soak benchmark) gets
# there within a minute or two; n=1 avoids it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
HOME_DIR=${CONTACT_SYNC_BQ_HOME:-${CONTACT_SYNC_CACHE:-$repo/.ci-cache}/bigquery}
PORT=${1:-9050}
DATA=${2:-$HOME_DIR/data-$PORT}
GRPC_PORT=${3:-$((PORT + 1))}
BIN="$HOME_DIR/venv-lbq/bin/local-bigquery"
if [ ! -x "$BIN" ]; then
  echo "scripts/bigquery/start.sh: $BIN missing: run scripts/bigquery/setup.sh first" >&2
  exit 1
fi
mkdir -p "$DATA"
serve=(serve --host 127.0.0.1 --port "$PORT" --grpc-port "$GRPC_PORT" --project test-project --data-dir "$DATA")
if [ -n "${CONTACT_SYNC_BQ_DUCKDB_THREADS:-}" ]; then
  # The same entry point, with every DuckDB connection opened with the thread limit.
  HOME="$HOME_DIR/home" CONTACT_SYNC_BQ_DUCKDB_THREADS="$CONTACT_SYNC_BQ_DUCKDB_THREADS" nohup "$HOME_DIR/venv-lbq/bin/python" -c '
import os, sys, duckdb
threads = int(os.environ["CONTACT_SYNC_BQ_DUCKDB_THREADS"])
connect = duckdb.connect
def limited(*args, config=None, **kwargs):
    return connect(*args, config={**(config or {}), "threads": threads}, **kwargs)
duckdb.connect = limited
from local_bigquery.cli import main
sys.argv[0] = "local-bigquery"
sys.exit(main())
' "${serve[@]}" >"$DATA/emulator.log" 2>&1 &
else
  HOME="$HOME_DIR/home" nohup "$BIN" "${serve[@]}" >"$DATA/emulator.log" 2>&1 &
fi
pid=$!
if [ -n "${CONTACT_SYNC_BQ_WATCH_PID:-}" ]; then
  watch=$CONTACT_SYNC_BQ_WATCH_PID
  nohup bash -c "while kill -0 $watch 2>/dev/null && kill -0 $pid 2>/dev/null; do sleep 0.5; done; kill $pid 2>/dev/null; sleep 1; kill -9 $pid 2>/dev/null; rm -rf '$DATA'" >/dev/null 2>&1 &
fi
url="http://127.0.0.1:$PORT"
for _ in $(seq 1 150); do
  if curl -fsS -o /dev/null "$url/bigquery/v2/projects/test-project/datasets" 2>/dev/null; then
    echo "export CONTACT_SYNC_BQ_URL=$url"
    echo "export CONTACT_SYNC_BQ_PID=$pid"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "scripts/bigquery/start.sh: emulator exited; log:" >&2
    tail -n 30 "$DATA/emulator.log" >&2
    exit 1
  fi
  sleep 0.2
done
echo "scripts/bigquery/start.sh: emulator not ready on $url after 30 s; log: $DATA/emulator.log" >&2
kill "$pid" 2>/dev/null || true
exit 1
