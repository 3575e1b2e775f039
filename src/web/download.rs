//! Where model files come from: a base URL (any static host or CDN with CORS) or a folder the
//! user picked. Network bodies are read as streams. What a shard download has received and parsed
//! is kept in Cache Storage in segments as it arrives, so a reload reads from disk and an
//! interrupted download — a dropped connection or a closed tab — resumes with an HTTP Range
//! request from the last byte kept instead of starting over.

use std::collections::HashMap;

use js_sys::{Array, Uint8Array};
use sha2::{Digest, Sha256};
use wasm_bindgen::JsCast;
use web_sys::{
    AbortController, Cache, ReferrerPolicy, Request, RequestCredentials, RequestInit, Response, ResponseInit,
};

use super::js::{self, ChunkReader};
use crate::weights::format::{Manifest, MANIFEST_FILE, MAX_MANIFEST_BYTES};
use crate::weights::stream::hex;
use crate::{Error, Result};

/// Cache Storage bucket for model files; bump the suffix if the entry layout changes.
pub const CACHE_NAME: &str = "recurrentgemma-models-v1";

/// Header on each cached entry giving its body's exact size.
const SIZE_HEADER: &str = "x-rg-bytes";

/// Header on each cached shard segment giving its body's sha256 (lower-case hex), taken as it was
/// stored: a reload checks each segment against it with the browser's native SHA-256 instead of
/// hashing the whole shard in wasm.
const DIGEST_HEADER: &str = "x-rg-sha256";

/// A shard's cached copy is written in segments of about this size, each put as soon as it is
/// complete: a closed tab loses at most this much of a download.
pub const SEGMENT_BYTES: usize = 8 << 20;

/// A network read that brings nothing for this long is a dead connection (resumed like a dropped one).
const STALL_MS: i32 = 30_000;

/// Where a model's files are read from.
pub enum Source {
    /// Absolute base URL ending in `/`.
    Url(String),
    /// Files the user picked (`<input type=file webkitdirectory>`).
    Folder(PickedFolder),
}

impl Source {
    /// `base` may be relative to the page; a missing trailing `/` is added.
    pub fn url(base: &str) -> Result<Self> {
        Ok(Source::Url(base_url(base)?))
    }

    pub fn folder(files: &web_sys::FileList) -> Self {
        let files = (0..files.length()).filter_map(|i| files.get(i)).map(|file| (relative_path(&file), file)).collect();
        Source::Folder(PickedFolder { files })
    }

    pub fn describe(&self) -> String {
        match self {
            Source::Url(base) => base.clone(),
            Source::Folder(folder) => format!("a local folder ({} files)", folder.files.len()),
        }
    }

    /// Fails when the source cannot name one model (a picked folder holding none or several).
    pub fn check(&self) -> Result<()> {
        match self {
            Source::Url(_) => Ok(()),
            Source::Folder(folder) => folder.model_dir().map(|_| ()),
        }
    }
}

/// A model's base URL as its files' addresses start: absolute (`base` may be relative to the
/// page), ending in `/`.
pub fn base_url(base: &str) -> Result<String> {
    let mut base = js::absolute_url(base)?;
    if !base.ends_with('/') {
        base.push('/');
    }
    Ok(base)
}

/// A file's path within the picked folder (`demo/manifest.json`); its bare name when the browser
/// gives none (files picked without a folder).
fn relative_path(file: &web_sys::File) -> String {
    js_sys::Reflect::get(file, &"webkitRelativePath".into())
        .ok()
        .and_then(|path| path.as_string())
        .filter(|path| !path.is_empty())
        .unwrap_or_else(|| file.name())
}

/// Picked files by their path relative to the picked folder, so that two models in one folder
/// never mix (both have a `model-00000.safetensors`).
pub struct PickedFolder {
    files: HashMap<String, web_sys::File>,
}

