//! Where model files come from: a base URL (any static host or CDN with CORS) or a folder the
//! user picked. Network bodies are read as streams; on the way they are teed into Cache Storage,
//! so a reload reads from disk, and a dropped connection is resumed with an HTTP Range request
//! from the last byte received instead of starting over.

use std::collections::HashMap;

use js_sys::{Array, Promise};
use wasm_bindgen::JsCast;
use web_sys::{AbortController, Cache, Request, RequestInit, Response, ResponseInit};

use super::js::{self, ChunkReader};
use crate::{Error, Result};

/// Cache Storage bucket for verified model files; bump the suffix if the entry layout changes.
pub const CACHE_NAME: &str = "recurrentgemma-models-v1";

/// Header on each cached entry giving its body's size.
const SIZE_HEADER: &str = "x-rg-bytes";

/// Where a model's files are read from.
pub enum Source {
    /// Absolute base URL ending in `/`.
    Url(String),
    /// Files the user picked (`<input type=file webkitdirectory>`), by file name.
    Folder(HashMap<String, web_sys::File>),
}

impl Source {
    /// `base` may be relative to the page; a missing trailing `/` is added.
    pub fn url(base: &str) -> Result<Self> {
        let mut base = js::absolute_url(base)?;
        if !base.ends_with('/') {
            base.push('/');
        }
        Ok(Source::Url(base))
    }

    pub fn folder(files: &web_sys::FileList) -> Self {
        let files = (0..files.length()).filter_map(|i| files.get(i)).map(|file| (file.name(), file)).collect();
        Source::Folder(files)
    }

    pub fn describe(&self) -> String {
        match self {
            Source::Url(base) => base.clone(),
            Source::Folder(files) => format!("a local folder ({} files)", files.len()),
        }
    }
}

/// Whether verified files are being kept in Cache Storage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CacheState {
    #[default]
    On,
    /// No Cache Storage here (a local folder, an insecure origin, a private window that refuses it).
    Unavailable,
    /// The origin's storage quota ran out: loading goes on without caching.
    QuotaExceeded,
}

/// One file being read from the network (or a picked file), possibly teed into the cache.
pub struct Download {
    reader: ChunkReader,
    abort: Option<AbortController>,
    /// `cache.put` of the teed copy, settling once the whole body has been written.
    store: Option<Promise>,
    /// Bytes to drop first: a server that ignored our Range header sent the file from byte 0.
    skip: u64,
}

