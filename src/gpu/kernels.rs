//! One compute pipeline per WGSL file in `shaders/`, and the uniform blocks they take. Each
//! `#[repr(C)]` struct mirrors the `Params` struct at the top of its shader, field for field.
//! Bindings are positional: `bind(kernel, [b0, b1, …])` binds `@binding(i)` to the i-th buffer.

//! One compute pipeline per WGSL file in `shaders/`, the constants they share, and the uniform
//! blocks they take. Each `#[repr(C)]` struct mirrors the `Params` struct at the top of its
//! shader, field for field. Which buffer goes to which `@binding` is written once, in the shader
//! and in its op constructor in [`super::ops`].

use std::cell::RefCell;
use std::collections::HashMap;

use bytemuck::{Pod, Zeroable};

use super::cost::BISECTION_STEPS;
use super::matrix::MatrixFormat;

/// Tokens per prefill submission: the largest chunk the prefill path's buffers hold.
pub const CHUNK: usize = 256;
/// Rows of logits one submission computes and reads back (`rg logits` asks for every row).
pub const LOGIT_ROWS: usize = 16;
/// Threads per workgroup of the row, attention and sampling kernels (`THREADS`).
pub const THREADS: u32 = 256;
/// Threads per workgroup of the elementwise kernels, embed and rope_kv (`SMALL_THREADS`).
pub const SMALL_THREADS: u32 = 64;
/// Tokens per workgroup in the row kernels (`TOKEN_TILE`): each weight is read once per tile.
pub const TOKEN_TILE: u32 = 8;
/// Rows per thread of `matmul_short.wgsl` (`SHORT_ROWS`), the matmul for rows of one lane: a
/// workgroup holds THREADS · SHORT_ROWS rows, so a 256,000-row logits head is 125 workgroups.
pub const SHORT_ROWS: u32 = 8;
/// The tiled matrix kernel's tile (`matmul_tiled.wgsl`, for prefill): `TILE_TOKENS` tokens ×
/// `TILE_ROWS` matrix rows per workgroup, each weight read once per tile, stepping over the
/// columns `TILE_K` at a time (so it takes rows whose length is a multiple of `TILE_K`).
pub const TILE_TOKENS: u32 = 64;
pub const TILE_ROWS: u32 = 64;
pub const TILE_K: u32 = 16;
// Each thread computes 4 rows × 4 tokens, and stages one vector of 4 weights (of row i) and one of
// 4 inputs (of token i) per step.
const _: () = assert!((TILE_ROWS / 4) * (TILE_TOKENS / 4) == THREADS);
const _: () = assert!(TILE_ROWS == TILE_TOKENS && TILE_ROWS * (TILE_K / 4) == THREADS);
/// The most threads that share one matrix row (`MAX_LANES`).
pub const MAX_LANES: u32 = 32;
/// Keys per workgroup in `attention.wgsl` (`KEY_BLOCK`), and the most query heads it takes
/// (`MAX_HEADS`).
pub const KEY_BLOCK: u32 = 16;
pub const MAX_HEADS: u32 = 32;
/// Dimensions per workgroup of `attention_combine.wgsl` (`COMBINE_DIMS`): its other
/// THREADS / COMBINE_DIMS groups of threads split the key blocks.
pub const COMBINE_DIMS: u32 = 16;
/// The widest Conv1D `recurrent_in.wgsl` keeps in registers (`MAX_CONV_WIDTH`).
pub const MAX_CONV_WIDTH: u32 = 8;
/// Prefill attention (`attention_chunk.wgsl`): query rows (tokens × heads) per workgroup
/// (`QUERY_ROWS`), keys per staged block (`KEY_TILE`), and the largest head it takes
/// (`MAX_HEAD_DIM`, a multiple of 4 · [`THREADS`] / [`QUERY_ROWS`]: its accumulators are registers).
pub const QUERY_ROWS: u32 = 32;
pub const KEY_TILE: u32 = 32;
pub const MAX_HEAD_DIM: u32 = 256;
// Each row has THREADS / QUERY_ROWS threads, each scoring 4 keys of the block (one vec4) and
// staging one vec4 of a key or value per slice.
const _: () = assert!(THREADS.is_multiple_of(QUERY_ROWS) && KEY_TILE == 4 * (THREADS / QUERY_ROWS));
const _: () = assert!(KEY_TILE == QUERY_ROWS && MAX_HEAD_DIM.is_multiple_of(4 * (THREADS / QUERY_ROWS)));
/// Channels per workgroup of `conv_scan.wgsl` (`CONV_CHANNELS`): the other THREADS / CONV_CHANNELS
/// threads of a channel split the chunk's tokens.
pub const CONV_CHANNELS: u32 = 32;
const _: () = assert!(THREADS.is_multiple_of(CONV_CHANNELS));
/// Size of the ring of sampled ids in `sample.wgsl` (`GENERATED_RING`).
pub const GENERATED_RING: u32 = 1024;
/// The most stop ids the sampler checks (`MAX_STOPS`, a multiple of 4).
pub const MAX_STOPS: u32 = 8;
/// What `sample.wgsl` writes (`NO_TOKEN`) for a row with no usable logit (all NaN or −∞).
pub const NO_TOKEN: u32 = u32::MAX;

