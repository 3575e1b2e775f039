//! A model's files brought in from its source: the manifest, the tokenizer checked against it,
//! and every shard streamed chunk by chunk through the [`ShardParser`] into a [`PieceSink`] (the
//! engine's GPU buffers, or nothing when a model is only downloaded for later). Each shard's
//! sha256 is checked as it streams; what arrives is kept in Cache Storage a segment at a time, a
//! dropped connection resumes after the last byte received, and a copy that fails its check is
//! evicted and fetched again. The manifest is kept too, so the cache can say which models it
//! holds without the network.

use std::collections::VecDeque;

use web_time::Instant;

use super::download::{
    parse_manifest, CacheState, CachedSegment, ChunkQueue, Fetcher, OpenError, SegmentWriter, Source,
};
use super::js;
use super::progress::{LoadProgress, Stage};
use crate::weights::format::{Manifest, MANIFEST_FILE, MAX_MANIFEST_BYTES, TOKENIZER_FILE};
use crate::weights::stream::{PieceSink, ShardParser};
use crate::{Error, Result};

/// Failed requests in a row (none bringing a byte) before a shard's download becomes an error.
const MAX_ATTEMPTS: u32 = 6;
/// Times a shard starts over from byte 0 when the pieces it was put together from (a cached
/// prefix, resumed ranges) do not verify, before that becomes an error.
const MAX_RESTARTS: u32 = 2;
/// Cached segments read at once on a reload (8 MiB each): Chromium's Cache Storage gives 1.4×
/// the bytes per second with four reads in flight than with one.
const READS_IN_FLIGHT: usize = 4;
/// How often progress is reported while bytes stream in.
const PROGRESS_INTERVAL_MS: f64 = 100.0;

/// A model's files on their way in, and the progress reported as they come.
pub struct ModelFiles<'a> {
    pub fetcher: Fetcher,
    pub manifest: Manifest,
    /// The sha256 of `manifest.json` as fetched (it holds every shard's sha256): the model's
    /// identity, the same for every build of this engine that loads it.
    pub identity: [u8; 32],
    reporter: Reporter<'a>,
}

impl<'a> ModelFiles<'a> {
    /// Reads the source's manifest (always from the source: it names the files' current
    /// versions), keeps it in the cache, and stops cache writes if the rest will not fit.
    pub async fn open(source: Source, on_progress: &'a mut dyn FnMut(&LoadProgress)) -> Result<Self> {
        source.check()?;
        let mut fetcher = Fetcher::new(source).await;
        let mut reporter = Reporter {
            progress: LoadProgress { cache: fetcher.cache_state.clone(), ..LoadProgress::default() },
            started: Instant::now(),
            last_report: None,
            callback: on_progress,
        };
        reporter.stage(Stage::Manifest);
        let bytes = fetcher.whole_file(MANIFEST_FILE, MAX_MANIFEST_BYTES).await?;
        let (manifest, identity) = parse_manifest(&bytes)?;
        reporter.progress.bytes_total = manifest.total_bytes();
        reporter.progress.shards_total = manifest.shards.len();
        budget_cache(&mut fetcher, &manifest).await;
        let chunks = js_sys::Array::of1(&js_sys::Uint8Array::from(&bytes[..]));
        let key = fetcher.manifest_key();
        fetcher.put(&key, &chunks, bytes.len() as u64, None).await;
        reporter.progress.cache = fetcher.cache_state.clone();
        Ok(ModelFiles { fetcher, manifest, identity, reporter })
    }

    pub fn progress(&self) -> &LoadProgress {
        &self.reporter.progress
    }

    pub fn stage(&mut self, stage: Stage) {
        self.reporter.stage(stage);
    }

