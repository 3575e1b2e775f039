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
use wasm_bindgen::prelude::*;

use super::download::{self, Source};
use super::js;
use super::loader;
use super::models;
use super::progress::{LoadProgress, ProgressReport};
use crate::chat::figures::{EngineStats, TurnFigures};
use crate::chat::saved::SavedConversation;
use crate::chat::session::{Backend, ChatSession, Generator, Listener, Reply, SavedTurn};
use crate::chat::stop::{StopStrings, MAX_STOP_STRINGS};
use crate::chat::structured::{median_and_p99, OutputFormat, MAX_GRAMMAR_BYTES};
use crate::chat::{Role, SamplingParams, Turn as ChatTurn};
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
    js::to_js(&ProgressReport::from(progress))
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

fn field_error(what: &str, name: &str, message: impl std::fmt::Display) -> JsError {
    JsError::new(&format!("{what}.{name} {message}"))
}

/// A caller's object of settings (`options` of the simple calls, or an OpenAI-style `request`):
/// every value is checked as it is read, and a bad one is an error that names it.
struct Fields<'a> {
    value: &'a JsValue,
    /// What the caller calls the object: "options" or "request".
    what: &'static str,
}

impl<'a> Fields<'a> {
    fn new(value: &'a JsValue, what: &'static str, required: bool) -> Result<Self, JsError> {
        let absent = value.is_undefined() || value.is_null();
        if (absent && required) || (!absent && !value.is_object()) {
            return Err(JsError::new(&format!("{what} must be an object, got {}", describe(value))));
        }
        Ok(Fields { value, what })
    }

    fn get(&self, name: &str) -> Result<Option<JsValue>, JsError> {
        if !self.value.is_object() {
            return Ok(None);
        }
        let v = Reflect::get(self.value, &name.into())
            .map_err(|_| JsError::new(&format!("{} must be an object", self.what)))?;
        Ok((!(v.is_undefined() || v.is_null())).then_some(v))
    }

    fn error(&self, name: &str, message: impl std::fmt::Display) -> JsError {
        field_error(self.what, name, message)
    }

    fn number(&self, name: &str) -> Result<Option<f64>, JsError> {
        match self.get(name)? {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(x)),
                _ => Err(self.error(name, format_args!("must be a finite number, got {}", describe(&v)))),
            },
        }
    }

    fn within(&self, name: &str, low: f64, high: f64) -> Result<Option<f64>, JsError> {
        match self.number(name)? {
            Some(x) if !(low..=high).contains(&x) => {
                Err(self.error(name, format_args!("must be in [{low}, {high}], got {x}")))
            }
            x => Ok(x),
        }
    }

    fn whole(&self, name: &str, least: f64) -> Result<Option<f64>, JsError> {
        match self.number(name)? {
            Some(x) if x.fract() != 0.0 || x < least || x > MAX_SAFE_INTEGER => {
                Err(self.error(name, format_args!("must be a whole number >= {least}, got {x}")))
            }
            x => Ok(x),
        }
    }

    /// `{ "token id": bias }`, OpenAI's `logit_bias`.
    fn logit_bias(&self, name: &str) -> Result<Vec<(u32, f32)>, JsError> {
        let Some(value) = self.get(name)? else { return Ok(Vec::new()) };
        if !value.is_object() || js_sys::Array::is_array(&value) {
            return Err(
                self.error(name, format_args!("must be an object of token id → bias, got {}", describe(&value)))
            );
        }
        let mut biases = Vec::new();
        for entry in Object::entries(value.unchecked_ref::<Object>()).iter() {
            let entry: js_sys::Array = entry.unchecked_into();
            let key = entry.get(0).as_string().unwrap_or_default();
            let id = key.parse::<u32>().map_err(|_| self.error(name, format_args!("key {key:?} is not a token id")))?;
            let bias = entry.get(1).as_f64().filter(|b| b.is_finite() && (-100.0..=100.0).contains(b));
            let bias = bias.ok_or_else(|| {
                let field = format!("{name}[{key:?}]");
                self.error(&field, format_args!("must be a number in [-100, 100], got {}", describe(&entry.get(1))))
            })?;
            biases.push((id, bias as f32));
        }
        Ok(biases)
    }

    /// A string or an array of strings.
    fn strings(&self, name: &str) -> Result<Vec<String>, JsError> {
        let Some(value) = self.get(name)? else { return Ok(Vec::new()) };
        if let Some(one) = value.as_string() {
            return Ok(vec![one]);
        }
        let not_strings = || self.error(name, "must be a string or an array of strings");
        if !js_sys::Array::is_array(&value) {
            return Err(not_strings());
        }
        let array: &js_sys::Array = value.unchecked_ref();
        if array.length() as usize > MAX_STOP_STRINGS {
            return Err(self.error(name, format_args!("has {} strings, at most {MAX_STOP_STRINGS}", array.length())));
        }
        array.iter().map(|v| v.as_string().ok_or_else(not_strings)).collect()
    }
}

