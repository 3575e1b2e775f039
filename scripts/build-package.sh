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
wasm_opt_bin=$(bash scripts/setup-wasm-opt.sh)
cargo build --quiet --release --lib --target wasm32-unknown-unknown --no-default-features
rm -rf "$out"
wasm-bindgen --target web --out-dir "$out" --out-name rgweb \
    target/wasm32-unknown-unknown/release/rgweb.wasm

# wasm-opt takes about a minute on 2 cores, so its output is kept in target/pkg-wasm-opt/ under the
# sha256 of its input and reused while wasm-bindgen's output is the same. It reads the features the
# wasm uses (reference types for wasm-bindgen's externref table among them) from the module's
# target_features section, and keeps every export and import the glue names.
wasm="$out/rgweb_bg.wasm"
cache=target/pkg-wasm-opt
key="$(sha256sum "$wasm" | cut -c1-64)$opt_level-binaryen132"
before=$(wc -c <"$wasm")
if [[ -f "$cache/$key.wasm" ]]; then
    cp "$cache/$key.wasm" "$wasm"
    echo "wasm-opt $opt_level: rgweb_bg.wasm $before -> $(wc -c <"$wasm") bytes (reused from $cache/)"
else
    start=$SECONDS
    mkdir -p "$cache"
    trap 'rm -f "$cache/$key.$$.tmp"' EXIT
    "$wasm_opt_bin/wasm-opt" "$opt_level" "$wasm" -o "$cache/$key.$$.tmp"
    # Only the newest is kept; the rename makes a concurrent build see a whole file or none.
    find "$cache" -maxdepth 1 -name '*.wasm' -delete
    mv "$cache/$key.$$.tmp" "$cache/$key.wasm"
    cp "$cache/$key.wasm" "$wasm"
    echo "wasm-opt $opt_level: rgweb_bg.wasm $before -> $(wc -c <"$wasm") bytes in $((SECONDS - start)) s"
fi
cp js/index.js js/worker.js js/index.d.ts js/package.json js/README.md "$out/"
echo "package written to $out/ ($(du -sh "$out" | cut -f1))"