/// Columns of x̂ `gemv.wgsl` stages per tile in workgroup memory (`GEMV_TILE_COLS`, 10 KB).
pub const GEMV_TILE_COLS: u32 = 2560;
/// The most threads of a row team in `gemv.wgsl`.
pub const MAX_TEAM_THREADS: u32 = 32;

/// The constants above as WGSL, prepended to every shader: the one place they are written.
fn constants_wgsl() -> String {
    let constants = [
        ("THREADS", THREADS),
        ("SMALL_THREADS", SMALL_THREADS),
        ("TOKEN_TILE", TOKEN_TILE),
        ("SHORT_ROWS", SHORT_ROWS),
        ("TILE_TOKENS", TILE_TOKENS),
        ("TILE_ROWS", TILE_ROWS),
        ("TILE_K", TILE_K),
        ("MAX_LANES", MAX_LANES),
        ("KEY_BLOCK", KEY_BLOCK),
        ("MAX_HEADS", MAX_HEADS),
        ("MAX_CONV_WIDTH", MAX_CONV_WIDTH),
        ("QUERY_ROWS", QUERY_ROWS),
        ("KEY_TILE", KEY_TILE),
        ("MAX_HEAD_DIM", MAX_HEAD_DIM),
        ("CONV_CHANNELS", CONV_CHANNELS),
        ("GENERATED_RING", GENERATED_RING),
        ("NO_TOKEN", NO_TOKEN),
        ("MAX_STOPS", MAX_STOPS),
        ("BISECTION_STEPS", BISECTION_STEPS),
        ("GEMV_TILE_COLS", GEMV_TILE_COLS),
        ("COMBINE_DIMS", COMBINE_DIMS),
    ];
    constants.iter().map(|(name, value)| format!("const {name}: u32 = {value}u;\n")).collect()
}

/// Threads that share one matrix row: enough to keep each busy with about 64 weights, at most
/// [`MAX_LANES`]. Rows of up to [`SHORT_ROW_COLS`] get one thread each (`matmul_short.wgsl`, no
/// barrier), which CPU drivers need: the trained demo decodes 3.8× faster so in Chromium on
/// SwiftShader.
pub fn matmul_lanes(cols: usize) -> u32 {
    if cols <= SHORT_ROW_COLS {
        return 1;
    }
    ((cols / 64) as u32).next_power_of_two().min(MAX_LANES)
}

/// The widest rows that [`matmul_lanes`] gives one thread.
pub const SHORT_ROW_COLS: usize = 128;

/// Key blocks per token for an attention window of `window` keys before the token's own.
pub fn key_blocks(window: usize) -> u32 {
    (window as u32 + 1).div_ceil(KEY_BLOCK)
}

