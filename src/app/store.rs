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
    #[wasm_bindgen(js_name = persistStorage)]
    fn persist_js() -> Promise;
    #[wasm_bindgen(js_name = getState)]
    fn get_state_js(id: &str) -> Promise;
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
    pub messages: Vec<SavedMessage>,
}

/// A saved state and the model that made it.
pub struct SavedState {
    pub model_id: String,
    pub bytes: Uint8Array,
}

/// A storage failure as the page shows it: a full quota says what to do about it.
fn failure(error: JsValue) -> String {
    if exception_name(&error).as_deref() == Some("QuotaExceededError") {
        return "Not saved: this site's storage in the browser is full. Delete a conversation or clear the \
                downloaded models to make room."
            .into();
    }
    format!("Not saved: {}", describe(&error))
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

/// Asks the browser to keep the saved conversations when space runs low: `Some(true)` if it will,
/// `Some(false)` if it may still clear them, `None` where it cannot be asked.
pub async fn persist() -> Option<bool> {
    JsFuture::from(persist_js()).await.ok()?.as_bool()
}

pub async fn state(id: &str) -> Result<Option<SavedState>, String> {
    let record = settle(get_state_js(id)).await?;
    if record.is_null() || record.is_undefined() {
        return Ok(None);
    }
    let field = |key: &str| Reflect::get(&record, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED);
    let model_id = field("modelId").as_string().unwrap_or_default();
    let bytes =
        field("bytes").dyn_into::<Uint8Array>().map_err(|_| "a saved state is damaged (no bytes)".to_string())?;
    Ok(Some(SavedState { model_id, bytes }))
}

pub async fn delete(id: &str) -> Result<(), String> {
    settle(delete_js(id)).await.map(drop)
}
