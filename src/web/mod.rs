//! The browser side: fetching and caching model files, loading them into the engine, and the
//! JavaScript API. This module talks to the browser; the maths lives in [`crate::model`] and
//! [`crate::gpu`].
//!
//! - [`js`]: typed access to `fetch`, Cache Storage, storage estimates and timers, in a page or a worker.
//! - [`download`]: model sources (URL or picked folder), streamed bodies teed into the cache, HTTP Range resume.
//! - [`progress`]: where a load stands, as the loader reports it and the page reads it.
//! - [`model_files`]: a model's manifest, tokenizer and shards brought in, checked and cached, into any sink.
//! - [`models`]: the models in the cache: listed, checked whole, deleted, downloaded for later.
//! - `loader` (feature `gpu`): a model's files into the engine's GPU buffers, and its tokenizer parsed.
//! - `api` (feature `gpu`): the `RecurrentGemma` class that web pages import (wasm-bindgen).
//!
//! The chat page (feature `app`) builds this module without the engine: it runs its model through
//! the package's worker, and needs only the model files' sources, the cache and the progress type.

#[cfg(feature = "gpu")]
pub mod api;
pub mod download;
pub mod js;
#[cfg(feature = "gpu")]
pub mod loader;
pub mod model_files;
pub mod models;
pub mod progress;
