//! The page's state and its root component.

use leptos::prelude::*;
use leptos::task::spawn_local;
use serde::Deserialize;

use super::{chat, loading};
use crate::chat::session::{ChatSession, Generator, Stoppable, Timing};
use crate::chat::SamplingParams;
use crate::web::download::{self, Source};
use crate::web::js;
use crate::web::loader::{self, LoadProgress};
use crate::weights::format::{Quantization, MAX_MANIFEST_BYTES};
use crate::Error;

/// Where the page is in its life.
#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    /// Waiting for the user to pick a model.
    Choose,
    /// No WebGPU, or no usable adapter: why, and what to do.
    NoWebGpu(String),
    /// A model from a host this page does not list: wait for the visitor's yes.
    Confirm(PendingDownload),
    Loading(LoadProgress),
    Ready,
    Failed(String),
    /// The GPU went away (driver reset, another tab, sleep): the model can be reloaded from the cache.
    DeviceLost(String),
}

/// A model offered in `models.json`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct KnownModel {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub note: String,
}

/// A link's download from another site, waiting for the visitor's yes.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingDownload {
    pub url: String,
    /// The host it would come from, as the browser names origins (`https://cdn.example`).
    pub origin: String,
    /// The weights' and the tokenizer's bytes, as the manifest lists them.
    pub bytes: u64,
}

/// What to load, kept so a lost device can reload the same model.
#[derive(Clone)]
pub enum ModelChoice {
    /// Chosen on the page: a `models.json` entry or a URL the visitor typed.
    Url {
        name: String,
        url: String,
        note: String,
    },
    /// A `?model=URL` link: someone else chose it, so a link must not silently make a visitor
    /// download gigabytes. It loads at once only from this page's origin, an origin
    /// `models.json` lists, or one the visitor agreed to; otherwise the visitor is asked first.
    Link(String),
    Folder(web_sys::FileList),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaker {
    User,
    Model,
}

#[derive(Clone, Copy)]
pub struct Message {
    pub id: usize,
    pub speaker: Speaker,
    pub text: RwSignal<String>,
    /// The reply's token ids once it is complete (shown as a data attribute, for tests).
    pub token_ids: RwSignal<Vec<u32>>,
    pub stopped: RwSignal<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub max_tokens: usize,
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { temperature: 0.7, top_k: 40, top_p: 0.95, max_tokens: 256, seed: 0 }
    }
}

impl Settings {
    fn sampling(&self) -> SamplingParams {
        SamplingParams { temperature: self.temperature, top_k: self.top_k, top_p: self.top_p, seed: self.seed }
    }
}

/// Figures for the stats panel.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    pub last_turn: Timing,
    pub conversation_tokens: usize,
    pub weight_bytes: u64,
    /// How the loaded model's matrices are stored.
    pub weight_format: Option<Quantization>,
    pub state_bytes: u64,
    pub gpu_bytes: u64,
    pub wasm_bytes: u64,
    pub load_seconds: f64,
    pub load_peak_wasm_bytes: u64,
}

#[derive(Clone, Copy)]
pub struct AppState {
    pub phase: RwSignal<Phase>,
    pub known_models: RwSignal<Vec<KnownModel>>,
    pub choice: StoredValue<Option<ModelChoice>, LocalStorage>,
    pub model_label: RwSignal<String>,
    pub model_note: RwSignal<String>,
    /// Out of the store while a reply is generated.
    pub session: StoredValue<Option<ChatSession>, LocalStorage>,
    pub messages: RwSignal<Vec<Message>>,
    pub next_id: StoredValue<usize>,
    pub busy: RwSignal<bool>,
    pub stop: RwSignal<bool>,
    pub settings: RwSignal<Settings>,
    pub stats: RwSignal<Stats>,
    pub chat_error: RwSignal<Option<String>>,
    pub cached_bytes: RwSignal<Option<u64>>,
    /// How the last load went (cache use, notes), shown beside the chat.
    pub last_load: RwSignal<Option<LoadProgress>>,
    /// Origins the visitor agreed to download from, so a reload does not ask again.
    pub approved_origins: StoredValue<Vec<String>>,
}

impl AppState {
    fn new() -> Self {
        AppState {
            phase: RwSignal::new(Phase::Choose),
            known_models: RwSignal::new(Vec::new()),
            choice: StoredValue::new_local(None),
            model_label: RwSignal::new(String::new()),
            model_note: RwSignal::new(String::new()),
            session: StoredValue::new_local(None),
            messages: RwSignal::new(Vec::new()),
            next_id: StoredValue::new(0),
            busy: RwSignal::new(false),
            stop: RwSignal::new(false),
            settings: RwSignal::new(Settings::default()),
            stats: RwSignal::new(Stats::default()),
            chat_error: RwSignal::new(None),
            cached_bytes: RwSignal::new(None),
            last_load: RwSignal::new(None),
            approved_origins: StoredValue::new(Vec::new()),
        }
    }

