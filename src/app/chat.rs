//! The chat: messages streaming in, the composer, sampling settings and live figures.

use leptos::prelude::*;

use super::conversations::ConversationList;
use super::loading::{mebibytes, megabytes};
use super::markdown::StreamedMarkdown;
use super::{AppState, Message, Settings, Speaker};
use crate::web::download::CacheState;

#[component]
pub fn ChatView() -> impl IntoView {
    let state = expect_context::<AppState>();
    view! {
        <div class="chat-layout">
            <ConversationList />
            <section class="chat">
                <div class="model-banner">
                    <strong>{move || state.model_label.get()}</strong>
                    <span class="note">{move || state.model_note.get()}</span>
                    <LoadSummary />
                </div>
                <MessageList />
                {move || state.recovery_note.get().map(|n| view! { <p class="recovery-note">{n}</p> })}
                {move || state.restore_note.get().map(|n| view! { <p class="restore-note">{n}</p> })}
                {move || state.chat_error.get().map(|e| view! { <p class="chat-error">{e}</p> })}
                {move || state.store_error.get().map(|e| view! { <p class="store-error">{e}</p> })}
                <Composer />
            </section>
            <aside>
                <SettingsPanel />
                <StatsPanel />
            </aside>
        </div>
    }
}

/// How the weights arrived: from the network or the cache, and anything that went wrong on the way.
#[component]
fn LoadSummary() -> impl IntoView {
    let state = expect_context::<AppState>();
    move || {
        state.last_load.get().map(|load| {
            let cache = match load.cache {
                CacheState::On => "kept in this browser's cache",
                CacheState::Unavailable => "not cached (no Cache Storage here)",
                CacheState::QuotaExceeded => "not cached: the browser's storage quota is full",
            };
            let source = if load.bytes_from_cache == load.bytes_done {
                "from cache".to_string()
            } else {
                format!("{} downloaded, {} from cache", megabytes(load.bytes_done - load.bytes_from_cache), megabytes(load.bytes_from_cache))
            };
            view! {
                <span class="note load-summary" data-cache=format!("{:?}", load.cache) data-from-cache=load.bytes_from_cache.to_string()>
                    {format!("{} of weights loaded in {:.1} s, {source}; {cache}.", megabytes(load.bytes_total), load.seconds)}
                </span>
                <ul class="notes load-notes">{load.notes.into_iter().map(|n| view! { <li>{n}</li> }).collect::<Vec<_>>()}</ul>
            }
        })
    }
}

/// The messages, kept scrolled to the newest by CSS (`.messages` is a reversed flex column around
/// one inner column: it stays at the bottom as a reply grows, unless the reader scrolled up), so
/// no script reads the layout while a reply streams.
#[component]
fn MessageList() -> impl IntoView {
    let state = expect_context::<AppState>();
    view! {
        <div class="messages">
            <div class="messages-inner">
                <For each=move || state.messages.get() key=|m| m.id let:message>
                    <MessageView message=message />
                </For>
            </div>
        </div>
    }
}

#[component]
fn MessageView(message: Message) -> impl IntoView {
    let state = expect_context::<AppState>();
    let ids = move || message.token_ids.with(|ids| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(","));
    let done = move || !message.token_ids.with(Vec::is_empty) || !state.busy.get();
    match message.speaker {
        // The user's words are shown exactly as typed.
        Speaker::User => view! { <div class="message user">{move || message.text.get()}</div> }.into_any(),
        Speaker::Model => view! {
            <div
                class="message model"
                data-token-ids=ids
                data-done=move || done().to_string()
                data-stopped=move || message.stopped.get().to_string()
                data-prompt-tokens=move || message.prompt_tokens.get().map(|n| n.to_string())
            >
                <StreamedMarkdown text=message.text />
                {move || message.stopped.get().then(|| view! { <span class="stopped">" (stopped)"</span> })}
            </div>
        }
        .into_any(),
    }
}

