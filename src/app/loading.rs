//! Before the chat: choosing a model, the download's progress, and the pages for what can go
//! wrong (no WebGPU, a failed load, a lost device).

use leptos::prelude::*;
use wasm_bindgen::JsCast;

use super::{AppState, ModelChoice, Prefetch};
use crate::web::download;
use crate::web::download::CacheState;
use crate::web::models::CachedModel;
use crate::web::progress::{LoadProgress, Stage};

pub fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

pub fn mebibytes(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[component]
pub fn ModelPicker() -> impl IntoView {
    let state = expect_context::<AppState>();
    let url = RwSignal::new(String::new());
    let load_url = move || {
        let url = url.get_untracked().trim().to_string();
        if !url.is_empty() {
            state.load(ModelChoice::Url { name: url.clone(), url, note: String::new() });
        }
    };
    // `webkitdirectory` (pick a whole folder) is not among Leptos's typed attributes.
    let folder_input = NodeRef::<leptos::html::Input>::new();
    Effect::new(move |_| {
        if let Some(input) = folder_input.get() {
            let _ = input.set_attribute("webkitdirectory", "");
        }
    });
    let on_folder = move |ev: leptos::ev::Event| {
        let input: web_sys::HtmlInputElement = ev.target().expect("an input").unchecked_into();
        if let Some(files) = input.files().filter(|f| f.length() > 0) {
            state.load(ModelChoice::Folder(files));
        }
    };
    view! {
        <section class="picker">
            <h2>"Choose a model"</h2>
            <p>
                "Everything runs on this device: the weights stream from the host below into your GPU, "
                "and nothing you type leaves the page."
            </p>
            <ul class="known-models">
                <For each=move || state.known_models.get() key=|m| m.url.clone() let:model>
                    <li>
                        <button
                            class="load-model"
                            data-url=model.url.clone()
                            on:click={
                                let model = model.clone();
                                move |_| state.load(ModelChoice::Url {
                                    name: model.name.clone(),
                                    url: model.url.clone(),
                                    note: model.note.clone(),
                                })
                            }
                        >
                            {model.name.clone()}
                        </button>
                        <span class="note">{model.note.clone()}</span>
                        <OfflineButton url=model.url.clone() />
                    </li>
                </For>
            </ul>
            <form class="url-form" on:submit=move |ev| {
                ev.prevent_default();
                load_url();
            }>
                <label>
                    "Model URL (a folder with manifest.json, tokenizer.json and the shards): "
                    <input
                        type="url"
                        placeholder="https://…/recurrentgemma-2b-it-int8/"
                        prop:value=move || url.get()
                        on:input=move |ev| url.set(event_target_value(&ev))
                    />
                </label>
                <button type="submit">"Load"</button>
                <button type="button" class="prefetch-url" on:click=move |_| {
                    let url = url.get_untracked().trim().to_string();
                    if !url.is_empty() {
                        state.prefetch(url);
                    }
                }>"Download for offline"</button>
            </form>
            <label class="folder">
                "Or a converted model on this computer: "
                <input type="file" multiple=true node_ref=folder_input on:change=on_folder />
            </label>
        </section>
    }
}

/// "Download for offline" for a listed model, or that it is available offline.
#[component]
fn OfflineButton(url: String) -> impl IntoView {
    let state = expect_context::<AppState>();
    let base = download::base_url(&url).unwrap_or_default();
    let cached =
        move || state.cached_models.with(|models| models.iter().flatten().any(|m| m.source == base && m.complete));
    view! {
        {move || if cached() {
            view! { <span class="offline">"Available offline"</span> }.into_any()
        } else {
            let url = url.clone();
            view! {
                <button class="prefetch-model" data-url=url.clone() on:click=move |_| state.prefetch(url.clone())>
                    "Download for offline"
                </button>
            }
            .into_any()
        }}
    }
}

#[component]
pub fn LoadProgressView(progress: LoadProgress) -> impl IntoView {
    let state = expect_context::<AppState>();
    let stage = match progress.stage {
        Stage::Manifest => "Reading the manifest…",
        Stage::Tokenizer => "Loading the tokenizer…",
        Stage::Weights => "Streaming the weights into the GPU…",
        Stage::Ready => "Ready",
    };
    let from_cache = progress.bytes_done > 0 && progress.bytes_from_cache == progress.bytes_done;
    let rate = progress.bytes_per_second();
    let eta = progress.eta_seconds().map(|s| format!(" · ETA {s:.0} s")).unwrap_or_default();
    let cache = match progress.cache {
        CacheState::On => "",
        CacheState::Unavailable => " · not cached (no Cache Storage here)",
        CacheState::QuotaExceeded => " · not cached: the browser's storage quota is full",
    };
    view! {
        <section class="loading">
            <h2>{move || state.model_label.get()}</h2>
            <p class="note">{move || state.model_note.get()}</p>
            <p class="stage">{stage}</p>
            <progress max=progress.bytes_total.max(1) as f64 value=progress.bytes_done as f64></progress>
            <p class="figures" data-from-cache=from_cache.to_string()>
                {format!(
                    "{} / {} · {:.1} MB/s{eta} · shard {}/{}",
                    megabytes(progress.bytes_done),
                    megabytes(progress.bytes_total),
                    rate / 1e6,
                    progress.shards_done,
                    progress.shards_total,
                )}
                {from_cache.then_some(" · from cache")}
                {cache}
            </p>
            <ul class="notes">{progress.notes.into_iter().map(|n| view! { <li>{n}</li> }).collect::<Vec<_>>()}</ul>
        </section>
    }
}

#[component]
pub fn NoWebGpu(why: String) -> impl IntoView {
    view! {
        <section class="problem no-webgpu">
            <h2>"This page needs WebGPU"</h2>
            <p class="why">{why}</p>
            <ul>
                <li>"Use a recent Chrome or Edge (version 113 or later) on Windows, macOS, ChromeOS or Android, "
                    "or Chrome on Linux with WebGPU enabled (chrome://flags/#enable-unsafe-webgpu)."</li>
                <li>"Open the page over https (or on localhost): browsers only offer WebGPU to secure pages."</li>
                <li>"Check chrome://gpu: hardware acceleration must be on and your GPU not blocklisted."</li>
                <li>"Safari and Firefox are rolling WebGPU out: try their latest versions."</li>
            </ul>
        </section>
    }
}

#[component]
pub fn LoadFailed(why: String) -> impl IntoView {
    let state = expect_context::<AppState>();
    // One line, whatever the browser or the host put in the message.
    let why = why.split_whitespace().collect::<Vec<_>>().join(" ");
    view! {
        <section class="problem load-failed">
            <h2>"The model could not be loaded"</h2>
            <p class="why">{why}</p>
            <button class="retry" on:click=move |_| state.reload()>"Try again"</button>
            <ModelPicker />
        </section>
    }
}

#[component]
pub fn DeviceLost(why: String) -> impl IntoView {
    let state = expect_context::<AppState>();
    view! {
        <section class="problem device-lost">
            <h2>"The GPU was lost"</h2>
            <p class="why">{why}</p>
            <p>"This happens after a driver reset, sleep, or when another tab takes the GPU. "
               "The page reloaded the model once already and lost the GPU again before a reply, so it "
               "waits for you: the weights are cached, so reloading is quick."</p>
            <button class="retry" on:click=move |_| state.reload()>"Reload the model"</button>
        </section>
    }
}

/// The models kept in this browser: the space they take, each with its size and Delete, a
/// download for offline use in progress, and whether the browser promised to keep them.
#[component]
pub fn ModelsPanel() -> impl IntoView {
    let state = expect_context::<AppState>();
    let total = move || state.cached_models.get().map(|models| models.iter().map(|m| m.bytes).sum::<u64>());
    view! {
        <div class="cache-control">
            <span class="cached-bytes">
                {move || match total() {
                    Some(bytes) => format!("Downloaded models: {}", megabytes(bytes)),
                    None => "Downloaded models: –".to_string(),
                }}
            </span>
            <button class="clear-cache" on:click=move |_| state.clear_cache()>"Clear downloaded models"</button>
            <details class="models-panel">
                <summary>"Models"</summary>
                <ul class="cached-models">
                    <For
                        each=move || state.cached_models.get().unwrap_or_default()
                        key=|m| (m.source.clone(), m.bytes, m.complete)
                        let:model
                    >
                        <CachedModelItem model=model />
                    </For>
                </ul>
                {move || state.cached_models.get().is_some_and(|m| m.is_empty()).then(|| view! {
                    <p class="no-models">"No model is kept in this browser yet."</p>
                })}
                {move || state.prefetch.get().map(|p| view! { <PrefetchLine prefetch=p /> })}
                <StorageNote />
            </details>
        </div>
    }
}

/// The browser's answer to `navigator.storage.persist()` (asked once a model or a conversation is
/// kept), under the models and under the conversations.
#[component]
pub fn StorageNote() -> impl IntoView {
    let state = expect_context::<AppState>();
    move || {
        state.storage_persisted.get().map(|answer| {
            let (class, text) = match answer {
                Some(true) => ("storage-persisted", "Kept by the browser until you delete them."),
                Some(false) => ("storage-best-effort", "The browser may clear these when space runs low."),
                None => ("storage-best-effort", "This browser cannot be asked to keep these."),
            };
            view! { <p class=format!("storage-note {class}")>{text}</p> }
        })
    }
}

#[component]
fn CachedModelItem(model: CachedModel) -> impl IntoView {
    let state = expect_context::<AppState>();
    let size = match (model.complete, model.total_bytes) {
        (true, _) => megabytes(model.bytes),
        (false, Some(total)) => format!("{} of {} (partial)", megabytes(model.bytes), megabytes(total)),
        (false, None) => format!("{} (partial)", megabytes(model.bytes)),
    };
    let source = model.source.clone();
    view! {
        <li class="cached-model" data-source=model.source.clone() data-complete=model.complete.to_string()>
            <span class="source">{model.source.clone()}</span>
            " "
            <span class="size" data-bytes=model.bytes.to_string()>{size}</span>
            " "
            <button class="delete-model" on:click=move |_| state.delete_model(source.clone())>"Delete"</button>
        </li>
    }
}

#[component]
fn PrefetchLine(prefetch: Prefetch) -> impl IntoView {
    let progress = &prefetch.progress;
    let text = match &prefetch.failed {
        Some(why) => format!("Could not download {}: {why}", prefetch.url),
        None => format!(
            "Downloading {} for offline use: {} / {}",
            prefetch.url,
            megabytes(progress.bytes_done),
            megabytes(progress.bytes_total)
        ),
    };
    let class = if prefetch.failed.is_some() { "prefetch failed" } else { "prefetch" };
    view! { <p class=class>{text}</p> }
}
