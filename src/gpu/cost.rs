//! What a dispatch costs a real GPU, counted from its kernel's constants rather than timed: each
//! op constructor in [`super::ops`] fills a [`Cost`], and [`PlanCost`] sums a command list's
//! for `rg bench --plan-only`. On a GPU a matrix–vector kernel's time follows the serial trips
//! to memory each thread makes and how many loads it keeps in flight per trip, not its bytes
//! (`../shared/notes/decode-kernels.md`, §1–3); lavapipe and SwiftShader cannot show that, these
//! counts can.

use serde::Serialize;

use super::kernels::{GemvShape, MatrixRows, SHORT_ROWS, THREADS, TILE_K, TILE_TOKENS, TOKEN_TILE};
use super::matrix::MatrixFormat;
use crate::chat::SamplingParams;

/// Bytes a dispatch reads over a chunk of `n` tokens: some once per token, some once per tile of
/// `tile` tokens that share one read of them.
#[derive(Clone, Copy, Debug)]
pub struct Bytes {
    pub per_token: u64,
    pub per_tile: u64,
    pub tile: u32,
}

impl Default for Bytes {
    fn default() -> Self {
        Bytes::per_token(0)
    }
}

impl Bytes {
    pub fn per_token(bytes: u64) -> Self {
        Bytes { per_token: bytes, per_tile: 0, tile: 1 }
    }

    pub fn per_tile(bytes: u64, tile: u32) -> Self {
        Bytes { per_token: 0, per_tile: bytes, tile }
    }

    pub fn over(self, n: u32) -> u64 {
        self.per_token * n as u64 + self.per_tile * n.div_ceil(self.tile) as u64
    }
}

/// How the sampler's single workgroup passes over the vocabulary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VocabPasses {
    #[default]
    None,
    /// `sample.wgsl`: as many passes as [`sampler_passes`] counts for the sampling settings.
    Sampler,
}

/// One dispatch's cost, per workgroup and per thread, from its kernel's constants.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cost {
    /// Threads per workgroup.
    pub threads: u32,
    /// Bytes of weights read, which `Plan::weight_bytes_read` and the benchmarks report.
    pub weights: Bytes,
    /// Useful bytes of weights one load of one thread brings (int4 uses half of the word it loads).
    pub weight_load_bytes: u32,
    /// Weight loads one thread can have in flight: those issued before the first of them is used.
    /// A loop whose trip count is known only at run time issues one and waits for it.
    pub weight_loads_in_flight: u32,
    /// Dependent trips to memory for weights per thread, for one tile of tokens.
    pub serial_weight_trips: u32,
    /// Whether one workgroup runs the chunk's tiles of [`TOKEN_TILE`] tokens one after another,
    /// repeating its trips per tile (`recurrent_in.wgsl`, `rg_lru_gates.wgsl`).
    pub tiles_in_sequence: bool,
    /// Activations (inputs, norm weights, keys and values) read from global memory.
    pub activations: Bytes,
    /// `workgroupBarrier`s one workgroup passes, for one tile of tokens.
    pub barriers: u32,
    /// Dependent loads per thread of the attention kernels, at a full window.
    pub attention_serial_trips: u32,
    /// Whether those loads read what the dispatch before just wrote, so hit the cache.
    pub attention_trips_cached: bool,
    pub vocab_passes: VocabPasses,
}

impl Cost {
    /// The row kernels (`matrix_rows.wgsl` under `matmul`, `geglu`, `recurrent_in`,
    /// `rg_lru_gates`): `m.lanes` threads share a row, each loading one 4-column block of weights
    /// per trip with the trip count in a uniform, so one load in flight; every row's lanes read
    /// the whole input slice (and the norm weight) from global memory.
    pub fn rows(m: &MatrixRows, format: MatrixFormat, weights: Bytes) -> Cost {
        let rows = m.rows as u64 * m.halves as u64;
        let reads_per_row = m.cols as u64 * 4;
        let blocks = m.cols / format.block_columns() as u32;
        Cost {
            threads: THREADS,
            weights,
            weight_load_bytes: format.block_bytes(),
            weight_loads_in_flight: 1,
            serial_weight_trips: blocks.div_ceil(m.lanes),
            activations: Bytes {
                per_token: rows * reads_per_row,
                per_tile: if m.has_norm == 1 { rows * reads_per_row } else { 0 },
                tile: TOKEN_TILE,
            },
            barriers: 1,
            ..Cost::default()
        }
    }

