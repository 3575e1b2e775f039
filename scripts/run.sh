#!/usr/bin/env bash
# The main job: the chat page on http://127.0.0.1:8080, offline on a fresh machine. Installs the
# web toolchain if missing, makes the demo model (a small Griffin trained on the King James Bible)
# in www/models/demo/ if it is not there, and serves the page with `trunk serve`. Open
# http://127.0.0.1:8080/?model=models/demo/ (or pick the model on the page) in Chrome.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-web.sh --trunk
# `trunk serve --release` runs wasm-opt 132 (Trunk.toml): npm's binaryen@132.0.0, on PATH (trunk's
# own download of binaryen fails offline).
wasm_opt_bin=$(bash scripts/setup-wasm-opt.sh)
export PATH="$wasm_opt_bin:$PATH"
cargo build --release --quiet --bin rg
bash scripts/demo-model.sh target/release/rg

echo "serving the chat page on http://127.0.0.1:8080/?model=models/demo/"
exec trunk serve --release "$@"
