#!/usr/bin/env bash
# The main job: the chat page on http://127.0.0.1:8080, offline on a fresh machine. Installs the
# web toolchain if missing, makes the demo model (a small Griffin trained on the King James Bible)
# in www/models/demo/ if it is not there, and serves the page with `trunk serve`. Open
# http://127.0.0.1:8080/?model=models/demo/ (or pick the model on the page) in Chrome.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-web.sh
cargo build --release --quiet --bin rg
bash scripts/demo-model.sh target/release/rg

echo "serving the chat page on http://127.0.0.1:8080/?model=models/demo/"
exec trunk serve --release "$@"