/// What a call's settings are called: the simple layer's camelCase `options`, or the OpenAI
/// request's snake_case fields (whose defaults are OpenAI's: temperature 1, a random seed).
struct Names {
    what: &'static str,
    top_k: Option<&'static str>,
    top_p: &'static str,
    max_tokens: &'static str,
    frequency_penalty: &'static str,
    presence_penalty: &'static str,
    repetition_penalty: &'static str,
    logit_bias: &'static str,
    response_format: &'static str,
    default_temperature: f32,
    random_seed: bool,
}

const OPTIONS: Names = Names {
    what: "options",
    top_k: Some("topK"),
    top_p: "topP",
    max_tokens: "maxTokens",
    frequency_penalty: "frequencyPenalty",
    presence_penalty: "presencePenalty",
    repetition_penalty: "repetitionPenalty",
    logit_bias: "logitBias",
    response_format: "responseFormat",
    default_temperature: 0.0,
    random_seed: false,
};

const REQUEST: Names = Names {
    what: "request",
    top_k: None,
    top_p: "top_p",
    max_tokens: "max_tokens",
    frequency_penalty: "frequency_penalty",
    presence_penalty: "presence_penalty",
    repetition_penalty: "repetition_penalty",
    logit_bias: "logit_bias",
    response_format: "response_format",
    default_temperature: 1.0,
    random_seed: true,
};

/// One call's settings, all checked before anything changes.
struct Call {
    params: SamplingParams,
    max_tokens: usize,
    stop: StopStrings,
    output: OutputFormat,
    /// Where `output` came from, for the errors of its schema or grammar.
    output_field: String,
}

