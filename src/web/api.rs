//! The JavaScript API (wasm-bindgen): what `pkg/index.js` wraps and what other sites import.
//!
//! ```js
//! const model = await RecurrentGemma.load("https://host/model/", (p) => console.log(p.bytesDone));
//! const reply = await model.chat("Hello!", { temperature: 0.7, maxTokens: 256 }, (piece) => show(piece));
//! ```
//! Every failure is a JS `Error` carrying the library's one-line message.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use js_sys::{Function, Object, Reflect};
use sha2::{Digest, Sha256};
use wasm_bindgen::prelude::*;

use super::download::{self, CacheState, Source};
use super::js;
use super::loader::{self, LoadProgress, Stage};
use crate::chat::session::{Backend, ChatSession, Checkpoint, Generator, Listener, Reply};
use crate::chat::SamplingParams;
use crate::weights::format::Manifest;
use crate::Error;

fn to_js(error: Error) -> JsError {
    JsError::new(&error.to_string())
}

/// Builds a plain JS object from `(key, value)` pairs.
fn object(entries: &[(&str, JsValue)]) -> JsValue {
    let object = Object::new();
    for (key, value) in entries {
        let _ = Reflect::set(&object, &JsValue::from_str(key), value);
    }
    object.into()
}

fn number(value: impl Into<f64>) -> JsValue {
    JsValue::from_f64(value.into())
}

/// The progress object handed to `onProgress`.
pub fn progress_object(progress: &LoadProgress) -> JsValue {
    let stage = match progress.stage {
        Stage::Manifest => "manifest",
        Stage::Tokenizer => "tokenizer",
        Stage::Weights => "weights",
        Stage::Ready => "ready",
    };
    let cache = match progress.cache {
        CacheState::On => "on",
        CacheState::Unavailable => "unavailable",
        CacheState::QuotaExceeded => "quota-exceeded",
    };
    let notes = progress.notes.iter().map(|n| JsValue::from_str(n)).collect::<js_sys::Array>();
    object(&[
        ("stage", stage.into()),
        ("bytesDone", number(progress.bytes_done as f64)),
        ("bytesTotal", number(progress.bytes_total as f64)),
        ("bytesFromCache", number(progress.bytes_from_cache as f64)),
        ("fromCache", (progress.bytes_done > 0 && progress.bytes_from_cache == progress.bytes_done).into()),
        ("shardsDone", number(progress.shards_done as f64)),
        ("shardsTotal", number(progress.shards_total as f64)),
        ("seconds", number(progress.seconds)),
        ("bytesPerSecond", number(progress.bytes_per_second())),
        ("etaSeconds", progress.eta_seconds().map(JsValue::from_f64).unwrap_or(JsValue::NULL)),
        ("cache", cache.into()),
        ("notes", notes.into()),
        ("peakWasmBytes", number(progress.peak_wasm_bytes as f64)),
    ])
}

/// The largest whole number a JS number holds exactly.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// `value` as the caller would recognise it in an error message.
fn describe(value: &JsValue) -> String {
    match (value.as_f64(), value.as_string()) {
        (Some(number), _) => number.to_string(),
        (None, Some(text)) => format!("{text:?}"),
        _ => value.js_typeof().as_string().unwrap_or_default(),
    }
}

/// Reads the generation options a caller may pass (`{ temperature, topK, topP, seed, maxTokens }`);
/// what is left out is greedy decoding and 256 tokens, whatever earlier calls passed. Every value
/// is checked here, before anything changes; a bad one is an error that names it.
fn options(value: &JsValue) -> Result<(SamplingParams, usize), JsError> {
    let given = !(value.is_undefined() || value.is_null());
    if given && !value.is_object() {
        return Err(JsError::new(&format!("options must be an object, got {}", describe(value))));
    }
    let field = |name: &str| -> Result<Option<f64>, JsError> {
        if !given {
            return Ok(None);
        }
        let v = Reflect::get(value, &name.into()).map_err(|_| JsError::new("options must be an object"))?;
        if v.is_undefined() || v.is_null() {
            return Ok(None);
        }
        match v.as_f64() {
            Some(x) if x.is_finite() => Ok(Some(x)),
            _ => Err(JsError::new(&format!("options.{name} must be a finite number, got {}", describe(&v)))),
        }
    };
    let whole = |name: &str, least: f64| -> Result<Option<f64>, JsError> {
        match field(name)? {
            Some(x) if x.fract() != 0.0 || x < least || x > MAX_SAFE_INTEGER => {
                Err(JsError::new(&format!("options.{name} must be a whole number >= {least}, got {x}")))
            }
            x => Ok(x),
        }
    };
    let mut params = SamplingParams::default();
    if let Some(t) = field("temperature")? {
        if t < 0.0 {
            return Err(JsError::new(&format!("options.temperature must be >= 0 (0 is greedy), got {t}")));
        }
        params.temperature = t as f32;
    }
    if let Some(k) = whole("topK", 0.0)? {
        params.top_k = k as usize;
    }
    if let Some(p) = field("topP")? {
        if !(p > 0.0 && p <= 1.0) {
            return Err(JsError::new(&format!("options.topP must be in (0, 1], got {p}")));
        }
        params.top_p = p as f32;
    }
    if let Some(seed) = whole("seed", 0.0)? {
        params.seed = seed as u64;
    }
    let max_tokens = whole("maxTokens", 1.0)?.map(|m| m as usize).unwrap_or(256);
    params.validate().map_err(to_js)?;
    Ok((params, max_tokens))
}

