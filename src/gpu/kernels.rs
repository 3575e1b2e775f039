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
/// Size of the ring of sampled ids in `sample.wgsl` (`GENERATED_RING`).
pub const GENERATED_RING: u32 = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Embed,
    RmsNorm,
    MatmulInt8,
    Conv1d,
    RgLru,
    RopeKv,
    Attention,
    Sample,
}

impl Kernel {
    pub const ALL: [Kernel; 8] = [
        Kernel::Embed,
        Kernel::RmsNorm,
        Kernel::MatmulInt8,
        Kernel::Conv1d,
        Kernel::RgLru,
        Kernel::RopeKv,
        Kernel::Attention,
        Kernel::Sample,
    ];

    pub fn source(self) -> (&'static str, &'static str) {
        match self {
            Kernel::Embed => ("embed", include_str!("../../shaders/embed.wgsl")),
            Kernel::RmsNorm => ("rms_norm", include_str!("../../shaders/rms_norm.wgsl")),
            Kernel::MatmulInt8 => ("matmul_int8", include_str!("../../shaders/matmul_int8.wgsl")),
            Kernel::Conv1d => ("conv1d", include_str!("../../shaders/conv1d.wgsl")),
            Kernel::RgLru => ("rg_lru", include_str!("../../shaders/rg_lru.wgsl")),
            Kernel::RopeKv => ("rope_kv", include_str!("../../shaders/rope_kv.wgsl")),
            Kernel::Attention => ("attention", include_str!("../../shaders/attention.wgsl")),
            Kernel::Sample => ("sample", include_str!("../../shaders/sample.wgsl")),
        }
    }
}

/// Structs, activations and reductions shared by every kernel.
pub const COMMON: &str = include_str!("../../shaders/common.wgsl");

/// Every pipeline, compiled once.
pub struct Kernels {
    pipelines: Vec<wgpu::ComputePipeline>,
}

impl Kernels {
    pub fn new(device: &wgpu::Device) -> Self {
        let pipelines = Kernel::ALL
            .iter()
            .map(|kernel| {
                let (name, source) = kernel.source();
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(name),
                    source: wgpu::ShaderSource::Wgsl(format!("{COMMON}\n{source}").into()),
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
    GeluTimesAux = 2,
    SoftCap = 3,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct MatmulParams {
    pub rows: u32,
    pub cols: u32,
    pub block_rows: u32,
    pub x_stride: u32,
    pub y_stride: u32,
    pub y_offset: u32,
    pub scale_offset: u32,
    pub epilogue: u32,
    pub has_bias: u32,
    pub token_source: u32,
    pub cap: f32,
    pub lanes: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct NormParams {
    pub width: u32,
    pub eps: f32,
    pub _pad: [u32; 2],
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
pub struct ConvParams {
    pub channels: u32,
    pub width: u32,
    pub _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct LruParams {
    pub channels: u32,
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
    pub _pad: [u32; 3],
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
            let (name, source) = kernel.source();
            let bindings: Vec<u32> = source
                .lines()
                .filter_map(|line| line.split("@binding(").nth(1))
                .map(|rest| rest.split(')').next().unwrap().parse().unwrap())
                .collect();
            let expected: Vec<u32> = (0..bindings.len() as u32).collect();
            assert_eq!(bindings, expected, "{name}.wgsl bindings");
            assert!(source.starts_with("//"), "{name}.wgsl starts with its formula");
        }
    }
}
