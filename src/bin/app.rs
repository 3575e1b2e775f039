//! The chat page's entry point; scripts/build-site.sh (or trunk) builds it from `index.html`.

#[cfg(target_arch = "wasm32")]
fn main() {
    leptos::mount::mount_to_body(rgweb::app::App);
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!("the chat page is built for the browser: run `bash scripts/run.sh` or `bash scripts/build-site.sh` (see README)");
    std::process::exit(2);
}
