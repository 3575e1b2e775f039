//! The command list of one chunk: the forward pass of [`crate::model::Model::forward`] as GPU
//! ops, block by block, with the maths beside each step. RMSNorm has no op of its own: the matrix
//! kernels normalize their input as they read it.
//!
//! There are two lists of the same maths ([`Path`]): decode (a few tokens: matrix–vector row
//! kernels that read each weight once per step, attention split over key blocks) and prefill (a
//! chunk of up to [`CHUNK`] tokens: tiled matrix kernels that read each weight once per tile of
//! tokens, the recurrences as scans per channel, attention tiled over queries and keys).

use super::cost::{DeviceModel, Dispatch, PlanCost};
use super::kernels::{key_blocks, ring_slots, CHUNK, LOGIT_ROWS, TOKEN_TILE};
use super::matrix::GpuMatrix;
use super::ops::{
    AttentionBuffers, AttentionShape, KeyValueRing, Norm, Op, Ops, Output, RecurrentIn, RgLru, SamplerBuffers,
};
use super::weights::GpuWeights;
use super::GpuContext;
use crate::chat::SamplingParams;
use crate::config::Config;
use crate::weights::names;

/// Activation buffers for one chunk, named after the maths.
pub struct Activations {
    /// `[CHUNK, D]` the residual stream.
    pub x: wgpu::Buffer,
    /// `[CHUNK, 2·lru]`: GELU(linear_y) and the conv output, side by side per token (in a
    /// prefill chunk first the raw linear_y and linear_x, turned into those by the conv scan).
    pub branches: wgpu::Buffer,
    /// `[CHUNK, 2·lru]` the RG-LRU's input and recurrence gates before the sigmoid (prefill).
    pub gates: wgpu::Buffer,
    /// `[CHUNK, lru]` RG-LRU output ⊙ GELU(y).
    pub lru_out: wgpu::Buffer,
    /// `[CHUNK, H + 2, hd]`: per token the query heads, the key and the value.
    pub qkv: wgpu::Buffer,
    /// `[CHUNK, H·hd]`
    pub attention_out: wgpu::Buffer,
    /// `[TOKEN_TILE, key blocks, H, hd]` and `[TOKEN_TILE, key blocks, H, 2]`: decode attention's
    /// per-block partial sums, and their maxima and normalizers.
    pub partial_a: wgpu::Buffer,
    pub partial_ml: wgpu::Buffer,
    /// `[CHUNK, F]` GeGLU hidden.
    pub hidden: wgpu::Buffer,
    /// `[LOGIT_ROWS, V]`: the logits of the tokens that get them, a few rows per submission.
    pub logits: wgpu::Buffer,
    /// `[rotary_dims / 2]`: RoPE's θ_i = base^(−2i/rotary_dims), computed on the host as the CPU
    /// reference does.
    pub inv_freq: wgpu::Buffer,
}

impl Activations {
    /// The buffers, or an error naming the first that is larger than the device binds.
    pub fn new(ctx: &GpuContext, config: &Config) -> crate::Result<Self> {
        let f32s = |n: usize| CHUNK as u64 * n as u64 * 4;
        let decode_f32s = |n: usize| TOKEN_TILE as u64 * n as u64 * 4;
        let (d, lru, f, v) = (config.hidden_size, config.lru_width(), config.mlp_width(), config.vocab_size);
        let (h, hd) = (config.num_attention_heads, config.head_dim());
        let blocks = key_blocks(config.attention_window_size) as usize;
        let inv_freq: Vec<f32> = (0..config.rotary_dims() / 2)
            .map(|i| 1.0 / config.rope_theta.powf((2 * i) as f32 / config.rotary_dims() as f32))
            .collect();
        let sizes = [
            ("the residual stream", f32s(d)),
            ("the recurrent branches", f32s(2 * lru)),
            ("attention's partial sums", decode_f32s(blocks * h * hd)),
            ("the MLP's hidden layer", f32s(f)),
            ("the logits", LOGIT_ROWS as u64 * v as u64 * 4),
        ];
        let limit = ctx.device.limits().max_storage_buffer_binding_size;
        if let Some((what, bytes)) = sizes.iter().find(|(_, bytes)| *bytes > limit) {
            return Err(crate::Error::Gpu(format!("{what} need {bytes} bytes, above the device's {limit}")));
        }
        let inv_freq_buffer = ctx.storage("inv_freq", inv_freq.len() as u64 * 4);
        ctx.queue.write_buffer(&inv_freq_buffer, 0, bytemuck::cast_slice(&inv_freq));
        Ok(Activations {
            x: ctx.storage("x", f32s(d)),
            branches: ctx.storage("branches", f32s(2 * lru)),
            gates: ctx.storage("gates", f32s(2 * lru)),
            lru_out: ctx.storage("lru_out", f32s(lru)),
            qkv: ctx.storage("qkv", f32s((h + 2) * hd)),
            attention_out: ctx.storage("attention_out", f32s(h * hd)),
            partial_a: ctx.storage("partial_a", decode_f32s(blocks * h * hd)),
            partial_ml: ctx.storage("partial_ml", decode_f32s(blocks * h * 2)),
            hidden: ctx.storage("hidden", f32s(f)),
            logits: ctx.storage("logits", LOGIT_ROWS as u64 * v as u64 * 4),
            inv_freq: inv_freq_buffer,
        })
    }
}

