#!/usr/bin/env bash
# Shrinks a wasm-bindgen output in place with wasm-opt 132 (npm's binaryen@132.0.0, installed by
# scripts/setup-wasm-opt.sh if missing), reusing the previous result while the input is the same.
# wasm-opt takes about a minute on 2 cores, so its output is kept in CACHE_DIR under the sha256 of
# its input. It reads the features the wasm uses (reference types for wasm-bindgen's externref
# table among them) from the module's target_features section, and keeps every export and import
# the glue names.
#
# Usage: scripts/wasm-opt-cached.sh FILE.wasm CACHE_DIR LEVEL    (LEVEL: -Oz, -O3, ...)
set -euo pipefail

wasm="$1" cache="$2" opt_level="$3"
wasm_opt_bin=$(bash "$(dirname "$0")/setup-wasm-opt.sh")
key="$(sha256sum "$wasm" | cut -c1-64)$opt_level-binaryen132"
before=$(wc -c <"$wasm")
if [[ -f "$cache/$key.wasm" ]]; then
    cp "$cache/$key.wasm" "$wasm"
    echo "wasm-opt $opt_level: $(basename "$wasm") $before -> $(wc -c <"$wasm") bytes (reused from $cache/)"
    exit 0
fi
start=$SECONDS
mkdir -p "$cache"
trap 'rm -f "$cache/$key.$$.tmp"' EXIT
"$wasm_opt_bin/wasm-opt" "$opt_level" "$wasm" -o "$cache/$key.$$.tmp"
# Only the newest is kept; the rename makes a concurrent build see a whole file or none.
find "$cache" -maxdepth 1 -name '*.wasm' -delete
mv "$cache/$key.$$.tmp" "$cache/$key.wasm"
cp "$cache/$key.wasm" "$wasm"
echo "wasm-opt $opt_level: $(basename "$wasm") $before -> $(wc -c <"$wasm") bytes in $((SECONDS - start)) s"
