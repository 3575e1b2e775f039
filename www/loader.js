// Starts the page's wasm. Trunk's default loader is an inline <script>, which the page's
// Content-Security-Policy forbids (no inline script runs at all, so an injected one cannot
// either): Trunk.toml's `pattern_script` puts the hashed file names in a <meta> instead, and this
// file, served from the page's own origin with an integrity hash, loads them.
const files = document.querySelector('meta[name="wasm-app"]').dataset;
const { default: init } = await import(files.js);
await init({ module_or_path: files.wasm });