/// What tells one engine's snapshots from another's.
#[derive(Clone, PartialEq)]
struct Stamp {
    /// Unique among the engines of this wasm instance: another engine has another GPU device,
    /// whose buffers this one cannot copy.
    engine: u64,
    /// The sha256 of the model's manifest (which holds every shard's sha256): its identity.
    model: String,
}

thread_local! {
    static NEXT_ENGINE: Cell<u64> = const { Cell::new(1) };
}

impl Stamp {
    fn new(manifest: &Manifest) -> Result<Stamp, JsError> {
        let json = serde_json::to_vec(manifest).map_err(|e| JsError::new(&format!("manifest: {e}")))?;
        let model = Sha256::digest(&json).iter().map(|b| format!("{b:02x}")).collect();
        let engine = NEXT_ENGINE.with(|next| next.replace(next.get() + 1));
        Ok(Stamp { engine, model })
    }

    /// Whether a snapshot stamped `snapshot` can be restored into the engine stamped `self`.
    fn admit(&self, snapshot: &Stamp) -> Result<(), JsError> {
        if snapshot.model != self.model {
            let (theirs, ours) = (&snapshot.model[..12], &self.model[..12]);
            return Err(JsError::new(&format!(
                "this snapshot is of another model (manifest sha256 {theirs}…, this one's {ours}…): nothing was restored"
            )));
        }
        if snapshot.engine != self.engine {
            return Err(JsError::new(
                "this snapshot was taken by another engine (each has its own GPU device): restore it into the \
                 engine that made it; nothing was restored",
            ));
        }
        Ok(())
    }
}

/// One call's listener: the text goes to the caller's `onToken`, and the call stops once its own
/// flag is set (by `abort()` or `dispose()`).
struct CallListener {
    on_token: Option<Function>,
    stop: Rc<Cell<bool>>,
}

impl Listener for CallListener {
    fn text(&mut self, piece: &str) -> bool {
        if let Some(callback) = &self.on_token {
            let _ = callback.call1(&JsValue::NULL, &JsValue::from_str(piece));
        }
        !self.stop.get()
    }

    fn stopped(&self) -> bool {
        self.stop.get()
    }
}

struct Loaded {
    session: ChatSession,
    manifest: Manifest,
    load: LoadProgress,
}

/// RecurrentGemma running on WebGPU in this page (or worker).
#[wasm_bindgen]
pub struct RecurrentGemma {
    /// Out of the cell while a reply is being generated, and gone after `dispose()`.
    loaded: RefCell<Option<Loaded>>,
    generating: Cell<bool>,
    disposed: Cell<bool>,
    /// The stop flag of the call in progress (or of the last one): each call makes its own, so an
    /// abort meant for one call never reaches the next.
    stop: RefCell<Rc<Cell<bool>>>,
    gpu_bytes: Cell<u64>,
    stamp: Stamp,
}

/// A saved conversation state (`model.snapshot()`), restorable with `model.restore(s)`. Call
/// `free()` when done with it: it holds a copy of the state in GPU memory.
#[wasm_bindgen]
pub struct StateSnapshot {
    checkpoint: Checkpoint,
    stamp: Stamp,
}

