//! The chat page's entry point; trunk builds it from `index.html`.

#[cfg(target_arch = "wasm32")]
fn main() {
    leptos::mount::mount_to_body(rgweb::app::App);
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!("the chat page is built for the browser: run `trunk serve` (see README)");
    std::process::exit(2);
}
