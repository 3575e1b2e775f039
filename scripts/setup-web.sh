#!/usr/bin/env bash
# Installs the web toolchain from package registries only (trunk's own downloads fail offline):
# the wasm32 target and wasm-bindgen-cli at the version Cargo.lock pins, and with --trunk also
# trunk at the version Trunk.toml pins (only `trunk serve` needs it: scripts/build-site.sh builds
# the site without it). Each step is skipped when the right version is already there.
#
# Usage: scripts/setup-web.sh [--trunk]
set -euo pipefail

rustup target add wasm32-unknown-unknown >/dev/null

has_version() { command -v "$1" >/dev/null 2>&1 && "$1" --version 2>/dev/null | grep -qF "$2"; }

if [[ ${1:-} == --trunk ]] && ! has_version trunk 0.21.14; then
    echo "installing trunk 0.21.14 (about 10 minutes on 2 cores)"
    # 0.22 needs a newer rustc than this project's.
    cargo install --locked --quiet trunk@0.21.14
fi
if ! has_version wasm-bindgen 0.2.130; then
    echo "installing wasm-bindgen-cli 0.2.130 (about 3 minutes)"
    # Without --locked: its lockfile pins a webpki-roots release the registry no longer has.
    cargo install --quiet wasm-bindgen-cli@0.2.130
fi
