//! The engine the page talks to: typed bindings to the package's `WorkerEngine` (`pkg/index.js`,
//! copied into the site next to the page by scripts/build-site.sh or trunk). The model, its
//! tokenizer and every GPU call live in the package's dedicated worker, so a load or a reply
//! never holds up this thread; the page only sends messages and renders what comes back. One
//! engine code path serves the page and every site that embeds the package.
//!
//! The package's wasm is never instantiated here: `pkg/index.js` initialises it lazily, and only
//! `WorkerEngine.load` is called on this thread, which starts the worker.

use js_sys::{Array, Function, Object, Promise, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use crate::chat::figures::{EngineStats, TurnFigures};
use crate::web::js::{self, describe};
use crate::web::progress::LoadProgress;

// `raw_module`: the path is kept as written in the page's glue, so it resolves next to the glue
// (the site's root), where index.html copies the built package.
#[wasm_bindgen(raw_module = "./pkg/index.js")]
extern "C" {
    /// The package's engine in a dedicated worker (see js/index.d.ts).
    #[derive(Clone, Debug)]
    pub type WorkerEngine;

    #[wasm_bindgen(static_method_of = WorkerEngine, js_name = load, catch)]
    fn load_js(source: &JsValue, options: &Object) -> Result<Promise, JsValue>;

    #[wasm_bindgen(method, js_name = chat, catch)]
    fn chat_js(this: &WorkerEngine, message: &str, options: &Object) -> Result<Promise, JsValue>;

    #[wasm_bindgen(method, js_name = regenerate, catch)]
    fn regenerate_js(this: &WorkerEngine, options: &Object) -> Result<Promise, JsValue>;

    #[wasm_bindgen(method, js_name = abort)]
    fn abort_js(this: &WorkerEngine);

    #[wasm_bindgen(method, js_name = reset, catch)]
    fn reset_js(this: &WorkerEngine) -> Result<Promise, JsValue>;

    #[wasm_bindgen(method, js_name = stats, catch)]
    fn stats_js(this: &WorkerEngine) -> Result<Promise, JsValue>;

    #[wasm_bindgen(method, js_name = snapshot, catch)]
    fn snapshot_js(this: &WorkerEngine) -> Result<Promise, JsValue>;

    #[wasm_bindgen(method, js_name = restore, catch)]
    fn restore_js(this: &WorkerEngine, bytes: &Uint8Array) -> Result<Promise, JsValue>;

    #[wasm_bindgen(method, js_name = prefillMessages, catch)]
    fn prefill_messages_js(this: &WorkerEngine, messages: &Array, options: &Object) -> Result<Promise, JsValue>;

    #[wasm_bindgen(method, js_name = dispose, catch)]
    fn dispose_js(this: &WorkerEngine) -> Result<Promise, JsValue>;

    #[wasm_bindgen(method, getter, js_name = modelId)]
    fn model_id_js(this: &WorkerEngine) -> JsValue;
}

/// Awaits a promise a binding returned (or the exception it threw), as one line of text on failure.
async fn settle(promise: Result<Promise, JsValue>) -> Result<JsValue, String> {
    let promise = promise.map_err(|e| describe(&e))?;
    JsFuture::from(promise).await.map_err(|e| describe(&e))
}

fn get(object: &JsValue, key: &str) -> JsValue {
    Reflect::get(object, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

fn number(object: &JsValue, key: &str) -> f64 {
    get(object, key).as_f64().unwrap_or(0.0)
}

fn set(object: &Object, key: &str, value: &JsValue) {
    let _ = Reflect::set(object, &JsValue::from_str(key), value);
}

/// The package's `LoadProgress` object: the type the loader reports, read back.
fn progress_of(value: &JsValue) -> LoadProgress {
    js::from_js(value).unwrap_or_default()
}

/// A finished reply.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reply {
    pub text: String,
    pub token_ids: Vec<u32>,
    /// Tokens prefilled for this turn: only its own, the state carries the rest.
    pub prompt_tokens: u64,
    pub stopped: bool,
}

/// The sampling options of a reply.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub seed: u64,
    pub max_tokens: usize,
}

impl Sampling {
    /// The options object, with `onToken` attached.
    fn options(&self, on_token: &Function) -> Object {
        let options = Object::new();
        set(&options, "temperature", &JsValue::from_f64(self.temperature as f64));
        set(&options, "topK", &JsValue::from_f64(self.top_k as f64));
        set(&options, "topP", &JsValue::from_f64(self.top_p as f64));
        set(&options, "seed", &JsValue::from_f64(self.seed as f64));
        set(&options, "maxTokens", &JsValue::from_f64(self.max_tokens as f64));
        set(&options, "onToken", on_token);
        options
    }
}

/// What to load: a base URL (absolute) or the files of a picked folder.
pub enum LoadSource<'a> {
    Url(&'a str),
    Folder(&'a web_sys::FileList),
}

/// Whether this browser gives WebGPU a usable adapter, asked on this thread before a worker
/// starts: a machine without one gets the page that says why, not a failed download. `Err` says why not.
pub async fn check_adapter() -> Result<String, String> {
    let gpu = get(&get(&js_sys::global(), "navigator"), "gpu");
    if gpu.is_undefined() || gpu.is_null() {
        return Err("This browser does not offer WebGPU (navigator.gpu is missing).".into());
    }
    let request =
        get(&gpu, "requestAdapter").dyn_into::<Function>().map_err(|_| "navigator.gpu.requestAdapter is missing")?;
    // The adapter the engine will get: it asks for the high-performance one too.
    let options = Object::new();
    set(&options, "powerPreference", &JsValue::from_str("high-performance"));
    let adapter = settle(request.call1(&gpu, &options).map(Promise::from)).await?;
    if adapter.is_null() || adapter.is_undefined() {
        return Err("WebGPU is present but gave no usable GPU adapter. Check that hardware acceleration is on \
                    (chrome://settings/system) and your GPU is not blocklisted (chrome://gpu)."
            .into());
    }
    Ok(adapter_description(&get(&adapter, "info")))
}

/// `GPUAdapterInfo` in a few words: vendor, architecture, device or description, and whether it
/// is a software fallback. WebGPU does not say whether a GPU is integrated or discrete.
fn adapter_description(info: &JsValue) -> String {
    let field = |key: &str| get(info, key).as_string().filter(|value| !value.is_empty());
    let mut words: Vec<String> = ["vendor", "architecture", "device"].iter().filter_map(|key| field(key)).collect();
    if words.is_empty() {
        words.extend(field("description"));
    }
    if get(info, "isFallbackAdapter").as_bool() == Some(true) {
        words.push("(software fallback)".into());
    }
    if words.is_empty() {
        "not named by the browser".into()
    } else {
        words.join(" ")
    }
}

impl WorkerEngine {
    /// Starts the worker and loads the model there, handing each progress report to `on_progress`;
    /// `on_device_lost(reason)` is called if its GPU device is lost, even between calls.
    pub async fn load(
        source: LoadSource<'_>,
        on_progress: impl FnMut(LoadProgress) + 'static,
        on_device_lost: impl FnOnce(String) + 'static,
    ) -> Result<Self, String> {
        let mut on_progress = on_progress;
        let callback = Closure::<dyn FnMut(JsValue)>::new(move |p: JsValue| on_progress(progress_of(&p)));
        let options = Object::new();
        set(&options, "onProgress", callback.as_ref());
        // Called at most once, then freed; a model that is never lost keeps this small closure.
        set(&options, "onDeviceLost", &Closure::once_into_js(on_device_lost));
        let source: JsValue = match source {
            LoadSource::Url(url) => JsValue::from_str(url),
            LoadSource::Folder(files) => files.into(),
        };
        let engine = settle(Self::load_js(&source, &options)).await;
        // No progress comes once the load has settled: the callback can go.
        drop(callback);
        Ok(engine?.unchecked_into())
    }

    /// A chat turn; `on_token(piece, live)` gets each piece and the figures so far.
    pub async fn chat(
        &self,
        message: &str,
        sampling: &Sampling,
        on_token: impl FnMut(String, Option<TurnFigures>) + 'static,
    ) -> Result<Reply, String> {
        let callback = token_callback(on_token);
        let reply = settle(self.chat_js(message, &sampling.options(callback.as_ref().unchecked_ref()))).await;
        drop(callback);
        reply.map(|r| reply_of(&r))
    }

    /// The last reply answered again.
    pub async fn regenerate(
        &self,
        sampling: &Sampling,
        on_token: impl FnMut(String, Option<TurnFigures>) + 'static,
    ) -> Result<Reply, String> {
        let callback = token_callback(on_token);
        let reply = settle(self.regenerate_js(&sampling.options(callback.as_ref().unchecked_ref()))).await;
        drop(callback);
        reply.map(|r| reply_of(&r))
    }

    /// Stops the reply in progress; its promise resolves with what was generated.
    pub fn abort(&self) {
        self.abort_js();
    }

    pub async fn reset(&self) -> Result<(), String> {
        settle(self.reset_js()).await.map(drop)
    }

    pub async fn stats(&self) -> Result<EngineStats, String> {
        js::from_js(&settle(self.stats_js()).await?).map_err(|e| format!("stats(): {e}"))
    }

    /// The model's identity (its manifest's sha256): `engine.modelId`, else the one `stats()` gives.
    pub async fn model_id(&self) -> Option<String> {
        match self.model_id_js().as_string() {
            Some(id) => Some(id),
            None => self.stats().await.ok()?.model_id,
        }
    }

    /// The conversation as bytes: the state, the token history and the model's identity.
    pub async fn state_bytes(&self) -> Result<Uint8Array, String> {
        let snapshot = settle(self.snapshot_js()).await?;
        let bytes = call_method(&snapshot, "toBytes").await;
        // The snapshot holds a copy of the state in GPU memory: free it whatever happened.
        let _ = call_method(&snapshot, "free").await;
        bytes?.dyn_into::<Uint8Array>().map_err(|_| "snapshot.toBytes() did not give a Uint8Array".to_string())
    }

    /// Returns to a conversation saved with [`WorkerEngine::state_bytes`]; the engine refuses
    /// another model's (the message says so) and keeps its state.
    pub async fn restore(&self, bytes: &Uint8Array) -> Result<(), String> {
        settle(self.restore_js(bytes)).await.map(drop)
    }

    /// Brings the engine to a conversation that ends with a reply, without replying: `messages`
    /// are OpenAI's `(role, content)`. `on_progress(fed, total)` follows it in tokens. The tokens
    /// prefilled, or None when it was aborted (the state is then as it was).
    pub async fn prefill_messages(
        &self,
        messages: &[(&str, &str)],
        on_progress: impl FnMut(u64, u64) + 'static,
    ) -> Result<Option<u64>, String> {
        let list = Array::new();
        for (role, content) in messages {
            let message = Object::new();
            set(&message, "role", &JsValue::from_str(role));
            set(&message, "content", &JsValue::from_str(content));
            list.push(&message);
        }
        let mut on_progress = on_progress;
        let callback = Closure::<dyn FnMut(JsValue)>::new(move |p: JsValue| {
            on_progress(number(&p, "fed") as u64, number(&p, "total") as u64)
        });
        let options = Object::new();
        set(&options, "onProgress", callback.as_ref());
        let fed = settle(self.prefill_messages_js(&list, &options)).await;
        drop(callback);
        Ok(fed?.as_f64().map(|n| n as u64))
    }

    /// Frees the GPU memory and ends the worker.
    pub async fn dispose(&self) {
        let _ = settle(self.dispose_js()).await;
    }
}

/// Calls `object.name()` and awaits what it returns.
async fn call_method(object: &JsValue, name: &str) -> Result<JsValue, String> {
    let method = get(object, name).dyn_into::<Function>().map_err(|_| format!("{name}() is missing"))?;
    let value = method.call0(object).map_err(|e| describe(&e))?;
    JsFuture::from(Promise::resolve(&value)).await.map_err(|e| describe(&e))
}

fn token_callback(
    mut on_token: impl FnMut(String, Option<TurnFigures>) + 'static,
) -> Closure<dyn FnMut(JsValue, JsValue)> {
    Closure::new(move |piece: JsValue, live: JsValue| {
        on_token(piece.as_string().unwrap_or_default(), js::from_js(&live).ok());
    })
}

fn reply_of(value: &JsValue) -> Reply {
    let ids = get(value, "tokenIds");
    let token_ids = ids
        .dyn_ref::<Array>()
        .map(|a| a.iter().filter_map(|id| id.as_f64()).map(|id| id as u32).collect())
        .unwrap_or_default();
    Reply {
        text: get(value, "text").as_string().unwrap_or_default(),
        token_ids,
        prompt_tokens: number(value, "promptTokens") as u64,
        stopped: get(value, "stopped").as_bool().unwrap_or(false),
    }
}
