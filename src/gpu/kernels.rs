//! One compute pipeline per WGSL file in `shaders/`, and the uniform blocks they take. Each
//! `#[repr(C)]` struct mirrors the `Params` struct at the top of its shader, field for field.
//! Bindings are positional: `bind(kernel, [b0, b1, …])` binds `@binding(i)` to the i-th buffer.

use bytemuck::{Pod, Zeroable};

/// Tokens per prefill submission, and the extra ring slots that let a whole chunk's keys be
/// written before its queries attend.
pub const CHUNK: usize = 16;
/// Tokens per workgroup in `matmul_int8.wgsl` (`TOKEN_TILE`).
pub const TOKEN_TILE: u32 = 8;
/// Threads per workgroup in `matmul_int8.wgsl`.
pub const MATMUL_THREADS: u32 = 256;

/// Threads that share one matrix row in `matmul_int8.wgsl`: enough to keep each busy with about
/// 16 packed words, at most 32. Short rows get one thread each, which CPU drivers need.
pub fn matmul_lanes(cols: usize) -> u32 {
    ((cols / 4 / 16).max(1) as u32).next_power_of_two().min(32)
}
/// Keys per workgroup in `attention.wgsl` (`KEY_BLOCK`), and the most query heads it takes
/// (`MAX_HEADS`).
pub const KEY_BLOCK: u32 = 16;
pub const MAX_HEADS: usize = 32;

/// Key blocks per token for an attention window of `window` keys before the token's own.
pub fn key_blocks(window: usize) -> u32 {
    (window as u32 + 1).div_ceil(KEY_BLOCK)
}

/// Size of the ring of sampled ids in `sample.wgsl` (`GENERATED_RING`).
pub const GENERATED_RING: u32 = 1024;
/// What `sample.wgsl` writes (`NO_TOKEN`) for a row with no usable logit (all NaN or −∞).
pub const NO_TOKEN: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Embed,
    MatmulInt8,
    GegluInt8,
    RecurrentIn,
    RgLruGates,
    RopeKv,
    Attention,
    AttentionCombine,
    Sample,
}

impl Kernel {
    pub const ALL: [Kernel; 9] = [
        Kernel::Embed,
        Kernel::MatmulInt8,
        Kernel::GegluInt8,
        Kernel::RecurrentIn,
        Kernel::RgLruGates,
        Kernel::RopeKv,
        Kernel::Attention,
        Kernel::AttentionCombine,
        Kernel::Sample,
    ];

    /// The kernel's name and its own file.
    pub fn source(self) -> (&'static str, &'static str) {
        match self {
            Kernel::Embed => ("embed", include_str!("../../shaders/embed.wgsl")),
            Kernel::MatmulInt8 => ("matmul_int8", include_str!("../../shaders/matmul_int8.wgsl")),
            Kernel::GegluInt8 => ("geglu_int8", include_str!("../../shaders/geglu_int8.wgsl")),
            Kernel::RecurrentIn => ("recurrent_in", include_str!("../../shaders/recurrent_in.wgsl")),
            Kernel::RgLruGates => ("rg_lru_gates", include_str!("../../shaders/rg_lru_gates.wgsl")),
            Kernel::RopeKv => ("rope_kv", include_str!("../../shaders/rope_kv.wgsl")),
            Kernel::Attention => ("attention", include_str!("../../shaders/attention.wgsl")),
            Kernel::AttentionCombine => ("attention_combine", include_str!("../../shaders/attention_combine.wgsl")),
            Kernel::Sample => ("sample", include_str!("../../shaders/sample.wgsl")),
        }
    }

    /// Whether the kernel builds on `int8_rows.wgsl`.
    fn uses_int8_rows(self) -> bool {
        matches!(self, Kernel::MatmulInt8 | Kernel::GegluInt8 | Kernel::RecurrentIn | Kernel::RgLruGates)
    }

    /// The whole WGSL module: the shared prefixes, then the kernel's own file.
    pub fn module_source(self) -> String {
        let rows = if self.uses_int8_rows() { INT8_ROWS } else { "" };
        format!("{COMMON}\n{rows}\n{}", self.source().1)
    }
}

/// Structs, activations and reductions shared by every kernel.
pub const COMMON: &str = include_str!("../../shaders/common.wgsl");
/// The int8 row dot products, RMSNorm fused in, shared by the int8 matrix kernels.
pub const INT8_ROWS: &str = include_str!("../../shaders/int8_rows.wgsl");

