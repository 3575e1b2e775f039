//! The browser side: fetching and caching model files, loading them into the engine, and the
//! JavaScript API. This module talks to the browser; the maths lives in [`crate::model`] and
//! [`crate::gpu`].
//!
//! - [`js`]: typed access to `fetch`, Cache Storage, storage estimates and timers, in a page or a worker.
//! - [`download`]: model sources (URL or picked folder), streamed bodies teed into the cache, HTTP Range resume.
//! - [`loader`]: manifest → tokenizer → every shard through the parser into GPU buffers, with progress.
//! - [`api`]: the `RecurrentGemma` class that web pages import (wasm-bindgen).

pub mod api;
pub mod download;
pub mod js;
pub mod loader;