    /// `matmul_short.wgsl`: one thread per row, [`SHORT_ROWS`] rows one after another, no barrier;
    /// rows of whole 16-byte chunks load a chunk per trip, other rows a 4-column block.
    pub fn short_rows(m: &MatrixRows, format: MatrixFormat, weights: Bytes) -> Cost {
        let rows = Cost::rows(m, format, weights);
        let chunk = format.chunk_columns();
        if m.cols.is_multiple_of(chunk) {
            Cost { weight_load_bytes: 16, serial_weight_trips: SHORT_ROWS * (m.cols / chunk), barriers: 0, ..rows }
        } else {
            let blocks = m.cols / format.block_columns() as u32;
            Cost { serial_weight_trips: SHORT_ROWS * blocks, barriers: 0, ..rows }
        }
    }

    /// `matmul_tiled.wgsl`: per step of [`TILE_K`] columns each thread stages one 4-column block
    /// of weights (the next step's load issued before this step's maths) and a workgroup reads
    /// its [`TILE_TOKENS`] tokens' inputs once for its `TILE_ROWS` / halves rows.
    pub fn tiled(m: &MatrixRows, format: MatrixFormat, weights: Bytes) -> Cost {
        let steps = m.cols / TILE_K;
        let input = m.tile_groups() as u64 * m.cols as u64 * 4;
        Cost {
            threads: THREADS,
            weights,
            weight_load_bytes: format.block_bytes(),
            weight_loads_in_flight: 1,
            serial_weight_trips: steps,
            activations: Bytes {
                per_token: input,
                per_tile: if m.has_norm == 1 { input } else { 0 },
                tile: TILE_TOKENS,
            },
            barriers: 3 * steps,
            ..Cost::default()
        }
    }

    /// `gemv.wgsl` over `groups` workgroups: per tile each thread issues its 16-byte loads of
    /// both its rows at once (2 · steps in flight), one round trip per tile; each workgroup
    /// reads the input (twice with a norm over several tiles) and the norm weight once.
    pub fn gemv(m: &MatrixRows, weights: Bytes, shape: GemvShape, groups: u32) -> Cost {
        let input = groups as u64 * m.cols as u64 * 4;
        let norm = m.has_norm == 1;
        let reads = 1 + norm as u64 + (norm && shape.tiles > 1) as u64;
        // Two per tile and two around the reduction, and a tree for Σx².
        let norm_barriers = if norm { THREADS.ilog2() + 2 } else { 0 };
        Cost {
            threads: THREADS,
            weights,
            weight_load_bytes: 16,
            weight_loads_in_flight: 2 * shape.steps,
            serial_weight_trips: shape.tiles,
            activations: Bytes::per_token(reads * input),
            barriers: 2 * shape.tiles + 2 + norm_barriers,
            ..Cost::default()
        }
    }

    /// A kernel that reads no weights: `threads` per workgroup, `activations` read.
    pub fn elementwise(threads: u32, activations: Bytes) -> Cost {
        Cost { threads, activations, ..Cost::default() }
    }
}

/// Bisection steps of the sampler's top-k and top-p searches (`BISECTION_STEPS` in
/// `sample.wgsl`).
pub const BISECTION_STEPS: u32 = 40;

