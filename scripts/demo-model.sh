#!/usr/bin/env bash
# Makes the demo model the page offers first: the real RecurrentGemma architecture at a tiny size
# with RANDOM weights (it babbles; it shows the pipeline, not the model's quality) and the real
# Gemma tokenizer, converted to the web format (int4) in www/models/demo/. Does nothing if it is
# there.
# Usage: scripts/demo-model.sh PATH_TO_RG
set -euo pipefail
cd "$(dirname "$0")/.."

rg="${1:?usage: demo-model.sh PATH_TO_rg}"
out=www/models/demo
[[ -f "$out/tokenizer.json" ]] && grep -q '"quantization": "int4"' "$out/manifest.json" 2>/dev/null && exit 0

bash scripts/fetch-tokenizer.sh >/dev/null
hf="$(mktemp -d)"
trap 'rm -rf "$hf"' EXIT
"$rg" random --preset tiny --seed 0 "$hf"
cp vendor/gemma-tokenizer/tokenizer.json "$hf/"
rm -rf "$out"
"$rg" convert "$hf" "$out" --quant int4
echo "demo model (tiny, random weights) written to $out"