/// Key/value ring slots for an attention window of `window` keys before the token's own. A
/// prefill chunk's own keys never go through the ring before its queries attend
/// (`attention_chunk.wgsl` reads them from qkv, `ring_store.wgsl` stores them afterwards), so
/// prefill needs only the window; the decode path (`rope_kv.wgsl`, then `attention.wgsl`) writes
/// its chunk of up to [`TOKEN_TILE`] tokens first, so that chunk's keys must not overwrite a key
/// still in its first token's window: hence `window + TOKEN_TILE`.
pub fn ring_slots(window: usize) -> usize {
    window + TOKEN_TILE as usize
}

/// Tokens per workgroup of `attention_chunk.wgsl` with `heads` query heads: every head of each,
/// at most [`QUERY_ROWS`] rows (one token when `heads` = [`QUERY_ROWS`]).
pub fn attention_tokens(heads: usize) -> u32 {
    (QUERY_ROWS / heads as u32).max(1)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    Embed,
    Matmul,
    MatmulShort,
    Geglu,
    RecurrentIn,
    RgLruGates,
    RopeKv,
    Attention,
    AttentionCombine,
    Sample,
    MatmulTiled,
    RopeChunk,
    AttentionChunk,
    RingStore,
    ConvScan,
    RgLruScan,
}

/// What a kernel's module is made of besides its own file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Needs {
    Nothing,
    /// The weight format's storage and dequantization.
    Format,
    /// The format and the shared row loop (`matrix_rows.wgsl`).
    Rows,
}

impl Kernel {
    pub const ALL: [Kernel; 16] = [
        Kernel::Embed,
        Kernel::Matmul,
        Kernel::MatmulShort,
        Kernel::Geglu,
        Kernel::RecurrentIn,
        Kernel::RgLruGates,
        Kernel::RopeKv,
        Kernel::Attention,
        Kernel::AttentionCombine,
        Kernel::Sample,
        Kernel::MatmulTiled,
        Kernel::RopeChunk,
        Kernel::AttentionChunk,
        Kernel::RingStore,
        Kernel::ConvScan,
        Kernel::RgLruScan,
    ];

    /// The kernel's name and its own file.
    pub fn source(self) -> (&'static str, &'static str) {
        match self {
            Kernel::Embed => ("embed", include_str!("../../shaders/embed.wgsl")),
            Kernel::Matmul => ("matmul", include_str!("../../shaders/matmul.wgsl")),
            Kernel::MatmulShort => ("matmul_short", include_str!("../../shaders/matmul_short.wgsl")),
            Kernel::Geglu => ("geglu", include_str!("../../shaders/geglu.wgsl")),
            Kernel::RecurrentIn => ("recurrent_in", include_str!("../../shaders/recurrent_in.wgsl")),
            Kernel::RgLruGates => ("rg_lru_gates", include_str!("../../shaders/rg_lru_gates.wgsl")),
            Kernel::RopeKv => ("rope_kv", include_str!("../../shaders/rope_kv.wgsl")),
            Kernel::Attention => ("attention", include_str!("../../shaders/attention.wgsl")),
            Kernel::AttentionCombine => ("attention_combine", include_str!("../../shaders/attention_combine.wgsl")),
            Kernel::Sample => ("sample", include_str!("../../shaders/sample.wgsl")),
            Kernel::MatmulTiled => ("matmul_tiled", include_str!("../../shaders/matmul_tiled.wgsl")),
            Kernel::RopeChunk => ("rope_chunk", include_str!("../../shaders/rope_chunk.wgsl")),
            Kernel::AttentionChunk => ("attention_chunk", include_str!("../../shaders/attention_chunk.wgsl")),
            Kernel::RingStore => ("ring_store", include_str!("../../shaders/ring_store.wgsl")),
            Kernel::ConvScan => ("conv_scan", include_str!("../../shaders/conv_scan.wgsl")),
            Kernel::RgLruScan => ("rg_lru_scan", include_str!("../../shaders/rg_lru_scan.wgsl")),
        }
    }

