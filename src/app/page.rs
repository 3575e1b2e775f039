//! The page's root component: the phase of its life decides what it shows.

use leptos::prelude::*;
use leptos::task::spawn_local;

use super::state::{fetch_known_models, model_from_query, AppState, ModelChoice, PendingDownload, Phase};
use super::{chat, loading, store};
use crate::web::js;

#[component]
pub fn App() -> impl IntoView {
    let state = AppState::new();
    provide_context(state);
    if !js::has_webgpu() {
        state.phase.set(Phase::NoWebGpu("This browser does not offer WebGPU (navigator.gpu is missing).".into()));
    } else if let Some(url) = model_from_query() {
        state.load(ModelChoice::Link(url));
    }
    spawn_local(async move {
        state.known_models.set(fetch_known_models().await);
    });
    state.refresh_cached_models();
    state.refresh_conversations();
    store::listen(move |id, change| state.changed_in_another_tab(id, change));

    view! {
        <header class="top">
            <h1>"RecurrentGemma" <span class="sub">" in your browser · WebGPU"</span></h1>
            <loading::ModelsPanel />
        </header>
        <main>
            {move || match state.phase.get() {
                Phase::Choose => view! { <loading::ModelPicker /> }.into_any(),
                Phase::NoWebGpu(why) => view! { <loading::NoWebGpu why=why /> }.into_any(),
                Phase::Confirm(pending) => view! { <ConfirmDownload pending=pending /> }.into_any(),
                Phase::Loading(progress) => view! { <loading::LoadProgressView progress=progress /> }.into_any(),
                Phase::Failed(why) => view! { <loading::LoadFailed why=why /> }.into_any(),
                Phase::DeviceLost(why) => view! { <loading::DeviceLost why=why /> }.into_any(),
                Phase::Ready => view! { <chat::ChatView /> }.into_any(),
            }}
        </main>
    }
}

/// Asks before downloading from a host this page does not list: where from, and how much.
#[component]
fn ConfirmDownload(pending: PendingDownload) -> impl IntoView {
    let state = expect_context::<AppState>();
    let size = if pending.bytes >= 1_000_000_000 {
        format!("{:.2} GB", pending.bytes as f64 / 1e9)
    } else {
        loading::megabytes(pending.bytes)
    };
    let (origin, url, bytes) = (pending.origin.clone(), pending.url.clone(), pending.bytes);
    view! {
        <section class="confirm-download">
            <h2>"Download this model?"</h2>
            <p>
                "The model comes from " <strong class="origin">{origin}</strong>
                ", a site this page does not list. Loading it downloads " <strong class="size" data-bytes=bytes.to_string()>{size}</strong>
                " into this browser (kept in its cache for next time)."
            </p>
            <p class="url">{url}</p>
            <button class="download" on:click=move |_| state.approve(pending.clone())>"Download"</button>
            <button class="cancel" on:click=move |_| state.phase.set(Phase::Choose)>"Cancel"</button>
        </section>
    }
}
