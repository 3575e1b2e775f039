//! The page's state: one [`AppState`] of signals, shared through context, and what changes it
//! (loading a model, sending a message, saving and opening conversations).

use std::cell::RefCell;
use std::rc::Rc;

use leptos::prelude::*;
use leptos::task::spawn_local;
use serde::{Deserialize, Serialize};

use super::engine::{LoadSource, Reply, Sampling, WorkerEngine};
use super::store;
use crate::chat::figures::{EngineStats, TurnFigures};
use crate::web::download::{self, Source};
use crate::web::js;
use crate::web::models::{self, CachedModel};
use crate::web::progress::LoadProgress;
use crate::weights::format::MAX_MANIFEST_BYTES;
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

/// A model being downloaded for offline use.
#[derive(Clone, Debug, PartialEq)]
pub struct Prefetch {
    pub url: String,
    pub progress: LoadProgress,
    /// Why it stopped, if it failed.
    pub failed: Option<String>,
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
    Url { name: String, url: String, note: String },
    /// A `?model=URL` link: someone else chose it, so a link must not silently make a visitor
    /// download gigabytes. It loads at once only from this page's origin, an origin
    /// `models.json` lists, or one the visitor agreed to; otherwise the visitor is asked first.
    Link(String),
    /// A converted model folder picked on this computer; its files are handed to the worker.
    Folder(web_sys::FileList),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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
    /// Tokens the engine prefilled for the turn this reply answers (only the turn's own).
    pub prompt_tokens: RwSignal<Option<u64>>,
}

impl Message {
    pub fn saved(&self) -> store::SavedMessage {
        store::SavedMessage {
            speaker: self.speaker,
            text: self.text.get_untracked(),
            token_ids: self.token_ids.get_untracked(),
            stopped: self.stopped.get_untracked(),
            prompt_tokens: self.prompt_tokens.get_untracked(),
        }
    }
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
    fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            max_tokens: self.max_tokens,
        }
    }
}

/// Figures for the stats panel: the engine's, whose `turn` is the reply streaming now (updated
/// with every piece) or the last one, and the load's wasm heap peak.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub engine: EngineStats,
    pub load_peak_wasm_bytes: u64,
}

/// What a reply answers.
enum Turn {
    Message(String),
    /// The last message again; the reply it replaces comes back if the engine cannot.
    Regenerate(Message),
}

#[derive(Clone, Copy)]
pub struct AppState {
    pub phase: RwSignal<Phase>,
    pub known_models: RwSignal<Vec<KnownModel>>,
    pub choice: StoredValue<Option<ModelChoice>, LocalStorage>,
    pub model_label: RwSignal<String>,
    pub model_note: RwSignal<String>,
    /// The loaded model, running in its worker.
    pub engine: StoredValue<Option<WorkerEngine>, LocalStorage>,
    /// The loaded model's identity (its manifest's sha256): saved states are keyed by it.
    pub model_id: StoredValue<Option<String>>,
    /// Counts loads, so a load overtaken by a newer one is disposed of, not shown.
    pub load_serial: StoredValue<u64>,
    pub messages: RwSignal<Vec<Message>>,
    pub next_id: StoredValue<usize>,
    /// A reply, or a conversation being opened, is in progress: one engine call at a time.
    pub busy: RwSignal<bool>,
    /// The engine can answer the last message again: it replied to it in this session (a
    /// conversation reopened from its saved state holds no state from before its last reply).
    pub can_regenerate: RwSignal<bool>,
    pub settings: RwSignal<Settings>,
    pub stats: RwSignal<Stats>,
    pub chat_error: RwSignal<Option<String>>,
    /// The models in this browser's cache (`None` until read, or where it cannot be).
    pub cached_models: RwSignal<Option<Vec<CachedModel>>>,
    /// A model being downloaded for later: its address and how far it has come.
    pub prefetch: RwSignal<Option<Prefetch>>,
    /// How the last load went (cache use, notes), shown beside the chat.
    pub last_load: RwSignal<Option<LoadProgress>>,
    /// Model addresses the visitor agreed to download, so a reload does not ask again.
    pub approved_urls: StoredValue<Vec<String>>,
    /// The saved conversations (as stored), the most recent first.
    pub conversations: RwSignal<Vec<store::Conversation>>,
    /// The open conversation's id; `None` for a new one, saved with its first reply.
    pub current: RwSignal<Option<String>>,
    /// The revision of the open conversation this tab read or last saved (0 for a new one): its
    /// next save is refused if another tab saved another since.
    pub current_revision: StoredValue<u64>,
    /// Another tab saved the open conversation since this one read it: opening it again reads it anew.
    pub current_is_stale: StoredValue<bool>,
    /// The first message of the open conversation the engine's state covers (see
    /// `Conversation::state_from`).
    pub state_from: StoredValue<usize>,
    /// Why the last save (or the conversation list) failed, e.g. a full quota.
    pub store_error: RwSignal<Option<String>>,
    /// The browser's answer to `navigator.storage.persist()`, asked at the first save: `Some(None)`
    /// where it cannot be asked.
    pub storage_persisted: RwSignal<Option<Option<bool>>>,
    /// What the model remembers of the open conversation, when not all of it (a refused state).
    pub restore_note: RwSignal<Option<String>>,
    /// The GPU the browser offers (`adapter.info`), once asked.
    pub adapter: RwSignal<Option<String>>,
    /// The message being written: a message the engine could not answer is put back here.
    pub draft: RwSignal<String>,
    /// A lost GPU being recovered from: the model reloads, then this is done with.
    pub recovery: StoredValue<Option<Recovery>>,
    /// The page recovered from a lost GPU and no reply has succeeded since: a device lost again
    /// now is shown, not recovered from in a loop.
    pub recovered_without_reply: StoredValue<bool>,
    /// What the page says after recovering from a lost GPU.
    pub recovery_note: RwSignal<Option<String>>,
}