    fn message(&self, speaker: Speaker, text: &str) -> Message {
        let id = self.next_id.get_value();
        self.next_id.set_value(id + 1);
        Message {
            id,
            speaker,
            text: RwSignal::new(text.to_string()),
            token_ids: RwSignal::new(Vec::new()),
            stopped: RwSignal::new(false),
        }
    }

    /// Loads `choice` (dropping any loaded model first), reporting progress into `phase`.
    pub fn load(self, choice: ModelChoice) {
        if let Some(session) = self.session.try_update_value(|s| s.take()).flatten() {
            session.into_generator().destroy();
        }
        self.messages.set(Vec::new());
        self.chat_error.set(None);
        let (label, note) = match &choice {
            ModelChoice::Url { name, note, .. } => (name.clone(), note.clone()),
            ModelChoice::Link(url) => (url.clone(), String::new()),
            ModelChoice::Folder(files) => (format!("local folder ({} files)", files.length()), String::new()),
        };
        self.model_label.set(label);
        self.model_note.set(note);
        self.choice.set_value(Some(choice.clone()));
        self.phase.set(Phase::Loading(LoadProgress::default()));
        spawn_local(async move {
            // Before the GPU is touched: a visitor who declines gets nothing set up.
            match self.pending_download(&choice).await {
                Ok(None) => {}
                Ok(Some(pending)) => {
                    self.phase.set(Phase::Confirm(pending));
                    return;
                }
                Err(e) => {
                    self.phase.set(Phase::Failed(e.to_string()));
                    return;
                }
            }
            // The source first: a bad address must not leave a GPU device behind.
            let source = match &choice {
                ModelChoice::Url { url, .. } | ModelChoice::Link(url) => Source::url(url),
                ModelChoice::Folder(files) => Ok(Source::folder(files)),
            };
            let source = match source {
                Ok(source) => source,
                Err(e) => {
                    self.phase.set(Phase::Failed(e.to_string()));
                    return;
                }
            };
            let ctx = match loader::gpu_context().await {
                Ok(ctx) => ctx,
                Err(e) => {
                    self.phase.set(Phase::NoWebGpu(e.to_string()));
                    return;
                }
            };
            let phase = self.phase;
            let mut report = |progress: &LoadProgress| phase.set(Phase::Loading(progress.clone()));
            let loaded = loader::load(ctx, source, &mut report).await;
            let model = match loaded {
                Ok(model) => model,
                Err(e) => {
                    self.phase.set(Phase::Failed(e.to_string()));
                    return;
                }
            };
            let settings = self.settings.get_untracked();
            match Generator::gpu(model.engine, settings.sampling()) {
                Ok(generator) => {
                    let session = ChatSession::new(generator, model.tokenizer);
                    let load = Stats {
                        weight_format: Some(model.manifest.quantization),
                        load_seconds: model.progress.seconds,
                        load_peak_wasm_bytes: model.progress.peak_wasm_bytes,
                        ..Stats::default()
                    };
                    self.stats.set(stats_of(&session, load));
                    self.session.set_value(Some(session));
                    self.last_load.set(Some(model.progress));
                    self.phase.set(Phase::Ready);
                    self.refresh_cached_bytes();
                }
                Err(e) => self.phase.set(Phase::Failed(e.to_string())),
            }
        });
    }

    /// `None` when `choice` loads without asking (see [`ModelChoice::Link`]). Otherwise reads the
    /// (small) manifest so the question can say how much would be downloaded.
    async fn pending_download(self, choice: &ModelChoice) -> crate::Result<Option<PendingDownload>> {
        let ModelChoice::Link(url) = choice else { return Ok(None) };
        let origin = origin_of(url)?;
        if origin == origin_of("./")? || self.approved_origins.with_value(|o| o.contains(&origin)) {
            return Ok(None);
        }
        let known = fetch_known_models().await;
        if known.iter().any(|m| origin_of(&m.url).is_ok_and(|o| o == origin)) {
            return Ok(None);
        }
        let manifest = loader::read_manifest(&download::Fetcher::new(Source::url(url)?).await).await?;
        let tokenizer = manifest.tokenizer.as_ref().map_or(0, |t| t.bytes);
        Ok(Some(PendingDownload { url: url.clone(), origin, bytes: manifest.total_bytes() + tokenizer }))
    }

    /// The visitor agreed: remember the origin and load.
    pub fn approve(self, pending: PendingDownload) {
        self.approved_origins.update_value(|o| o.push(pending.origin));
        self.load(ModelChoice::Link(pending.url));
    }

    /// Reloads the model chosen last (after a lost device: from the cache, so it is quick).
    pub fn reload(self) {
        if let Some(choice) = self.choice.get_value() {
            self.load(choice);
        }
    }

    pub fn refresh_cached_bytes(self) {
        spawn_local(async move {
            self.cached_bytes.set(download::cached_bytes().await.ok());
        });
    }

    pub fn clear_cache(self) {
        spawn_local(async move {
            if let Err(e) = download::clear_cache().await {
                self.chat_error.set(Some(e.to_string()));
            }
            self.cached_bytes.set(download::cached_bytes().await.ok());
        });
    }

