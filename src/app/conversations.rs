//! Conversations that survive a reload: the sidebar (list, New, rename, delete) and what each
//! action does. A conversation is saved after every reply with the engine's state at that point,
//! bit for bit, so reopening it after a reload restores the state and the next message prefills
//! only its own tokens. A state is only offered back to the model that made it (the page checks
//! the stored model identity, and the engine refuses another model's bytes); when there is none to
//! restore, the messages stay on screen and the model starts afresh, which the page says.

use leptos::prelude::*;
use leptos::task::spawn_local;

use super::engine::WorkerEngine;
use super::store::{self, Conversation};
use super::{AppState, Message, Speaker};

/// Longest title made from a first message, in characters.
const TITLE_CHARS: usize = 48;

/// A new conversation's title: the first line of its first message.
fn title_of(first_message: &str) -> String {
    let line = first_message.lines().next().unwrap_or_default().trim();
    if line.chars().count() > TITLE_CHARS {
        format!("{}…", line.chars().take(TITLE_CHARS - 1).collect::<String>().trim_end())
    } else if line.is_empty() {
        "Conversation".into()
    } else {
        line.to_string()
    }
}

/// A fresh id: the time and a random tail, unique enough for one browser's conversations.
fn new_id() -> String {
    let random = (js_sys::Math::random() * 2f64.powi(48)) as u64;
    format!("c{:x}-{random:x}", js_sys::Date::now() as u64)
}

impl AppState {
    /// Reads the saved conversations into the sidebar.
    pub fn refresh_conversations(self) {
        spawn_local(async move {
            match store::list().await {
                Ok((list, unreadable)) => {
                    self.conversations.set(list);
                    if unreadable > 0 {
                        let what = if unreadable == 1 { "conversation is" } else { "conversations are" };
                        self.store_error.set(Some(format!("{unreadable} saved {what} unreadable and not listed.")));
                    }
                }
                Err(e) => self.store_error.set(Some(e)),
            }
        });
    }

    /// Saves the open conversation and the engine's state after its last reply. Runs while the
    /// page is still busy with the reply, so no other call can change the state first.
    pub async fn save_current(self, engine: WorkerEngine) {
        let messages: Vec<_> = self.messages.with_untracked(|m| m.iter().map(Message::saved).collect());
        let id = self.current.get_untracked().unwrap_or_else(new_id);
        let title = self
            .conversations
            .with_untracked(|list| list.iter().find(|c| c.id == id).map(|c| c.title.clone()))
            .unwrap_or_else(|| {
                let first = messages.iter().find(|m| m.speaker == Speaker::User);
                title_of(first.map_or("", |m| m.text.as_str()))
            });
        self.current.set(Some(id.clone()));
        let revision = self.current_revision.get_value() + 1;
        let model_id = self.model_id.get_value().unwrap_or_default();
        // Without its state the conversation is still saved, and reopening it says the model starts afresh.
        let (state, problem) = match engine.state_bytes().await {
            Ok(bytes) if !model_id.is_empty() => (Some(bytes), None),
            Ok(_) => (None, Some("the engine did not say which model it runs".to_string())),
            Err(e) => (None, Some(e)),
        };
        let state_from = self.state_from.get_value();
        let conversation = Conversation { id, title, updated: js_sys::Date::now(), revision, state_from, messages };
        let gave_state = state.is_some();
        match store::save(&conversation, &model_id, state).await {
            Ok(saved) => {
                self.current_revision.set_value(revision);
                let problem = match (saved, problem) {
                    (_, Some(problem)) => Some(problem),
                    (store::Saved::WithoutState, None) if gave_state => {
                        Some("this site's storage in the browser is full".to_string())
                    }
                    _ => None,
                };
                self.store_error.set(problem.map(|p| {
                    format!(
                        "The conversation was saved without its state ({p}): reopened, the model will not remember \
                         it."
                    )
                }));
                self.ask_to_persist().await;
                self.conversations.update(|list| {
                    list.retain(|c| c.id != conversation.id);
                    list.insert(0, conversation);
                });
            }
            Err(e) => self.store_error.set(Some(e)),
        }
    }