impl Download {
    /// The next chunk, or `None` at the end; an error is the transport's (worth a retry).
    pub async fn next(&mut self) -> std::result::Result<Option<Vec<u8>>, String> {
        loop {
            let Some(mut chunk) = self.reader.next().await? else {
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

    /// Stops the transfer; whatever the cache received is not kept.
    pub async fn abandon(self) {
        self.reader.cancel();
        if let Some(abort) = &self.abort {
            abort.abort();
        }
        if let Some(store) = self.store {
            let _ = js::await_promise(store).await;
        }
    }

    /// Waits for the cached copy to be written. `Ok(false)` means it was not (there was none, or
    /// a resumed transfer could not be teed); `Err` is the quota running out.
    pub async fn stored(self) -> std::result::Result<bool, CacheState> {
        let Some(store) = self.store else { return Ok(false) };
        match js::await_promise(store).await {
            Ok(_) => Ok(true),
            Err(e) if js::exception_name(&e).as_deref() == Some("QuotaExceededError") => Err(CacheState::QuotaExceeded),
            Err(_) => Ok(false),
        }
    }
}

/// Reads a model's files, from the cache when a verified copy is there.
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

    /// Stops caching for the rest of this load, e.g. when the files will not fit in the quota.
    pub fn stop_caching(&mut self, why: CacheState) {
        self.cache = None;
        self.cache_state = why;
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

    /// The cached copy under `key`, as a stream.
    pub async fn cached(&self, key: &str) -> Option<ChunkReader> {
        let cache = self.cache.as_ref()?;
        let found = js::await_promise(cache.match_with_str(key)).await.ok()?;
        let response: Response = found.dyn_into().ok()?;
        Some(ChunkReader::new(response.body()?))
    }

    pub async fn evict(&self, key: &str) {
        if let Some(cache) = &self.cache {
            let _ = js::await_promise(cache.delete_with_str(key)).await;
        }
    }

    /// Opens `file` from byte `offset`; from byte 0 with a `cache_key` the body is also teed
    /// into the cache under that key.
    pub async fn download(&self, file: &str, offset: u64, cache_key: Option<&str>) -> Result<Download> {
        match &self.source {
            Source::Folder(files) => {
                let picked =
                    files.get(file).ok_or_else(|| Error::Weights(format!("{file} is not in the picked folder")))?;
                let blob = picked
                    .slice_with_f64(offset as f64)
                    .map_err(|e| Error::Browser(format!("{file}: {}", js::describe(&e))))?;
                Ok(Download { reader: ChunkReader::new(blob.stream()), abort: None, store: None, skip: 0 })
            }
            Source::Url(_) => self.download_url(file, offset, cache_key).await,
        }
    }

    async fn download_url(&self, file: &str, offset: u64, cache_key: Option<&str>) -> Result<Download> {
        let url = self.url(file);
        let abort = AbortController::new().map_err(|e| Error::Browser(js::describe(&e)))?;
        let init = RequestInit::new();
        init.set_signal(Some(&abort.signal()));
        let request = Request::new_with_str_and_init(&url, &init)
            .map_err(|e| Error::Network(format!("{url}: {}", js::describe(&e))))?;
        if offset > 0 {
            request
                .headers()
                .set("Range", &format!("bytes={offset}-"))
                .map_err(|e| Error::Browser(js::describe(&e)))?;
        }
        let response = js::fetch(&request).await?;
        let status = response.status();
        let skip = match (offset, status) {
            (0, 200) => 0,
            (_, 206) => {
                let range = response.headers().get("Content-Range").ok().flatten().unwrap_or_default();
                if !range.starts_with(&format!("bytes {offset}-")) {
                    return Err(Error::Network(format!("{url}: asked for bytes {offset}- and got '{range}'")));
                }
                0
            }
            (_, 200) => offset,
            _ => return Err(Error::Network(format!("{url}: HTTP {status} {}", response.status_text()))),
        };
        let body = response.body().ok_or_else(|| Error::Network(format!("{url}: empty response")))?;
        let (body, store) = match (&self.cache, cache_key, offset) {
            (Some(cache), Some(key), 0) => {
                let branches: Array = body.tee();
                let copy = ResponseInit::new();
                copy.set_status(200);
                let headers = web_sys::Headers::new().map_err(|e| Error::Browser(js::describe(&e)))?;
                let length = response.headers().get("Content-Length").ok().flatten().unwrap_or_default();
                headers.set(SIZE_HEADER, &length).map_err(|e| Error::Browser(js::describe(&e)))?;
                copy.set_headers(&headers);
                let copy =
                    Response::new_with_opt_readable_stream_and_init(Some(&branches.get(1).unchecked_into()), &copy)
                        .map_err(|e| Error::Browser(js::describe(&e)))?;
                (branches.get(0).unchecked_into(), Some(cache.put_with_str(key, &copy)))
            }
            _ => (body, None),
        };
        Ok(Download { reader: ChunkReader::new(body), abort: Some(abort), store, skip })
    }

    /// A small file (manifest, tokenizer) read whole, from the cache under `cache_key` if given
    /// and there, else from the source (and then cached).
    pub async fn whole_file(&self, file: &str, cache_key: Option<&str>) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut self.file_chunks(file, cache_key).await?, &mut bytes)
            .map_err(|e| Error::Browser(format!("{file}: {e}")))?;
        Ok(bytes)
    }

    /// [`Fetcher::whole_file`] as the chunks it arrived in: no copy into one buffer, which
    /// [`ChunkQueue`] can then hand to a parser and free as it goes.
    pub async fn file_chunks(&self, file: &str, cache_key: Option<&str>) -> Result<ChunkQueue> {
        if let Some(key) = cache_key {
            if let Some(reader) = self.cached(key).await {
                if let Ok(chunks) = read_all(reader).await {
                    return Ok(chunks);
                }
                self.evict(key).await;
            }
        }
        let mut download = self.download(file, 0, cache_key).await?;
        let mut chunks = ChunkQueue::default();
        loop {
            match download.next().await {
                Ok(Some(chunk)) => chunks.push(chunk),
                Ok(None) => break,
                Err(reason) => {
                    download.abandon().await;
                    return Err(Error::Network(format!("{}: {reason}", self.url(file))));
                }
            }
        }
        let _ = download.stored().await;
        Ok(chunks)
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

async fn read_all(reader: ChunkReader) -> std::result::Result<ChunkQueue, String> {
    let mut chunks = ChunkQueue::default();
    while let Some(chunk) = reader.next().await? {
        chunks.push(chunk);
    }
    Ok(chunks)
}

async fn open_cache() -> Option<Cache> {
    let opened = js::await_promise(js::caches()?.open(CACHE_NAME)).await.ok()?;
    opened.dyn_into().ok()
}

/// Bytes held by the model cache: the sum of the sizes its entries were stored with (reading
/// the bodies to measure them would pull gigabytes off disk).
pub async fn cached_bytes() -> Result<u64> {
    let Some(cache) = open_cache().await else { return Ok(0) };
    let keys = js::await_promise(cache.keys()).await.map_err(|e| Error::Browser(js::describe(&e)))?;
    let mut total = 0u64;
    for request in Array::from(&keys).iter() {
        let request: Request = request.unchecked_into();
        let Ok(found) = js::await_promise(cache.match_with_request(&request)).await else { continue };
        let Ok(response) = found.dyn_into::<Response>() else { continue };
        let size = response.headers().get(SIZE_HEADER).ok().flatten().and_then(|s| s.parse::<u64>().ok());
        total += size.unwrap_or(0);
    }
    Ok(total)
}

/// Deletes every cached model file.
pub async fn clear_cache() -> Result<()> {
    let Some(caches) = js::caches() else { return Ok(()) };
    js::await_promise(caches.delete(CACHE_NAME)).await.map_err(|e| Error::Browser(js::describe(&e)))?;
    Ok(())
}
