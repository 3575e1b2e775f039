//! Thin typed access to what the browser gives both a page and a worker: `fetch`, Cache Storage,
//! the storage estimate, the WebGPU entry point, and JS errors turned into [`Error`]s.

use js_sys::{Promise, Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{CacheStorage, ReadableStreamDefaultReader, Request, Response, StorageManager};

use crate::{Error, Result};

/// The window or the worker scope we run in.
enum Scope {
    Window(web_sys::Window),
    Worker(web_sys::WorkerGlobalScope),
}

fn scope() -> Result<Scope> {
    let global = js_sys::global();
    if let Some(window) = global.dyn_ref::<web_sys::Window>() {
        return Ok(Scope::Window(window.clone()));
    }
    if let Some(worker) = global.dyn_ref::<web_sys::WorkerGlobalScope>() {
        return Ok(Scope::Worker(worker.clone()));
    }
    Err(Error::Browser("not running in a window or a worker".into()))
}

/// A value as the plain JS object its JSON makes: how one Rust type crosses to JavaScript and,
/// through a worker's messages, back to the page ([`from_js`]).
pub fn to_js<T: serde::Serialize>(value: &T) -> JsValue {
    serde_json::to_string(value).ok().and_then(|json| js_sys::JSON::parse(&json).ok()).unwrap_or(JsValue::NULL)
}

/// A plain JS object read as `T` through its JSON (fields `T` does not know are ignored).
pub fn from_js<T: serde::de::DeserializeOwned>(value: &JsValue) -> Result<T> {
    let json = js_sys::JSON::stringify(value).map_err(|e| Error::Browser(describe(&e)))?;
    serde_json::from_str(&String::from(json)).map_err(|e| Error::Browser(format!("an object of the wrong shape: {e}")))
}

/// A JS exception or rejection as one line of text.
pub fn describe(value: &JsValue) -> String {
    if let Some(error) = value.dyn_ref::<js_sys::Error>() {
        return String::from(error.message());
    }
    if let Some(exception) = value.dyn_ref::<web_sys::DomException>() {
        return format!("{}: {}", exception.name(), exception.message());
    }
    value.as_string().unwrap_or_else(|| format!("{value:?}"))
}

/// The DOMException name of a rejection (`"QuotaExceededError"`, `"AbortError"`, ...), if it is one.
pub fn exception_name(value: &JsValue) -> Option<String> {
    value.dyn_ref::<web_sys::DomException>().map(|e| e.name())
}

pub async fn await_promise(promise: Promise) -> std::result::Result<JsValue, JsValue> {
    JsFuture::from(promise).await
}

/// Sends `request`; failure here means the network (or CORS), not an HTTP status.
pub async fn fetch(request: &Request) -> Result<Response> {
    let promise = match scope()? {
        Scope::Window(window) => window.fetch_with_request(request),
        Scope::Worker(worker) => worker.fetch_with_request(request),
    };
    let response =
        await_promise(promise).await.map_err(|e| Error::Network(format!("{}: {}", request.url(), describe(&e))))?;
    Ok(response.unchecked_into())
}

/// Cache Storage, when the browser offers it here (not on plain-HTTP origins other than localhost).
pub fn caches() -> Option<CacheStorage> {
    match scope().ok()? {
        Scope::Window(window) => window.caches().ok(),
        Scope::Worker(worker) => worker.caches().ok(),
    }
}

pub fn storage_manager() -> Option<StorageManager> {
    match scope().ok()? {
        Scope::Window(window) => Some(window.navigator().storage()),
        Scope::Worker(worker) => Some(worker.navigator().storage()),
    }
}

/// `(usage, quota)` in bytes from `navigator.storage.estimate()`.
pub async fn storage_estimate() -> Option<(f64, f64)> {
    let estimate = await_promise(storage_manager()?.estimate().ok()?).await.ok()?;
    let number = |key: &str| Reflect::get(&estimate, &key.into()).ok().and_then(|v| v.as_f64());
    Some((number("usage")?, number("quota")?))
}

/// Asks the browser to keep this origin's storage (models, conversations) when space runs low:
/// `Some(true)` if it will, `Some(false)` if it may still clear it, `None` where it cannot be
/// asked (a worker, a browser without `navigator.storage.persist`).
pub async fn persist_storage() -> Option<bool> {
    let Scope::Window(window) = scope().ok()? else { return None };
    let storage = window.navigator().storage();
    if await_promise(storage.persisted().ok()?).await.ok()?.as_bool() == Some(true) {
        return Some(true);
    }
    await_promise(storage.persist().ok()?).await.ok()?.as_bool()
}

/// WebCrypto's digests, where the browser offers them (secure contexts: https and localhost).
fn subtle_crypto() -> Option<web_sys::SubtleCrypto> {
    let crypto = match scope().ok()? {
        Scope::Window(window) => window.crypto().ok()?,
        Scope::Worker(worker) => worker.crypto().ok()?,
    };
    let subtle = Reflect::get(&crypto, &"subtle".into()).ok()?;
    subtle.dyn_into().ok()
}

/// Whether [`start_sha256`] can run here.
pub fn has_native_sha256() -> bool {
    subtle_crypto().is_some()
}

/// Starts the browser's own SHA-256 of `bytes` (`crypto.subtle.digest`: native code, off this
/// thread, so wasm goes on working while it runs) and returns what awaits its digest; `None`
/// where WebCrypto is not offered. A digest that fails comes back as `None` too.
pub fn start_sha256(bytes: &Uint8Array) -> Option<impl std::future::Future<Output = Option<[u8; 32]>>> {
    let promise = subtle_crypto()?.digest_with_str_and_buffer_source("SHA-256", bytes).ok()?;
    Some(async move {
        let digest = await_promise(promise).await.ok()?;
        Uint8Array::new(&digest).to_vec().try_into().ok()
    })
}

/// Whether this page is shown inside another page's frame (where what it shows can be overlaid
/// and a click on it disguised).
pub fn in_frame() -> bool {
    let Some(window) = web_sys::window() else { return false };
    match window.top() {
        Ok(Some(top)) => !js_sys::Object::is(&top, &window),
        // A top window that cannot be read is another origin's.
        _ => true,
    }
}

/// Whether `navigator.gpu` exists at all (an adapter may still be refused).
pub fn has_webgpu() -> bool {
    let navigator = match scope() {
        Ok(Scope::Window(window)) => JsValue::from(window.navigator()),
        Ok(Scope::Worker(worker)) => JsValue::from(worker.navigator()),
        Err(_) => return false,
    };
    Reflect::get(&navigator, &"gpu".into()).map(|gpu| !gpu.is_undefined() && !gpu.is_null()).unwrap_or(false)
}

/// The size of this module's linear memory (the whole wasm heap), in bytes.
pub fn wasm_memory_bytes() -> u64 {
    let memory: js_sys::WebAssembly::Memory = wasm_bindgen::memory().unchecked_into();
    memory.buffer().unchecked_into::<js_sys::ArrayBuffer>().byte_length() as u64
}

/// A reader over a response body or a file stream.
pub struct ChunkReader {
    reader: ReadableStreamDefaultReader,
}

impl ChunkReader {
    pub fn new(stream: web_sys::ReadableStream) -> Self {
        ChunkReader { reader: stream.get_reader().unchecked_into() }
    }

    /// The next chunk, or `None` at the end. A failure is the transport's (a dropped connection).
    pub async fn next(&self) -> std::result::Result<Option<Vec<u8>>, String> {
        let result = await_promise(self.reader.read()).await.map_err(|e| describe(&e))?;
        chunk_of(&result)
    }

    /// [`ChunkReader::next`], failing when nothing arrives for `ms` milliseconds: a connection
    /// that stalls without closing would otherwise hang the load for good.
    pub async fn next_within(&self, ms: i32) -> std::result::Result<Option<Vec<u8>>, String> {
        let read = self.reader.read();
        let (timeout, timer_id) = timer(ms);
        let first = await_promise(Promise::race(&js_sys::Array::of2(&read, &timeout))).await;
        // Tens of thousands of chunks arrive within one timeout: do not leave a timer behind for each.
        clear_timer(timer_id);
        let first = first.map_err(|e| describe(&e))?;
        // A read resolves to `{ done, value }`; the timer to `undefined`.
        if first.is_undefined() {
            return Err(format!("no data for {} s", ms / 1000));
        }
        chunk_of(&first)
    }

    /// Stops reading; the stream's source is told to stop sending.
    pub fn cancel(&self) {
        // The promise rejects when the stream had already failed (a dropped connection): await it
        // anyway, or the page reports an unhandled rejection.
        let cancelled = self.reader.cancel();
        wasm_bindgen_futures::spawn_local(async move {
            let _ = await_promise(cancelled).await;
        });
    }
}

/// A reader's `{ done, value }` as the chunk it holds, or `None` at the end.
fn chunk_of(result: &JsValue) -> std::result::Result<Option<Vec<u8>>, String> {
    let done = Reflect::get(result, &"done".into()).map(|d| d.is_truthy()).unwrap_or(true);
    if done {
        return Ok(None);
    }
    let value = Reflect::get(result, &"value".into()).map_err(|e| describe(&e))?;
    let chunk = value.dyn_into::<Uint8Array>().map_err(|_| "a stream chunk is not bytes".to_string())?;
    Ok(Some(chunk.to_vec()))
}

fn global_function(name: &str) -> Option<js_sys::Function> {
    Reflect::get(&js_sys::global(), &name.into()).ok().and_then(|f| f.dyn_into().ok())
}

/// A promise that resolves to `undefined` after `ms` milliseconds (`setTimeout`), in a page or a
/// worker, and the timer's id.
fn timer(ms: i32) -> (Promise, JsValue) {
    let mut id = JsValue::UNDEFINED;
    let promise = Promise::new(&mut |resolve, _| match global_function("setTimeout") {
        Some(set_timeout) => id = set_timeout.call2(&JsValue::NULL, &resolve, &JsValue::from(ms)).unwrap_or_default(),
        None => {
            let _ = resolve.call0(&JsValue::NULL);
        }
    });
    (promise, id)
}

fn clear_timer(id: JsValue) {
    if let Some(clear_timeout) = global_function("clearTimeout") {
        let _ = clear_timeout.call1(&JsValue::NULL, &id);
    }
}

/// Resolves after `ms` milliseconds.
pub async fn sleep_ms(ms: i32) {
    let _ = await_promise(timer(ms).0).await;
}

/// `url` made absolute against the page's (or worker's) own address.
pub fn absolute_url(url: &str) -> Result<String> {
    let href = Reflect::get(&js_sys::global(), &"location".into())
        .and_then(|location| Reflect::get(&location, &"href".into()))
        .ok()
        .and_then(|href| href.as_string())
        .ok_or_else(|| Error::Browser("the page has no location".into()))?;
    web_sys::Url::new_with_base(url, &href)
        .map(|u| u.href())
        .map_err(|_| Error::Input(format!("'{url}' is not a valid URL")))
}