    fn needs(self) -> Needs {
        match self {
            Kernel::Embed | Kernel::MatmulTiled | Kernel::MatmulShort => Needs::Format,
            Kernel::Matmul | Kernel::Geglu | Kernel::RecurrentIn | Kernel::RgLruGates => Needs::Rows,
            Kernel::RopeKv | Kernel::Attention | Kernel::AttentionCombine | Kernel::Sample => Needs::Nothing,
            Kernel::RopeChunk | Kernel::AttentionChunk | Kernel::RingStore | Kernel::ConvScan | Kernel::RgLruScan => {
                Needs::Nothing
            }
        }
    }

    /// The whole WGSL module for weights in `format`: the constants, the shared prefixes, then
    /// the kernel's own file.
    pub fn module_source(self, format: MatrixFormat) -> String {
        self.module_source_with(format, Core::Rows)
    }

    /// As [`Self::module_source`], the row kernels' products computed by `core`.
    fn module_source_with(self, format: MatrixFormat, core: Core) -> String {
        let needs = self.needs();
        let format_source = if needs == Needs::Nothing { "" } else { format.source() };
        let rows = match (needs, core) {
            (Needs::Rows, Core::Rows) => MATRIX_ROWS,
            (Needs::Rows, Core::Gemv) => GEMV,
            _ => "",
        };
        format!("{}\n{COMMON}\n{format_source}\n{rows}\n{}", constants_wgsl(), self.source().1)
    }

    /// Whether the kernel's products come from the shared row core (`matrix_rows.wgsl` or
    /// `gemv.wgsl`).
    pub fn has_core(self) -> bool {
        self.needs() == Needs::Rows
    }
}

/// Every WGSL module the engine can compile, named `kernel` (format-neutral kernels) or
/// `kernel.format`, as `(name, source)`: what other WGSL compilers are checked against.
/// The row kernels' modules on the decode step's core are named `kernel.format.gemv`.
pub fn all_modules() -> Vec<(String, String)> {
    let mut modules = Vec::new();
    for kernel in Kernel::ALL {
        let name = kernel.source().0;
        if kernel.needs() == Needs::Nothing {
            modules.push((name.to_string(), kernel.module_source(MatrixFormat::Int8)));
        } else {
            for format in MatrixFormat::ALL {
                modules.push((format!("{name}.{}", format.name()), kernel.module_source(format)));
            }
        }
    }
    for kernel in Kernel::ALL.into_iter().filter(|k| k.has_core()) {
        for format in MatrixFormat::ALL {
            let name = format!("{}.{}.gemv", kernel.source().0, format.name());
            modules.push((name, kernel.module_source_with(format, Core::Gemv)));
        }
    }
    modules
}

/// What computes the row kernels' products: `matrix_rows.wgsl` (any tile of up to
/// [`TOKEN_TILE`] tokens) or `gemv.wgsl` (one token, for real GPUs: 16-byte weight loads, x̂ in
/// workgroup memory, trip counts fixed when the pipeline is made).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Core {
    Rows,
    Gemv,
}

/// Which kernels the decode step runs (`RG_KERNELS=v1|v2` natively, while both exist): v1 the
/// row kernels of any short chunk, v2 the `gemv.wgsl` products for one token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KernelGeneration {
    V1,
    #[default]
    V2,
}

impl KernelGeneration {
    /// `RG_KERNELS` when the program runs natively; in the browser, `RG_KERNELS` when the wasm was
    /// built (so two packages can be compared in one browser run).
    pub fn from_env() -> crate::Result<Self> {
        let chosen = if cfg!(target_arch = "wasm32") {
            option_env!("RG_KERNELS").map(String::from)
        } else {
            std::env::var("RG_KERNELS").ok()
        };
        match chosen.as_deref() {
            None => Ok(KernelGeneration::default()),
            Some("v1") => Ok(KernelGeneration::V1),
            Some("v2") => Ok(KernelGeneration::V2),
            Some(other) => Err(crate::Error::Input(format!("RG_KERNELS is v1 or v2, not {other:?}"))),
        }
    }
}