/// Recovering from a lost GPU device: why, and the conversation to reopen once the model is back.
#[derive(Clone, Debug)]
pub struct Recovery {
    pub why: String,
    pub reopen: Option<String>,
}

impl AppState {
    pub(super) fn new() -> Self {
        AppState {
            phase: RwSignal::new(Phase::Choose),
            known_models: RwSignal::new(Vec::new()),
            choice: StoredValue::new_local(None),
            model_label: RwSignal::new(String::new()),
            model_note: RwSignal::new(String::new()),
            engine: StoredValue::new_local(None),
            model_id: StoredValue::new(None),
            load_serial: StoredValue::new(0),
            messages: RwSignal::new(Vec::new()),
            next_id: StoredValue::new(0),
            busy: RwSignal::new(false),
            can_regenerate: RwSignal::new(false),
            settings: RwSignal::new(Settings::default()),
            stats: RwSignal::new(Stats::default()),
            chat_error: RwSignal::new(None),
            cached_models: RwSignal::new(None),
            prefetch: RwSignal::new(None),
            last_load: RwSignal::new(None),
            approved_urls: StoredValue::new(Vec::new()),
            conversations: RwSignal::new(Vec::new()),
            current: RwSignal::new(None),
            current_revision: StoredValue::new(0),
            current_is_stale: StoredValue::new(false),
            state_from: StoredValue::new(0),
            store_error: RwSignal::new(None),
            storage_persisted: RwSignal::new(None),
            restore_note: RwSignal::new(None),
            adapter: RwSignal::new(None),
            draft: RwSignal::new(String::new()),
            recovery: StoredValue::new(None),
            recovered_without_reply: StoredValue::new(false),
            recovery_note: RwSignal::new(None),
        }
    }

    pub fn message(&self, speaker: Speaker, text: &str) -> Message {
        let id = self.next_id.get_value();
        self.next_id.set_value(id + 1);
        Message {
            id,
            speaker,
            text: RwSignal::new(text.to_string()),
            token_ids: RwSignal::new(Vec::new()),
            stopped: RwSignal::new(false),
            prompt_tokens: RwSignal::new(None),
        }
    }