impl PickedFolder {
    /// The folder (`demo/`, or `` for loose files) holding the one `manifest.json` picked.
    fn model_dir(&self) -> Result<&str> {
        let mut manifests: Vec<&str> = self
            .files
            .keys()
            .filter(|path| path.rsplit('/').next() == Some(MANIFEST_FILE))
            .map(|path| &path[..path.len() - MANIFEST_FILE.len()])
            .collect();
        manifests.sort_unstable();
        match manifests[..] {
            [dir] => Ok(dir),
            [] => {
                Err(Error::Input(format!("the picked folder has no {MANIFEST_FILE}: pick a converted model's folder")))
            }
            _ => Err(Error::Input(format!(
                "the picked folder holds {} models ({}): pick the folder of one of them",
                manifests.len(),
                manifests.iter().map(|dir| format!("{dir}{MANIFEST_FILE}")).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    fn get(&self, file: &str) -> Result<&web_sys::File> {
        let path = format!("{}{file}", self.model_dir()?);
        self.files.get(&path).ok_or_else(|| Error::Input(format!("{file} is not in the picked folder")))
    }
}

/// Whether verified files are being written to Cache Storage (they are read from it whenever it exists).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheState {
    #[default]
    On,
    /// No Cache Storage here (a local folder, an insecure origin, a private window that refuses it).
    Unavailable,
    /// The origin's storage quota ran out: loading goes on without writing to the cache.
    QuotaExceeded,
}

/// Why a file could not be opened.
pub enum OpenError {
    /// Worth another try: the network failed, or the host said it was busy (408, 429, 5xx).
    Transient(Error),
    /// The host answered a Range request with bytes that do not continue the shard at the asked
    /// offset (or cannot be shown to): the shard has to start over from byte 0.
    CannotResume(String),
    /// Trying again will not help (404, an HTML page where a model file should be, ...).
    Fatal(Error),
}

impl From<OpenError> for Error {
    fn from(error: OpenError) -> Self {
        match error {
            OpenError::Transient(e) | OpenError::Fatal(e) => e,
            OpenError::CannotResume(reason) => Error::Network(reason),
        }
    }
}

/// One file being read from the network (or a picked file).
pub struct Download {
    reader: ChunkReader,
    abort: Option<AbortController>,
    /// Bytes to drop first: the host sent the file from before the offset asked for.
    skip: u64,
}

impl Download {
    /// The next chunk, or `None` at the end; an error is the transport's (worth a resume).
    pub async fn next(&mut self) -> std::result::Result<Option<Vec<u8>>, String> {
        loop {
            let Some(mut chunk) = self.reader.next_within(STALL_MS).await? else {
                return Ok(None);
            };
            if self.skip >= chunk.len() as u64 {
                self.skip -= chunk.len() as u64;
                continue;
            }
            if self.skip > 0 {
                chunk.drain(..self.skip as usize);
                self.skip = 0;
            }
            return Ok(Some(chunk));
        }
    }

    /// Stops the transfer.
    pub fn abandon(self) {
        self.reader.cancel();
        if let Some(abort) = &self.abort {
            abort.abort();
        }
    }
}

/// Reads a model's files, from the cache when a copy is there.
pub struct Fetcher {
    pub source: Source,
    cache: Option<Cache>,
    pub cache_state: CacheState,
}

impl Fetcher {
    pub async fn new(source: Source) -> Self {
        let cache = match &source {
            Source::Url(_) => open_cache().await,
            Source::Folder(_) => None,
        };
        let cache_state = if cache.is_some() { CacheState::On } else { CacheState::Unavailable };
        Fetcher { source, cache, cache_state }
    }

    /// Stops writing to the cache for the rest of this load (the quota is too small); what is
    /// cached already is still read.
    pub fn stop_writing(&mut self, why: CacheState) {
        self.cache_state = why;
    }

    fn writable_cache(&self) -> Option<&Cache> {
        self.cache.as_ref().filter(|_| self.cache_state == CacheState::On)
    }

    fn url(&self, file: &str) -> String {
        match &self.source {
            Source::Url(base) => format!("{base}{file}"),
            Source::Folder(_) => file.to_string(),
        }
    }

    /// The cache key of a file version: its URL tagged with the content hash the manifest gives,
    /// so a re-uploaded model never matches a stale copy.
    pub fn cache_key(&self, file: &str, version: &str) -> String {
        let url = self.url(file);
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}rg-version={version}")
    }

    /// The key of the cached `manifest.json`: its URL, one copy per model, replaced by each load
    /// (the manifest names the versions of the other files).
    pub fn manifest_key(&self) -> String {
        self.url(MANIFEST_FILE)
    }

    /// The key of the cached segment of a file version that starts at byte `from`.
    pub fn segment_key(&self, file: &str, version: &str, from: u64) -> String {
        let key = self.cache_key(file, version);
        if from == 0 {
            key
        } else {
            format!("{key}&rg-from={from}")
        }
    }

    async fn cached_response(&self, key: &str) -> Option<Response> {
        let cache = self.cache.as_ref()?;
        let found = js::await_promise(cache.match_with_str(key)).await.ok()?;
        found.dyn_into().ok()
    }

    /// The cached copy under `key`, as a stream.
    pub async fn cached(&self, key: &str) -> Option<ChunkReader> {
        Some(ChunkReader::new(self.cached_response(key).await?.body()?))
    }

    /// The cached segments of a file version from byte 0 on, as far as they follow each other
    /// going by the sizes they were stored with (the bodies are not read). The entries are looked
    /// up all at once: one by one, the round trips alone take seconds for a 2B model.
    pub async fn cached_segments(&self, file: &str, version: &str, size: u64) -> Vec<CachedSegment> {
        let Some(cache) = &self.cache else { return Vec::new() };
        let Ok(keys) = js::await_promise(cache.keys()).await else { return Vec::new() };
        let first = self.segment_key(file, version, 0);
        let later = format!("{first}&rg-from=");
        let mut starts = HashMap::new();
        let lookups = Array::new();
        for request in Array::from(&keys).iter() {
            let request: Request = request.unchecked_into();
            let url = request.url();
            let start =
                if url == first { Some(0) } else { url.strip_prefix(&later).and_then(|from| from.parse().ok()) };
            if let Some(start) = start {
                starts.insert(lookups.length(), start);
                lookups.push(&cache.match_with_request(&request));
            }
        }
        let Ok(found) = js::await_promise(js_sys::Promise::all(&lookups)).await else { return Vec::new() };
        let mut by_start = HashMap::new();
        for (index, response) in Array::from(&found).iter().enumerate() {
            if let (Some(&start), Ok(response)) = (starts.get(&(index as u32)), response.dyn_into::<Response>()) {
                by_start.insert(start, response);
            }
        }
        let mut segments: Vec<CachedSegment> = Vec::new();
        let mut end = 0;
        while let Some(response) = by_start.remove(&end) {
            let Some(bytes) = stored_size(&response).filter(|&bytes| bytes > 0 && bytes <= size - end) else { break };
            let sha256 = header(&response, DIGEST_HEADER).and_then(|digest| parse_hex_digest(&digest));
            segments.push(CachedSegment { start: end, bytes, sha256, response });
            end += bytes;
        }
        segments
    }

    /// How many bytes of a file version the cache holds from byte 0 on.
    pub async fn cached_prefix_bytes(&self, file: &str, version: &str, size: u64) -> u64 {
        self.cached_segments(file, version, size).await.iter().map(|segment| segment.bytes).sum()
    }

    /// The whole of a shard from the cache as segments that can each be checked against its own
    /// digest with the browser's SHA-256, or `None` (then the shard is hashed in wasm as it
    /// streams). A shard's last segment is only stored once the whole shard passed its sha256
    /// ([`SegmentWriter`]), so segments that reach its end with their digests intact are the
    /// verified shard.
    pub async fn proven_segments(&self, file: &str, version: &str, size: u64) -> Option<Vec<CachedSegment>> {
        if !js::has_native_sha256() {
            return None;
        }
        let segments = self.cached_segments(file, version, size).await;
        let whole = segments.iter().map(|segment| segment.bytes).sum::<u64>() == size;
        (whole && segments.iter().all(|segment| segment.sha256.is_some())).then_some(segments)
    }

    /// Deletes every cached copy of `file`: all its versions and segments.
    pub async fn evict(&self, file: &str) {
        if self.cache.is_none() {
            return;
        }
        let prefix = self.cache_key(file, "");
        // A failed delete leaves an entry that fails its check again next time.
        let _ = delete_entries(|url| url.starts_with(&prefix)).await;
    }

    /// Stores `chunks` (`Uint8Array`s, `bytes` in all, with their sha256 where known) under
    /// `key`. A full quota stops all further writes for this load; any other failure only loses
    /// this entry.
    pub async fn put(&mut self, key: &str, chunks: &Array, bytes: u64, sha256: Option<[u8; 32]>) {
        let Some(cache) = self.writable_cache() else { return };
        let Ok(response) = blob_response(chunks, bytes, sha256) else { return };
        if let Err(e) = js::await_promise(cache.put_with_str(key, &response)).await {
            if js::exception_name(&e).as_deref() == Some("QuotaExceededError") {
                self.stop_writing(CacheState::QuotaExceeded);
            }
        }
    }

    /// Sends a GET for `file` (from byte `offset` when > 0) and checks what kind of answer it is.
    async fn request(&self, file: &str, offset: u64) -> std::result::Result<(Response, AbortController), OpenError> {
        let url = self.url(file);
        let browser = |e: wasm_bindgen::JsValue| OpenError::Fatal(Error::Browser(js::describe(&e)));
        let abort = AbortController::new().map_err(browser)?;
        let init = RequestInit::new();
        init.set_signal(Some(&abort.signal()));
        // Model hosts need neither: Hugging Face answers some referers with a 404 without CORS
        // headers, and a cookie sent along would only identify the visitor.
        init.set_referrer_policy(ReferrerPolicy::NoReferrer);
        init.set_credentials(RequestCredentials::Omit);
        let request = Request::new_with_str_and_init(&url, &init)
            .map_err(|e| OpenError::Fatal(Error::Network(format!("{url}: {}", js::describe(&e)))))?;
        if offset > 0 {
            request.headers().set("Range", &format!("bytes={offset}-")).map_err(browser)?;
        }
        let response = js::fetch(&request).await.map_err(OpenError::Transient)?;
        let status = response.status();
        let http_error = || Error::Network(format!("{url}: HTTP {status} {}", response.status_text()));
        match status {
            200 | 206 => {}
            408 | 429 | 500..=599 => return Err(OpenError::Transient(http_error())),
            416 if offset > 0 => return Err(OpenError::CannotResume(format!("{url}: HTTP 416 for bytes {offset}-"))),
            _ => return Err(OpenError::Fatal(http_error())),
        }
        // A host that serves its index page for missing paths (a single-page app, a CDN's error
        // page) answers 200 with HTML: no model file is HTML.
        let content_type = header(&response, "Content-Type").unwrap_or_default();
        if content_type.trim_start().to_ascii_lowercase().starts_with("text/html") {
            abort.abort();
            return Err(OpenError::Fatal(Error::Network(format!(
                "{url}: the host answered with an HTML page, not the model file (is the URL a converted model folder?)"
            ))));
        }
        Ok((response, abort))
    }

    /// Opens shard `file` (`size` bytes) from byte `offset`.
    pub async fn download(&self, file: &str, offset: u64, size: u64) -> std::result::Result<Download, OpenError> {
        let url = self.url(file);
        let (response, abort) = match &self.source {
            Source::Folder(folder) => {
                let picked = folder.get(file).map_err(OpenError::Fatal)?;
                let blob = picked
                    .slice_with_f64(offset as f64)
                    .map_err(|e| OpenError::Fatal(Error::Browser(format!("{file}: {}", js::describe(&e)))))?;
                return Ok(Download { reader: ChunkReader::new(blob.stream()), abort: None, skip: 0 });
            }
            Source::Url(_) => self.request(file, offset).await?,
        };
        let skip = match response.status() {
            // The host ignored the Range header and sends the whole file.
            200 => offset,
            _ => match content_range_start(&response) {
                Some(start) if start <= offset => offset - start,
                Some(start) => {
                    abort.abort();
                    return Err(OpenError::CannotResume(format!(
                        "{url}: asked for bytes {offset}- and got bytes {start}-"
                    )));
                }
                // Content-Range is not a CORS-safelisted header: a CDN that does not expose it
                // hides it from us. Content-Length is safelisted; when it is there it must be
                // exactly what is left, and when it is not the parser counts the bytes.
                None => match header(&response, "Content-Length").and_then(|length| length.parse::<u64>().ok()) {
                    Some(length) if length != size - offset => {
                        abort.abort();
                        return Err(OpenError::CannotResume(format!(
                            "{url}: asked for the {} bytes from {offset} on and got {length}",
                            size - offset
                        )));
                    }
                    _ => 0,
                },
            },
        };
        let body =
            response.body().ok_or_else(|| OpenError::Transient(Error::Network(format!("{url}: empty response"))))?;
        Ok(Download { reader: ChunkReader::new(body), abort: Some(abort), skip })
    }

    /// A small file read whole from the source (never from the cache), failing as soon as it
    /// turns out longer than `max_bytes`: a hostile host must not make the page allocate without bound.
    pub async fn small_file(&self, file: &str, max_bytes: u64) -> Result<ChunkQueue> {
        let too_long = || Error::Network(format!("{}: longer than the {max_bytes} bytes allowed", self.url(file)));
        let (reader, abort) = match &self.source {
            Source::Folder(folder) => {
                let picked = folder.get(file)?;
                if picked.size() > max_bytes as f64 {
                    return Err(too_long());
                }
                (ChunkReader::new(picked.stream()), None)
            }
            Source::Url(_) => {
                let (response, abort) = self.request(file, 0).await.map_err(Error::from)?;
                let announced = header(&response, "Content-Length").and_then(|length| length.parse::<u64>().ok());
                if announced.is_some_and(|length| length > max_bytes) {
                    abort.abort();
                    return Err(too_long());
                }
                let body =
                    response.body().ok_or_else(|| Error::Network(format!("{}: empty response", self.url(file))))?;
                (ChunkReader::new(body), Some(abort))
            }
        };
        let download = Download { reader, abort, skip: 0 };
        read_capped(download, max_bytes).await.map_err(|failure| match failure {
            ReadFailure::TooLong => too_long(),
            ReadFailure::Transport(reason) => Error::Network(format!("{}: {reason}", self.url(file))),
        })
    }

    /// [`Fetcher::small_file`] as one buffer.
    pub async fn whole_file(&self, file: &str, max_bytes: u64) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut self.small_file(file, max_bytes).await?, &mut bytes)
            .map_err(|e| Error::Browser(format!("{file}: {e}")))?;
        Ok(bytes)
    }

    /// The cached entry under `key` read whole, if there and no longer than `max_bytes`.
    pub async fn cached_small_file(&self, key: &str, max_bytes: u64) -> Option<ChunkQueue> {
        let reader = self.cached(key).await?;
        read_capped(Download { reader, abort: None, skip: 0 }, max_bytes).await.ok()
    }
}

/// Collects the bytes a shard download delivers (after the parser accepted them) and puts them
/// in the cache a segment at a time, each under the key of the offset it starts at and with its
/// sha256. The segment that ends the shard waits for the caller's last [`SegmentWriter::flush`],
/// made once the whole shard has passed its sha256: a cached copy that reaches the shard's end is
/// a verified one ([`Fetcher::proven_segments`]).
pub struct SegmentWriter {
    file: String,
    version: String,
    /// The file's size.
    size: u64,
    /// Where the segment being collected starts in the file.
    start: u64,
    chunks: Array,
    bytes: usize,
}

impl SegmentWriter {
    pub fn new(file: &str, version: &str, size: u64, start: u64) -> Self {
        SegmentWriter {
            file: file.to_string(),
            version: version.to_string(),
            size,
            start,
            chunks: Array::new(),
            bytes: 0,
        }
    }