/// Per layer, the state a conversation carries.
pub enum LayerState<'a> {
    /// The conv's last K−1 inputs and the RG-LRU's h.
    Recurrent { history: &'a wgpu::Buffer, h: &'a wgpu::Buffer },
    /// The window's keys and values.
    Attention(KeyValueRing<'a>),
}

/// The buffers the command list reads and writes besides weights and activations.
pub struct Io<'a> {
    /// The `Step` block: position and count of sampled tokens, advanced by the sampler.
    pub step: &'a wgpu::Buffer,
    pub layers: Vec<LayerState<'a>>,
    /// The input ids (`sampler.tokens`) and what the sampler reads and writes.
    pub sampler: SamplerBuffers<'a>,
}

/// One chunk's ops: the body for every token, the head for the tokens that get logits, then the
/// sampler (which also advances the position).
pub struct Plan {
    pub body: Vec<Op>,
    pub head: Vec<Op>,
    pub finish: Vec<Op>,
}

impl Plan {
    /// Bytes of weights read by one submission of `n` tokens of which `head` get logits.
    pub fn weight_bytes_read(&self, n: u32, head: u32) -> u64 {
        let body: u64 = self.body.iter().chain(&self.finish).map(|op| op.weight_bytes_read(n)).sum();
        let head = if head > 0 { self.head.iter().map(|op| op.weight_bytes_read(head)).sum() } else { 0 };
        body + head
    }
}

impl Plan {
    /// What one submission of `n` tokens, of which `head` get logits, costs a GPU (see
    /// [`PlanCost`]), the sampler drawing with `sampling` from `vocab` logits.
    pub fn cost(&self, n: u32, head: u32, sampling: &SamplingParams, vocab: usize) -> PlanCost {
        PlanCost::of(self.dispatches(n, head), sampling, vocab)
    }

    /// Seconds the submission would take on `device`, by its analytic model.
    pub fn predict(&self, n: u32, head: u32, sampling: &SamplingParams, vocab: usize, device: &DeviceModel) -> f64 {
        device.predict(self.dispatches(n, head), sampling, vocab)
    }

    fn dispatches(&self, n: u32, head: u32) -> impl Iterator<Item = Dispatch<'_>> + Clone {
        let head_ops = if head > 0 { &self.head[..] } else { &[] };
        let body = self.body.iter().chain(&self.finish).map(move |op| (op, n));
        body.chain(head_ops.iter().map(move |op| (op, head))).map(move |(op, tokens)| Dispatch {
            cost: op.cost(),
            workgroups: op.workgroups(n, head),
            tokens,
        })
    }
}

/// Which kernels a command list is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Up to [`TOKEN_TILE`] tokens: the row kernels.
    Decode,
    /// Up to [`CHUNK`] tokens: the tiled kernels and the scans (the row kernels for a matrix the
    /// tiles do not take).
    Prefill,
}