#[component]
fn Composer() -> impl IntoView {
    let state = expect_context::<AppState>();
    let draft = state.draft;
    let send = move || {
        let text = draft.get_untracked();
        if !text.trim().is_empty() && !state.busy.get_untracked() {
            draft.set(String::new());
            state.send(text);
        }
    };
    let on_key = move |ev: leptos::ev::KeyboardEvent| {
        if ev.key() == "Enter" && !ev.shift_key() && !ev.is_composing() {
            ev.prevent_default();
            send();
        }
    };
    view! {
        <div class="composer">
            <textarea
                class="prompt"
                rows="3"
                placeholder="Message RecurrentGemma (Enter to send, Shift+Enter for a new line)"
                prop:value=move || draft.get()
                on:input=move |ev| draft.set(event_target_value(&ev))
                on:keydown=on_key
            ></textarea>
            <div class="buttons">
                <Show
                    when=move || state.busy.get()
                    fallback=move || view! {
                        <button class="send" on:click=move |_| send()>"Send"</button>
                    }
                >
                    <button class="stop" on:click=move |_| state.stop()>"Stop"</button>
                </Show>
                <button
                    class="regenerate"
                    disabled=move || {
                        state.busy.get()
                            || !state.can_regenerate.get()
                            || !state.messages.with(|m| m.last().is_some_and(|m| m.speaker == Speaker::Model))
                    }
                    on:click=move |_| state.regenerate()
                >
                    "Regenerate"
                </button>
                <button class="new-chat" disabled=move || state.busy.get() on:click=move |_| state.new_conversation()>
                    "New chat"
                </button>
            </div>
        </div>
    }
}

/// A setting's value if it is one the model can use, else what is wrong with it.
type Check = fn(f64) -> Result<(), &'static str>;

fn non_negative(value: f64) -> Result<(), &'static str> {
    // Kept as an f32: it must be finite as one.
    if value >= 0.0 && (value as f32).is_finite() {
        Ok(())
    } else {
        Err("must be a number >= 0")
    }
}

/// 2^53 − 1: a larger number is not exact in JavaScript, and the engine refuses it (on every send).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

fn whole(value: f64) -> Result<(), &'static str> {
    if value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value <= MAX_SAFE_INTEGER {
        Ok(())
    } else {
        Err("must be a whole number from 0 to 2^53 − 1")
    }
}

fn probability(value: f64) -> Result<(), &'static str> {
    if value > 0.0 && value <= 1.0 {
        Ok(())
    } else {
        Err("must be greater than 0 and at most 1")
    }
}

fn at_least_one(value: f64) -> Result<(), &'static str> {
    if value.is_finite() && value >= 1.0 && value.fract() == 0.0 && value <= MAX_SAFE_INTEGER {
        Ok(())
    } else {
        Err("must be a whole number from 1 to 2^53 − 1")
    }
}

fn parse_setting(typed: &str, check: Check) -> Result<f64, &'static str> {
    let value = typed.trim().parse::<f64>().map_err(|_| "must be a number")?;
    check(value).map(|()| value)
}

/// A labelled number input bound to one field of the settings. A value that fails `check` is
/// refused where it is typed, with the reason beside the field: the settings only ever hold values
/// a reply can start with, so no message is sent that then fails.
#[component]
fn NumberSetting(
    label: &'static str,
    class: &'static str,
    step: &'static str,
    min: &'static str,
    check: Check,
    get: fn(&Settings) -> f64,
    set: fn(&mut Settings, f64),
) -> impl IntoView {
    let state = expect_context::<AppState>();
    let error = RwSignal::new(None::<String>);
    view! {
        <label class=class>
            {label}
            <input
                type="number"
                step=step
                min=min
                prop:value=move || state.settings.with(get).to_string()
                on:change=move |ev| {
                    let typed = event_target_value(&ev);
                    match parse_setting(&typed, check) {
                        Ok(value) => {
                            error.set(None);
                            state.settings.update(|s| set(s, value));
                        }
                        Err(reason) => {
                            let kept = state.settings.with_untracked(get).to_string();
                            error.set(Some(format!("{label}: {typed:?} {reason}; kept {kept}.")));
                            // The field shows the value kept, not the one refused.
                            event_target::<web_sys::HtmlInputElement>(&ev).set_value(&kept);
                        }
                    }
                }
            />
            {move || error.get().map(|e| view! { <span class="setting-error">{e}</span> })}
        </label>
    }
}

/// An f32 setting shown without float noise (0.95, not 0.949999988).
fn rounded(value: f32) -> f64 {
    (value as f64 * 1e4).round() / 1e4
}