    pub async fn push(&mut self, fetcher: &mut Fetcher, chunk: &[u8]) {
        if fetcher.writable_cache().is_none() {
            return;
        }
        self.chunks.push(&Uint8Array::from(chunk));
        self.bytes += chunk.len();
        if self.bytes >= SEGMENT_BYTES && self.start + (self.bytes as u64) < self.size {
            self.flush(fetcher).await;
        }
    }

    /// Puts what was collected into the cache, so a later load can resume after it.
    pub async fn flush(&mut self, fetcher: &mut Fetcher) {
        if self.bytes == 0 {
            return;
        }
        let key = fetcher.segment_key(&self.file, &self.version, self.start);
        // One buffer for the digest, which is also what is stored.
        let segment = Uint8Array::new_with_length(self.bytes as u32);
        let mut at = 0;
        for chunk in self.chunks.iter() {
            let chunk: Uint8Array = chunk.unchecked_into();
            segment.set(&chunk, at);
            at += chunk.length();
        }
        let sha256 = match js::start_sha256(&segment) {
            Some(digest) => digest.await,
            None => None,
        };
        fetcher.put(&key, &Array::of1(&segment), self.bytes as u64, sha256).await;
        self.start += self.bytes as u64;
        self.chunks = Array::new();
        self.bytes = 0;
    }
}

/// A file held as the chunks it arrived in; reading it frees each chunk once it is consumed.
#[derive(Default)]
pub struct ChunkQueue {
    chunks: std::collections::VecDeque<Vec<u8>>,
    /// Read position within the front chunk.
    offset: usize,
}

impl ChunkQueue {
    fn push(&mut self, chunk: Vec<u8>) {
        self.chunks.push_back(chunk);
    }

