#!/usr/bin/env bash
# The deployable chat page in dist/, offline and without trunk: what `trunk build --release` makes
# from index.html, with the tools scripts/setup-web.sh and scripts/setup-wasm-opt.sh install from
# package registries. Copy dist/ to any static host; every URL in it is relative, so it also works
# from a sub-folder. `trunk serve` (Trunk.toml) stays the live-reloading loop for development.
#
# index.html names what goes into the site with trunk's `data-trunk` links; this script handles the
# kinds it uses (css, copy-file, copy-dir, a module script, the rust binary) and refuses any other,
# so a new link cannot be dropped silently. File names carry a hash of their content, and scripts
# and the stylesheet an integrity hash, as trunk's do.
#
# Usage: scripts/build-site.sh    (writes dist/)
set -euo pipefail
cd "$(dirname "$0")/.."

dist=dist
bash scripts/setup-web.sh
# The page runs its model through the embeddable package, which index.html copies into the site.
bash scripts/package-for-page.sh

attr() { [[ $1 =~ [[:space:]]$2=\"([^\"]*)\" ]] && echo "${BASH_REMATCH[1]}"; }
hashed_name() { # FILE: NAME-<16 hex of its sha256>.EXT
    local base; base=$(basename "$1")
    echo "${base%.*}-$(sha256sum "$1" | cut -c1-16).${base##*.}"
}
integrity() { echo "sha384-$(openssl dgst -sha384 -binary "$1" | base64 -w0)"; }

staging=$(mktemp -d "${TMPDIR:-/tmp}/rg-site.XXXXXX")
trap 'rm -rf "$staging"' EXIT
html="$staging/index.html"
: >"$html"
while IFS= read -r line; do
    if ! [[ $line =~ \<(link|script)[[:space:]][^\>]*data-trunk ]]; then
        printf '%s\n' "$line" >>"$html"
        continue
    fi
    indent=${line%%<*}
    rel=$(attr "$line" rel || true)
    href=$(attr "$line" href || attr "$line" src || true)
    case "$rel" in
    css)
        name=$(hashed_name "$href")
        cp "$href" "$staging/$name"
        printf '%s<link rel="stylesheet" href="./%s" integrity="%s" />\n' "$indent" "$name" "$(integrity "$href")" >>"$html"
        ;;
    copy-file) cp "$href" "$staging/" ;;
    copy-dir) cp -r "$href" "$staging/" ;;
    rust)
        bin=$(attr "$line" data-bin)
        features=$(attr "$line" data-cargo-features)
        opt=$(attr "$line" data-wasm-opt)
        cargo_flags=(--release --target wasm32-unknown-unknown --features "$features" --bin "$bin")
        [[ $line == *data-cargo-no-default-features* ]] && cargo_flags+=(--no-default-features)
        cargo build --quiet "${cargo_flags[@]}"
        wasm-bindgen --target web --no-typescript --out-dir "$staging/wasm" --out-name "$bin" \
            "target/wasm32-unknown-unknown/release/$bin.wasm"
        bash scripts/wasm-opt-cached.sh "$staging/wasm/${bin}_bg.wasm" "target/site-wasm-opt" "-O$opt"
        js=$(hashed_name "$staging/wasm/$bin.js")
        wasm=$(hashed_name "$staging/wasm/${bin}_bg.wasm")
        mv "$staging/wasm/$bin.js" "$staging/$js"
        mv "$staging/wasm/${bin}_bg.wasm" "$staging/$wasm"
        # The JavaScript modules the Rust code imports (#[wasm_bindgen(module = ...)]), which the
        # glue imports from ./snippets/.
        if [[ -d "$staging/wasm/snippets" ]]; then mv "$staging/wasm/snippets" "$staging/"; fi
        rm -r "$staging/wasm"
        # Trunk.toml's pattern_script: www/loader.js starts the wasm from these names (the page's
        # CSP allows no inline script).
        printf '%s<meta name="wasm-app" data-js="./%s" data-wasm="./%s" />\n' "$indent" "$js" "$wasm" >>"$html"
        ;;
    "")
        [[ $line == *"<script"* ]] || { echo "error: index.html: a data-trunk link without rel: $line" >&2; exit 1; }
        name=$(hashed_name "$href")
        cp "$href" "$staging/$name"
        type=$(attr "$line" type || true)
        printf '%s<script src="./%s"%s integrity="%s"></script>\n' "$indent" "$name" \
            "${type:+ type=\"$type\"}" "$(integrity "$href")" >>"$html"
        ;;
    *)
        echo "error: index.html: scripts/build-site.sh does not handle data-trunk rel=\"$rel\"" >&2
        exit 1
        ;;
    esac
done <index.html

rm -rf "$dist"
mv "$staging" "$dist"
trap - EXIT
chmod 755 "$dist"
echo "site written to $dist/ ($(du -sh "$dist" | cut -f1))"