/// Every pipeline, compiled once.
pub struct Kernels {
    pipelines: Vec<wgpu::ComputePipeline>,
}

impl Kernels {
    pub fn new(device: &wgpu::Device) -> Self {
        let pipelines = Kernel::ALL
            .iter()
            .map(|kernel| {
                let name = kernel.source().0;
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(name),
                    source: wgpu::ShaderSource::Wgsl(kernel.module_source().into()),
                });
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(name),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: Default::default(),
                    cache: None,
                })
            })
            .collect();
        Kernels { pipelines }
    }

    pub fn pipeline(&self, kernel: Kernel) -> &wgpu::ComputePipeline {
        &self.pipelines[Kernel::ALL.iter().position(|k| *k == kernel).expect("listed")]
    }

    pub fn bind(&self, device: &wgpu::Device, kernel: Kernel, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, buffer)| wgpu::BindGroupEntry { binding: i as u32, resource: buffer.as_entire_binding() })
            .collect();
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.source().0),
            layout: &self.pipeline(kernel).get_bind_group_layout(0),
            entries: &entries,
        })
    }
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Epilogue {
    Store = 0,
    Add = 1,
    SoftCap = 2,
}

/// `Int8Rows` in `int8_rows.wgsl`: which rows of which int8 matrix, over which input.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Int8Rows {
    pub rows: u32,
    pub cols: u32,
    pub block_rows: u32,
    pub x_stride: u32,
    pub x_offset: u32,
    pub row_offset: u32,
    pub pair_offset: u32,
    /// 0: no bias.
    pub bias_offset: u32,
    pub lanes: u32,
    pub has_norm: u32,
    pub eps: f32,
    pub halves: u32,
}

impl Int8Rows {
    /// `rows` rows of `cols` columns over an input of rows `cols` long: no norm, no bias, no pair.
    pub fn new(rows: usize, cols: usize) -> Self {
        Int8Rows {
            rows: rows as u32,
            cols: cols as u32,
            // One block: every row reads the same input.
            block_rows: u32::MAX,
            x_stride: cols as u32,
            lanes: matmul_lanes(cols),
            halves: 1,
            ..Zeroable::zeroed()
        }
    }

    /// Rows `r` and `r + rows` of a stacked matrix `[2·rows, cols]`, computed in one workgroup.
    pub fn pair(rows: usize, cols: usize) -> Self {
        Int8Rows { pair_offset: rows as u32, halves: 2, ..Int8Rows::new(rows, cols) }
    }

    /// RMSNorm (zero-centred weight) of each input row in front of the matrix.
    pub fn with_norm(self, eps: f32) -> Self {
        Int8Rows { has_norm: 1, eps, ..self }
    }

    /// Biases at `offset` in the affine buffer.
    pub fn with_bias(self, offset: usize) -> Self {
        Int8Rows { bias_offset: offset as u32, ..self }
    }

    /// Workgroups along x for all rows.
    pub fn row_groups(&self) -> u32 {
        self.rows.div_ceil(MATMUL_THREADS / self.halves / self.lanes)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct MatmulParams {
    pub m: Int8Rows,
    pub y_stride: u32,
    pub y_offset: u32,
    pub epilogue: u32,
    pub token_source: u32,
    pub cap: f32,
    pub _pad: [u32; 3],
}

/// The parameters of `geglu_int8.wgsl` and `rg_lru_gates.wgsl`: the rows alone.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct PairParams {
    pub m: Int8Rows,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct RecurrentInParams {
    pub m: Int8Rows,
    pub width: u32,
    pub _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct EmbedParams {
    pub rows: u32,
    pub cols: u32,
    pub row_start: u32,
    pub embedding_scale: f32,
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
    pub _pad: [u32; 2],
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each shader's bindings, in order, must be what the engine binds: count the declarations.
    #[test]
    fn shaders_declare_contiguous_bindings() {
        for kernel in Kernel::ALL {
            let (name, own) = kernel.source();
            let source = kernel.module_source();
            let bindings: Vec<u32> = source
                .lines()
                .filter_map(|line| line.split("@binding(").nth(1))
                .map(|rest| rest.split(')').next().unwrap().parse().unwrap())
                .collect();
            let expected: Vec<u32> = (0..bindings.len() as u32).collect();
            assert_eq!(bindings, expected, "{name}.wgsl bindings");
            assert!(own.starts_with("//"), "{name}.wgsl starts with its formula");
        }
    }
}