    /// The tokenizer the manifest names, from the cache or the source; a copy that fails its size
    /// or sha256 is evicted, so a bad answer from the host is never read again.
    pub async fn tokenizer(&mut self) -> Result<ChunkQueue> {
        self.reporter.stage(Stage::Tokenizer);
        let (fetcher, manifest) = (&mut self.fetcher, &self.manifest);
        let digest = manifest.tokenizer.as_ref().ok_or_else(|| {
            Error::Tokenizer(format!(
                "{MANIFEST_FILE} gives no size and sha256 for {TOKENIZER_FILE}: convert the model again with a current `rg convert`"
            ))
        })?;
        let key = fetcher.cache_key(TOKENIZER_FILE, &digest.sha256);
        let verify = |json: &ChunkQueue| -> Result<()> {
            let (bytes, sha256) = (json.bytes(), json.sha256());
            if bytes != digest.bytes || sha256 != digest.sha256 {
                return Err(Error::Tokenizer(format!(
                    "{TOKENIZER_FILE} is not the file the manifest names ({bytes} bytes with sha256 {sha256}, expected {} \
                     bytes with sha256 {})",
                    digest.bytes, digest.sha256
                )));
            }
            Ok(())
        };
        let cached = fetcher.cached_small_file(&key, digest.bytes).await;
        let json = match cached.filter(|json| verify(json).is_ok()) {
            Some(json) => json,
            None => {
                fetcher.evict(TOKENIZER_FILE).await;
                let json = fetcher.small_file(TOKENIZER_FILE, digest.bytes).await?;
                verify(&json)?;
                fetcher.put(&key, &json.to_js(), json.bytes(), None).await;
                json
            }
        };
        self.reporter.report(true);
        Ok(json)
    }

    /// Streams every shard into the sinks `make_sink` makes (one per pass over a shard: a sink
    /// holds the partial words of pieces between chunks); `after_shard` runs after each, with
    /// whether the cache is still being written.
    pub async fn shards<S: PieceSink>(
        &mut self,
        make_sink: impl Fn() -> S,
        mut after_shard: impl FnMut(&CacheState) -> Result<()>,
    ) -> Result<()> {
        self.reporter.stage(Stage::Weights);
        js::sleep_ms(0).await;
        for index in 0..self.manifest.shards.len() {
            load_shard(&mut self.fetcher, &self.manifest, index, &make_sink, &mut self.reporter).await?;
            self.reporter.progress.shards_done = index + 1;
            self.reporter.progress.cache = self.fetcher.cache_state.clone();
            after_shard(&self.fetcher.cache_state)?;
        }
        Ok(())
    }
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

    /// Takes back the bytes counted for a pass over a shard that is started over.
    fn take_back(&mut self, counted: Counted) {
        self.progress.bytes_done -= counted.from_cache + counted.from_network;
        self.progress.bytes_from_cache -= counted.from_cache;
    }
}

/// Stops cache writes when what is not cached yet will not fit in the storage quota. This
/// model's cached files are already counted in the usage; they are read either way.
async fn budget_cache(fetcher: &mut Fetcher, manifest: &Manifest) {
    if fetcher.cache_state != CacheState::On {
        return;
    }
    let Some((usage, quota)) = js::storage_estimate().await else { return };
    let mut missing = 0;
    for shard in &manifest.shards {
        missing += shard.bytes - fetcher.cached_prefix_bytes(&shard.file, &shard.sha256, shard.bytes).await;
    }
    if let Some(digest) = &manifest.tokenizer {
        missing += digest.bytes - fetcher.cached_prefix_bytes(TOKENIZER_FILE, &digest.sha256, digest.bytes).await;
    }
    if usage + missing as f64 > quota {
        fetcher.stop_writing(CacheState::QuotaExceeded);
    }
}

/// Bytes a pass over a shard has counted as done.
#[derive(Clone, Copy, Default)]
struct Counted {
    from_cache: u64,
    from_network: u64,
}

/// How a pass over a shard ended, when it did not fail for good.
enum Pass {
    Done,
    /// The bytes did not add up; the reason, for the user. The shard's cached copy is evicted
    /// and it is loaded again from byte 0.
    StartOver(String),
}

