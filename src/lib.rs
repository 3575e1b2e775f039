//! RecurrentGemma (Griffin) for the browser.
//!
//! - [`config`]: the model shape, parsed from a Hugging Face `config.json`, with 2B/9B presets.
//! - [`model`]: the CPU float32 reference forward pass, written to be read beside
//!   `shared/spec/griffin.md`: prefill over a sequence and a single step on a fixed-size [`model::State`].
//! - [`weights`]: the web weight format (sharded safetensors + `manifest.json`, int8 or f32),
//!   its incremental parser, and the converter from Hugging Face checkpoints.
//! - [`chat`]: the real Gemma tokenizer, the chat template, streaming detokenizer and sampler.
//!
//! - `gpu` (feature `gpu`, on by default): the WebGPU engine (WGSL kernels in `shaders/`), checked
//!   against [`model`].
//! - `web` (wasm32, feature `gpu` or `app`): fetch, cache and load in the browser, and the JavaScript API.
//! - `app` (feature `app`): the Leptos chat page, which runs its model through the package's
//!   worker: built without `gpu`, its wasm holds no engine.

#[cfg(all(target_arch = "wasm32", feature = "app"))]
pub mod app;
pub mod chat;
pub mod config;
pub mod error;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod model;
#[cfg(all(target_arch = "wasm32", any(feature = "gpu", feature = "app")))]
pub mod web;
pub mod weights;

pub use error::{Error, Result};

// Weights and state are reinterpreted from little-endian bytes in place.
#[cfg(target_endian = "big")]
compile_error!("rgweb assumes a little-endian target");
