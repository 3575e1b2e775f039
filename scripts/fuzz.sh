#!/usr/bin/env bash
# Fuzzes everything the page parses from the network (fuzz/fuzz_targets/): manifest.json,
# safetensors headers, the streaming shard parser in random chunkings, tokenizer.json. Each
# target runs for SECONDS (default 60) with libFuzzer, starting from the seeds in
# fuzz/corpus/<target>/; what it learns stays in fuzz/target/corpus/<target>/ for the next run.
# A crash, a timeout (> 10 s on one input), an allocation over 256 MiB or an RSS over 256 MiB is
# a failure: the input is saved under fuzz/artifacts/<target>/ and the script exits 1 after
# running every target.
#
# Usage: scripts/fuzz.sh [SECONDS]    (installs cargo-fuzz with `cargo install` if missing)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-60}"
cargo_fuzz_version=0.13.2

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz $cargo_fuzz_version (about a minute)"
    cargo install --locked --quiet "cargo-fuzz@$cargo_fuzz_version"
fi
# cargo fuzz passes nightly -Z flags (coverage instrumentation for libFuzzer); the stable
# toolchain takes them with this. No sanitizer: the code under test is safe Rust, and the
# allocation limit is enforced by the targets' own allocator (fuzz/src/lib.rs), which libFuzzer's
# -malloc_limit_mb cannot do without one.
export RUSTC_BOOTSTRAP=1
flags=(--sanitizer none)

cargo fuzz build "${flags[@]}"
failed=()
for target in $(cargo fuzz list); do
    work="target/corpus/$target"
    mkdir -p "$work"
    log="target/fuzz-$target.log"
    echo "== $target: $seconds s"
    # The first corpus folder receives new inputs; the committed seeds are only read.
    if cargo fuzz run "${flags[@]}" "$target" "$work" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=256 -malloc_limit_mb=256 \
        -print_final_stats=1 >"$log" 2>&1; then
        runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
        echo "$target: $runs executions in $seconds s, no failure"
    else
        tail -n 40 "$log"
        failed+=("$target")
    fi
done
if ((${#failed[@]})); then
    echo "fuzzing failed: ${failed[*]} (inputs in fuzz/artifacts/, logs in fuzz/target/fuzz-*.log)" >&2
    exit 1
fi
