#!/usr/bin/env bash
# The 2B (random weights, real shapes) on a real GPU through native wgpu: int8 and int4 converted
# and benchmarked in one run, so their figures compare. Needs a built `rg` (RG=…, default
# target/release/rg) and a Vulkan driver. Writes the JSON reports and the converter's
# /usr/bin/time output to $OUT (default /tmp/bench-gpu/out). About 3 minutes on a 16-core machine
# with a datacentre GPU; the checkpoints take about 20 GB of /tmp.
#
#   bash scripts/bench-gpu.sh
set -euo pipefail
RG=${RG:-target/release/rg}
WORK=${WORK:-/tmp/bench-gpu}
OUT=${OUT:-$WORK/out}
PROMPT_TOKENS=${PROMPT_TOKENS:-128,512,2048}
GEN_TOKENS=${GEN_TOKENS:-64,256}
mkdir -p "$WORK" "$OUT"

timed() { # name command…: the command's peak memory and wall time into $OUT/name.time
    local name=$1
    shift
    if [ -x /usr/bin/time ]; then /usr/bin/time -v "$@" 2>"$OUT/$name.time"; else "$@"; fi
}

[ -f "$WORK/hf/config.json" ] || timed random "$RG" random --preset 2b --seed 1 --dtype bf16 "$WORK/hf"
for quant in int8 int4; do
    [ -f "$WORK/$quant/manifest.json" ] || timed "convert-$quant" "$RG" convert "$WORK/hf" "$WORK/$quant" --quant "$quant"
    du -sb "$WORK/$quant" | tee "$OUT/size-$quant.txt"
done
for quant in int8 int4; do
    "$RG" bench "$WORK/$quant" --prompt-tokens "$PROMPT_TOKENS" --gen-tokens "$GEN_TOKENS" --json --profile \
        2>"$OUT/profile-$quant.txt" | tee "$OUT/bench-$quant.json"
done
