//! Loading a model in the browser: manifest, tokenizer, then every shard streamed chunk by chunk
//! through the [`ShardParser`] into the engine's GPU buffers. The wasm heap only ever holds one
//! network chunk of weights; each shard's sha256 is checked as it streams, and a shard whose
//! check fails is never kept in the cache.

use web_time::Instant;

use super::download::{CacheState, Download, Fetcher, Source};
use super::js;
use crate::chat::GemmaTokenizer;
use crate::gpu::engine::Engine;
use crate::gpu::GpuContext;
use crate::weights::format::Manifest;
use crate::weights::stream::ShardParser;
use crate::{Error, Result};

/// Attempts per shard before a dropped connection becomes an error.
const MAX_ATTEMPTS: u32 = 6;
/// How often progress is reported while bytes stream in.
const PROGRESS_INTERVAL_MS: f64 = 100.0;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stage {
    #[default]
    Manifest,
    Tokenizer,
    Weights,
    Ready,
}

/// Where a load stands, for a progress bar.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadProgress {
    pub stage: Stage,
    /// Weight bytes streamed into the GPU so far, of `bytes_total`.
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Of `bytes_done`, how many came from Cache Storage rather than the network.
    pub bytes_from_cache: u64,
    pub shards_done: usize,
    pub shards_total: usize,
    pub seconds: f64,
    pub cache: CacheState,
    /// Things worth telling the user (a corrupted cached shard fetched again, a resumed download).
    pub notes: Vec<String>,
    /// The largest the wasm heap has been during this load.
    pub peak_wasm_bytes: u64,
}

impl LoadProgress {
    pub fn bytes_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes_done as f64 / self.seconds
        } else {
            0.0
        }
    }

    pub fn eta_seconds(&self) -> Option<f64> {
        let rate = self.bytes_per_second();
        (rate > 0.0).then(|| self.bytes_total.saturating_sub(self.bytes_done) as f64 / rate)
    }
}

/// A model ready to run.
pub struct LoadedModel {
    pub engine: Engine,
    pub tokenizer: GemmaTokenizer,
    pub manifest: Manifest,
    pub progress: LoadProgress,
}

/// Reports progress at most every [`PROGRESS_INTERVAL_MS`] (and always at stage changes).
struct Reporter<'a> {
    progress: LoadProgress,
    started: Instant,
    last_report: Option<Instant>,
    callback: &'a mut dyn FnMut(&LoadProgress),
}

impl Reporter<'_> {
    fn report(&mut self, force: bool) {
        self.progress.seconds = self.started.elapsed().as_secs_f64();
        self.progress.peak_wasm_bytes = self.progress.peak_wasm_bytes.max(js::wasm_memory_bytes());
        let due = self.last_report.is_none_or(|last| last.elapsed().as_secs_f64() * 1e3 >= PROGRESS_INTERVAL_MS);
        if force || due {
            self.last_report = Some(Instant::now());
            (self.callback)(&self.progress);
        }
    }

    fn stage(&mut self, stage: Stage) {
        self.progress.stage = stage;
        self.report(true);
    }

    fn note(&mut self, note: String) {
        self.progress.notes.push(note);
        self.report(true);
    }

    fn bytes(&mut self, count: usize, from_cache: bool) {
        self.progress.bytes_done += count as u64;
        if from_cache {
            self.progress.bytes_from_cache += count as u64;
        }
        self.report(false);
    }

    /// Takes back bytes counted for a cached copy that turned out bad.
    fn discard(&mut self, count: u64) {
        self.progress.bytes_done -= count;
        self.progress.bytes_from_cache -= count;
    }
}

/// Creates the WebGPU device, with a clear error where there is none.
pub async fn gpu_context() -> Result<GpuContext> {
    if !js::has_webgpu() {
        return Err(Error::Gpu(
            "this browser does not offer WebGPU (navigator.gpu is missing). Use a recent Chrome or Edge \
             (113 or later) on a secure (https or localhost) page, or enable WebGPU in your browser's settings."
                .into(),
        ));
    }
    GpuContext::new().await.map_err(|e| match e {
        Error::Gpu(message) if message.starts_with("no GPU adapter") => Error::Gpu(format!(
            "WebGPU is present but gave no usable GPU adapter ({message}). Check that hardware acceleration \
             is on (chrome://settings/system) and your GPU is not blocklisted (chrome://gpu)."
        )),
        other => other,
    })
}

