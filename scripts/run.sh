#!/usr/bin/env bash
# The main job, offline on a fresh machine: builds `rg`, makes a small demo model with RANDOM
# weights (it babbles: it only shows the pipeline working) plus the real Gemma tokenizer, and chats
# with it on the CPU reference. Pass a prompt as the first argument; MODEL=DIR uses another model.
set -euo pipefail
cd "$(dirname "$0")/.."

prompt="${1:-Tell me about recurrent neural networks.}"
demo="target/demo"
model="${MODEL:-$demo/tiny-random-int8}"

bash scripts/fetch-tokenizer.sh >/dev/null
cargo build --release --quiet --bin rg
rg=target/release/rg

if [[ -z "${MODEL:-}" && ! -f "$model/manifest.json" ]]; then
    echo "making the demo model (random weights, tiny shape, real tokenizer) in $model"
    "$rg" random --preset tiny --seed 0 "$demo/tiny-random-hf"
    cp vendor/gemma-tokenizer/tokenizer.json "$demo/tiny-random-hf/"
    "$rg" convert "$demo/tiny-random-hf" "$model" --quant int8
fi

echo "prompt: $prompt"
"$rg" generate "$model" --chat --prompt "$prompt" --max-tokens 48 --temperature 0.8 --top-p 0.95 --seed 1
