#!/usr/bin/env bash
# Installs headless Chromium and its WebDriver (Debian packages `chromium`,
# `chromium-driver`) for the console's browser test
# (crates/cli/tests/console.rs). Idempotent: does nothing when both are
# installed. Prints `export CONTACT_SYNC_CHROMEDRIVER=...` and
# `export CONTACT_SYNC_CHROMIUM=...` for `eval`.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

if ! have chromedriver || ! have chromium; then
    if ! have apt-get; then
        echo "browser/setup.sh: chromium and chromedriver are missing and apt-get is not available" >&2
        exit 1
    fi
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        if have sudo; then SUDO="sudo -n"; else
            echo "browser/setup.sh: need root (or sudo) to apt-get install chromium chromium-driver" >&2
            exit 1
        fi
    fi
    echo "browser/setup.sh: installing chromium and chromium-driver (apt-get)" >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || true
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver >&2
fi
echo "export CONTACT_SYNC_CHROMEDRIVER=$(command -v chromedriver)"
echo "export CONTACT_SYNC_CHROMIUM=$(command -v chromium)"
