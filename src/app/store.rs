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
    #[wasm_bindgen(js_name = putConversation)]
    fn put_js(json: &str) -> Promise;
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

/// Every saved conversation, the most recent first.
pub async fn list() -> Result<Vec<Conversation>, String> {
    let json = settle(list_js()).await?.as_string().unwrap_or_default();
    serde_json::from_str(&json).map_err(|e| format!("the saved conversations are unreadable: {e}"))
}

/// Saves `conversation` with its state (`None`: it has none, and any older one is removed).
pub async fn save(conversation: &Conversation, model_id: &str, state: Option<Uint8Array>) -> Result<(), String> {
    let json = serde_json::to_string(conversation).map_err(|e| e.to_string())?;
    settle(save_js(&json, model_id, state)).await.map(drop)
}

/// Saves `conversation`'s record alone (its title), leaving its state as it is.
pub async fn put(conversation: &Conversation) -> Result<(), String> {
    let json = serde_json::to_string(conversation).map_err(|e| e.to_string())?;
    settle(put_js(&json)).await.map(drop)
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
