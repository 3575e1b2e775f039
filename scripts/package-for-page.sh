#!/usr/bin/env bash
# The chat page runs its model through the embeddable package (pkg/, which index.html has trunk copy
# into the site): builds pkg/ with scripts/build-package.sh when it is missing or older than anything
# it is built from, and does nothing otherwise. Trunk runs this before every build (Trunk.toml), so
# `trunk serve` and `trunk build` work on a fresh clone and never serve a stale engine.
set -euo pipefail
cd "$(dirname "$0")/.."

built=pkg/rgweb_bg.wasm
if [[ -f "$built" && -f pkg/index.js && -f pkg/worker.js ]]; then
    # The page's own sources (src/app, src/bin) are not in the package.
    newer=$(find js src shaders Cargo.toml Cargo.lock scripts/build-package.sh -type f -newer "$built" \
        -not -path 'src/app/*' -not -path 'src/bin/*' -print -quit)
    [[ -z "$newer" ]] && exit 0
    echo "pkg/ is older than $newer: building the package"
fi
exec bash scripts/build-package.sh
