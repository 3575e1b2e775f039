#!/usr/bin/env bash
# The 2B (random weights, real shapes) on a real GPU through native wgpu, every kernel variant on
# one warm machine so their figures compare: int8 and int4 × RG_SHADER_CHECKS checked/trusted ×
# RG_KERNELS v1/v2, each with `--profile` (per-kernel µs from GPU timestamps), prefill at 128 and
# 2,048 tokens, and the top-p worst case; the plan's counts and the analytic model's prediction
# beside them. Needs a built `rg` (RG=…, default target/release/rg) and a Vulkan driver; WGPU_BW=…
# adds the bandwidth probe (shared/tools/wgpu-bw's binary). Writes everything to $OUT (default
# /tmp/bench-gpu/out). About 4 minutes on a 16-core machine with a datacentre GPU; the
# checkpoints take about 20 GB of /tmp.
#
#   bash scripts/bench-gpu.sh
set -euo pipefail
RG=${RG:-target/release/rg}
WORK=${WORK:-/tmp/bench-gpu}
OUT=${OUT:-$WORK/out}
PROMPT_TOKENS=${PROMPT_TOKENS:-128,2048}
GEN_TOKENS=${GEN_TOKENS:-64,256}
mkdir -p "$WORK" "$OUT"

timed() { # name command…: the command's peak memory and wall time into $OUT/name.time
    local name=$1
    shift
    if [ -x /usr/bin/time ]; then /usr/bin/time -v "$@" 2>"$OUT/$name.time"; else "$@"; fi
}

{ nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv || true
  vulkaninfo --summary 2>/dev/null | head -40 || true; } >"$OUT/adapter.txt" 2>&1
[ -n "${WGPU_BW:-}" ] && "$WGPU_BW" >"$OUT/bandwidth.txt" 2>&1 || true

[ -f "$WORK/hf/config.json" ] || timed random "$RG" random --preset 2b --seed 1 --dtype bf16 "$WORK/hf"
for quant in int8 int4; do
    [ -f "$WORK/$quant/manifest.json" ] || timed "convert-$quant" "$RG" convert "$WORK/hf" "$WORK/$quant" --quant "$quant"
    du -sb "$WORK/$quant" | tee "$OUT/size-$quant.txt"
    for kernels in v1 v2; do
        RG_KERNELS=$kernels "$RG" bench "$WORK/$quant" --plan-only --json --model h200 >"$OUT/plan-$quant-$kernels.json"
    done
done
for quant in int8 int4; do
    for checks in checked trusted; do
        for kernels in v1 v2; do
            name="$quant-$checks-$kernels"
            RG_SHADER_CHECKS=$checks RG_KERNELS=$kernels "$RG" bench "$WORK/$quant" \
                --prompt-tokens "$PROMPT_TOKENS" --gen-tokens "$GEN_TOKENS" --json --profile \
                2>"$OUT/profile-$name.txt" | tee "$OUT/bench-$name.json"
        done
    done
    # The sampler's worst case: a flat distribution under top-p.
    RG_SHADER_CHECKS=trusted "$RG" bench "$WORK/$quant" --prompt-tokens 128 --gen-tokens 64 --json \
        --temperature 1 --top-p 0.9 | tee "$OUT/bench-$quant-top-p.json"
done