    /// Loads `choice` (ending any loaded model's worker first), reporting progress into `phase`.
    pub fn load(self, choice: ModelChoice) {
        let serial = self.load_serial.get_value() + 1;
        self.load_serial.set_value(serial);
        let previous = self.engine.try_update_value(|e| e.take()).flatten();
        self.model_id.set_value(None);
        self.messages.set(Vec::new());
        self.current.set(None);
        self.chat_error.set(None);
        self.restore_note.set(None);
        self.recovery_note.set(None);
        self.busy.set(false);
        self.can_regenerate.set(false);
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
            // The old model's GPU memory goes before the new one's is taken.
            if let Some(previous) = previous {
                previous.dispose().await;
            }
            // Before anything is downloaded: a visitor who declines gets nothing set up.
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
            // The source is checked here (a bad address, a folder of two models) before a worker starts.
            let source = match &choice {
                ModelChoice::Url { url, .. } | ModelChoice::Link(url) => Source::url(url),
                ModelChoice::Folder(files) => Ok(Source::folder(files)),
            };
            if let Err(e) =
                source.as_ref().map_err(|e| e.to_string()).and_then(|s| s.check().map_err(|e| e.to_string()))
            {
                self.phase.set(Phase::Failed(e));
                return;
            }
            match super::engine::check_adapter().await {
                Ok(adapter) => self.adapter.set(Some(adapter)),
                Err(why) => {
                    self.phase.set(Phase::NoWebGpu(why));
                    return;
                }
            }
            // Another model chosen meanwhile: this load has nothing left to do.
            if self.load_serial.get_value() != serial {
                return;
            }
            let phase = self.phase;
            let serial_now = self.load_serial;
            let last = Rc::new(RefCell::new(LoadProgress::default()));
            let report = {
                let last = last.clone();
                move |progress: LoadProgress| {
                    if serial_now.get_value() == serial {
                        *last.borrow_mut() = progress.clone();
                        phase.set(Phase::Loading(progress));
                    }
                }
            };
            let url = match &source {
                Ok(Source::Url(base)) => Some(base.clone()),
                _ => None,
            };
            let source = match (&choice, &url) {
                (ModelChoice::Folder(files), _) => LoadSource::Folder(files),
                (_, Some(url)) => LoadSource::Url(url),
                (_, None) => return,
            };
            let lost = move |why: String| self.lost_while_idle(serial, why);
            let loaded = WorkerEngine::load(source, report, lost).await;
            if self.load_serial.get_value() != serial {
                if let Ok(engine) = loaded {
                    engine.dispose().await;
                }
                return;
            }
            let engine = match loaded {
                Ok(engine) => engine,
                Err(e) => {
                    self.phase.set(Phase::Failed(e));
                    return;
                }
            };
            let progress = last.take();
            self.model_id.set_value(engine.model_id().await);
            self.stats.set(Stats { load_peak_wasm_bytes: progress.peak_wasm_bytes, ..Stats::default() });
            self.engine.set_value(Some(engine));
            self.refresh_stats().await;
            let recovery = self.recovery.try_update_value(Option::take).flatten();
            if let Some(recovery) = recovery {
                self.recovered(recovery, &progress);
            }
            self.last_load.set(Some(progress));
            self.phase.set(Phase::Ready);
            self.refresh_cached_models();
            self.ask_to_persist().await;
        });
    }

    /// The model is back after a lost GPU: reopen the conversation that was open (from its last
    /// save) and say what happened in one line.
    fn recovered(self, recovery: Recovery, load: &LoadProgress) {
        let weights = if load.bytes_from_cache == load.bytes_done {
            "reloaded from this browser's cache".to_string()
        } else {
            format!(
                "reloaded ({} downloaded again)",
                super::loading::megabytes(load.bytes_done - load.bytes_from_cache)
            )
        };
        let conversation = match recovery.reopen {
            Some(id) => {
                self.open(id);
                ", and the conversation restored from its last save"
            }
            None => "",
        };
        let why = recovery.why.split_whitespace().collect::<Vec<_>>().join(" ");
        self.recovery_note.set(Some(format!("The GPU was lost ({why}): the model was {weights}{conversation}.")));
    }

    /// `None` when `choice` loads without asking (see [`ModelChoice::Link`]): a model under the
    /// page's own folder, under a model URL the page lists, or one the visitor approved in this
    /// session. Not by origin: a shared CDN or huggingface.co hosts anyone's files. Otherwise reads
    /// the (small) manifest so the question can say how much would be downloaded. Inside another
    /// site's frame it does not ask at all, where the question could be overlaid and the click on
    /// Download disguised.
    async fn pending_download(self, choice: &ModelChoice) -> crate::Result<Option<PendingDownload>> {
        let ModelChoice::Link(url) = choice else { return Ok(None) };
        let address = js::absolute_url(url)?;
        // A folder: `…/main` must not let `…/main-other/` through.
        let under = |base: &str| {
            js::absolute_url(base).is_ok_and(|base| {
                let folder = if base.ends_with('/') { base.clone() } else { format!("{base}/") };
                address == base || address.starts_with(&folder)
            })
        };
        if under("./") || self.approved_urls.with_value(|a| a.contains(&address)) {
            return Ok(None);
        }
        let known = fetch_known_models().await;
        if known.iter().any(|m| under(&m.url)) {
            return Ok(None);
        }
        if js::in_frame() {
            return Err(Error::Input(format!(
                "this page is inside another site's frame, so it does not offer to download a model from \
                 {address}: open the page in a tab of its own"
            )));
        }
        let origin = origin_of(url)?;
        let (manifest, _) = download::read_manifest(&download::Fetcher::new(Source::url(url)?).await).await?;
        let tokenizer = manifest.tokenizer.as_ref().map_or(0, |t| t.bytes);
        Ok(Some(PendingDownload { url: url.clone(), origin, bytes: manifest.total_bytes() + tokenizer }))
    }

    /// The visitor agreed: remember the model's address and load.
    pub fn approve(self, pending: PendingDownload) {
        if let Ok(address) = js::absolute_url(&pending.url) {
            self.approved_urls.update_value(|a| a.push(address));
        }
        self.load(ModelChoice::Link(pending.url));
    }

    /// Reloads the model chosen last (after a lost device: from the cache, so it is quick).
    pub fn reload(self) {
        if let Some(choice) = self.choice.get_value() {
            self.load(choice);
        }
    }

    pub fn refresh_cached_models(self) {
        spawn_local(async move {
            self.cached_models.set(models::list_cached_models().await.ok());
        });
    }

    pub fn clear_cache(self) {
        spawn_local(async move {
            if let Err(e) = download::clear_cache().await {
                self.chat_error.set(Some(e.to_string()));
            }
            self.cached_models.set(models::list_cached_models().await.ok());
        });
    }

    /// Deletes every cached byte of the model at `source`.
    pub fn delete_model(self, source: String) {
        spawn_local(async move {
            if let Err(e) = models::delete_model(&source).await {
                self.chat_error.set(Some(e.to_string()));
            }
            self.cached_models.set(models::list_cached_models().await.ok());
        });
    }

    /// Downloads the model at `url` into the cache, checked, without loading it.
    pub fn prefetch(self, url: String) {
        if self.prefetch.with_untracked(|p| p.as_ref().is_some_and(|p| p.failed.is_none())) {
            return;
        }
        let start = Prefetch { url: url.clone(), progress: LoadProgress::default(), failed: None };
        self.prefetch.set(Some(start));
        spawn_local(async move {
            let mut report = |progress: &LoadProgress| {
                self.prefetch.update(|p| {
                    if let Some(p) = p {
                        p.progress = progress.clone();
                    }
                });
            };
            match models::prefetch_model(&url, &mut report).await {
                Ok(_) => {
                    self.prefetch.set(None);
                    self.ask_to_persist().await;
                }
                Err(e) => self.prefetch.update(|p| {
                    if let Some(p) = p {
                        p.failed = Some(e.to_string());
                    }
                }),
            }
            self.cached_models.set(models::list_cached_models().await.ok());
        });
    }

    /// Asks the browser once to keep this site's storage: a model or a conversation is now kept.
    pub async fn ask_to_persist(self) {
        if self.storage_persisted.get_untracked().is_none() {
            self.storage_persisted.set(Some(js::persist_storage().await));
        }
    }

    /// The engine's figures now, keeping the load's.
    pub async fn refresh_stats(self) {
        let Some(engine) = self.engine.get_value() else { return };
        if let Ok(now) = engine.stats().await {
            self.stats.update(|stats| stats.engine = now);
        }
    }

    /// Sends the user's message and streams the reply.
    pub fn send(self, text: String) {
        let text = text.trim().to_string();
        if text.is_empty() || self.busy.get_untracked() || self.engine.with_value(Option::is_none) {
            return;
        }
        let user = self.message(Speaker::User, &text);
        self.messages.update(|m| m.push(user));
        self.generate(Turn::Message(text));
    }

    /// Answers the last message again with the next seed.
    pub fn regenerate(self) {
        if self.busy.get_untracked() || self.engine.with_value(Option::is_none) || !self.can_regenerate.get_untracked()
        {
            return;
        }
        let last_is_reply = self.messages.with_untracked(|m| m.last().is_some_and(|m| m.speaker == Speaker::Model));
        if !last_is_reply {
            return;
        }
        let Some(replaced) = self.messages.try_update(|m| m.pop()).flatten() else { return };
        // Seeds stay below 2^53, the largest exact JavaScript number, which the engine takes.
        self.settings.update(|s| s.seed = (s.seed + 1) % (1 << 53));
        self.generate(Turn::Regenerate(replaced));
    }

    /// Stops the reply in progress (even mid-prompt: the prompt is then taken back).
    pub fn stop(self) {
        if let Some(engine) = self.engine.get_value() {
            engine.abort();
        }
    }

    fn generate(self, turn: Turn) {
        let Some(engine) = self.engine.get_value() else { return };
        let reply = self.message(Speaker::Model, "");
        self.messages.update(|m| m.push(reply));
        self.busy.set(true);
        self.chat_error.set(None);
        // The figures start from zero: whatever they show during the reply is the reply's.
        self.stats.update(|s| s.engine.turn = TurnFigures::default());
        let sampling = self.settings.get_untracked().sampling();
        let stats = self.stats;
        let on_token = move |piece: String, live: Option<TurnFigures>| {
            reply.text.update(|t| t.push_str(&piece));
            if let Some(live) = live {
                stats.update(|s| s.engine.turn = live);
            }
        };
        let unanswered = match &turn {
            Turn::Message(text) => Some(text.clone()),
            Turn::Regenerate(_) => None,
        };
        spawn_local(async move {
            let (result, replaced) = match turn {
                Turn::Message(text) => (engine.chat(&text, &sampling, on_token).await, None),
                Turn::Regenerate(old) => (engine.regenerate(&sampling, on_token).await, Some(old)),
            };
            match result {
                Ok(done) => {
                    self.recovered_without_reply.set_value(false);
                    self.finish(reply, done);
                    self.refresh_stats().await;
                    // Saved before the next call can change the state (one engine call at a time).
                    self.save_current(engine).await;
                }
                Err(e) => {
                    if let Some(old) = replaced {
                        self.messages.update(|m| {
                            m.pop();
                            m.push(old);
                        });
                    }
                    self.fail(e, engine, unanswered).await
                }
            }
            self.busy.set(false);
        });
    }

    fn finish(self, reply: Message, done: Reply) {
        self.can_regenerate.set(true);
        reply.text.set(done.text);
        reply.token_ids.set(done.token_ids);
        reply.stopped.set(done.stopped);
        reply.prompt_tokens.set(Some(done.prompt_tokens));
    }

    /// The engine's GPU device is gone (its engine already let go of): load the model again and
    /// reopen the open conversation, unless that was just done and no reply came since.
    fn recover(self, why: String) {
        if self.recovered_without_reply.get_value() {
            self.phase.set(Phase::DeviceLost(why));
        } else {
            self.recovered_without_reply.set_value(true);
            self.recovery.set_value(Some(Recovery { why, reopen: self.current.get_untracked() }));
            self.reload();
        }
    }

    /// The engine of load `serial` reported its device lost. A call in progress fails and
    /// [`AppState::fail`] recovers; between calls, this does.
    fn lost_while_idle(self, serial: u64, why: String) {
        if self.load_serial.get_value() != serial || self.busy.get_untracked() {
            return;
        }
        let Some(engine) = self.engine.try_update_value(Option::take).flatten() else { return };
        spawn_local(async move {
            engine.dispose().await;
            self.recover(why);
        });
    }

    /// A call failed; `unanswered` is the message it was answering, if any.
    async fn fail(self, error: String, engine: WorkerEngine, unanswered: Option<String>) {
        // The device-lost report may come just after the failed submission.
        js::sleep_ms(100).await;
        // The engine says whether its device is gone, or a GPU error it keeps failing with: either
        // way only loading the model again helps.
        let stats = engine.stats().await.ok();
        if stats.is_some_and(|s| s.device_lost || s.broken) {
            if let Some(text) = unanswered.filter(|_| self.draft.with_untracked(|d| d.trim().is_empty())) {
                self.draft.set(text);
            }
            self.engine.set_value(None);
            engine.dispose().await;
            self.recover(error);
        } else if error.contains("worker failed") {
            // The engine is gone with its worker: what is left is loading the model again.
            self.engine.set_value(None);
            self.phase.set(Phase::Failed(error));
        } else {
            self.chat_error.set(Some(error));
        }
    }
}

/// The origin `url` (absolute, or relative to the page) belongs to.
fn origin_of(url: &str) -> crate::Result<String> {
    let url = web_sys::Url::new(&js::absolute_url(url)?).map_err(|_| Error::Input(format!("{url} is not a URL")))?;
    Ok(url.origin())
}

/// The `?model=URL` of the page's address, if any.
pub(super) fn model_from_query() -> Option<String> {
    let search = web_sys::window()?.location().search().ok()?;
    web_sys::UrlSearchParams::new_with_str(&search).ok()?.get("model").filter(|m| !m.is_empty())
}

pub(super) async fn fetch_known_models() -> Vec<KnownModel> {
    let Ok(source) = Source::url("./") else { return Vec::new() };
    let fetcher = download::Fetcher::new(source).await;
    match fetcher.whole_file("models.json", MAX_MANIFEST_BYTES).await {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}