/// Passes of the sampler's one workgroup over the whole vocabulary, at worst (a flat
/// distribution, whose candidates never fall to `CANDIDATES` and so are never copied): one for
/// the maximum; top-k's bisection; top-p's total mass and bisection; the draw's sum.
pub fn sampler_passes(sampling: &SamplingParams, vocab: usize) -> u32 {
    if sampling.temperature <= 0.0 {
        return 1;
    }
    let top_k = if sampling.top_k > 0 && sampling.top_k < vocab { BISECTION_STEPS } else { 0 };
    let top_p = if sampling.top_p < 1.0 { 1 + BISECTION_STEPS } else { 0 };
    1 + top_k + top_p + 1
}

/// A command list's counts for one chunk, under the key names other tools read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PlanCost {
    pub dispatches: usize,
    /// Bytes of weights read.
    pub weight_bytes: u64,
    /// Bytes of activations read from global memory.
    pub activation_bytes: u64,
    /// Bytes per weight load per thread, averaged over the matrix ops weighted by their weight
    /// bytes.
    pub weight_load_bytes: f64,
    /// Weight loads in flight per thread, averaged as `weight_load_bytes`.
    pub weight_loads_in_flight: f64,
    /// The most dependent weight-load trips of one thread in any op.
    pub max_serial_weight_trips: u32,
    /// Passes over the vocabulary made by a single workgroup.
    pub single_workgroup_vocab_passes: u32,
    /// The most dependent loads of one thread in an attention op.
    pub attention_serial_trips: u32,
}

/// One dispatch of a plan as it runs for a chunk: its cost and its workgroups.
#[derive(Clone, Copy)]
pub struct Dispatch<'a> {
    pub cost: &'a Cost,
    pub workgroups: u32,
    /// The tokens it runs for (the chunk's, or the head's for the logits).
    pub tokens: u32,
}

impl PlanCost {
    /// Sums `dispatches` (those with no workgroups left out, as `ops::record` skips them).
    pub fn of<'a>(dispatches: impl IntoIterator<Item = Dispatch<'a>>, sampling: &SamplingParams, vocab: usize) -> Self {
        let mut plan = PlanCost::default();
        let (mut load_bytes, mut in_flight, mut matrix_bytes) = (0.0, 0.0, 0.0);
        for d in dispatches.into_iter().filter(|d| d.workgroups > 0) {
            let cost = d.cost;
            let weights = cost.weights.over(d.tokens);
            plan.dispatches += 1;
            plan.weight_bytes += weights;
            plan.activation_bytes += cost.activations.over(d.tokens);
            if cost.weight_load_bytes > 0 {
                load_bytes += cost.weight_load_bytes as f64 * weights as f64;
                in_flight += cost.weight_loads_in_flight as f64 * weights as f64;
                matrix_bytes += weights as f64;
                let tiles = if cost.tiles_in_sequence { d.tokens.div_ceil(TOKEN_TILE) } else { 1 };
                plan.max_serial_weight_trips = plan.max_serial_weight_trips.max(cost.serial_weight_trips * tiles);
            }
            if cost.vocab_passes == VocabPasses::Sampler {
                let passes = sampler_passes(sampling, vocab);
                plan.single_workgroup_vocab_passes += passes;
                plan.activation_bytes += passes as u64 * vocab as u64 * 4;
            }
            plan.attention_serial_trips = plan.attention_serial_trips.max(cost.attention_serial_trips);
        }
        if matrix_bytes > 0.0 {
            plan.weight_load_bytes = load_bytes / matrix_bytes;
            plan.weight_loads_in_flight = in_flight / matrix_bytes;
        }
        plan
    }
}