/// How the engine compiles and picks its kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOptions {
    pub checks: ShaderChecks,
    pub generation: KernelGeneration,
}

impl KernelOptions {
    /// From `RG_SHADER_CHECKS` and `RG_KERNELS` natively; the defaults in the browser.
    pub fn from_env() -> crate::Result<Self> {
        Ok(KernelOptions { checks: ShaderChecks::from_env()?, generation: KernelGeneration::from_env()? })
    }
}

/// How `gemv.wgsl` is specialised for one matrix (its pipeline constants): `tpr` threads per row
/// team, `steps` 16-byte chunks per thread per row per tile, `tiles` tiles of x̂;
/// `cols = tiles · steps · tpr · chunk columns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemvShape {
    pub tpr: u32,
    pub steps: u32,
    pub tiles: u32,
}

impl GemvShape {
    /// The shape for rows of `cols` columns of `format`, if `gemv.wgsl` takes them: rows of whole
    /// chunks; as many threads per row as divide the chunks, up to [`MAX_TEAM_THREADS`]; the
    /// fewest tiles of at most [`GEMV_TILE_COLS`] columns.
    pub fn for_cols(cols: u32, format: MatrixFormat) -> Option<GemvShape> {
        let chunk = format.chunk_columns();
        if cols == 0 || !cols.is_multiple_of(chunk) {
            return None;
        }
        let chunks = cols / chunk;
        let tpr = (1 << chunks.trailing_zeros()).min(MAX_TEAM_THREADS);
        let per_thread = chunks / tpr;
        let most_steps = GEMV_TILE_COLS / (tpr * chunk);
        let tiles = (1..=per_thread).find(|t| per_thread.is_multiple_of(*t) && per_thread / t <= most_steps)?;
        Some(GemvShape { tpr, steps: per_thread / tiles, tiles })
    }

    /// Rows per workgroup: two per team, or one pair per team in a pair kernel.
    pub fn rows_per_group(&self, halves: u32) -> u32 {
        let teams = THREADS / self.tpr;
        if halves == 2 {
            teams
        } else {
            2 * teams
        }
    }

    fn constants(&self) -> [(&'static str, f64); 3] {
        [("TPR", self.tpr as f64), ("STEPS", self.steps as f64), ("TILES", self.tiles as f64)]
    }
}

/// Structs, activations and reductions shared by every kernel.
pub const COMMON: &str = include_str!("../../shaders/common.wgsl");
/// The row dot products, RMSNorm fused in, shared by the matrix kernels.
pub const MATRIX_ROWS: &str = include_str!("../../shaders/matrix_rows.wgsl");
/// The same for one token, for real GPUs.
pub const GEMV: &str = include_str!("../../shaders/gemv.wgsl");

/// What the shader compiler adds to every module. wgpu's default (`Checked`) bounds every loop
/// with a 64-bit counter (naga's `force_loop_bounding`), which keeps drivers from unrolling loops
/// and overlapping their loads (gfx-rs/wgpu#7698); `Trusted` keeps the bounds checks and drops
/// the counter. Browsers always check: WebGPU has no trusted modules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShaderChecks {
    #[default]
    Checked,
    Trusted,
}

impl ShaderChecks {
    /// `RG_SHADER_CHECKS=checked|trusted` natively (so both run on one warm machine); checked
    /// when unset and in the browser.
    pub fn from_env() -> crate::Result<Self> {
        if cfg!(target_arch = "wasm32") {
            return Ok(ShaderChecks::Checked);
        }
        match std::env::var("RG_SHADER_CHECKS").as_deref() {
            Err(_) | Ok("checked") => Ok(ShaderChecks::Checked),
            Ok("trusted") => Ok(ShaderChecks::Trusted),
            Ok(other) => Err(crate::Error::Input(format!("RG_SHADER_CHECKS is checked or trusted, not {other:?}"))),
        }
    }
}