    /// Size in bytes (of an unread queue).
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.len() as u64).sum()
    }

    /// Lower-case hex sha256 of the contents (of an unread queue).
    pub fn sha256(&self) -> String {
        let mut hasher = Sha256::new();
        self.chunks.iter().for_each(|chunk| hasher.update(chunk));
        hex(&hasher.finalize())
    }

    /// The contents as `Uint8Array`s, for [`Fetcher::put`].
    pub fn to_js(&self) -> Array {
        self.chunks.iter().map(|chunk| Uint8Array::from(&chunk[..])).collect()
    }
}

impl std::io::Read for ChunkQueue {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while let Some(front) = self.chunks.front() {
            if self.offset < front.len() {
                let n = out.len().min(front.len() - self.offset);
                out[..n].copy_from_slice(&front[self.offset..self.offset + n]);
                self.offset += n;
                return Ok(n);
            }
            self.chunks.pop_front();
            self.offset = 0;
        }
        Ok(0)
    }
}

enum ReadFailure {
    TooLong,
    Transport(String),
}

async fn read_capped(mut download: Download, max_bytes: u64) -> std::result::Result<ChunkQueue, ReadFailure> {
    let mut chunks = ChunkQueue::default();
    let mut bytes = 0u64;
    loop {
        match download.next().await {
            Ok(Some(chunk)) => {
                bytes += chunk.len() as u64;
                if bytes > max_bytes {
                    download.abandon();
                    return Err(ReadFailure::TooLong);
                }
                chunks.push(chunk);
            }
            Ok(None) => return Ok(chunks),
            Err(reason) => {
                download.abandon();
                return Err(ReadFailure::Transport(reason));
            }
        }
    }
}