#[component]
fn SettingsPanel() -> impl IntoView {
    view! {
        <details class="settings" open=true>
            <summary>"Settings"</summary>
            <NumberSetting label="Temperature (0 = greedy)" class="temperature" step="0.05" min="0"
                check=non_negative get=|s| rounded(s.temperature) set=|s, v| s.temperature = v as f32 />
            <NumberSetting label="Top-k (0 = off)" class="top-k" step="1" min="0"
                check=whole get=|s| s.top_k as f64 set=|s, v| s.top_k = v as usize />
            <NumberSetting label="Top-p" class="top-p" step="0.01" min="0.01"
                check=probability get=|s| rounded(s.top_p) set=|s, v| s.top_p = v as f32 />
            <NumberSetting label="Max new tokens" class="max-tokens" step="1" min="1"
                check=at_least_one get=|s| s.max_tokens as f64 set=|s, v| s.max_tokens = v as usize />
            <NumberSetting label="Seed" class="seed" step="1" min="0"
                check=whole get=|s| s.seed as f64 set=|s, v| s.seed = v as u64 />
        </details>
    }
}

#[component]
fn StatsPanel() -> impl IntoView {
    let state = expect_context::<AppState>();
    let stats = state.stats;
    // Each figure reads only its own field: the reply's figures change with every piece.
    let turn = move || stats.with(|s| s.engine.turn);
    view! {
        <div class="stats">
            <h3>"Figures"</h3>
            <dl>
                <dt>"Prefill"</dt>
                <dd class="prefill-rate">{move || format!("{:.1} tok/s", turn().prefill_tokens_per_second)}</dd>
                <dt>"Prompt tokens this turn"</dt>
                <dd class="prompt-tokens">{move || turn().prompt_tokens}</dd>
                <dt>"First token after"</dt>
                <dd class="first-token" data-seconds=move || turn().time_to_first_token_seconds.to_string()>
                    {move || format!("{:.0} ms", 1000.0 * turn().time_to_first_token_seconds)}
                </dd>
                <dt>"Decode"</dt>
                <dd class="decode-rate" data-rate=move || turn().decode_tokens_per_second.to_string()>
                    {move || format!("{:.1} tok/s", turn().decode_tokens_per_second)}
                </dd>
                <dt>"Tokens in the conversation"</dt>
                <dd class="conversation-tokens">{move || stats.with(|s| s.engine.conversation_tokens)}</dd>
                <dt>"GPU memory: weights"</dt>
                <dd class="weight-bytes" data-format=move || stats.with(|s| s.engine.weight_format.clone())>
                    {move || stats.with(|s| {
                        let format = if s.engine.weight_format.is_empty() { String::new() } else { format!(", {}", s.engine.weight_format) };
                        format!("{}{format}", mebibytes(s.engine.weight_bytes))
                    })}
                </dd>
                <dt>"GPU memory: conversation state"</dt>
                <dd class="state-bytes" data-bytes=move || stats.with(|s| s.engine.state_bytes.to_string())>
                    {move || mebibytes(stats.with(|s| s.engine.state_bytes))}
                    <span class="constant">" — fixed, however long the chat"</span>
                </dd>
                <dt>"GPU memory: all buffers"</dt>
                <dd class="gpu-bytes" data-bytes=move || stats.with(|s| s.engine.gpu_bytes.to_string())>
                    {move || mebibytes(stats.with(|s| s.engine.gpu_bytes))}
                </dd>
                <dt>"Engine's wasm heap"</dt>
                <dd class="wasm-bytes">{move || megabytes(stats.with(|s| s.engine.wasm_bytes))}</dd>
                <dt>"GPU"</dt>
                <dd class="adapter">{move || state.adapter.get().unwrap_or_default()}</dd>
                <dt>"Load"</dt>
                <dd class="load-figures" data-peak-wasm=move || stats.with(|s| s.load_peak_wasm_bytes.to_string())>
                    {move || stats.with(|s| format!("{:.1} s, wasm heap peak {}", s.engine.load_seconds, megabytes(s.load_peak_wasm_bytes)))}
                </dd>
            </dl>
            <p class="explain">
                "RecurrentGemma keeps a fixed-size state (an RG-LRU vector per recurrent layer and a "
                "local-attention window of the last tokens) instead of a transformer's ever-growing KV cache. "
                "The model runs in a worker: this page never waits for it."
            </p>
        </div>
    }
}