/// Every pipeline, compiled once: the format-neutral kernels once, the matrix kernels once per
/// weight format asked for; the row kernels on `gemv.wgsl` when an op first asks, once per
/// shape.
pub struct Kernels {
    device: wgpu::Device,
    checks: ShaderChecks,
    pipelines: HashMap<PipelineId, wgpu::ComputePipeline>,
    gemv_modules: RefCell<HashMap<(Kernel, MatrixFormat), wgpu::ShaderModule>>,
    gemv_pipelines: RefCell<HashMap<PipelineId, wgpu::ComputePipeline>>,
}

impl Kernels {
    pub fn new(device: &wgpu::Device, formats: &[MatrixFormat], checks: ShaderChecks) -> Self {
        let mut kernels = Kernels {
            device: device.clone(),
            checks,
            pipelines: HashMap::new(),
            gemv_modules: RefCell::new(HashMap::new()),
            gemv_pipelines: RefCell::new(HashMap::new()),
        };
        for kernel in Kernel::ALL {
            let variants: Vec<Option<MatrixFormat>> =
                if kernel.needs() == Needs::Nothing { vec![None] } else { formats.iter().copied().map(Some).collect() };
            for format in variants {
                let source = kernel.module_source(format.unwrap_or(MatrixFormat::Int8));
                let module = kernels.module(kernel.source().0, source);
                let pipeline = kernels.compile(kernel.source().0, &module, &[]);
                kernels.pipelines.insert(PipelineId { kernel, format, gemv: None }, pipeline);
            }
        }
        kernels
    }

    fn module(&self, name: &str, source: String) -> wgpu::ShaderModule {
        let descriptor =
            wgpu::ShaderModuleDescriptor { label: Some(name), source: wgpu::ShaderSource::Wgsl(source.into()) };
        match self.checks {
            ShaderChecks::Checked => self.device.create_shader_module(descriptor),
            // SAFETY: bounds checks stay on, so no access leaves its buffer; only the counter
            // that ends a loop that never would is dropped, and every loop of these kernels runs
            // to a bound taken from the model's shape (a hostile shape can at worst hang the GPU,
            // which the driver resets).
            ShaderChecks::Trusted => unsafe {
                let checks = wgpu::ShaderRuntimeChecks { force_loop_bounding: false, ..Default::default() };
                self.device.create_shader_module_trusted(descriptor, checks)
            },
        }
    }

    fn compile(&self, name: &str, module: &wgpu::ShaderModule, constants: &[(&str, f64)]) -> wgpu::ComputePipeline {
        self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(name),
            layout: None,
            module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions { constants, ..Default::default() },
            cache: None,
        })
    }

    /// `kernel`'s pipeline; for a matrix kernel, its variant for weights in `format` (the other
    /// kernels have one, whatever `format` says).
    pub fn pipeline(&self, kernel: Kernel, format: Option<MatrixFormat>) -> PipelineKey {
        let format = if kernel.needs() == Needs::Nothing { None } else { format };
        let key = PipelineId { kernel, format, gemv: None };
        match self.pipelines.get(&key) {
            Some(pipeline) => PipelineKey { key, pipeline: pipeline.clone() },
            None => panic!("{} was not compiled for {format:?} weights", kernel.source().0),
        }
    }

    /// A row kernel on `gemv.wgsl`, specialised to `shape`, for weights in `format`.
    pub fn gemv_pipeline(&self, kernel: Kernel, format: MatrixFormat, shape: GemvShape) -> PipelineKey {
        assert!(kernel.has_core(), "{} has no row core", kernel.source().0);
        let key = PipelineId { kernel, format: Some(format), gemv: Some(shape) };
        let mut pipelines = self.gemv_pipelines.borrow_mut();
        let pipeline = pipelines.entry(key).or_insert_with(|| {
            let name = kernel.source().0;
            let mut modules = self.gemv_modules.borrow_mut();
            let module = modules
                .entry((kernel, format))
                .or_insert_with(|| self.module(name, kernel.module_source_with(format, Core::Gemv)));
            self.compile(name, module, &shape.constants())
        });
        PipelineKey { key, pipeline: pipeline.clone() }
    }
}