fn header(response: &Response, name: &str) -> Option<String> {
    response.headers().get(name).ok().flatten()
}

/// The first byte of a 206's `Content-Range: bytes START-END/TOTAL`, when the host lets us read it.
fn content_range_start(response: &Response) -> Option<u64> {
    header(response, "Content-Range")?.strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

/// A cached segment of a file: where it starts, its size and sha256 as stored, and its entry.
pub struct CachedSegment {
    pub start: u64,
    pub bytes: u64,
    pub sha256: Option<[u8; 32]>,
    pub response: Response,
}

impl CachedSegment {
    /// Starts reading the whole body (at once: a caller keeps several reads in flight, which
    /// Cache Storage serves faster than one after another) and returns what awaits it. Read as a
    /// `Blob`, then its bytes: faster in Chromium than the response's `arrayBuffer()`.
    pub fn read(&self) -> impl std::future::Future<Output = std::result::Result<Uint8Array, String>> {
        let blob = self.response.blob();
        async move {
            let blob: web_sys::Blob = js::await_promise(blob.map_err(|e| js::describe(&e))?)
                .await
                .map_err(|e| js::describe(&e))?
                .unchecked_into();
            let body = js::await_promise(blob.array_buffer()).await.map_err(|e| js::describe(&e))?;
            Ok(Uint8Array::new(&body))
        }
    }
}

fn parse_hex_digest(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(text.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(digest)
}

/// The size an entry was stored with.
fn stored_size(response: &Response) -> Option<u64> {
    header(response, SIZE_HEADER)?.parse().ok()
}

/// A cache entry holding `chunks`, tagged with its size so it can be counted without reading it,
/// and with its sha256 where known.
fn blob_response(chunks: &Array, bytes: u64, sha256: Option<[u8; 32]>) -> Result<Response> {
    let browser = |e: wasm_bindgen::JsValue| Error::Browser(js::describe(&e));
    let blob = web_sys::Blob::new_with_u8_array_sequence(chunks).map_err(browser)?;
    let headers = web_sys::Headers::new().map_err(browser)?;
    headers.set(SIZE_HEADER, &bytes.to_string()).map_err(browser)?;
    if let Some(sha256) = sha256 {
        headers.set(DIGEST_HEADER, &hex(&sha256)).map_err(browser)?;
    }
    let init = ResponseInit::new();
    init.set_status(200);
    init.set_headers(&headers);
    Response::new_with_opt_blob_and_init(Some(&blob), &init).map_err(browser)
}

async fn open_cache() -> Option<Cache> {
    let opened = js::await_promise(js::caches()?.open(CACHE_NAME)).await.ok()?;
    opened.dyn_into().ok()
}

/// Every entry of the model cache: its URL and the size it was stored with (reading the bodies
/// to measure them would pull gigabytes off disk).
pub async fn cache_entries() -> Result<Vec<(String, u64)>> {
    let Some(cache) = open_cache().await else { return Ok(Vec::new()) };
    let keys = js::await_promise(cache.keys()).await.map_err(|e| Error::Browser(js::describe(&e)))?;
    let mut entries = Vec::new();
    for request in Array::from(&keys).iter() {
        let request: Request = request.unchecked_into();
        let Ok(found) = js::await_promise(cache.match_with_request(&request)).await else { continue };
        let Ok(response) = found.dyn_into::<Response>() else { continue };
        entries.push((request.url(), stored_size(&response).unwrap_or(0)));
    }
    Ok(entries)
}

/// Bytes held by the model cache.
pub async fn cached_bytes() -> Result<u64> {
    Ok(cache_entries().await?.iter().map(|(_, bytes)| bytes).sum())
}

/// Deletes the cache entries whose URL `doomed` picks.
pub async fn delete_entries(doomed: impl Fn(&str) -> bool) -> Result<()> {
    let Some(cache) = open_cache().await else { return Ok(()) };
    let keys = js::await_promise(cache.keys()).await.map_err(|e| Error::Browser(js::describe(&e)))?;
    for request in Array::from(&keys).iter() {
        let request: Request = request.unchecked_into();
        if doomed(&request.url()) {
            js::await_promise(cache.delete_with_request(&request))
                .await
                .map_err(|e| Error::Browser(js::describe(&e)))?;
        }
    }
    Ok(())
}

/// Deletes every cached model file.
pub async fn clear_cache() -> Result<()> {
    let Some(caches) = js::caches() else { return Ok(()) };
    js::await_promise(caches.delete(CACHE_NAME)).await.map_err(|e| Error::Browser(js::describe(&e)))?;
    Ok(())
}

/// The source's `manifest.json`, read with a size cap and checked, and the sha256 of its bytes.
pub async fn read_manifest(fetcher: &Fetcher) -> Result<(Manifest, [u8; 32])> {
    parse_manifest(&fetcher.whole_file(MANIFEST_FILE, MAX_MANIFEST_BYTES).await?)
}

/// A `manifest.json`'s bytes checked and parsed, and their sha256.
pub fn parse_manifest(bytes: &[u8]) -> Result<(Manifest, [u8; 32])> {
    let text = std::str::from_utf8(bytes).map_err(|_| Error::Weights(format!("{MANIFEST_FILE} is not UTF-8 text")))?;
    if text.trim_start().starts_with('<') {
        return Err(Error::Weights(format!(
            "{MANIFEST_FILE} is an HTML page, not a manifest (is the URL a converted model folder?)"
        )));
    }
    Ok((Manifest::from_json(text)?, Sha256::digest(bytes).into()))
}