    /// Opens a saved conversation: its messages and the engine's state after its last reply, read
    /// together as they are stored now (another tab may have saved since this one listed them).
    pub fn open(self, id: String) {
        let is_current = self.current.get_untracked().as_deref() == Some(id.as_str());
        if self.busy.get_untracked() || (is_current && !self.current_is_stale.get_value()) {
            return;
        }
        let Some(engine) = self.engine.get_value() else { return };
        self.busy.set(true);
        self.can_regenerate.set(false);
        self.chat_error.set(None);
        self.store_error.set(None);
        self.restore_note.set(None);
        let model_id = self.model_id.get_value();
        spawn_local(async move {
            let (conversation, state) = match store::open(&id).await {
                Ok(Some(found)) => found,
                Ok(None) => {
                    self.store_error.set(Some("That conversation was deleted in another tab.".into()));
                    self.refresh_conversations();
                    self.busy.set(false);
                    return;
                }
                Err(e) => {
                    self.store_error.set(Some(e));
                    self.busy.set(false);
                    return;
                }
            };
            self.current.set(Some(id.clone()));
            self.current_revision.set_value(conversation.revision);
            self.current_is_stale.set_value(false);
            let messages = conversation
                .messages
                .iter()
                .map(|saved| {
                    let message = self.message(saved.speaker, &saved.text);
                    message.token_ids.set(saved.token_ids.clone());
                    message.stopped.set(saved.stopped);
                    message.prompt_tokens.set(saved.prompt_tokens);
                    message
                })
                .collect();
            self.messages.set(messages);
            self.conversations.update(|list| {
                if let Some(listed) = list.iter_mut().find(|c| c.id == id) {
                    *listed = conversation.clone();
                }
            });
            // Why the saved state cannot be restored, if it cannot.
            let unusable = match state {
                _ if conversation.state_from > 0 => {
                    Some(format!("Its saved state misses the first {} messages", conversation.state_from))
                }
                Ok(Some(saved)) if model_id.as_deref() == Some(saved.model_id.as_str()) => {
                    match engine.restore(&saved.bytes).await {
                        Ok(()) => None,
                        Err(e) => Some(format!("The saved state was refused ({e})")),
                    }
                }
                Ok(Some(saved)) => {
                    let theirs = saved.model_id.get(..12).unwrap_or(&saved.model_id);
                    Some(format!(
                        "Its state was saved with another model (manifest sha256 {theirs}…), so it is not offered \
                         to this one"
                    ))
                }
                Ok(None) => (!conversation.messages.is_empty()).then(|| "It has no saved state".to_string()),
                Err(e) => Some(format!("Its saved state could not be read ({e})")),
            };
            self.state_from.set_value(0);
            let note = match unusable {
                None => None,
                Some(reason) => Some(self.reread(&engine, &conversation, reason).await),
            };
            self.restore_note.set(note);
            self.refresh_stats().await;
            self.busy.set(false);
        });
    }

    /// The engine reads `conversation` again (its saved state could not be restored: `reason`), so
    /// that the model remembers it; returns what the page says of it. When that fails the model
    /// starts afresh, and the next save records that its state misses the messages before.
    async fn reread(self, engine: &WorkerEngine, conversation: &Conversation, reason: String) -> String {
        let messages = &conversation.messages;
        let alternates = messages
            .iter()
            .enumerate()
            .all(|(i, m)| m.speaker == if i % 2 == 0 { Speaker::User } else { Speaker::Model });
        if alternates && !messages.is_empty() && messages.len().is_multiple_of(2) {
            let history: Vec<(&str, &str)> = messages
                .iter()
                .map(|m| (if m.speaker == Speaker::User { "user" } else { "assistant" }, m.text.as_str()))
                .collect();
            let reading = reason.clone();
            self.restore_note.set(Some(format!("{reading}: the model is re-reading the conversation…")));
            let progress = move |fed: u64, total: u64| {
                self.restore_note.set(Some(format!(
                    "{reading}: the model is re-reading the conversation ({fed} of {total} tokens)…"
                )));
            };
            if let Ok(Some(tokens)) = engine.prefill_messages(&history, progress).await {
                return format!("{reason}: the model re-read the conversation ({tokens} tokens).");
            }
        }
        if let Err(e) = engine.reset().await {
            self.chat_error.set(Some(e));
        }
        self.state_from.set_value(messages.len());
        format!("{reason}. The model starts this conversation afresh: it does not remember the messages above.")
    }

    /// Another tab saved, renamed or deleted conversation `id`: the list follows, and if it is the
    /// open one the page says what happened (this tab's next save of it would be refused).
    pub fn changed_in_another_tab(self, id: String, change: store::Change) {
        self.refresh_conversations();
        if self.current.get_untracked().as_deref() != Some(id.as_str()) {
            return;
        }
        match change {
            store::Change::Renamed => {}
            store::Change::Saved => {
                self.current_is_stale.set_value(true);
                self.store_error.set(Some(
                    "Another tab saved this conversation: open it again from the list to continue from there.".into(),
                ));
            }
            store::Change::Deleted => {
                // What is on screen is saved as a new conversation with its next reply, if any.
                self.current.set(None);
                self.current_revision.set_value(0);
                self.store_error.set(Some(
                    "Another tab deleted this conversation: a new message here saves it as a new one.".into(),
                ));
            }
        }
    }

