//! The models kept in this origin's Cache Storage, by source: which are there and whole, how
//! much each takes, deleting one, and downloading one for later without a GPU or an engine
//! (WebLLM's `hasModelInCache`, `deleteModelAllInfoInCache`, `prefetchModel`, plus a listing).
//!
//! A model's entries are its files' URLs (`{base}{file}?rg-version=…`) and its manifest's
//! (`{base}manifest.json`), so its base URL is its name here. Whether a model is whole is read
//! from its cached manifest: every file it names, at the version it names, cached to the end.

use std::collections::BTreeMap;

use serde::Serialize;

use super::download::{self, parse_manifest, CacheState, Fetcher, Source};
use super::model_files::ModelFiles;
use super::progress::{LoadProgress, Stage};
use crate::weights::format::{MAX_MANIFEST_BYTES, TOKENIZER_FILE};
use crate::weights::stream::Discard;
use crate::{Error, Result};

/// One model in the cache, as `listCachedModels()` gives it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedModel {
    /// The model's base URL, ending in `/`.
    pub source: String,
    /// Bytes its entries take in the cache (every version and partial download kept).
    pub bytes: u64,
    /// Bytes the model's files take in all, from its cached manifest (none without one).
    pub total_bytes: Option<u64>,
    /// Whether every file the cached manifest names is cached to its end: a load needs the
    /// network only for the manifest.
    pub complete: bool,
}

/// The base URL (`https://host/model/`) a cache entry belongs to.
fn base_of(url: &str) -> &str {
    let path = url.split('?').next().unwrap_or(url);
    &path[..path.rfind('/').map_or(0, |slash| slash + 1)]
}

/// Every model with entries in the cache, by source.
pub async fn list_cached_models() -> Result<Vec<CachedModel>> {
    let mut bytes: BTreeMap<String, u64> = BTreeMap::new();
    for (url, size) in download::cache_entries().await? {
        *bytes.entry(base_of(&url).to_string()).or_default() += size;
    }
    let mut models = Vec::with_capacity(bytes.len());
    for (source, bytes) in bytes {
        let (total_bytes, complete) = completeness(&source).await;
        models.push(CachedModel { source, bytes, total_bytes, complete });
    }
    Ok(models)
}

/// The model at `source` as the cache holds it, if it holds any of it.
pub async fn cached_model(source: &str) -> Result<Option<CachedModel>> {
    let base = download::base_url(source)?;
    let sizes: Vec<u64> = download::cache_entries()
        .await?
        .into_iter()
        .filter(|(url, _)| base_of(url) == base)
        .map(|(_, size)| size)
        .collect();
    if sizes.is_empty() {
        return Ok(None);
    }
    let (total_bytes, complete) = completeness(&base).await;
    Ok(Some(CachedModel { source: base, bytes: sizes.iter().sum(), total_bytes, complete }))
}

/// Whether the model at `source` is cached whole. Reads only the cache.
pub async fn has_model_in_cache(source: &str) -> Result<bool> {
    let base = download::base_url(source)?;
    Ok(completeness(&base).await.1)
}

/// Deletes every entry of the model at `source`: all its files' versions, partial downloads and
/// its manifest. Models in folders under it are not its entries and stay.
pub async fn delete_model(source: &str) -> Result<()> {
    let base = download::base_url(source)?;
    download::delete_entries(|url| base_of(url) == base).await
}

/// The bytes the cached manifest of the model at `base` names, and whether they are all cached.
async fn completeness(base: &str) -> (Option<u64>, bool) {
    let fetcher = Fetcher::new(Source::Url(base.to_string())).await;
    let Some(mut json) = fetcher.cached_small_file(&fetcher.manifest_key(), MAX_MANIFEST_BYTES).await else {
        return (None, false);
    };
    let mut bytes = Vec::new();
    let Ok((manifest, _)) = std::io::Read::read_to_end(&mut json, &mut bytes)
        .map_err(|e| Error::Browser(e.to_string()))
        .and_then(|_| parse_manifest(&bytes))
    else {
        return (None, false);
    };
    let mut files: Vec<(&str, &str, u64)> =
        manifest.shards.iter().map(|shard| (shard.file.as_str(), shard.sha256.as_str(), shard.bytes)).collect();
    let tokenizer = manifest.tokenizer.as_ref();
    files.extend(tokenizer.map(|digest| (TOKENIZER_FILE, digest.sha256.as_str(), digest.bytes)));
    let total = files.iter().map(|(_, _, bytes)| bytes).sum();
    let mut complete = tokenizer.is_some();
    for (file, version, size) in files {
        complete &= fetcher.cached_prefix_bytes(file, version, size).await == size;
    }
    (Some(total), complete)
}

/// Downloads the model at `source` into the cache, every file checked as a load checks it, and
/// uploads nothing: a later load reads it all from the cache. An interrupted prefetch resumes
/// where it stopped, as a load does. Whether the browser keeps the cache under pressure is the
/// caller's to ask (`navigator.storage.persist()`).
pub async fn prefetch_model(source: &str, on_progress: &mut dyn FnMut(&LoadProgress)) -> Result<CachedModel> {
    let mut files = ModelFiles::open(Source::url(source)?, on_progress).await?;
    cache_kept(&files.fetcher.cache_state)?;
    files.tokenizer().await?;
    files.shards(|| Discard, cache_kept).await?;
    files.stage(Stage::Ready);
    cached_model(source).await?.ok_or_else(|| Error::Browser(format!("{source}: the cache dropped the model")))
}

/// Fails when files are no longer written to the cache: a prefetch would be for nothing.
fn cache_kept(state: &CacheState) -> Result<()> {
    match state {
        CacheState::On => Ok(()),
        CacheState::Unavailable => Err(Error::Browser(
            "this page has no Cache Storage to keep the model in (an insecure origin, or a private window that \
             refuses it)"
                .into(),
        )),
        CacheState::QuotaExceeded => Err(Error::Browser(
            "the model does not fit in what this site may store (navigator.storage.estimate()): delete a cached \
             model or free disk space"
                .into(),
        )),
    }
}
