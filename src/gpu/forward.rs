//! The command list of one chunk: the forward pass of [`crate::model::Model::forward`] as GPU
//! ops, block by block, with the maths beside each step. RMSNorm has no op of its own: the matrix
//! kernels normalize their input as they read it.

use super::kernels::{key_blocks, CHUNK};
use super::ops::{AttentionBuffers, AttentionShape, KeyValueRing, Norm, Op, Ops, Output, RecurrentIn, RgLru};
use super::weights::GpuWeights;
use super::GpuContext;
use crate::config::Config;
use crate::weights::names;

/// Activation buffers for one chunk, named after the maths.
pub struct Activations {
    /// `[CHUNK, D]` the residual stream.
    pub x: wgpu::Buffer,
    /// `[CHUNK, 2·lru]`: GELU(linear_y) and the conv output, side by side per token.
    pub branches: wgpu::Buffer,
    /// `[CHUNK, lru]` RG-LRU output ⊙ GELU(y).
    pub lru_out: wgpu::Buffer,
    /// `[CHUNK, H + 2, hd]`: per token the query heads, the key and the value.
    pub qkv: wgpu::Buffer,
    /// `[CHUNK, H·hd]`
    pub attention_out: wgpu::Buffer,
    /// `[CHUNK, key blocks, H, hd]` and `[CHUNK, key blocks, H, 2]`: attention's per-block
    /// partial sums, and their maxima and normalizers.
    pub partial_a: wgpu::Buffer,
    pub partial_ml: wgpu::Buffer,
    /// `[CHUNK, F]` GeGLU hidden.
    pub hidden: wgpu::Buffer,
    /// `[CHUNK, V]`
    pub logits: wgpu::Buffer,
    /// `[rotary_dims / 2]`: RoPE's θ_i = base^(−2i/rotary_dims), computed on the host as the CPU
    /// reference does.
    pub inv_freq: wgpu::Buffer,
}

