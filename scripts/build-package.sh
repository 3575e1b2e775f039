#!/usr/bin/env bash
# Builds the embeddable package into pkg/: the engine compiled to wasm32 (release), its
# wasm-bindgen glue (rgweb.js), and the hand-written API (index.js, worker.js, index.d.ts,
# package.json from js/). Serve pkg/ with your page and `import { createEngine } from './pkg/index.js'`.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:-pkg}"
bash scripts/setup-web.sh
cargo build --quiet --release --lib --target wasm32-unknown-unknown --no-default-features
rm -rf "$out"
wasm-bindgen --target web --out-dir "$out" --out-name rgweb \
    target/wasm32-unknown-unknown/release/rgweb.wasm
cp js/index.js js/worker.js js/index.d.ts js/package.json "$out/"
echo "package written to $out/ ($(du -sh "$out" | cut -f1))"