    /// Sends the user's message and streams the reply.
    pub fn send(self, text: String) {
        let text = text.trim().to_string();
        if text.is_empty() || self.busy.get_untracked() {
            return;
        }
        let user = self.message(Speaker::User, &text);
        self.messages.update(|m| m.push(user));
        self.generate(move |session, max, on_text| Box::pin(async move { session.send(&text, max, on_text).await }));
    }

    /// Answers the last message again with the next seed.
    pub fn regenerate(self) {
        if self.busy.get_untracked() {
            return;
        }
        let last_is_reply = self.messages.with_untracked(|m| m.last().is_some_and(|m| m.speaker == Speaker::Model));
        if !last_is_reply {
            return;
        }
        self.messages.update(|m| {
            m.pop();
        });
        self.settings.update(|s| s.seed = s.seed.wrapping_add(1));
        self.generate(|session, max, on_text| Box::pin(async move { session.regenerate(max, on_text).await }));
    }

    pub fn new_chat(self) {
        if self.busy.get_untracked() {
            return;
        }
        self.session.update_value(|s| {
            if let Some(session) = s {
                session.reset();
            }
        });
        self.messages.set(Vec::new());
        self.chat_error.set(None);
        self.session.with_value(|s| {
            if let Some(session) = s {
                self.stats.update(|stats| stats.conversation_tokens = session.generator_ref().position());
            }
        });
    }

    fn generate(self, turn: impl for<'s> FnOnce(&'s mut ChatSession, usize, PageListener<'s>) -> Turn<'s> + 'static) {
        let Some(mut session) = self.session.try_update_value(|s| s.take()).flatten() else {
            return;
        };
        let reply = self.message(Speaker::Model, "");
        self.messages.update(|m| m.push(reply));
        self.busy.set(true);
        self.stop.set(false);
        self.chat_error.set(None);
        let settings = self.settings.get_untracked();
        spawn_local(async move {
            let stop = self.stop;
            let mut on_text = |piece: &str| {
                reply.text.update(|t| t.push_str(piece));
                !stop.get_untracked()
            };
            let result = match session.generator().set_sampling(settings.sampling()) {
                Ok(()) => {
                    // Stop is also asked mid-prompt and after tokens that make no text.
                    let stopped = || stop.get_untracked();
                    turn(&mut session, settings.max_tokens, Stoppable { on_text: &mut on_text, stopped: &stopped })
                        .await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(done) => {
                    reply.token_ids.set(done.ids);
                    reply.stopped.set(self.stop.get_untracked());
                    self.stats.update(|stats| *stats = stats_of(&session, *stats));
                    self.session.set_value(Some(session));
                }
                Err(e) => {
                    // The device-lost promise may settle just after the failed submission.
                    js::sleep_ms(100).await;
                    self.fail(e, session);
                }
            }
            self.busy.set(false);
        });
    }

    fn fail(self, error: Error, session: ChatSession) {
        let message = error.to_string();
        if session.generator_ref().device_lost() {
            drop(session);
            self.phase.set(Phase::DeviceLost(message));
        } else {
            self.session.set_value(Some(session));
            self.chat_error.set(Some(message));
        }
    }
}

/// What a reply streams to: its message's text, and the Stop button's flag.
type PageListener<'s> = Stoppable<&'s mut dyn FnMut(&str) -> bool, &'s dyn Fn() -> bool>;

type Turn<'s> = std::pin::Pin<Box<dyn std::future::Future<Output = crate::Result<crate::chat::session::Reply>> + 's>>;

/// The session's current figures; the load figures come from `previous`.
fn stats_of(session: &ChatSession, previous: Stats) -> Stats {
    let generator = session.generator_ref();
    let (weight_bytes, gpu_bytes) = generator.gpu_bytes();
    Stats {
        last_turn: generator.timing(),
        conversation_tokens: generator.position(),
        weight_bytes,
        state_bytes: generator.state_bytes(),
        gpu_bytes,
        wasm_bytes: js::wasm_memory_bytes(),
        ..previous
    }
}

/// The origin `url` (absolute, or relative to the page) belongs to.
fn origin_of(url: &str) -> crate::Result<String> {
    let url = web_sys::Url::new(&js::absolute_url(url)?).map_err(|_| Error::Input(format!("{url} is not a URL")))?;
    Ok(url.origin())
}

/// The `?model=URL` of the page's address, if any.
fn model_from_query() -> Option<String> {
    let search = web_sys::window()?.location().search().ok()?;
    web_sys::UrlSearchParams::new_with_str(&search).ok()?.get("model").filter(|m| !m.is_empty())
}

async fn fetch_known_models() -> Vec<KnownModel> {
    let Ok(source) = Source::url("./") else { return Vec::new() };
    let fetcher = download::Fetcher::new(source).await;
    match fetcher.whole_file("models.json", MAX_MANIFEST_BYTES).await {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

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
    state.refresh_cached_bytes();

    view! {
        <header class="top">
            <h1>"RecurrentGemma" <span class="sub">" in your browser · WebGPU"</span></h1>
            <loading::CacheControl />
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