/// Streams shard `index` into a sink: what the cache holds of it, then the rest from the
/// source, resuming after dropped connections.
async fn load_shard<S: PieceSink>(
    fetcher: &mut Fetcher,
    manifest: &Manifest,
    index: usize,
    make_sink: &impl Fn() -> S,
    reporter: &mut Reporter<'_>,
) -> Result<()> {
    let file = &manifest.shards[index].file;
    let mut restarts = 0;
    loop {
        match shard_pass(fetcher, manifest, index, make_sink, reporter).await? {
            Pass::Done => return Ok(()),
            Pass::StartOver(reason) => {
                fetcher.evict(file).await;
                restarts += 1;
                if restarts > MAX_RESTARTS {
                    return Err(Error::Network(format!(
                        "{file}: {reason}, after starting it over {MAX_RESTARTS} times"
                    )));
                }
                reporter.note(format!("{file}: {reason}; loading it again from byte 0."));
            }
        }
    }
}

/// A pass over a shard whose cached segments reach its end, each with its digest: every segment
/// is read whole (the next ones already on their way), handed to the sink in one piece, and checked
/// with the browser's SHA-256 while the parser works through it. No sha256 runs in wasm.
async fn proven_pass<S: PieceSink>(
    manifest: &Manifest,
    index: usize,
    segments: &[CachedSegment],
    mut sink: S,
    reporter: &mut Reporter<'_>,
) -> Result<Pass> {
    let mut parser = ShardParser::proven(manifest, index);
    let mut counted = Counted::default();
    let mut bytes = Vec::new();
    let damaged = |reason: String| format!("the cached copy was damaged ({reason})");
    let mut reads: VecDeque<_> = segments.iter().take(READS_IN_FLIGHT).map(CachedSegment::read).collect();
    for (at, segment) in segments.iter().enumerate() {
        let Some(body) = reads.pop_front() else { break };
        let body = body.await;
        reads.extend(segments.get(at + READS_IN_FLIGHT).map(CachedSegment::read));
        let body = match body {
            Ok(body) => body,
            Err(reason) => return start_over(reporter, counted, damaged(reason)),
        };
        if u64::from(body.length()) != segment.bytes {
            let (start, held, bytes) = (segment.start, body.length(), segment.bytes);
            let reason = format!("the segment at byte {start} holds {held} of its {bytes} bytes");
            return start_over(reporter, counted, damaged(reason));
        }
        let digest = js::start_sha256(&body);
        bytes.resize(body.length() as usize, 0);
        body.copy_to(&mut bytes);
        if let Err(e) = parser.push(&bytes, &mut sink) {
            return start_over(reporter, counted, damaged(e.to_string()));
        }
        reporter.bytes(bytes.len(), true);
        counted.from_cache += segment.bytes;
        let matches = match digest {
            Some(digest) => digest.await.is_some_and(|digest| Some(digest) == segment.sha256),
            None => false,
        };
        if !matches {
            let reason = format!("the segment at byte {} fails its sha256", segment.start);
            return start_over(reporter, counted, damaged(reason));
        }
    }
    match parser.finish() {
        Ok(()) => Ok(Pass::Done),
        Err(e) => start_over(reporter, counted, damaged(e.to_string())),
    }
}

/// Ends a pass that has to start over, taking back the bytes it counted.
fn start_over(reporter: &mut Reporter<'_>, counted: Counted, reason: String) -> Result<Pass> {
    reporter.take_back(counted);
    Ok(Pass::StartOver(reason))
}

