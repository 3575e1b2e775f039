#!/usr/bin/env bash
# Makes sure wasm-opt version 132 is installed, from the npm registry: binaryen@132.0.0, pinned in
# tests/browser/package.json and its lockfile (so `npm ci` there installs it too). Prints the folder
# holding `wasm-opt`, for PATH (trunk build --release runs the wasm-opt it finds there, since
# Trunk.toml asks for version_132) or to call it directly:
#
#   bin=$(bash scripts/setup-wasm-opt.sh) && export PATH="$bin:$PATH"
#
# Not Debian's binaryen (wasm-opt 108): its output breaks wasm-bindgen 0.2.130's glue at load time.
set -euo pipefail
cd "$(dirname "$0")/../tests/browser"

bin="$PWD/node_modules/.bin"
ok() { [[ -x $bin/wasm-opt ]] && "$bin/wasm-opt" --version 2>/dev/null | grep -qF 'version 132'; }

if ! ok; then
    command -v npm >/dev/null ||
        { echo "error: npm is required: it installs wasm-opt (binaryen@132.0.0) from the npm registry" >&2; exit 1; }
    echo "installing wasm-opt: npm binaryen@132.0.0 into tests/browser/node_modules (npm ci)" >&2
    npm ci --silent --no-audit --no-fund >&2 ||
        { echo "error: npm ci in tests/browser failed: wasm-opt (binaryen@132.0.0) is not installed" >&2; exit 1; }
    ok || { echo "error: $bin/wasm-opt is not version 132 after npm ci" >&2; exit 1; }
fi
echo "$bin"
