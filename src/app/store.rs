//! Saved conversations: typed access to `www/store.js` (IndexedDB). Records cross as JSON; a
//! conversation's engine state crosses as the `Uint8Array` the engine made, untouched.

use js_sys::{Promise, Reflect, Uint8Array};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use super::Speaker;
use crate::web::js::{describe, exception_name};

#[wasm_bindgen(module = "/www/store.js")]
extern "C" {
    #[wasm_bindgen(js_name = listConversations)]
    fn list_js() -> Promise;
    #[wasm_bindgen(js_name = saveConversation)]
    fn save_js(json: &str, model_id: &str, bytes: Option<Uint8Array>) -> Promise;
    #[wasm_bindgen(js_name = renameConversation)]
    fn rename_js(id: &str, title: &str) -> Promise;
    #[wasm_bindgen(js_name = openConversation)]
    fn open_js(id: &str) -> Promise;
    #[wasm_bindgen(js_name = listenForChanges)]
    fn listen_js(on_change: &Closure<dyn Fn(String, String)>);
    #[wasm_bindgen(js_name = deleteConversation)]
    fn delete_js(id: &str) -> Promise;
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedMessage {
    pub speaker: Speaker,
    pub text: String,
    #[serde(default)]
    pub token_ids: Vec<u32>,
    #[serde(default)]
    pub stopped: bool,
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
}

/// A conversation as it is stored (its state is stored beside it, see [`save`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: String,
    pub title: String,
    /// When it was last saved, in ms since the epoch: the list shows the latest first.
    pub updated: f64,
    /// Raised by one at every save; a save is refused unless the stored record is the revision
    /// before it (another tab saved or deleted it since). Records from before revisions read as 0.
    #[serde(default)]
    pub revision: u64,
    /// The first message the saved state covers: 0 when it holds the whole conversation; more
    /// when the model started afresh partway (its state then misses the messages before).
    #[serde(default)]
    pub state_from: usize,
    pub messages: Vec<SavedMessage>,
}

/// A saved state and the model that made it.
pub struct SavedState {
    pub model_id: String,
    pub bytes: Uint8Array,
}

/// A storage failure as the page shows it: a full quota says what to do about it, and so does a
/// conversation another tab changed.
fn failure(error: JsValue) -> String {
    match exception_name(&error).as_deref() {
        Some("QuotaExceededError") => "Not saved: this site's storage in the browser is full. Delete a conversation \
                                       or clear the downloaded models to make room."
            .into(),
        Some("StaleError") => format!(
            "Not saved: {}. Open it again from the list to continue from what that tab saved.",
            describe(&error)
        ),
        _ => format!("Not saved: {}", describe(&error)),
    }
}

async fn settle(promise: Promise) -> Result<JsValue, String> {
    JsFuture::from(promise).await.map_err(failure)
}

/// The saved conversations that could be read, the most recent first, and how many could not (a
/// record damaged, or written by another version of the page): one bad record hides only itself.
pub async fn list() -> Result<(Vec<Conversation>, usize), String> {
    let json = settle(list_js()).await?.as_string().unwrap_or_default();
    let records: Vec<serde_json::Value> =
        serde_json::from_str(&json).map_err(|e| format!("the saved conversations are unreadable: {e}"))?;
    let total = records.len();
    let readable: Vec<Conversation> = records.into_iter().filter_map(|r| serde_json::from_value(r).ok()).collect();
    let unreadable = total - readable.len();
    Ok((readable, unreadable))
}

/// How a save went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saved {
    /// The messages and the state given.
    WithState,
    /// The messages alone: no state was given, or it did not fit the quota (any older state of the
    /// conversation is removed, so that none is restored beside messages it does not match).
    WithoutState,
}

/// Saves `conversation` with its state (`None`: it has none, and any older one is removed).
pub async fn save(conversation: &Conversation, model_id: &str, state: Option<Uint8Array>) -> Result<Saved, String> {
    let json = serde_json::to_string(conversation).map_err(|e| e.to_string())?;
    let with_state = settle(save_js(&json, model_id, state)).await?.as_bool() == Some(true);
    Ok(if with_state { Saved::WithState } else { Saved::WithoutState })
}

/// Renames a conversation: only its title is written, whatever else another tab saved meanwhile.
pub async fn rename(id: &str, title: &str) -> Result<(), String> {
    settle(rename_js(id, title)).await.map(drop)
}

/// A conversation as stored now and the state saved with it, read together (None: another tab
/// deleted it). The state is an error when it is damaged, beside messages that are fine.
pub async fn open(id: &str) -> Result<Option<(Conversation, Result<Option<SavedState>, String>)>, String> {
    let found = settle(open_js(id)).await?;
    if found.is_null() || found.is_undefined() {
        return Ok(None);
    }
    let field = |value: &JsValue, key: &str| Reflect::get(value, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED);
    let json = field(&found, "conversation").as_string().unwrap_or_default();
    let conversation = serde_json::from_str(&json).map_err(|e| format!("the conversation is unreadable: {e}"))?;
    let record = field(&found, "state");
    if record.is_null() || record.is_undefined() {
        return Ok(Some((conversation, Ok(None))));
    }
    let model_id = field(&record, "modelId").as_string().unwrap_or_default();
    let state = match field(&record, "bytes").dyn_into::<Uint8Array>() {
        Ok(bytes) => Ok(Some(SavedState { model_id, bytes })),
        Err(_) => Err("a saved state is damaged (no bytes)".to_string()),
    };
    Ok(Some((conversation, state)))
}

/// What another tab did to a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Saved,
    Renamed,
    Deleted,
}

/// Calls `on_change(id, change)` for every change another tab makes, for the page's life.
pub fn listen(on_change: impl Fn(String, Change) + 'static) {
    let closure = Closure::<dyn Fn(String, String)>::new(move |id: String, change: String| {
        let change = match change.as_str() {
            "deleted" => Change::Deleted,
            "renamed" => Change::Renamed,
            _ => Change::Saved,
        };
        on_change(id, change);
    });
    listen_js(&closure);
    // The page listens for its whole life.
    closure.forget();
}

pub async fn delete(id: &str) -> Result<(), String> {
    settle(delete_js(id)).await.map(drop)
}