/// One pass over a shard from byte 0: its cached segments (the whole shard, or the prefix an
/// interrupted download kept), then the rest from the source, each new byte kept in the cache.
async fn shard_pass<S: PieceSink>(
    fetcher: &mut Fetcher,
    manifest: &Manifest,
    index: usize,
    make_sink: &impl Fn() -> S,
    reporter: &mut Reporter<'_>,
) -> Result<Pass> {
    let info = &manifest.shards[index];
    if let Some(segments) = fetcher.proven_segments(&info.file, &info.sha256, info.bytes).await {
        return proven_pass(manifest, index, &segments, make_sink(), reporter).await;
    }
    let mut parser = ShardParser::new(manifest, index);
    // One sink for the whole pass: it holds the partial words of pieces between chunks.
    let mut sink = make_sink();
    let mut counted = Counted::default();

    while parser.position() < info.bytes {
        let from = parser.position();
        let Some(reader) = fetcher.cached(&fetcher.segment_key(&info.file, &info.sha256, from)).await else { break };
        loop {
            match reader.next().await {
                Ok(Some(chunk)) => {
                    if let Err(e) = parser.push(&chunk, &mut sink) {
                        reader.cancel();
                        return start_over(reporter, counted, format!("the cached copy was damaged ({e})"));
                    }
                    reporter.bytes(chunk.len(), true);
                    counted.from_cache += chunk.len() as u64;
                }
                Ok(None) => break,
                Err(reason) => return start_over(reporter, counted, format!("the cached copy was damaged ({reason})")),
            }
        }
        if parser.position() == from {
            break;
        }
    }
    let cached = parser.position();
    if cached == info.bytes {
        return match parser.finish() {
            Ok(()) => Ok(Pass::Done),
            Err(e) => start_over(reporter, counted, format!("the cached copy was damaged ({e})")),
        };
    }
    if cached > 0 {
        reporter.note(format!("{}: resuming after the {cached} bytes kept from an earlier download", info.file));
    }

    let mut writer = SegmentWriter::new(&info.file, &info.sha256, info.bytes, cached);
    // Whether the bytes came from more than one response: then a shard that fails its check may
    // be right on a fresh start, where one whole response that fails it is the host's error.
    let mut pieced = cached > 0;
    let mut failures = 0;
    while parser.position() < info.bytes {
        let offset = parser.position();
        pieced |= offset > 0;
        let mut download = match fetcher.download(&info.file, offset, info.bytes).await {
            Ok(download) => download,
            Err(OpenError::Transient(e)) if failures + 1 < MAX_ATTEMPTS => {
                failures += 1;
                reporter.note(format!("{e}; retrying"));
                js::sleep_ms(250 << failures.min(5)).await;
                continue;
            }
            Err(OpenError::CannotResume(reason)) => return start_over(reporter, counted, reason),
            Err(e) => {
                writer.flush(fetcher).await;
                return Err(e.into());
            }
        };
        let dropped = loop {
            match download.next().await {
                Ok(Some(chunk)) => {
                    if let Err(e) = parser.push(&chunk, &mut sink) {
                        download.abandon();
                        if pieced {
                            return start_over(reporter, counted, format!("the resumed download did not fit ({e})"));
                        }
                        fetcher.evict(&info.file).await;
                        return Err(e);
                    }
                    reporter.bytes(chunk.len(), false);
                    counted.from_network += chunk.len() as u64;
                    writer.push(fetcher, &chunk).await;
                }
                Ok(None) if parser.position() == info.bytes => break None,
                // A response that ends cleanly before the shard does is a dropped connection too.
                Ok(None) => break Some("the response ended early".to_string()),
                Err(reason) => break Some(reason),
            }
        };
        let Some(reason) = dropped else { break };
        download.abandon();
        // What arrived is kept, so a reload resumes after it too.
        writer.flush(fetcher).await;
        let at = parser.position();
        failures = if at > offset { 1 } else { failures + 1 };
        if failures >= MAX_ATTEMPTS {
            return Err(Error::Network(format!(
                "{}: the download kept failing ({reason}) after {failures} attempts",
                info.file
            )));
        }
        reporter.note(format!("{}: connection dropped at byte {at} ({reason}); resuming", info.file));
        if at == offset {
            js::sleep_ms(250 << failures.min(5)).await;
        }
    }
    match parser.finish() {
        Ok(()) => {
            writer.flush(fetcher).await;
            Ok(Pass::Done)
        }
        Err(e) if pieced => start_over(reporter, counted, format!("the resumed download did not verify ({e})")),
        Err(e) => {
            fetcher.evict(&info.file).await;
            Err(e)
        }
    }
}
