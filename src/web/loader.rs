//! Loading a model in the browser: its files through [`ModelFiles`] (manifest, tokenizer, then
//! every shard streamed chunk by chunk into the engine's GPU buffers: the wasm heap only ever
//! holds one network chunk of weights), then the tokenizer parsed.

use super::download::Source;
use super::js;
use super::model_files::ModelFiles;
use super::progress::{LoadProgress, Stage};
use crate::chat::GemmaTokenizer;
use crate::gpu::engine::Engine;
use crate::gpu::weights::GpuWeights;
use crate::gpu::GpuContext;
use crate::weights::format::{Manifest, TOKENIZER_FILE};
use crate::{Error, Result};

/// A model ready to run.
pub struct LoadedModel {
    pub engine: Engine,
    pub tokenizer: GemmaTokenizer,
    pub manifest: Manifest,
    /// The sha256 of `manifest.json` as fetched (it holds every shard's sha256): the model's
    /// identity, the same for every build of this engine that loads it.
    pub identity: [u8; 32],
    pub progress: LoadProgress,
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

/// Loads the model at `source` onto `ctx`'s device, reporting progress as it goes. On failure the
/// device is destroyed, which frees every buffer made on it at once: a failed load must not hold
/// gigabytes of GPU memory until garbage collection, next to the copy "Try again" makes.
pub async fn load(ctx: GpuContext, source: Source, on_progress: &mut dyn FnMut(&LoadProgress)) -> Result<LoadedModel> {
    let device = ctx.device.clone();
    let loaded = load_onto(ctx, source, on_progress).await;
    if loaded.is_err() {
        device.destroy();
    }
    loaded
}

async fn load_onto(ctx: GpuContext, source: Source, on_progress: &mut dyn FnMut(&LoadProgress)) -> Result<LoadedModel> {
    let mut files = ModelFiles::open(source, on_progress).await?;
    // Before the tokenizer and the weights are fetched: a model this GPU cannot hold is refused now.
    GpuWeights::layout(&files.manifest, &ctx.device.limits())?;
    let json = files.tokenizer().await?;
    // Parsing blocks this thread for a moment: let the page paint its progress first.
    js::sleep_ms(0).await;
    let tokenizer = match parse_tokenizer(json, &files.manifest) {
        Ok(tokenizer) => tokenizer,
        Err(e) => {
            files.fetcher.evict(TOKENIZER_FILE).await;
            return Err(e);
        }
    };
    let engine = Engine::new(ctx, files.manifest.clone())?;
    files.shards(|| engine.weight_sink(), |_| engine.context().check()).await?;
    files.stage(Stage::Ready);
    let progress = files.progress().clone();
    Ok(LoadedModel { engine, tokenizer, manifest: files.manifest, identity: files.identity, progress })
}

fn parse_tokenizer(json: super::download::ChunkQueue, manifest: &Manifest) -> Result<GemmaTokenizer> {
    // serde_json reads byte by byte from a reader: buffer it.
    let tokenizer = GemmaTokenizer::from_reader(std::io::BufReader::with_capacity(1 << 16, json))?;
    if tokenizer.vocab_size() > manifest.config.vocab_size {
        return Err(Error::Tokenizer(format!(
            "{TOKENIZER_FILE} has {} tokens but the model only {}",
            tokenizer.vocab_size(),
            manifest.config.vocab_size
        )));
    }
    Ok(tokenizer)
}