impl Activations {
    pub fn new(ctx: &GpuContext, config: &Config) -> Self {
        let f32s = |n: usize| CHUNK as u64 * n as u64 * 4;
        let (d, lru, f, v) = (config.hidden_size, config.lru_width(), config.mlp_width(), config.vocab_size);
        let (h, hd) = (config.num_attention_heads, config.head_dim());
        let blocks = key_blocks(config.attention_window_size) as usize;
        let inv_freq: Vec<f32> = (0..config.rotary_dims() / 2)
            .map(|i| 1.0 / config.rope_theta.powf((2 * i) as f32 / config.rotary_dims() as f32))
            .collect();
        let inv_freq_buffer = ctx.storage("inv_freq", inv_freq.len() as u64 * 4);
        ctx.queue.write_buffer(&inv_freq_buffer, 0, bytemuck::cast_slice(&inv_freq));
        Activations {
            x: ctx.storage("x", f32s(d)),
            branches: ctx.storage("branches", f32s(2 * lru)),
            lru_out: ctx.storage("lru_out", f32s(lru)),
            qkv: ctx.storage("qkv", f32s((h + 2) * hd)),
            attention_out: ctx.storage("attention_out", f32s(h * hd)),
            partial_a: ctx.storage("partial_a", f32s(blocks * h * hd)),
            partial_ml: ctx.storage("partial_ml", f32s(blocks * h * 2)),
            hidden: ctx.storage("hidden", f32s(f)),
            logits: ctx.storage("logits", f32s(v)),
            inv_freq: inv_freq_buffer,
        }
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
    /// `[CHUNK]` input ids; `[0]` receives each sampled token.
    pub tokens: &'a wgpu::Buffer,
    /// The `Step` block: position and count of sampled tokens, advanced by the sampler.
    pub step: &'a wgpu::Buffer,
    pub layers: Vec<LayerState<'a>>,
    /// The sampler's settings, rewritten per submission.
    pub sampling: &'a wgpu::Buffer,
    /// The ring of sampled ids.
    pub generated: &'a wgpu::Buffer,
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

pub fn plan(ops: &Ops, config: &Config, w: &GpuWeights, a: &Activations, io: &Io) -> Plan {
    let eps = config.rms_norm_eps;
    let norm = |tensor: &str| Norm { weight: w.vector(tensor), eps };
    let mut body = Vec::new();

    // x = E[token] · bf16(√D)
    let embedding = w.matrix(names::EMBEDDING);
    body.extend(ops.embed(&embedding, io.tokens, &a.x, config.embedding_scale()));

    for (layer, state) in io.layers.iter().enumerate() {
        let n = names::layer(layer);
        let t = &n.temporal;
        match state {
            LayerState::Recurrent { history, h } => {
                // branches = [GELU(linear_y(x̂)), Conv1D(linear_x(x̂))],   x̂ = RMSNorm(x)
                body.push(ops.recurrent_in(RecurrentIn {
                    linear_y_x: &w.matrix(&t.pp("linear_y").weight()),
                    norm: norm(&n.temporal_pre_norm),
                    x: &a.x,
                    step: io.step,
                    conv: w.vector(&t.pp("conv_1d").weight()),
                    conv_width: config.conv1d_width,
                    history,
                    branches: &a.branches,
                }));
                // lru_out = RG-LRU(conv, σ(gates(conv))) ⊙ GELU(y)
                let lru = t.pp("rg_lru");
                body.push(ops.rg_lru(RgLru {
                    gates: &w.matrix(&lru.get("input_gate_weight")),
                    branches: &a.branches,
                    step: io.step,
                    log_a_scale: w.vector(&lru.get("recurrent_param")),
                    h,
                    out: &a.lru_out,
                }));
                // x += linear_out(lru_out)
                body.extend(ops.matmul(&w.matrix(&t.pp("linear_out").weight()), None, &a.lru_out, &a.x, Output::Add));
            }
            LayerState::Attention(ring) => {
                // [q; k; v] = [q_proj; k_proj; v_proj](x̂)
                let qkv = w.matrix(&t.pp("q_proj").weight());
                body.extend(ops.matmul(&qkv, Some(norm(&n.temporal_pre_norm)), &a.x, &a.qkv, Output::Store));
                // q, k ⟵ RoPE(q, k); the key and value into the ring
                let shape = AttentionShape {
                    heads: config.num_attention_heads,
                    head_dim: config.head_dim(),
                    window: config.attention_window_size,
                    slots: config.attention_window_size + CHUNK,
                };
                body.push(ops.rope_kv(shape, config.rotary_dims() / 2, io.step, &a.inv_freq, &a.qkv, *ring));
                // out = softmax(q·kᵀ / √hd over the window) · v
                let buffers = AttentionBuffers {
                    qkv: &a.qkv,
                    partial_a: &a.partial_a,
                    partial_ml: &a.partial_ml,
                    out: &a.attention_out,
                };
                body.extend(ops.attention(shape, io.step, *ring, buffers));
                // x += o_proj(out)
                body.extend(ops.matmul(&w.matrix(&t.pp("o_proj").weight()), None, &a.attention_out, &a.x, Output::Add));
            }
        }
        // hidden = GELU(gate_proj(x̂)) ⊙ up_proj(x̂),   x̂ = RMSNorm(x)
        let gate_up = w.matrix(&n.mlp.pp("gate_proj").weight());
        body.push(ops.geglu(&gate_up, norm(&n.channel_pre_norm), &a.x, &a.hidden));
        // x += down_proj(hidden)
        body.extend(ops.matmul(&w.matrix(&n.mlp.pp("down_proj").weight()), None, &a.hidden, &a.x, Output::Add));
    }

    // logits = soft_cap(E · RMSNorm(x)), only for the tokens that get logits
    let cap = Output::SoftCapLogits(config.logits_soft_cap);
    let head = ops.matmul(&embedding, Some(norm(names::FINAL_NORM)), &a.x, &a.logits, cap);

    // next token ~ sample(logits of the last row); position += tokens
    let finish = vec![ops.sample(io.sampling, io.step, &a.logits, io.tokens, io.generated)];
    Plan { body, head, finish }
}