/// Reads a call's settings; what is left out takes its default, whatever earlier calls passed.
fn call_settings(value: &JsValue, names: &Names) -> Result<Call, JsError> {
    let fields = Fields::new(value, names.what, false)?;
    let mut params = SamplingParams { temperature: names.default_temperature, ..SamplingParams::default() };
    if let Some(t) = fields.number("temperature")? {
        if t < 0.0 {
            return Err(fields.error("temperature", format_args!("must be >= 0 (0 is greedy), got {t}")));
        }
        params.temperature = t as f32;
    }
    if let Some(name) = names.top_k {
        if let Some(k) = fields.whole(name, 0.0)? {
            params.top_k = k as usize;
        }
    }
    if let Some(p) = fields.number(names.top_p)? {
        if !(p > 0.0 && p <= 1.0) {
            return Err(fields.error(names.top_p, format_args!("must be in (0, 1], got {p}")));
        }
        params.top_p = p as f32;
    }
    params.seed = match fields.whole("seed", 0.0)? {
        Some(seed) => seed as u64,
        None if names.random_seed => (js_sys::Math::random() * u32::MAX as f64) as u64,
        None => 0,
    };
    if let Some(f) = fields.within(names.frequency_penalty, -2.0, 2.0)? {
        params.frequency_penalty = f as f32;
    }
    if let Some(p) = fields.within(names.presence_penalty, -2.0, 2.0)? {
        params.presence_penalty = p as f32;
    }
    if let Some(r) = fields.number(names.repetition_penalty)? {
        if r <= 0.0 {
            return Err(fields.error(names.repetition_penalty, format_args!("must be > 0 (1 is off), got {r}")));
        }
        params.repetition_penalty = r as f32;
    }
    params.logit_bias = fields.logit_bias(names.logit_bias)?;
    if names.what == "request" {
        if let Some(n) = fields.number("n")? {
            if n != 1.0 {
                return Err(fields.error("n", format_args!("must be 1 (one choice per request), got {n}")));
            }
        }
    }
    let mut max_tokens = fields.whole(names.max_tokens, 1.0)?;
    if names.what == "request" {
        // OpenAI's newer name for it; both may be sent, but not with two values.
        let newer = fields.whole("max_completion_tokens", 1.0)?;
        if let (Some(old), Some(new)) = (max_tokens, newer) {
            if old != new {
                let message = format_args!("is {new} but max_tokens is {old}: give one, or both equal");
                return Err(fields.error("max_completion_tokens", message));
            }
        }
        max_tokens = max_tokens.or(newer);
    }
    let max_tokens = max_tokens.map(|m| m as usize).unwrap_or(DEFAULT_MAX_TOKENS);
    let stop = StopStrings::new(fields.strings("stop")?).map_err(to_js)?;
    params.validate().map_err(to_js)?;
    let output_field = format!("{}.{}", names.what, names.response_format);
    let output = match fields.get(names.response_format)? {
        None => OutputFormat::Text,
        Some(format) => {
            OutputFormat::from_response_format(&json_value(&format, &output_field)?, &output_field).map_err(to_js)?
        }
    };
    Ok(Call { params, max_tokens, stop, output, output_field })
}

/// A caller's object as JSON (through `JSON.stringify`), refused past the size a grammar may have.
fn json_value(value: &JsValue, field: &str) -> Result<serde_json::Value, JsError> {
    let text = js_sys::JSON::stringify(value)
        .ok()
        .and_then(|text| text.as_string())
        .ok_or_else(|| JsError::new(&format!("{field} cannot be read as JSON")))?;
    if text.len() > 2 * MAX_GRAMMAR_BYTES {
        return Err(JsError::new(&format!(
            "{field} is {} bytes of JSON: at most {}",
            text.len(),
            2 * MAX_GRAMMAR_BYTES
        )));
    }
    serde_json::from_str(&text).map_err(|e| JsError::new(&format!("{field} cannot be read as JSON: {e}")))
}

/// A reply's longest length when the caller gives none.
const DEFAULT_MAX_TOKENS: usize = 256;

/// OpenAI request fields this engine does not honour yet: refused, never silently ignored (a caller
/// asking for JSON or a tool call must not get free text it takes for one).
const UNSUPPORTED_FIELDS: [&str; 6] =
    ["tools", "tool_choice", "functions", "function_call", "logprobs", "top_logprobs"];

