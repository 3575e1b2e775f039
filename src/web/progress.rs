//! Where a model load stands: one type for the loader that reports it, the package that hands it
//! to `onProgress`, and the page that reads it back from the package's worker.

use serde::{Deserialize, Serialize};

use super::download::CacheState;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    #[default]
    Manifest,
    Tokenizer,
    Weights,
    Ready,
}

/// Where a load stands, for a progress bar: the package's `LoadProgress` object, field for field
/// (`index.d.ts`), which the page reads back from its worker.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
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

/// What `onProgress` receives: the progress and the figures derived from it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressReport<'a> {
    #[serde(flatten)]
    pub progress: &'a LoadProgress,
    /// Whether every byte so far came from Cache Storage.
    pub from_cache: bool,
    pub bytes_per_second: f64,
    pub eta_seconds: Option<f64>,
}

impl<'a> From<&'a LoadProgress> for ProgressReport<'a> {
    fn from(progress: &'a LoadProgress) -> Self {
        ProgressReport {
            progress,
            from_cache: progress.bytes_done > 0 && progress.bytes_from_cache == progress.bytes_done,
            bytes_per_second: progress.bytes_per_second(),
            eta_seconds: progress.eta_seconds(),
        }
    }
}