    /// Starts a new conversation (saved with its first reply).
    pub fn new_conversation(self) {
        if self.busy.get_untracked() {
            return;
        }
        self.current.set(None);
        self.current_revision.set_value(0);
        self.current_is_stale.set_value(false);
        self.state_from.set_value(0);
        self.messages.set(Vec::new());
        self.can_regenerate.set(false);
        self.chat_error.set(None);
        self.restore_note.set(None);
        let Some(engine) = self.engine.get_value() else { return };
        // Not busy while it resets: the worker answers calls in order, so a message sent at once
        // still finds the state reset.
        spawn_local(async move {
            if let Err(e) = engine.reset().await {
                self.chat_error.set(Some(e));
            }
            if !self.busy.get_untracked() {
                self.refresh_stats().await;
            }
        });
    }

    pub fn rename(self, id: &str, title: String) {
        let title = title.trim().to_string();
        if title.is_empty() {
            return;
        }
        let Some(mut conversation) = self.conversations.with_untracked(|l| l.iter().find(|c| c.id == id).cloned())
        else {
            return;
        };
        conversation.title = title;
        spawn_local(async move {
            match store::rename(&conversation.id, &conversation.title).await {
                Ok(()) => self.conversations.update(|list| {
                    if let Some(c) = list.iter_mut().find(|c| c.id == conversation.id) {
                        c.title = conversation.title;
                    }
                }),
                Err(e) => self.store_error.set(Some(e)),
            }
        });
    }

    /// Deletes a conversation and its saved state; the open one gives way to a new one.
    pub fn delete(self, id: String) {
        if self.busy.get_untracked() {
            return;
        }
        spawn_local(async move {
            match store::delete(&id).await {
                Ok(()) => {
                    self.conversations.update(|list| list.retain(|c| c.id != id));
                    if self.current.get_untracked().as_deref() == Some(id.as_str()) {
                        self.new_conversation();
                    }
                }
                Err(e) => self.store_error.set(Some(e)),
            }
        });
    }
}

/// The sidebar: every saved conversation, the open one highlighted.
#[component]
pub fn ConversationList() -> impl IntoView {
    let state = expect_context::<AppState>();
    view! {
        <nav class="conversations">
            <div class="conversations-head">
                <h3>"Conversations"</h3>
                <button class="new-conversation" disabled=move || state.busy.get() on:click=move |_| state.new_conversation()>
                    "New"
                </button>
            </div>
            <ul>
                {move || state.current.with(Option::is_none).then(|| view! {
                    <li class="conversation current unsaved"><span class="title">"New conversation"</span></li>
                })}
                <For
                    each=move || state.conversations.get()
                    key=|c| (c.id.clone(), c.title.clone(), c.messages.len())
                    let:conversation
                >
                    <ConversationItem conversation=conversation />
                </For>
            </ul>
            <super::loading::StorageNote />
        </nav>
    }
}

#[component]
fn ConversationItem(conversation: Conversation) -> impl IntoView {
    let state = expect_context::<AppState>();
    let id = StoredValue::new(conversation.id.clone());
    let title = conversation.title.clone();
    let editing = RwSignal::new(false);
    let current = move || state.current.with(|c| id.with_value(|id| c.as_ref() == Some(id)));
    let input = NodeRef::<leptos::html::Input>::new();
    // Focus the field as it appears, so the new name can be typed at once.
    Effect::new(move |_| {
        if let Some(input) = input.get() {
            let _ = input.focus();
            input.select();
        }
    });
    let commit = move |value: String| {
        if editing.get_untracked() {
            editing.set(false);
            state.rename(&id.get_value(), value);
        }
    };
    view! {
        <li class="conversation" class:current=current data-id=conversation.id.clone() data-messages=conversation.messages.len()>
            {move || if editing.get() {
                view! {
                    <input
                        class="rename-input"
                        node_ref=input
                        prop:value=title.clone()
                        on:keydown=move |ev| match ev.key().as_str() {
                            "Enter" => commit(event_target_value(&ev)),
                            "Escape" => editing.set(false),
                            _ => {}
                        }
                        on:blur=move |ev| commit(event_target_value(&ev))
                    />
                }
                .into_any()
            } else {
                view! {
                    <button class="open" title=title.clone() disabled=move || state.busy.get() on:click=move |_| state.open(id.get_value())>
                        {title.clone()}
                    </button>
                }
                .into_any()
            }}
            <button class="rename" title="Rename" disabled=move || state.busy.get() on:click=move |_| editing.set(true)>"Rename"</button>
            <button class="delete" title="Delete" disabled=move || state.busy.get() on:click=move |_| state.delete(id.get_value())>"Delete"</button>
        </li>
    }
}
