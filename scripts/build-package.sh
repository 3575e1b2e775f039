#!/usr/bin/env bash
# Builds the embeddable package into pkg/: the engine compiled to wasm32 (release), its
# wasm-bindgen glue (rgweb.js), the wasm shrunk by wasm-opt (npm's binaryen@132.0.0, installed by
# scripts/setup-wasm-opt.sh if missing), and the hand-written API (index.js, worker.js,
# index.d.ts, package.json, README.md from js/). Serve pkg/ with your page and
# `import { createEngine } from './pkg/index.js'`, or `npm pack` it (tests/browser/pack.mjs).
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:-pkg}"
# -Oz: the smallest raw wasm, its gzip as small as -O3's, no slower in the browser (BENCHMARKS.md,
# "Wasm sizes").
opt_level="-Oz"
bash scripts/setup-web.sh
cargo build --quiet --release --lib --target wasm32-unknown-unknown --no-default-features --features gpu
rm -rf "$out"
wasm-bindgen --target web --out-dir "$out" --out-name rgweb \
    target/wasm32-unknown-unknown/release/rgweb.wasm

bash scripts/wasm-opt-cached.sh "$out/rgweb_bg.wasm" target/pkg-wasm-opt "$opt_level"
cp js/index.js js/worker.js js/index.d.ts js/package.json js/README.md "$out/"
echo "package written to $out/ ($(du -sh "$out" | cut -f1))"
