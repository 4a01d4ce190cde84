#!/usr/bin/env bash
# Runs the Twenty suite against a live Twenty workspace and prints a summary:
#   1. the Twenty store tests (crates/store-twenty), live: tests that need
#      the fake report themselves as ignored (cfg twenty_live);
#   2. the CLI end to end on a temporary directory: migrate, check, seed,
#      run --initial-sync --once, drift.
# Needs TWENTY_BASE_URL and TWENTY_API_KEY (an API key of a workspace whose
# people may be written: every record carries this run's prefix). Honours
# Twenty's limits (100 requests per minute by default): expect minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${TWENTY_BASE_URL:?set TWENTY_BASE_URL to the live Twenty (e.g. http://127.0.0.1:3000)}"
: "${TWENTY_API_KEY:?set TWENTY_API_KEY to an API key of the workspace}"
export TWENTY_BASE_URL TWENTY_API_KEY
log_dir="$(mktemp -d)"
declare -a rows=()
failed=0

echo "== Twenty store tests against $TWENTY_BASE_URL (logs: $log_dir)"
cargo test -p contact-sync-twenty --no-fail-fast -- --test-threads=1 >"$log_dir/store-tests.log" 2>&1
rc=$?
read -r passed failed_t ignored < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) {
        if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i
    } } END { print p+0, f+0, g+0 }' "$log_dir/store-tests.log")
grep -E "^test .* \.\.\. (FAILED|ignored)" "$log_dir/store-tests.log" | sed 's/^/  /'
rows+=("store tests: $passed passed, $failed_t failed, $ignored ignored (exit $rc)")
[ "$rc" -eq 0 ] || failed=1

echo "== CLI end to end"
cargo build -q -p contact-sync --bin contact-sync >"$log_dir/build.log" 2>&1 || { cat "$log_dir/build.log"; exit 1; }
bin="$PWD/target/debug/contact-sync"
work="$(mktemp -d)"
cat >"$work/contact-sync.toml" <<TOML
[stores.local]
kind = "sqlite"

[stores.twenty]
kind = "twenty"
base_url = "$TWENTY_BASE_URL"
api_key = { env = "TWENTY_API_KEY" }
TOML
step() {
    local name="$1"; shift
    local t0=$SECONDS
    if (cd "$work" && "$bin" --config contact-sync.toml "$@") >"$log_dir/cli-$name.log" 2>&1; then
        rows+=("cli $name: ok ($((SECONDS - t0)) s)")
    else
        rows+=("cli $name: FAILED exit $? ($((SECONDS - t0)) s; $log_dir/cli-$name.log)")
        failed=1
    fi
}
step migrate migrate
step check check
step seed seed --contacts 50
step initial-sync run --initial-sync --once
step drift drift

echo
echo "== Summary (live Twenty at $TWENTY_BASE_URL)"
for r in "${rows[@]}"; do echo "  $r"; done
echo "  verification after the initial sync (the workspace's other people count as extra):"
grep -E "^  [a-z0-9_-]+ +(OK|DRIFT) " "$log_dir/cli-initial-sync.log" | sed 's/^/  /' || true
echo "  drift:"
grep -vE "^\x1b|^[0-9]{4}-" "$log_dir/cli-drift.log" | head -20 | sed 's/^/    /' || true
if [ "$failed" -eq 0 ]; then echo "  ALL PASSED"; else echo "  SOME FAILED"; fi
exit "$failed"