/// OpenAI-style `messages` as Gemma turns. Gemma has no system turn: a system (or OpenAI's newer
/// `developer`) message, first and at most one, goes in front of the first user message,
/// separated by a blank line.
fn chat_turns(request: &JsValue) -> Result<Vec<ChatTurn>, JsError> {
    let fields = Fields::new(request, "request", true)?;
    for name in UNSUPPORTED_FIELDS {
        // `logprobs: false` and `tool_choice: "none"` ask for nothing.
        let asks = match fields.get(name)? {
            None => false,
            Some(v) => v.as_bool() != Some(false) && v.as_string().as_deref() != Some("none"),
        };
        if asks {
            return Err(fields.error(name, "is not supported by this engine yet: leave it out"));
        }
    }
    let messages = fields.get("messages")?.filter(js_sys::Array::is_array);
    let messages: js_sys::Array = messages.map(JsCast::unchecked_into).unwrap_or_default();
    if messages.length() == 0 {
        return Err(JsError::new("request.messages must be a non-empty array of { role, content }"));
    }
    let mut system = None;
    let mut turns = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        let name = format!("messages[{index}]");
        let message = Fields::new(&message, "request", true)
            .map_err(|_| JsError::new(&format!("request.{name} must be an object {{ role, content }}")))?;
        let role = message.get("role")?.and_then(|r| r.as_string()).unwrap_or_default();
        let content = message_text(&message.get("content")?).ok_or_else(|| {
            field_error("request", &format!("{name}.content"), "must be a string (or an array of text parts)")
        })?;
        match role.as_str() {
            "system" | "developer" if index == 0 => system = Some(content),
            "system" | "developer" => {
                return Err(field_error("request", &name, "is a system message: only the first may be one"))
            }
            "user" => turns.push(ChatTurn::user(content)),
            "assistant" => turns.push(ChatTurn::model(content)),
            _ => {
                return Err(field_error(
                    "request",
                    &format!("{name}.role"),
                    format_args!("must be \"system\", \"developer\", \"user\" or \"assistant\", got {role:?}"),
                ))
            }
        }
    }
    match (system, turns.first_mut()) {
        (Some(system), Some(first)) if first.role == Role::User => {
            first.content = format!("{}\n\n{}", system.trim(), first.content.trim());
        }
        (Some(_), _) => {
            return Err(JsError::new("request.messages: a system message must be followed by a user message"))
        }
        _ => {}
    }
    Ok(turns)
}

/// A message's text: a string, or OpenAI's array of `{ type: "text", text }` parts joined.
fn message_text(content: &Option<JsValue>) -> Option<String> {
    let content = content.as_ref()?;
    if let Some(text) = content.as_string() {
        return Some(text);
    }
    let parts: &js_sys::Array = content.dyn_ref()?;
    parts
        .iter()
        .map(|part| {
            let kind = Reflect::get(&part, &"type".into()).ok()?.as_string()?;
            (kind == "text").then(|| Reflect::get(&part, &"text".into()).ok()?.as_string())?
        })
        .collect()
}

/// What tells one engine's snapshots from another's.
#[derive(Clone, PartialEq)]
struct Stamp {
    /// Unique among the engines of this wasm instance: another engine has another GPU device,
    /// whose buffers this one cannot copy.
    engine: u64,
    /// The sha256 of the model's `manifest.json` as fetched (which holds every shard's sha256):
    /// its identity. The bytes, not this build's reading of them, so a build that learns a new
    /// manifest field still admits the states an older one saved.
    model: [u8; 32],
}