pub fn plan(ops: &Ops, config: &Config, w: &GpuWeights, a: &Activations, io: &Io, path: Path) -> Plan {
    let eps = config.rms_norm_eps;
    let norm = |tensor: &str| Norm { weight: w.vector(tensor), eps };
    let prefill = path == Path::Prefill;
    let tiled = |m: &GpuMatrix| prefill && m.fits_tiles();
    // y ⟵ W·x̂ + b, tiled in a prefill chunk.
    let matmul = |m: &GpuMatrix, norm: Option<Norm>, x: &wgpu::Buffer, y: &wgpu::Buffer, output: Output| {
        if tiled(m) {
            ops.matmul_tiled(m, norm, x, y, output)
        } else {
            ops.matmul(m, norm, x, y, output)
        }
    };
    let shape = AttentionShape {
        heads: config.num_attention_heads,
        head_dim: config.head_dim(),
        window: config.attention_window_size,
        slots: ring_slots(config.attention_window_size),
    };
    let lru = config.lru_width();
    let mut body = Vec::new();

    // x = E[token] · bf16(√D)
    let embedding = w.matrix(names::EMBEDDING);
    body.extend(ops.embed(&embedding, io.sampler.tokens, &a.x, config.embedding_scale()));

    for (layer, state) in io.layers.iter().enumerate() {
        let n = names::layer(layer);
        let t = &n.temporal;
        match state {
            LayerState::Recurrent { history, h } => {
                // branches = [GELU(linear_y(x̂)), Conv1D(linear_x(x̂))],   x̂ = RMSNorm(x)
                let linear_y_x = w.matrix(&t.pp("linear_y").weight());
                let conv = w.vector(&t.pp("conv_1d").weight());
                if tiled(&linear_y_x) {
                    let raw = Output::Store;
                    body.extend(ops.matmul_tiled(
                        &linear_y_x,
                        Some(norm(&n.temporal_pre_norm)),
                        &a.x,
                        &a.branches,
                        raw,
                    ));
                    body.push(ops.conv_scan(io.step, conv, config.conv1d_width, history, &a.branches, lru));
                } else {
                    body.push(ops.recurrent_in(RecurrentIn {
                        linear_y_x: &linear_y_x,
                        norm: norm(&n.temporal_pre_norm),
                        x: &a.x,
                        step: io.step,
                        conv,
                        conv_width: config.conv1d_width,
                        history,
                        branches: &a.branches,
                    }));
                }
                // lru_out = RG-LRU(conv, σ(gates(conv))) ⊙ GELU(y)
                let rg_lru = t.pp("rg_lru");
                let gates = w.matrix(&rg_lru.get("input_gate_weight"));
                let log_a_scale = w.vector(&rg_lru.get("recurrent_param"));
                if prefill && gates.gates_fit_tiles() {
                    body.push(ops.gates_tiled(&gates, &a.branches, &a.gates));
                    body.push(ops.rg_lru_scan(io.step, &a.gates, &a.branches, log_a_scale, h, &a.lru_out, lru));
                } else {
                    let out = &a.lru_out;
                    let (branches, step) = (&a.branches, io.step);
                    body.push(ops.rg_lru(RgLru { gates: &gates, branches, step, log_a_scale, h, out }));
                }
                // x += linear_out(lru_out)
                body.extend(matmul(&w.matrix(&t.pp("linear_out").weight()), None, &a.lru_out, &a.x, Output::Add));
            }
            LayerState::Attention(ring) => {
                // [q; k; v] = [q_proj; k_proj; v_proj](x̂)
                let qkv = w.matrix(&t.pp("q_proj").weight());
                body.extend(matmul(&qkv, Some(norm(&n.temporal_pre_norm)), &a.x, &a.qkv, Output::Store));
                let rotary_half = config.rotary_dims() / 2;
                if prefill {
                    // q, k ⟵ RoPE(q, k) in place; out = softmax(q·kᵀ / √hd over the window) · v,
                    // the keys before the chunk from the ring and the chunk's own from qkv; then
                    // the chunk's last keys and values into the ring
                    body.push(ops.rope_chunk(shape, rotary_half, io.step, &a.inv_freq, &a.qkv));
                    body.push(ops.attention_chunk(shape, io.step, *ring, &a.qkv, &a.attention_out));
                    body.push(ops.ring_store(shape, io.step, &a.qkv, *ring));
                } else {
                    // q, k ⟵ RoPE(q, k); the key and value into the ring; then
                    // out = softmax(q·kᵀ / √hd over the window) · v, in key blocks
                    body.push(ops.rope_kv(shape, rotary_half, io.step, &a.inv_freq, &a.qkv, *ring));
                    let buffers = AttentionBuffers {
                        qkv: &a.qkv,
                        partial_a: &a.partial_a,
                        partial_ml: &a.partial_ml,
                        out: &a.attention_out,
                    };
                    body.extend(ops.attention(shape, io.step, *ring, buffers));
                }
                // x += o_proj(out)
                body.extend(matmul(&w.matrix(&t.pp("o_proj").weight()), None, &a.attention_out, &a.x, Output::Add));
            }
        }
        // hidden = GELU(gate_proj(x̂)) ⊙ up_proj(x̂),   x̂ = RMSNorm(x)
        let gate_up = w.matrix(&n.mlp.pp("gate_proj").weight());
        let mlp_norm = norm(&n.channel_pre_norm);
        body.push(if tiled(&gate_up) {
            ops.geglu_tiled(&gate_up, mlp_norm, &a.x, &a.hidden)
        } else {
            ops.geglu(&gate_up, mlp_norm, &a.x, &a.hidden)
        });
        // x += down_proj(hidden)
        body.extend(matmul(&w.matrix(&n.mlp.pp("down_proj").weight()), None, &a.hidden, &a.x, Output::Add));
    }

    // logits = soft_cap(E · RMSNorm(x)), only for the tokens that get logits (at most
    // LOGIT_ROWS per submission: the row kernel)
    let cap = Output::SoftCapLogits(config.logits_soft_cap);
    let head = ops.matmul(&embedding, Some(norm(names::FINAL_NORM)), &a.x, &a.logits, cap);

    // next token ~ sample(logits of the last row); position += tokens
    let finish = vec![ops.sample(io.step, &a.logits, &io.sampler)];
    Plan { body, head, finish }
}
