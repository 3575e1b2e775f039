#!/usr/bin/env bash
# Makes the demo model the page offers first: a small Griffin (RecurrentGemma's architecture, NOT
# its weights) trained on the King James Bible by tools/train_demo/train.py. It ships compact in
# models/demo-kjv/ (the body and only the embedding rows of the ids it was trained on); this
# expands it to the full 256,000-row table, adds the real Gemma tokenizer and converts it to the
# web format (int4) in www/models/demo/. Does nothing if that build is already there.
# Usage: scripts/demo-model.sh PATH_TO_RG
set -euo pipefail
cd "$(dirname "$0")/.."

rg="${1:?usage: demo-model.sh PATH_TO_rg}"
out=www/models/demo
quant=int4
bash scripts/fetch-tokenizer.sh >/dev/null
# The build is identified by its inputs, so a changed model or tokenizer rebuilds it.
stamp=target/demo-model.stamp
inputs="$(cat models/demo-kjv/weights.safetensors models/demo-kjv/config.json vendor/gemma-tokenizer/tokenizer.json | sha256sum | cut -d' ' -f1) $quant"
[[ -f "$out/manifest.json" && -f "$stamp" && "$(cat "$stamp")" == "$inputs" ]] && exit 0

hf="$(mktemp -d)"
trap 'rm -rf "$hf"' EXIT
"$rg" expand models/demo-kjv "$hf"
cp vendor/gemma-tokenizer/tokenizer.json "$hf/"
rm -rf "$out"
"$rg" convert "$hf" "$out" --quant "$quant"
mkdir -p target
echo "$inputs" >"$stamp"
echo "demo model (trained on the King James Bible, $quant) written to $out"