#[wasm_bindgen]
impl RecurrentGemma {
    /// Loads the model whose `manifest.json`, `tokenizer.json` and shards are under `baseUrl`.
    /// `onProgress(progress)` is called as bytes stream in.
    pub async fn load(base_url: String, on_progress: Option<Function>) -> Result<RecurrentGemma, JsError> {
        let ctx = loader::gpu_context().await.map_err(to_js)?;
        let source = Source::url(&base_url).map_err(to_js)?;
        let mut report = |progress: &LoadProgress| {
            if let Some(callback) = &on_progress {
                let _ = callback.call1(&JsValue::NULL, &progress_object(progress));
            }
        };
        let model = loader::load(ctx, source, &mut report).await.map_err(to_js)?;
        let stamp = Stamp::new(&model.manifest)?;
        let gpu_bytes = model.engine.memory_bytes();
        let generator = Generator::gpu(model.engine, SamplingParams::default()).map_err(to_js)?;
        let loaded = Loaded {
            session: ChatSession::new(generator, model.tokenizer),
            manifest: model.manifest,
            load: model.progress,
        };
        Ok(RecurrentGemma {
            loaded: RefCell::new(Some(loaded)),
            generating: Cell::new(false),
            disposed: Cell::new(false),
            stop: RefCell::new(Rc::new(Cell::new(false))),
            gpu_bytes: Cell::new(gpu_bytes),
            stamp,
        })
    }

    /// Sends a chat message (Gemma chat template; the state after earlier turns is kept, so only
    /// this turn's tokens are prefilled). `onToken(text)` receives the reply as it streams.
    /// Resolves to `{ text, tokenIds, promptTokens, stopped }`.
    pub async fn chat(
        &self,
        message: String,
        options: JsValue,
        on_token: Option<Function>,
    ) -> Result<JsValue, JsError> {
        self.run(options, on_token, |session, max, listener| {
            Box::pin(async move { session.send(&message, max, listener).await })
        })
        .await
    }

    /// Plain completion: continues the token stream with `prompt` as it is, no template.
    pub async fn generate(
        &self,
        prompt: String,
        options: JsValue,
        on_token: Option<Function>,
    ) -> Result<JsValue, JsError> {
        self.run(options, on_token, |session, max, listener| {
            Box::pin(async move { session.complete(&prompt, max, listener).await })
        })
        .await
    }

    /// Answers the last chat message again (pass a new `seed` for a different reply).
    pub async fn regenerate(&self, options: JsValue, on_token: Option<Function>) -> Result<JsValue, JsError> {
        self.run(options, on_token, |session, max, listener| {
            Box::pin(async move { session.regenerate(max, listener).await })
        })
        .await
    }

    /// Stops the generation in progress, even mid-prompt or between tokens that make no text; its
    /// promise resolves with what was generated so far.
    pub fn abort(&self) {
        self.stop.borrow().set(true);
    }

    /// Starts a new conversation.
    pub fn reset(&self) -> Result<(), JsError> {
        self.with(|loaded| {
            loaded.session.reset();
            Ok(())
        })
    }

    /// A copy of the conversation state (fixed size, whatever the conversation's length).
    pub fn snapshot(&self) -> Result<StateSnapshot, JsError> {
        self.with(|loaded| {
            Ok(StateSnapshot { checkpoint: loaded.session.generator().checkpoint(), stamp: self.stamp.clone() })
        })
    }

    /// Returns to a snapshot this engine took; one of another engine or model is refused.
    pub fn restore(&self, snapshot: &StateSnapshot) -> Result<(), JsError> {
        self.stamp.admit(&snapshot.stamp)?;
        self.with(|loaded| loaded.session.generator().restore(&snapshot.checkpoint).map_err(to_js))
    }

    /// `{ prefillTokensPerSecond, decodeTokensPerSecond, timeToFirstTokenSeconds, promptTokens, generatedTokens,
    ///   conversationTokens, weightBytes, weightFormat, stateBytes, gpuBytes, wasmBytes,
    ///   loadSeconds, bytesFromCache, adapter }`
    pub fn stats(&self) -> Result<JsValue, JsError> {
        self.with(|loaded| {
            let generator = loaded.session.generator_ref();
            let timing = generator.timing();
            let (weight_bytes, gpu_bytes) = generator.gpu_bytes();
            let adapter = match generator.backend() {
                Backend::Gpu { engine, .. } => engine.context().adapter_info.name.clone(),
                Backend::Cpu { .. } => "cpu".into(),
            };
            Ok(object(&[
                ("prefillTokensPerSecond", number(timing.prefill_tokens_per_second())),
                ("decodeTokensPerSecond", number(timing.decode_tokens_per_second())),
                ("timeToFirstTokenSeconds", number(timing.time_to_first_token_seconds())),
                ("promptTokens", number(timing.prefill_tokens as f64)),
                ("generatedTokens", number(timing.decoded_tokens as f64)),
                ("conversationTokens", number(generator.position() as f64)),
                ("weightBytes", number(weight_bytes as f64)),
                ("weightFormat", loaded.manifest.quantization.name().into()),
                ("stateBytes", number(generator.state_bytes() as f64)),
                ("gpuBytes", number(gpu_bytes as f64)),
                ("wasmBytes", number(js::wasm_memory_bytes() as f64)),
                ("loadSeconds", number(loaded.load.seconds)),
                ("bytesFromCache", number(loaded.load.bytes_from_cache as f64)),
                ("vocabSize", number(loaded.manifest.config.vocab_size as f64)),
                ("adapter", adapter.into()),
            ]))
        })
    }