thread_local! {
    static NEXT_ENGINE: Cell<u64> = const { Cell::new(1) };
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Stamp {
    fn new(model: [u8; 32]) -> Stamp {
        let engine = NEXT_ENGINE.with(|next| next.replace(next.get() + 1));
        Stamp { engine, model }
    }

    /// A state of the model `model` can be restored here only if it is this one.
    fn admit_model(&self, model: &[u8; 32]) -> Result<(), JsError> {
        if *model != self.model {
            let (theirs, ours) = (hex(&model[..6]), hex(&self.model[..6]));
            return Err(JsError::new(&format!(
                "this state is of another model (manifest sha256 {theirs}…, this one's {ours}…): nothing was restored"
            )));
        }
        Ok(())
    }

    /// Whether a snapshot stamped `snapshot` can be restored into the engine stamped `self`.
    fn admit(&self, snapshot: &Stamp) -> Result<(), JsError> {
        self.admit_model(&snapshot.model)?;
        if snapshot.engine != self.engine {
            return Err(JsError::new(
                "this snapshot was taken by another engine (each has its own GPU device): restore it into the \
                 engine that made it, or restore its toBytes(); nothing was restored",
            ));
        }
        Ok(())
    }
}

/// One call's listener: the text goes to the caller's `onToken(piece, live)`, and the call stops
/// once its own flag is set (by `abort()` or `dispose()`).
struct CallListener {
    on_token: Option<Function>,
    stop: Rc<Cell<bool>>,
    live: TurnFigures,
}

impl Listener for CallListener {
    fn text(&mut self, piece: &str) -> bool {
        if let Some(callback) = &self.on_token {
            let _ = callback.call2(&JsValue::NULL, &JsValue::from_str(piece), &js::to_js(&self.live));
        }
        !self.stop.get()
    }

    fn stopped(&self) -> bool {
        self.stop.get()
    }

    fn live(&mut self, live: &TurnFigures) {
        self.live = *live;
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
    /// Set by [`RecurrentGemma::arm_abort`]: the next call takes `stop` as it is.
    armed: Cell<bool>,
    gpu_bytes: Cell<u64>,
    stamp: Stamp,
}

/// A saved conversation state (`model.snapshot()`), restorable with `model.restore(s)`, or kept
/// as bytes (`model.snapshotBytes(s)`). Call `free()` when done with it: it holds a copy of the
/// state in GPU memory.
#[wasm_bindgen]
pub struct StateSnapshot {
    saved: SavedTurn,
    stamp: Stamp,
}

#[wasm_bindgen]
impl RecurrentGemma {
    /// Loads the model whose `manifest.json`, `tokenizer.json` and shards are under `baseUrl`.
    /// `onProgress(progress)` is called as bytes stream in.
    pub async fn load(base_url: String, on_progress: Option<Function>) -> Result<RecurrentGemma, JsError> {
        let source = Source::url(&base_url).map_err(to_js)?;
        Self::open(source, on_progress).await
    }

    /// Loads the model from a picked folder's files (`<input type=file webkitdirectory>`): its
    /// `manifest.json`, `tokenizer.json` and shards.
    #[wasm_bindgen(js_name = loadFiles)]
    pub async fn load_files(
        files: web_sys::FileList,
        on_progress: Option<Function>,
    ) -> Result<RecurrentGemma, JsError> {
        Self::open(Source::folder(&files), on_progress).await
    }

    /// Sends a chat message (Gemma chat template; the state after earlier turns is kept, so only
    /// this turn's tokens are prefilled). `onToken(text, live)` receives the reply as it streams.
    /// Resolves to `{ text, tokenIds, promptTokens, stopped, finishReason, … }`.
    pub async fn chat(
        &self,
        message: String,
        options: JsValue,
        on_token: Option<Function>,
    ) -> Result<JsValue, JsError> {
        let call = call_settings(&options, &OPTIONS)?;
        self.run(call, on_token, |session, max, listener| {
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
        let call = call_settings(&options, &OPTIONS)?;
        self.run(call, on_token, |session, max, listener| {
            Box::pin(async move { session.complete(&prompt, max, listener).await })
        })
        .await
    }

    /// Answers the last chat message again (pass a new `seed` for a different reply).
    pub async fn regenerate(&self, options: JsValue, on_token: Option<Function>) -> Result<JsValue, JsError> {
        let call = call_settings(&options, &OPTIONS)?;
        self.run(call, on_token, |session, max, listener| {
            Box::pin(async move { session.regenerate(max, listener).await })
        })
        .await
    }

    /// An OpenAI-style chat completion: `request` carries the whole conversation (`messages`) and
    /// the sampling settings (snake_case, OpenAI's names and ranges). Only what the state does
    /// not hold yet is prefilled (see `ChatSession::answer`). `pkg/index.js` turns the result
    /// into OpenAI's objects.
    #[wasm_bindgen(js_name = chatCompletion)]
    pub async fn chat_completion(&self, request: JsValue, on_token: Option<Function>) -> Result<JsValue, JsError> {
        let turns = chat_turns(&request)?;
        let call = call_settings(&request, &REQUEST)?;
        self.run(call, on_token, |session, max, listener| {
            Box::pin(async move { session.answer(&turns, max, listener).await })
        })
        .await
    }

    /// Brings the state to `request.messages` (OpenAI's, ending with the assistant's reply)
    /// without generating: for a conversation whose saved state is gone or refused, before its
    /// next message, which then prefills only itself. `onProgress(fed, total)` follows the prefill
    /// in tokens; `abort()` stops it and leaves the state as it was. Resolves to the tokens
    /// prefilled, or null when aborted.
    #[wasm_bindgen(js_name = prefillMessages)]
    pub async fn prefill_messages(&self, request: JsValue, on_progress: Option<Function>) -> Result<JsValue, JsError> {
        let turns = chat_turns(&request)?;
        let mut loaded = self.take_loaded()?;
        let stop = self.call_stop();
        let progress = |fed: usize, total: usize| {
            if let Some(callback) = &on_progress {
                let _ = callback.call2(&JsValue::NULL, &number(fed as f64), &number(total as f64));
            }
        };
        let fed = loaded.session.prefill_history(&turns, || stop.get(), progress).await;
        self.put_back(loaded)?;
        Ok(fed.map_err(to_js)?.map_or(JsValue::NULL, |n| number(n as f64)))
    }

    /// Stops the generation in progress, even mid-prompt or between tokens that make no text; its
    /// promise resolves with what was generated so far.
    pub fn abort(&self) {
        self.stop.borrow().set(true);
    }

    /// Gives the next call its stop flag now. wasm-bindgen runs an async method's body in a later
    /// microtask, so without this an `abort()` in the same tick as the call would set the last
    /// call's flag and be lost. `pkg/index.js` calls it right before every call; while a call
    /// runs it does nothing (the next call is refused as busy anyway).
    #[wasm_bindgen(js_name = armAbort)]
    pub fn arm_abort(&self) {
        if !self.generating.get() {
            *self.stop.borrow_mut() = Rc::new(Cell::new(false));
            self.armed.set(true);
        }
    }

    /// The stop flag of the call starting now: the armed one, else a new one.
    fn call_stop(&self) -> Rc<Cell<bool>> {
        if !self.armed.replace(false) {
            *self.stop.borrow_mut() = Rc::new(Cell::new(false));
        }
        self.stop.borrow().clone()
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
        self.with(|loaded| Ok(StateSnapshot { saved: loaded.session.save(), stamp: self.stamp.clone() }))
    }

    /// Returns to a snapshot this engine took; one of another engine or model is refused.
    pub fn restore(&self, snapshot: &StateSnapshot) -> Result<(), JsError> {
        self.stamp.admit(&snapshot.stamp)?;
        self.with(|loaded| loaded.session.restore(&snapshot.saved).map_err(to_js))
    }

    /// A snapshot as bytes to keep (IndexedDB, a file): the state, the ids it holds, a format
    /// version and the model's identity. `restoreBytes` takes them back, after a reload too.
    #[wasm_bindgen(js_name = snapshotBytes)]
    pub async fn snapshot_bytes(&self, snapshot: &StateSnapshot) -> Result<js_sys::Uint8Array, JsError> {
        self.stamp.admit(&snapshot.stamp)?;
        let loaded = self.take_loaded()?;
        let parts = loaded.session.generator_ref().checkpoint_parts(&snapshot.saved.checkpoint).await;
        self.put_back(loaded)?;
        let saved = SavedConversation {
            model: self.stamp.model,
            history: snapshot.saved.history.clone(),
            state: parts.map_err(to_js)?,
        };
        Ok(js_sys::Uint8Array::from(saved.to_bytes().as_slice()))
    }

    /// Returns to a state kept as bytes (`snapshotBytes`); a state of another model, another
    /// format version, or damaged bytes are refused, and the state stays as it was.
    #[wasm_bindgen(js_name = restoreBytes)]
    pub fn restore_bytes(&self, bytes: &[u8]) -> Result<(), JsError> {
        let saved = SavedConversation::from_bytes(bytes).map_err(to_js)?;
        self.stamp.admit_model(&saved.model)?;
        self.with(|loaded| {
            let checkpoint = loaded.session.generator_ref().checkpoint_from_parts(&saved.state).map_err(to_js)?;
            loaded.session.restore(&SavedTurn { checkpoint, history: saved.history }).map_err(to_js)
        })
    }

    /// The model's identity: the sha256 of its manifest, in hex.
    #[wasm_bindgen(getter, js_name = modelId)]
    pub fn model_id(&self) -> String {
        hex(&self.stamp.model)
    }

    /// `{ prefillTokensPerSecond, decodeTokensPerSecond, timeToFirstTokenSeconds, promptTokens, generatedTokens,
    ///   conversationTokens, weightBytes, weightFormat, stateBytes, gpuBytes, wasmBytes,
    ///   loadSeconds, bytesFromCache, vocabSize, adapter, modelId, deviceLost, broken }`: `deviceLost`
    ///   when the GPU device is gone, `broken` when a GPU error (a lost device too) makes every
    ///   call fail; either way, load the model again.
    pub fn stats(&self) -> Result<JsValue, JsError> {
        self.with(|loaded| {
            let generator = loaded.session.generator_ref();
            let timing = generator.timing();
            let (weight_bytes, gpu_bytes) = generator.gpu_bytes();
            let adapter = match generator.backend() {
                Backend::Gpu { engine, .. } => engine.context().adapter_info.name.clone(),
                Backend::Cpu { .. } => "cpu".into(),
            };
            Ok(js::to_js(&EngineStats {
                turn: TurnFigures {
                    prompt_tokens: timing.prefill_tokens as u64,
                    generated_tokens: timing.decoded_tokens as u64,
                    time_to_first_token_seconds: timing.time_to_first_token_seconds(),
                    prefill_tokens_per_second: timing.prefill_tokens_per_second(),
                    decode_tokens_per_second: timing.decode_tokens_per_second(),
                },
                conversation_tokens: generator.position() as u64,
                weight_bytes,
                weight_format: loaded.manifest.quantization.name().into(),
                state_bytes: generator.state_bytes(),
                gpu_bytes,
                wasm_bytes: js::wasm_memory_bytes(),
                load_seconds: loaded.load.seconds,
                bytes_from_cache: loaded.load.bytes_from_cache,
                vocab_size: loaded.manifest.config.vocab_size as u64,
                adapter,
                model_id: Some(hex(&self.stamp.model)),
                device_lost: generator.device_lost(),
                broken: generator.broken(),
            }))
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

    /// Calls `callback(reason)` once if the GPU device is lost (a driver reset, sleep, another tab
    /// taking the GPU), even between calls; not when the model is disposed. The model can then
    /// only be loaded again (`engine.reload()` in `index.js`).
    #[wasm_bindgen(js_name = onDeviceLost)]
    pub fn on_device_lost(&self, callback: Function) -> Result<(), JsError> {
        let slot = self.loaded.borrow();
        let loaded = slot.as_ref().ok_or_else(|| JsError::new("this model was disposed"))?;
        if let Backend::Gpu { engine, .. } = loaded.session.generator_ref().backend() {
            engine.context().on_lost(move |reason| {
                let _ = callback.call1(&JsValue::NULL, &JsValue::from_str(reason));
            });
        }
        Ok(())
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

    /// Whether the model at `source` is cached whole (only its manifest would be fetched).
    #[wasm_bindgen(js_name = hasModelInCache)]
    pub async fn has_model_in_cache(source: String) -> Result<bool, JsError> {
        models::has_model_in_cache(&source).await.map_err(to_js)
    }

    /// Deletes every cached byte of the model at `source`.
    #[wasm_bindgen(js_name = deleteModelAllInfoInCache)]
    pub async fn delete_model_all_info_in_cache(source: String) -> Result<(), JsError> {
        models::delete_model(&source).await.map_err(to_js)
    }

    /// `[{source, bytes, totalBytes, complete}]`: every model with entries in the cache.
    #[wasm_bindgen(js_name = listCachedModels)]
    pub async fn list_cached_models() -> Result<JsValue, JsError> {
        Ok(js::to_js(&models::list_cached_models().await.map_err(to_js)?))
    }

    /// Downloads the model at `source` into the cache, checked, without a GPU; resolves to its
    /// `listCachedModels()` entry.
    #[wasm_bindgen(js_name = prefetchModel)]
    pub async fn prefetch_model(source: String, on_progress: Option<Function>) -> Result<JsValue, JsError> {
        let mut report = |progress: &LoadProgress| {
            if let Some(callback) = &on_progress {
                let _ = callback.call1(&JsValue::NULL, &progress_object(progress));
            }
        };
        Ok(js::to_js(&models::prefetch_model(&source, &mut report).await.map_err(to_js)?))
    }
}

type Turn<'s> = std::pin::Pin<Box<dyn std::future::Future<Output = crate::Result<Reply>> + 's>>;

impl RecurrentGemma {
    async fn open(source: Source, on_progress: Option<Function>) -> Result<RecurrentGemma, JsError> {
        let ctx = loader::gpu_context().await.map_err(to_js)?;
        let mut report = |progress: &LoadProgress| {
            if let Some(callback) = &on_progress {
                let _ = callback.call1(&JsValue::NULL, &progress_object(progress));
            }
        };
        let model = loader::load(ctx, source, &mut report).await.map_err(to_js)?;
        let stamp = Stamp::new(model.identity);
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
            armed: Cell::new(false),
            gpu_bytes: Cell::new(gpu_bytes),
            stamp,
        })
    }

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

    /// Takes the model out of its cell for an asynchronous call: every other call meanwhile is
    /// "busy". [`RecurrentGemma::put_back`] ends it.
    fn take_loaded(&self) -> Result<Loaded, JsError> {
        self.check_usable()?;
        let loaded = self.loaded.borrow_mut().take().ok_or_else(|| JsError::new("this model was disposed"))?;
        self.generating.set(true);
        Ok(loaded)
    }

    fn put_back(&self, loaded: Loaded) -> Result<(), JsError> {
        self.generating.set(false);
        if self.disposed.get() {
            loaded.session.into_generator().destroy();
            return Err(JsError::new("this model was disposed during the call"));
        }
        *self.loaded.borrow_mut() = Some(loaded);
        Ok(())
    }

    async fn run(
        &self,
        call: Call,
        on_token: Option<Function>,
        turn: impl for<'s> FnOnce(&'s mut ChatSession, usize, CallListener) -> Turn<'s>,
    ) -> Result<JsValue, JsError> {
        let mut loaded = self.take_loaded()?;
        loaded.session.set_stop_strings(call.stop);
        let settings = loaded.session.generator().set_sampling(call.params);
        if let Err(e) = settings.and_then(|()| loaded.session.set_output(&call.output, &call.output_field)) {
            self.put_back(loaded)?;
            return Err(to_js(e));
        }
        let stop = self.call_stop();
        let listener = CallListener { on_token, stop: stop.clone(), live: TurnFigures::default() };
        let reply = turn(&mut loaded.session, call.max_tokens, listener).await;
        let state_bytes = loaded.session.generator_ref().state_bytes();
        let (mask_median, mask_p99) = median_and_p99(loaded.session.generator_ref().mask_seconds());
        self.put_back(loaded)?;
        let reply = reply.map_err(to_js)?;
        let ids = reply.ids.iter().map(|&id| JsValue::from(id)).collect::<js_sys::Array>();
        let timing = &reply.timing;
        Ok(object(&[
            ("text", JsValue::from_str(&reply.text)),
            ("tokenIds", ids.into()),
            ("promptTokens", number(reply.prefilled as f64)),
            ("stopped", stop.get().into()),
            ("finishReason", reply.finish.name().into()),
            ("conversationPromptTokens", number(reply.prompt_tokens as f64)),
            ("prefilledTokens", number(reply.prefilled as f64)),
            ("refedTokens", number(reply.refed as f64)),
            ("completionTokens", number(reply.ids.len() as f64)),
            ("timeToFirstTokenSeconds", number(timing.time_to_first_token_seconds())),
            ("prefillTokensPerSecond", number(timing.prefill_tokens_per_second())),
            ("decodeTokensPerSecond", number(timing.decode_tokens_per_second())),
            ("stateBytes", number(state_bytes as f64)),
            ("maskSecondsMedian", number(mask_median)),
            ("maskSecondsP99", number(mask_p99)),
        ]))
    }
}