/// A GPU as the analytic model of `../shared/notes/decode-kernels.md` (§3.6, appendix A) sees it:
/// per dispatch `fixed + max(waves · trips · latency, bytes / bandwidth)`, with the waves of
/// workgroups the GPU holds at once. The H200's constants reproduce the step measured there
/// (10.2 ms int8, 10.5 ms int4: BENCHMARKS.md); the others are assumptions from their data
/// sheets, for ratios more than for absolute figures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceModel {
    pub name: &'static str,
    /// Streaming multiprocessors (Apple: GPU cores).
    pub cores: u32,
    /// Workgroups of 256 threads resident per core.
    pub workgroups_per_core: u32,
    /// Sustained memory bandwidth, bytes per second.
    pub bandwidth: f64,
    /// A loaded DRAM round trip, and an L2 hit, in seconds.
    pub dram_latency: f64,
    pub cache_latency: f64,
    /// Bytes of last-level cache: weights that fit stay there between tokens.
    pub cache_bytes: u64,
    /// Seconds per dependent dispatch, and a workgroup's tail (reduction, epilogue).
    pub dispatch: f64,
    pub tail: f64,
}

/// An NVIDIA H200: its constants reproduce the step measured there.
const H200: DeviceModel = DeviceModel {
    name: "h200",
    cores: 132,
    workgroups_per_core: 6,
    bandwidth: 4.3e12,
    dram_latency: 1.2e-6,
    cache_latency: 0.25e-6,
    cache_bytes: 50 << 20,
    dispatch: 2.5e-6,
    tail: 1e-6,
};

impl DeviceModel {
    pub const ALL: [DeviceModel; 3] = [
        H200,
        // The same chip with HBM3: the bandwidth our probe measured (gpu-budget.md).
        DeviceModel { name: "h100", bandwidth: 2.9e12, ..H200 },
        // Apple M2: 10 cores, ≈ 100 GB/s of unified memory, 8 MB of system-level cache.
        DeviceModel {
            name: "m2",
            cores: 10,
            workgroups_per_core: 4,
            bandwidth: 90e9,
            dram_latency: 0.8e-6,
            cache_latency: 0.3e-6,
            cache_bytes: 8 << 20,
            dispatch: 8e-6,
            tail: 2e-6,
        },
    ];

    pub fn named(name: &str) -> Option<DeviceModel> {
        Self::ALL.into_iter().find(|d| d.name == name)
    }

    /// Seconds for `dispatches`, one after another.
    pub fn predict<'a>(
        &self,
        dispatches: impl Iterator<Item = Dispatch<'a>> + Clone,
        sampling: &SamplingParams,
        vocab: usize,
    ) -> f64 {
        let weight_bytes: u64 = dispatches.clone().map(|d| d.cost.weights.over(d.tokens)).sum();
        let weight_latency = if weight_bytes <= self.cache_bytes { self.cache_latency } else { self.dram_latency };
        let resident = (self.cores * self.workgroups_per_core) as f64;
        dispatches
            .filter(|d| d.workgroups > 0)
            .map(|d| {
                let cost = d.cost;
                let waves = (d.workgroups as f64 / resident).max(1.0);
                let mut seconds = self.dispatch;
                if cost.weight_load_bytes > 0 {
                    let tiles = if cost.tiles_in_sequence { d.tokens.div_ceil(TOKEN_TILE) } else { 1 };
                    let trips = (cost.serial_weight_trips * tiles) as f64;
                    // Activations re-read per row hit the caches: only the weights stream from DRAM.
                    let bytes = cost.weights.over(d.tokens) as f64;
                    seconds += (waves * trips * weight_latency).max(bytes / self.bandwidth) + self.tail;
                } else if cost.attention_serial_trips > 0 {
                    let latency = if cost.attention_trips_cached { self.cache_latency } else { self.dram_latency };
                    seconds += waves * cost.attention_serial_trips as f64 * latency + self.tail;
                } else if cost.vocab_passes == VocabPasses::Sampler {
                    let per_pass = vocab.div_ceil(cost.threads as usize) as f64 * self.cache_latency;
                    seconds += sampler_passes(sampling, vocab) as f64 * per_pass + 10.0 * self.tail;
                } else {
                    seconds += 2.0 * self.tail;
                }
                seconds
            })
            .sum()
    }
}