/// Loads the model at `source` onto `ctx`'s device, reporting progress as it goes.
pub async fn load(ctx: GpuContext, source: Source, on_progress: &mut dyn FnMut(&LoadProgress)) -> Result<LoadedModel> {
    let mut fetcher = Fetcher::new(source).await;
    let mut reporter = Reporter {
        progress: LoadProgress { cache: fetcher.cache_state.clone(), ..LoadProgress::default() },
        started: Instant::now(),
        last_report: None,
        callback: on_progress,
    };
    reporter.stage(Stage::Manifest);
    let manifest_bytes = fetcher.whole_file("manifest.json", None).await?;
    let manifest_text =
        std::str::from_utf8(&manifest_bytes).map_err(|_| Error::Weights("manifest.json is not UTF-8 text".into()))?;
    let manifest = Manifest::from_json(manifest_text)?;
    let total = manifest.total_bytes();
    reporter.progress.bytes_total = total;
    reporter.progress.shards_total = manifest.shards.len();

    if fetcher.cache_state == CacheState::On {
        if let Some((usage, quota)) = js::storage_estimate().await {
            if usage + total as f64 > quota {
                fetcher.stop_caching(CacheState::QuotaExceeded);
                reporter.progress.cache = CacheState::QuotaExceeded;
            }
        }
    }

    reporter.stage(Stage::Tokenizer);
    // The first shard's hash names this model version for the tokenizer's cache entry too.
    let version = manifest.shards.first().map(|s| s.sha256.clone()).unwrap_or_default();
    let tokenizer_key = fetcher.cache_key("tokenizer.json", &version);
    let tokenizer_json = fetcher.file_chunks("tokenizer.json", Some(&tokenizer_key)).await?;
    reporter.report(true);
    // Parsing blocks this thread for a moment: let the page paint its progress first.
    js::sleep_ms(0).await;
    // serde_json reads byte by byte from a reader: buffer it.
    let tokenizer = GemmaTokenizer::from_reader(std::io::BufReader::with_capacity(1 << 16, tokenizer_json))?;
    reporter.report(true);
    if tokenizer.vocab_size() > manifest.config.vocab_size {
        return Err(Error::Tokenizer(format!(
            "tokenizer.json has {} tokens but the model only {}",
            tokenizer.vocab_size(),
            manifest.config.vocab_size
        )));
    }

    reporter.stage(Stage::Weights);
    js::sleep_ms(0).await;
    let engine = Engine::new(ctx, manifest.clone())?;
    for index in 0..manifest.shards.len() {
        load_shard(&mut fetcher, &manifest, index, &engine, &mut reporter).await?;
        reporter.progress.shards_done = index + 1;
        reporter.progress.cache = fetcher.cache_state.clone();
        engine.context().check()?;
    }
    reporter.stage(Stage::Ready);
    let progress = reporter.progress.clone();
    Ok(LoadedModel { engine, tokenizer, manifest, progress })
}

/// Streams shard `index` into the engine: from the cache if a copy is there and verifies, else
/// from the source, resuming after dropped connections.
async fn load_shard(
    fetcher: &mut Fetcher,
    manifest: &Manifest,
    index: usize,
    engine: &Engine,
    reporter: &mut Reporter<'_>,
) -> Result<()> {
    let info = &manifest.shards[index];
    let key = fetcher.cache_key(&info.file, &info.sha256);

    if let Some(reader) = fetcher.cached(&key).await {
        let mut parser = ShardParser::new(manifest, index);
        let mut sink = engine.weight_sink();
        let mut outcome = Ok(());
        loop {
            match reader.next().await {
                Ok(Some(chunk)) => {
                    if let Err(e) = parser.push(&chunk, &mut sink) {
                        outcome = Err(e);
                        break;
                    }
                    reporter.bytes(chunk.len(), true);
                }
                Ok(None) => break,
                Err(reason) => {
                    outcome = Err(Error::Browser(reason));
                    break;
                }
            }
        }
        let read = parser.position();
        match outcome.and_then(|()| parser.finish()) {
            Ok(()) => return Ok(()),
            Err(e) => {
                reader.cancel();
                reporter.discard(read);
                fetcher.evict(&key).await;
                reporter.note(format!("The cached copy of {} was damaged ({e}); downloading it again.", info.file));
            }
        }
    }

    let mut parser = ShardParser::new(manifest, index);
    let mut sink = engine.weight_sink();
    let mut attempts = 0;
    let mut download: Option<Download> = None;
    loop {
        let current = match download.as_mut() {
            Some(current) => current,
            None => {
                attempts += 1;
                let offset = parser.position();
                let cache_key = (offset == 0).then_some(key.as_str());
                match fetcher.download(&info.file, offset, cache_key).await {
                    Ok(opened) => download.insert(opened),
                    Err(e @ Error::Network(_)) if attempts < MAX_ATTEMPTS => {
                        reporter.note(format!("{e}; retrying"));
                        js::sleep_ms(250 << attempts.min(5)).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        match current.next().await {
            Ok(Some(chunk)) => {
                if let Err(e) = parser.push(&chunk, &mut sink) {
                    if let Some(current) = download.take() {
                        current.abandon().await;
                    }
                    fetcher.evict(&key).await;
                    return Err(e);
                }
                reporter.bytes(chunk.len(), false);
            }
            Ok(None) => break,
            Err(reason) => {
                let at = parser.position();
                if let Some(current) = download.take() {
                    current.abandon().await;
                }
                if attempts >= MAX_ATTEMPTS {
                    return Err(Error::Network(format!(
                        "{}: the download kept failing ({reason}) after {attempts} attempts",
                        info.file
                    )));
                }
                reporter.note(format!("{}: connection dropped at byte {at} ({reason}); resuming", info.file));
            }
        }
    }
    let finished = download.take().expect("the loop ends while reading a download");
    if let Err(e) = parser.finish() {
        finished.abandon().await;
        fetcher.evict(&key).await;
        return Err(e);
    }
    if let Err(state) = finished.stored().await {
        fetcher.evict(&key).await;
        fetcher.stop_caching(state);
    }
    Ok(())
}