/// Which kernel variant a pipeline is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PipelineId {
    pub kernel: Kernel,
    pub format: Option<MatrixFormat>,
    pub gemv: Option<GemvShape>,
}

/// A compiled pipeline and which kernel variant it is (so a command list sets it only when it
/// changes).
#[derive(Clone, Debug)]
pub struct PipelineKey {
    pub key: PipelineId,
    pub pipeline: wgpu::ComputePipeline,
}

/// `Chunk` in every shader: how many tokens this submission carries, and which rows get logits.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct ChunkInfo {
    pub n_tokens: u32,
    pub head_first: u32,
    pub head_count: u32,
    pub _pad: u32,
}

/// `Step`: advanced on the GPU by `sample.wgsl`, so many decode steps can be queued at once.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct StepState {
    pub position: u32,
    pub generated: u32,
    /// Set by the sampler when it draws a stop token; the state-writing kernels then do nothing.
    pub halted: u32,
    pub _pad: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Epilogue {
    Store = 0,
    Add = 1,
    SoftCap = 2,
    /// `hidden = gelu_tanh(gate) · up` of a pair (`matmul_tiled.wgsl` only).
    Geglu = 3,
}

/// `MatrixRows` in `common.wgsl`: which rows of which matrix, over which input. Built by
/// [`super::matrix::GpuMatrix`], which knows its format's bias offset and lanes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct MatrixRows {
    pub rows: u32,
    pub cols: u32,
    pub block_rows: u32,
    pub x_stride: u32,
    pub x_offset: u32,
    pub row_offset: u32,
    pub pair_offset: u32,
    /// In 4-byte words of the affine buffer; 0: no bias.
    pub bias_offset: u32,
    pub lanes: u32,
    pub has_norm: u32,
    pub eps: f32,
    pub halves: u32,
}

impl MatrixRows {
    /// Workgroups along x for all rows.
    pub fn row_groups(&self) -> u32 {
        self.rows.div_ceil(THREADS / self.halves / self.lanes)
    }

    /// Workgroups along x for all rows in `matmul_short.wgsl` (one lane per row): THREADS ·
    /// [`SHORT_ROWS`] rows each.
    pub fn short_groups(&self) -> u32 {
        self.rows.div_ceil(THREADS * SHORT_ROWS)
    }

    /// Workgroups along x for all rows in `matmul_tiled.wgsl`: [`TILE_ROWS`] / halves rows each.
    pub fn tile_groups(&self) -> u32 {
        self.rows.div_ceil(TILE_ROWS / self.halves)
    }
}

/// The parameters of `matmul.wgsl`, and of `matmul_tiled.wgsl` (whose pairs take them too).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct MatmulParams {
    pub m: MatrixRows,
    pub y_stride: u32,
    pub y_offset: u32,
    pub epilogue: u32,
    pub token_source: u32,
    pub cap: f32,
    pub _pad: [u32; 3],
}

/// The parameters of `geglu.wgsl` and `rg_lru_gates.wgsl`: the rows alone.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct PairParams {
    pub m: MatrixRows,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct RecurrentInParams {
    pub m: MatrixRows,
    pub width: u32,
    pub _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct EmbedParams {
    pub m: MatrixRows,
    pub embedding_scale: f32,
    pub _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct RopeParams {
    pub heads: u32,
    pub head_dim: u32,
    pub rotary_half: u32,
    pub slots: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct AttentionParams {
    pub heads: u32,
    pub head_dim: u32,
    pub window: u32,
    pub slots: u32,
    pub scale: f32,
    pub blocks: u32,
    pub _pad: [u32; 2],
}

/// The parameters of `attention_chunk.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct AttentionChunkParams {
    pub heads: u32,
    pub head_dim: u32,
    pub window: u32,
    pub slots: u32,
    pub scale: f32,
    /// Tokens per workgroup: [`attention_tokens`].
    pub tokens: u32,
    pub _pad: [u32; 2],
}

/// The parameters of `ring_store.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct RingStoreParams {
    pub heads: u32,
    pub head_dim: u32,
    pub slots: u32,
    pub _pad: u32,
}

/// The parameters of `conv_scan.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct ConvScanParams {
    pub lru: u32,
    pub width: u32,
    pub _pad: [u32; 2],
}

