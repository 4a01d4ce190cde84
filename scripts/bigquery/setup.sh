#!/usr/bin/env bash
# Installs the local BigQuery emulator (local-bigquery 0.4.0 from PyPI) and
# Google's official Python client (google-cloud-bigquery 3.47.0 from PyPI,
# which the tests use to edit tables as analysts do) into cached venvs,
# idempotently, and prints `export NAME=value` lines for the tests
# (scripts/test.sh evals them). Everything else goes to stderr.
#
#   bash scripts/bigquery/setup.sh [DIR]     # DIR defaults to $CONTACT_SYNC_CACHE/bigquery
#                                            # or <repo>/.ci-cache/bigquery
#
# Needs CPython >= 3.13 (found under ~/.pyenv/versions or as python3.13; or
# set PY313). The DuckDB 2.0 extensions local-bigquery pins are only on
# extensions.duckdb.org, so DuckDB is pinned to 1.5.5 whose extensions PyPI
# ships, and they are installed from the wheels (no runtime downloads).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
ROOT=${1:-${CONTACT_SYNC_CACHE:-$repo/.ci-cache}/bigquery}
mkdir -p "$ROOT"
ROOT=$(cd "$ROOT" && pwd)
stamp="$ROOT/.installed-local-bigquery-0.4.0"

find_python() {
  PY=${PY313:-}
  if [ -z "$PY" ]; then
    for c in "$HOME"/.pyenv/versions/3.1[3-9]*/bin/python3 "$(command -v python3.13 || true)" "$(command -v python3 || true)"; do
      [ -n "$c" ] && [ -x "$c" ] && "$c" -c 'import sys; assert sys.version_info >= (3, 13)' 2>/dev/null && { PY=$c; break; }
    done
  fi
  if [ -z "$PY" ]; then
    echo "scripts/bigquery/setup.sh: CPython >= 3.13 not found (looked in ~/.pyenv/versions and PATH); set PY313 to its python3" >&2
    exit 1
  fi
}

if [ ! -f "$stamp" ]; then
  find_python
  echo "== installing local-bigquery 0.4.0 into $ROOT/venv-lbq (python: $PY)" >&2
  rm -rf "$ROOT/venv-lbq"
  "$PY" -m venv "$ROOT/venv-lbq"
  "$ROOT/venv-lbq/bin/pip" install -q --disable-pip-version-check local-bigquery==0.4.0 >&2
  "$ROOT/venv-lbq/bin/pip" install -q --disable-pip-version-check duckdb==1.5.5 duckdb-extension-icu==1.5.5 \
    duckdb-extension-ducklake==1.5.5 duckdb-extension-spatial==1.5.5 2>&1 \
    | grep -v "dependency resolver\|local-bigquery 0.4.0 requires" >&2 || true
  mkdir -p "$ROOT/home"
  HOME="$ROOT/home" "$ROOT/venv-lbq/bin/python" - >&2 <<'PY'
import duckdb, glob, site
sp = site.getsitepackages()[0]
c = duckdb.connect()
for ext in ("icu", "ducklake", "spatial"):
    f = glob.glob(f"{sp}/duckdb_extension_{ext}/extensions/*/{ext}.duckdb_extension")[0]
    c.execute(f"INSTALL '{f}'")
print("local-bigquery ready")
PY
  touch "$stamp"
fi
client_stamp="$ROOT/.installed-google-cloud-bigquery-3.47.0"
if [ ! -f "$client_stamp" ]; then
  find_python
  echo "== installing google-cloud-bigquery 3.47.0 into $ROOT/venv-client (python: $PY)" >&2
  rm -rf "$ROOT/venv-client"
  "$PY" -m venv "$ROOT/venv-client"
  "$ROOT/venv-client/bin/pip" install -q --disable-pip-version-check google-cloud-bigquery==3.47.0 >&2
  "$ROOT/venv-client/bin/python" -c 'import google.cloud.bigquery' >&2
  touch "$client_stamp"
fi
echo "export CONTACT_SYNC_BQ_HOME=$ROOT"
echo "export CONTACT_SYNC_BQ_PYTHON=$ROOT/venv-client/bin/python"