    /// Frees the model's GPU memory now (after the reply in progress, which it stops and whose
    /// promise it rejects). The object cannot be used afterwards.
    pub fn dispose(&self) {
        self.stop.borrow().set(true);
        self.disposed.set(true);
        self.gpu_bytes.set(0);
        if let Some(loaded) = self.loaded.borrow_mut().take() {
            loaded.session.into_generator().destroy();
        }
    }

    /// The GPU buffers' bytes the model holds (0 after `dispose()`).
    #[wasm_bindgen(getter, js_name = gpuBytes)]
    pub fn gpu_bytes(&self) -> f64 {
        self.gpu_bytes.get() as f64
    }

    /// Bytes of model files kept in this origin's Cache Storage.
    #[wasm_bindgen(js_name = cachedBytes)]
    pub async fn cached_bytes() -> Result<f64, JsError> {
        download::cached_bytes().await.map(|b| b as f64).map_err(to_js)
    }

    /// Deletes every model file kept in Cache Storage.
    #[wasm_bindgen(js_name = clearCache)]
    pub async fn clear_cache() -> Result<(), JsError> {
        download::clear_cache().await.map_err(to_js)
    }
}

type Turn<'s> = std::pin::Pin<Box<dyn std::future::Future<Output = crate::Result<Reply>> + 's>>;

impl RecurrentGemma {
    fn check_usable(&self) -> Result<(), JsError> {
        if self.disposed.get() {
            return Err(JsError::new("this model was disposed"));
        }
        if self.generating.get() {
            return Err(JsError::new("busy: a reply is being generated (abort() it or await it first)"));
        }
        Ok(())
    }

    fn with<T>(&self, f: impl FnOnce(&mut Loaded) -> Result<T, JsError>) -> Result<T, JsError> {
        self.check_usable()?;
        let mut slot = self.loaded.borrow_mut();
        let loaded = slot.as_mut().ok_or_else(|| JsError::new("this model was disposed"))?;
        f(loaded)
    }

    async fn run(
        &self,
        options_value: JsValue,
        on_token: Option<Function>,
        turn: impl for<'s> FnOnce(&'s mut ChatSession, usize, CallListener) -> Turn<'s>,
    ) -> Result<JsValue, JsError> {
        let (params, max_tokens) = options(&options_value)?;
        self.check_usable()?;
        let mut loaded = self.loaded.borrow_mut().take().ok_or_else(|| JsError::new("this model was disposed"))?;
        if let Err(e) = loaded.session.generator().set_sampling(params) {
            *self.loaded.borrow_mut() = Some(loaded);
            return Err(to_js(e));
        }
        let stop = Rc::new(Cell::new(false));
        *self.stop.borrow_mut() = stop.clone();
        let listener = CallListener { on_token, stop: stop.clone() };
        self.generating.set(true);
        let reply = turn(&mut loaded.session, max_tokens, listener).await;
        self.generating.set(false);
        if self.disposed.get() {
            loaded.session.into_generator().destroy();
            return Err(JsError::new("this model was disposed during the call"));
        }
        *self.loaded.borrow_mut() = Some(loaded);
        let reply = reply.map_err(to_js)?;
        let ids = reply.ids.iter().map(|&id| JsValue::from(id)).collect::<js_sys::Array>();
        let result = object(&[
            ("text", JsValue::from_str(&reply.text)),
            ("tokenIds", ids.into()),
            ("promptTokens", number(reply.prefilled as f64)),
            ("stopped", stop.get().into()),
        ]);
        Ok(result)
    }
}