/// The parameters of `rg_lru_scan.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct RgLruScanParams {
    pub lru: u32,
    pub _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct AttentionCombineParams {
    pub heads: u32,
    pub head_dim: u32,
    pub blocks: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct SampleParams {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub seed: u32,
    /// 0: only advance the position; 1: sample a token.
    pub mode: u32,
    pub vocab: u32,
    /// How many of `stops` are in use: the ids that halt the run when drawn.
    pub stop_count: u32,
    /// 1: the logits are adjusted by `bias` and the repetition `counts` as below; 0: they are
    /// read as they are, and neither buffer is read.
    pub adjust: u32,
    /// [`crate::chat::SamplingParams`]' penalties (read only when `adjust` is 1).
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub repetition_penalty: f32,
    /// The draw counter when this reply started: a draw's random number depends on the seed and
    /// its index in the reply, not on what came before it (so a conversation continued from a
    /// kept state draws as one prefilled afresh does).
    pub first_draw: u32,
    /// 1: only the ids whose bit is set in `mask` may be drawn (a constrained reply).
    pub masked: u32,
    /// WGSL aligns `stops` (an array of vec4) to 16 bytes.
    pub _pad: [u32; 3],
    pub stops: [u32; MAX_STOPS as usize],
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each shader's bindings, in order, must be what the engine binds: count the declarations.
    #[test]
    fn shaders_declare_contiguous_bindings() {
        for format in MatrixFormat::ALL {
            for kernel in Kernel::ALL {
                let (name, own) = kernel.source();
                let source = kernel.module_source(format);
                let mut bindings: Vec<u32> = source
                    .lines()
                    .filter_map(|line| line.split("@binding(").nth(1))
                    .map(|rest| rest.split(')').next().unwrap().parse().unwrap())
                    .collect();
                bindings.sort();
                let expected: Vec<u32> = (0..bindings.len() as u32).collect();
                assert_eq!(bindings, expected, "{name}.wgsl bindings with {format:?}");
                assert!(own.starts_with("//"), "{name}.wgsl starts with its formula");
            }
        }
    }

    /// A function's `var` is zero-initialised each time its declaration runs, but Chromium's
    /// compiler (Tint on SwiftShader) did not re-zero an array declared without an initializer
    /// inside a loop (matmul_short's accumulators: wrong logits in the browser only): every
    /// function-scope variable says its initial value.
    #[test]
    fn function_variables_are_initialised_explicitly() {
        for (name, own) in
            Kernel::ALL.map(Kernel::source).into_iter().chain([("common", COMMON), ("matrix_rows", MATRIX_ROWS)])
        {
            for line in own.lines().filter(|line| line.starts_with(' ') && line.trim_start().starts_with("var ")) {
                assert!(line.contains('='), "{name}.wgsl: `{}` has no initializer", line.trim());
            }
        }
    }

    /// Every constant the shaders share comes from Rust: no shader defines one of them itself.
    #[test]
    fn shared_constants_are_defined_once() {
        let generated = constants_wgsl();
        for (_, own) in Kernel::ALL.map(Kernel::source).into_iter().chain([("", COMMON), ("", MATRIX_ROWS)]) {
            for line in generated.lines() {
                let name = line.split(':').next().unwrap();
                assert!(!own.contains(&format!("{name}:")), "{name} is defined again in a shader");
            }
        }
    }
}
