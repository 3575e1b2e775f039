//! RecurrentGemma on the GPU. Every buffer — weights, the fixed-size state, activations for one
//! chunk of tokens — is created in [`Engine::new`], and so is every bind group: a token only
//! writes a 16-byte uniform and encodes the prebuilt dispatch list, which mirrors
//! [`crate::model::Model::forward`] block by block. The sampled token stays on the GPU as the next
//! step's input; only its id is read back.

use std::collections::HashMap;

use bytemuck::Zeroable;

use super::kernels::*;
use super::layout::{conv_buffer, Layout, Stack};
use super::GpuContext;
use crate::chat::SamplingParams;
use crate::config::{BlockType, Config};
use crate::model::layers::softplus;
use crate::weights::format::{Manifest, Piece, Quantization};
use crate::weights::stream::PieceSink;
use crate::weights::tensor_specs;
use crate::{Error, Result};

/// How many workgroups a dispatch needs for a chunk of `n` tokens (of which `head` get logits).
#[derive(Clone, Copy, Debug)]
enum Groups {
    Fixed(u32, u32),
    /// `(x, n)`: one workgroup row per token.
    PerToken(u32),
    /// `(n, y)`: one workgroup column per token.
    TokenMajor(u32),
    /// `(x, ⌈n / TOKEN_TILE⌉)` for matmuls over the chunk's tokens.
    TokenTiles(u32),
    /// `(x, ⌈head / TOKEN_TILE⌉)` for the logits matmuls.
    HeadTiles(u32),
}

impl Groups {
    fn size(self, n: u32, head: u32) -> (u32, u32) {
        match self {
            Groups::Fixed(x, y) => (x, y),
            Groups::PerToken(x) => (x, n),
            Groups::TokenMajor(y) => (n, y),
            Groups::TokenTiles(x) => (x, n.div_ceil(TOKEN_TILE)),
            Groups::HeadTiles(x) => (x, head.div_ceil(TOKEN_TILE)),
        }
    }
}

struct Dispatch {
    kernel: Kernel,
    bind_group: wgpu::BindGroup,
    groups: Groups,
}

/// Activation buffers for one chunk, named after the maths. RMSNorm has none: the matrix kernels
/// normalize their input as they read it.
struct Activations {
    /// `[CHUNK, D]` the residual stream.
    x: wgpu::Buffer,
    /// `[CHUNK, 2·lru]`: GELU(linear_y) and the conv output, side by side per token.
    branches: wgpu::Buffer,
    /// `[CHUNK, lru]` RG-LRU output ⊙ GELU(y).
    lru_out: wgpu::Buffer,
    /// `[CHUNK, H + 2, hd]`: per token the query heads, the key and the value.
    qkv: wgpu::Buffer,
    /// `[CHUNK, H·hd]`
    attention_out: wgpu::Buffer,
    /// `[CHUNK, key blocks, H, hd]` and `[CHUNK, key blocks, H, 2]`: attention's per-block partial
    /// sums, and their maxima and normalizers.
    partial_a: wgpu::Buffer,
    partial_ml: wgpu::Buffer,
    /// `[CHUNK, F]` GeGLU hidden.
    hidden: wgpu::Buffer,
    /// `[CHUNK, V]`
    logits: wgpu::Buffer,
}

/// A copy of the state (GPU buffers), restorable into the engine that made it.
pub struct Snapshot {
    buffers: Vec<wgpu::Buffer>,
    position: usize,
    generated: u32,
}

pub struct Engine {
    ctx: GpuContext,
    pub config: Config,
    manifest: Manifest,
    kernels: Kernels,
    /// Where every piece goes, and the matrix stacks.
    layout: Layout,
    /// Weight buffer name (see [`Layout`]) → the buffer.
    weights: HashMap<String, wgpu::Buffer>,
    chunk_info: wgpu::Buffer,
    sampling: wgpu::Buffer,
    sampling_params: SamplingParams,
    /// `[CHUNK]` input token ids; `[0]` receives each sampled token.
    tokens: wgpu::Buffer,
    generated: wgpu::Buffer,
    readback: wgpu::Buffer,
    acts: Activations,
    /// The step counter first, then per layer conv history + h, or key ring + value ring.
    state: Vec<wgpu::Buffer>,
    state_bytes: u64,
    /// A 16-byte buffer bound where a kernel's optional input (bias, aux) is absent.
    unused: wgpu::Buffer,
    body: Vec<Dispatch>,
    head: Vec<Dispatch>,
    /// The sampler, which also advances the position.
    finish: Vec<Dispatch>,
    position: usize,
    generated_count: u32,
}

fn bytes<T: bytemuck::Pod>(value: &T) -> &[u8] {
    bytemuck::bytes_of(value)
}

impl Engine {
    /// Allocates everything for `manifest`'s model; weights arrive afterwards through
    /// [`Engine::weight_sink`].
    pub fn new(ctx: GpuContext, manifest: Manifest) -> Result<Self> {
        let config = manifest.config.clone();
        check_supported(&ctx, &manifest)?;
        let (c, d, lru, f) =
            (CHUNK as u64, config.hidden_size as u64, config.lru_width() as u64, config.mlp_width() as u64);
        let (h, hd, w, v) = (
            config.num_attention_heads as u64,
            config.head_dim() as u64,
            config.attention_window_size as u64,
            config.vocab_size as u64,
        );
        let f32s = |n: u64| n * 4;
        let blocks = key_blocks(config.attention_window_size) as u64;
        let acts = Activations {
            x: ctx.storage("x", f32s(c * d)),
            branches: ctx.storage("branches", f32s(c * 2 * lru)),
            lru_out: ctx.storage("lru_out", f32s(c * lru)),
            qkv: ctx.storage("qkv", f32s(c * (h + 2) * hd)),
            attention_out: ctx.storage("attention_out", f32s(c * h * hd)),
            partial_a: ctx.storage("partial_a", f32s(c * blocks * h * hd)),
            partial_ml: ctx.storage("partial_ml", f32s(c * blocks * h * 2)),
            hidden: ctx.storage("hidden", f32s(c * f)),
            logits: ctx.storage("logits", f32s(c * v)),
        };
        let limits = ctx.device.limits();
        let layout = Layout::new(&manifest, limits.max_storage_buffer_binding_size.min(limits.max_buffer_size))?;
        let weights: HashMap<String, wgpu::Buffer> =
            layout.buffers.iter().map(|(name, bytes)| (name.clone(), ctx.storage(name, *bytes))).collect();

        let slots = w + c;
        let mut state = vec![ctx.storage("step", std::mem::size_of::<StepState>() as u64)];
        for layer in 0..config.num_hidden_layers {
            match config.block_type(layer) {
                BlockType::Recurrent => {
                    state.push(ctx.storage("conv history", f32s((config.conv1d_width as u64 - 1) * lru)));
                    state.push(ctx.storage("h", f32s(lru)));
                }
                BlockType::Attention => {
                    state.push(ctx.storage("key ring", f32s(slots * hd)));
                    state.push(ctx.storage("value ring", f32s(slots * hd)));
                }
            }
        }
        let state_bytes = state.iter().map(|b| b.size()).sum();

        let sampling_params = SamplingParams::default();
        let mut engine = Engine {
            kernels: Kernels::new(&ctx.device),
            chunk_info: ctx.uniform("chunk", bytes(&ChunkInfo::zeroed())),
            sampling: ctx.uniform("sampling", bytes(&SampleParams::zeroed())),
            tokens: ctx.storage("tokens", 4 * c),
            generated: ctx.storage("generated", 4 * GENERATED_RING as u64),
            readback: ctx.buffer("readback", f32s(c * v), wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
            unused: ctx.storage("unused", 16),
            ctx,
            config,
            manifest,
            layout,
            weights,
            sampling_params,
            acts,
            state,
            state_bytes,
            body: Vec::new(),
            head: Vec::new(),
            finish: Vec::new(),
            position: 0,
            generated_count: 0,
        };
        engine.build_dispatches();
        engine.set_sampling(&SamplingParams::default())?;
        // Allocation failures (a model too large for the device) surface here, not as a panic.
        engine.ctx.check()?;
        Ok(engine)
    }

    /// GPU memory of every buffer the engine created (weights, state, activations, staging).
    pub fn memory_bytes(&self) -> u64 {
        self.ctx.allocated_bytes()
    }

    /// GPU memory of the state that a conversation carries: constant for a given model.
    pub fn state_bytes(&self) -> u64 {
        self.state_bytes
    }

    /// Compute dispatches in one decode step: the whole forward pass of one token plus sampling.
    pub fn dispatches_per_token(&self) -> usize {
        self.body.len() + self.head.len() + self.finish.len()
    }

    pub fn weight_bytes(&self) -> u64 {
        self.manifest.pieces.iter().map(|p| p.bytes).sum()
    }

    /// Tokens processed so far.
    pub fn position(&self) -> usize {
        self.position
    }

    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Where the loader sends each piece's bytes as they arrive.
    pub fn weight_sink(&self) -> WeightSink<'_> {
        WeightSink { engine: self, pending: HashMap::new() }
    }

    pub fn set_sampling(&mut self, params: &SamplingParams) -> Result<()> {
        params.validate()?;
        self.sampling_params = *params;
        Ok(())
    }

    /// Frees all of the engine's GPU memory now, rather than whenever the buffers are dropped
    /// (in a browser, when the garbage collector gets to them).
    pub fn destroy(self) {
        self.ctx.device.destroy();
    }

    /// Forgets the conversation: zeroes the state.
    pub fn reset(&mut self) {
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        for buffer in &self.state {
            encoder.clear_buffer(buffer, 0, None);
        }
        self.ctx.queue.submit([encoder.finish()]);
        self.position = 0;
        self.generated_count = 0;
    }

    /// The state plus the pending input token: everything a conversation continues from.
    fn conversation_buffers(&self) -> impl Iterator<Item = &wgpu::Buffer> {
        self.state.iter().chain([&self.tokens])
    }

    /// A copy of the state, e.g. after a chat turn, to return to later.
    pub fn snapshot(&self) -> Snapshot {
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        let buffers = self
            .conversation_buffers()
            .map(|source| {
                // Snapshots are the caller's memory, not the engine's: they are not counted.
                let copy = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("snapshot"),
                    size: source.size(),
                    usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                encoder.copy_buffer_to_buffer(source, 0, &copy, 0, source.size());
                copy
            })
            .collect();
        self.ctx.queue.submit([encoder.finish()]);
        Snapshot { buffers, position: self.position, generated: self.generated_count }
    }

    pub fn restore(&mut self, snapshot: &Snapshot) -> Result<()> {
        let same_shape = snapshot.buffers.len() == self.state.len() + 1
            && snapshot.buffers.iter().zip(self.conversation_buffers()).all(|(a, b)| a.size() == b.size());
        if !same_shape {
            return Err(Error::Gpu("snapshot belongs to another model".into()));
        }
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        for (source, target) in snapshot.buffers.iter().zip(self.conversation_buffers()) {
            encoder.copy_buffer_to_buffer(source, 0, target, 0, source.size());
        }
        self.ctx.queue.submit([encoder.finish()]);
        self.position = snapshot.position;
        self.generated_count = snapshot.generated;
        Ok(())
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        match tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            Some(t) => {
                Err(Error::Input(format!("token id {t} is out of range: vocab size is {}", self.config.vocab_size)))
            }
            None => Ok(()),
        }
    }

    /// Runs `tokens` through the model from the current position and samples the next token,
    /// which is returned and also kept on the GPU as the input of the next [`Engine::step`].
    pub async fn prefill(&mut self, tokens: &[u32]) -> Result<u32> {
        if tokens.is_empty() {
            return Err(Error::Input("prefill needs at least one token".into()));
        }
        self.check_tokens(tokens)?;
        let chunks: Vec<&[u32]> = tokens.chunks(CHUNK).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            self.ctx.queue.write_buffer(&self.tokens, 0, bytemuck::cast_slice(chunk));
            self.submit_chunk(chunk.len() as u32, if last { Some((chunk.len() as u32 - 1, 1)) } else { None }, last, 1);
        }
        self.read_generated(1).await.map(|ids| ids[0])
    }

    /// Runs `tokens` through the model without sampling and waits for the GPU: a long prompt fed
    /// this way a whole number of chunks at a time, then its rest with [`Engine::prefill`], leaves
    /// the state exactly as one prefill would, and its caller can stop in between.
    pub async fn feed(&mut self, tokens: &[u32]) -> Result<()> {
        self.check_tokens(tokens)?;
        for chunk in tokens.chunks(CHUNK) {
            self.ctx.queue.write_buffer(&self.tokens, 0, bytemuck::cast_slice(chunk));
            self.submit_chunk(chunk.len() as u32, None, false, 1);
        }
        self.ctx.read(&self.tokens, 0, 4, &self.readback).await.map(drop)
    }

    /// Feeds the last sampled token and returns the next one.
    pub async fn step(&mut self) -> Result<u32> {
        self.decode(1).await.map(|ids| ids[0])
    }

    /// `n` decode steps queued in one submission; returns the `n` sampled tokens. A stop token
    /// does not end the run: callers cut the result where they like.
    pub async fn decode(&mut self, n: usize) -> Result<Vec<u32>> {
        if self.position == 0 {
            return Err(Error::Input("decode needs a prefill first".into()));
        }
        let mut ids = Vec::with_capacity(n);
        let mut remaining = n;
        while remaining > 0 {
            let batch = remaining.min(GENERATED_RING as usize);
            self.submit_chunk(1, Some((0, 1)), true, batch);
            ids.extend(self.read_generated(batch).await?);
            remaining -= batch;
        }
        Ok(ids)
    }

    /// The logits `[tokens.len(), V]` of every position (tests and `rg logits`); advances the state.
    pub async fn logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check_tokens(tokens)?;
        let mut all = Vec::with_capacity(tokens.len() * self.config.vocab_size);
        for chunk in tokens.chunks(CHUNK) {
            let n = chunk.len() as u32;
            self.ctx.queue.write_buffer(&self.tokens, 0, bytemuck::cast_slice(chunk));
            self.submit_chunk(n, Some((0, n)), false, 1);
            let size = chunk.len() as u64 * self.config.vocab_size as u64 * 4;
            let raw = self.ctx.read(&self.acts.logits, 0, size, &self.readback).await?;
            all.extend(bytemuck::cast_slice::<u8, f32>(&raw));
        }
        Ok(all)
    }

    /// Encodes `repeat` × (body, head for `head` = (first, count) if any, finish) for a chunk of
    /// `n` tokens, in one compute pass and one submission.
    fn submit_chunk(&mut self, n: u32, head: Option<(u32, u32)>, sample: bool, repeat: usize) {
        let (head_first, head_count) = head.unwrap_or((0, 0));
        let info = ChunkInfo { n_tokens: n, head_first, head_count, _pad: 0 };
        self.ctx.queue.write_buffer(&self.chunk_info, 0, bytes(&info));
        let p = &self.sampling_params;
        let sample_params = SampleParams {
            temperature: p.temperature,
            top_k: p.top_k.min(u32::MAX as usize) as u32,
            top_p: p.top_p,
            seed: (p.seed ^ (p.seed >> 32)) as u32,
            mode: sample as u32,
            vocab: self.config.vocab_size as u32,
            _pad: [0; 2],
        };
        self.ctx.queue.write_buffer(&self.sampling, 0, bytes(&sample_params));
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            let mut current = None;
            for _ in 0..repeat {
                let head_dispatches = if head.is_some() { &self.head[..] } else { &[] };
                for dispatch in self.body.iter().chain(head_dispatches).chain(&self.finish) {
                    let (x, y) = dispatch.groups.size(n, head_count);
                    if x == 0 || y == 0 {
                        continue;
                    }
                    if current != Some(dispatch.kernel) {
                        pass.set_pipeline(self.kernels.pipeline(dispatch.kernel));
                        current = Some(dispatch.kernel);
                    }
                    pass.set_bind_group(0, &dispatch.bind_group, &[]);
                    pass.dispatch_workgroups(x, y, 1);
                }
            }
        }
        self.ctx.queue.submit([encoder.finish()]);
        self.position += n as usize * repeat;
        if sample {
            self.generated_count += repeat as u32;
        }
    }

    /// The last `count` sampled ids from the GPU ring.
    async fn read_generated(&self, count: usize) -> Result<Vec<u32>> {
        let raw = self.ctx.read(&self.generated, 0, 4 * GENERATED_RING as u64, &self.readback).await?;
        let ring: &[u32] = bytemuck::cast_slice(&raw);
        let end = self.generated_count as usize;
        let ids: Vec<u32> = (end - count..end).map(|i| ring[i % GENERATED_RING as usize]).collect();
        if ids.contains(&NO_TOKEN) {
            return Err(Error::Input(format!("cannot sample: all {} logits are NaN or -inf", self.config.vocab_size)));
        }
        Ok(ids)
    }

    /// A weight buffer by its [`Layout`] name.
    fn weight(&self, name: &str) -> &wgpu::Buffer {
        &self.weights[name]
    }

    /// The buffer holding the one piece of a vector such as a norm weight.
    fn vector(&self, tensor: &str) -> &wgpu::Buffer {
        self.weight(&self.layout.placement[tensor].0)
    }

    fn stack(&self, first_tensor: &str) -> &Stack {
        &self.layout.stacks[first_tensor]
    }

    fn uniform<T: bytemuck::Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        self.ctx.uniform(label, bytes(value))
    }

    /// `y = epilogue(W·x̂ + b)` over every values buffer of the stack starting at `tensor`, where x̂
    /// is `RMSNorm(x)` with weight `norm` if given, else x.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        out: &mut Vec<Dispatch>,
        tensor: &str,
        norm: Option<&str>,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        epilogue: Epilogue,
        head: bool,
    ) {
        let stack = self.stack(tensor);
        for (values, row_start, rows) in &stack.parts {
            let mut m = Int8Rows { row_offset: *row_start as u32, ..Int8Rows::new(*rows, stack.cols) }
                .with_bias(stack.bias_offset);
            if norm.is_some() {
                m = m.with_norm(self.config.rms_norm_eps);
            }
            let params = MatmulParams {
                m,
                y_stride: stack.rows as u32,
                y_offset: *row_start as u32,
                epilogue: epilogue as u32,
                token_source: head as u32,
                cap: self.config.logits_soft_cap,
                _pad: [0; 3],
            };
            let params = self.uniform("matmul params", &params);
            let norm = norm.map(|n| self.vector(n)).unwrap_or(&self.unused);
            let buffers = [&params, &self.chunk_info, self.weight(values), self.weight(&stack.affine), norm, x, y];
            let groups = if head { Groups::HeadTiles(m.row_groups()) } else { Groups::TokenTiles(m.row_groups()) };
            self.dispatch(out, Kernel::MatmulInt8, &buffers, groups);
        }
    }

    /// The one values buffer of a stack of two matrices, which the pair kernels need.
    fn pair_values(&self, stack: &Stack) -> &wgpu::Buffer {
        self.weight(&stack.parts[0].0)
    }

    fn dispatch(&self, out: &mut Vec<Dispatch>, kernel: Kernel, buffers: &[&wgpu::Buffer], groups: Groups) {
        out.push(Dispatch { kernel, bind_group: self.kernels.bind(&self.ctx.device, kernel, buffers), groups });
    }

    /// The dispatch list: the forward pass of `crate::model::Model`, block by block.
    fn build_dispatches(&mut self) {
        let config = self.config.clone();
        let a = &self.acts;
        let (d, lru, f) = (config.hidden_size, config.lru_width(), config.mlp_width());
        let eps = config.rms_norm_eps;
        let mut body = Vec::new();

        // x = E[token] · bf16(√D), one dispatch per values buffer of the table.
        let embedding = "model.embed_tokens.weight";
        let table = self.stack(embedding);
        for (values, row_start, rows) in &table.parts {
            let params = EmbedParams {
                rows: *rows as u32,
                cols: d as u32,
                row_start: *row_start as u32,
                embedding_scale: config.embedding_scale(),
            };
            let params = self.uniform("embed params", &params);
            let buffers =
                [&params, &self.chunk_info, &self.tokens, self.weight(values), self.weight(&table.affine), &a.x];
            self.dispatch(&mut body, Kernel::Embed, &buffers, Groups::PerToken((d as u32 / 4).div_ceil(64)));
        }

        // RoPE frequencies θ_i / position = base^(−2i/rotary_dims), computed on the host as the CPU does.
        let inv_freq: Vec<f32> = (0..config.rotary_dims() / 2)
            .map(|i| 1.0 / config.rope_theta.powf((2 * i) as f32 / config.rotary_dims() as f32))
            .collect();
        let inv_freq_buffer = self.ctx.storage("inv_freq", inv_freq.len() as u64 * 4);
        self.ctx.queue.write_buffer(&inv_freq_buffer, 0, bytemuck::cast_slice(&inv_freq));

        let step = &self.state[0];
        let mut state = self.state[1..].iter();
        for layer in 0..config.num_hidden_layers {
            let p = format!("model.layers.{layer}");
            let temporal_norm = format!("{p}.temporal_pre_norm.weight");
            let t = format!("{p}.temporal_block");
            match config.block_type(layer) {
                BlockType::Recurrent => {
                    let (history, h) = (state.next().expect("state"), state.next().expect("state"));
                    // branches = [GELU(linear_y(x̂)), Conv1D(linear_x(x̂))]
                    let stack = self.stack(&format!("{t}.linear_y.weight"));
                    let m = Int8Rows::pair(lru, d).with_norm(eps).with_bias(stack.bias_offset);
                    let params = RecurrentInParams { m, width: config.conv1d_width as u32, _pad: [0; 3] };
                    let params = self.uniform("recurrent_in params", &params);
                    let buffers = [
                        &params,
                        &self.chunk_info,
                        self.pair_values(stack),
                        self.weight(&stack.affine),
                        self.vector(&temporal_norm),
                        &a.x,
                        step,
                        self.weight(&conv_buffer(&t)),
                        history,
                        &a.branches,
                    ];
                    self.dispatch(&mut body, Kernel::RecurrentIn, &buffers, Groups::Fixed(m.row_groups(), 1));

                    // lru_out = RG-LRU(conv, gates(conv)) ⊙ GELU(y)
                    let stack = self.stack(&format!("{t}.rg_lru.input_gate_weight"));
                    let block = config.lru_block_width();
                    let m = Int8Rows {
                        block_rows: block as u32,
                        x_stride: 2 * lru as u32,
                        x_offset: lru as u32,
                        ..Int8Rows::pair(lru, block)
                    }
                    .with_bias(stack.bias_offset);
                    let params = self.uniform("rg_lru_gates params", &PairParams { m });
                    let buffers = [
                        &params,
                        &self.chunk_info,
                        self.pair_values(stack),
                        self.weight(&stack.affine),
                        &self.unused,
                        &a.branches,
                        step,
                        self.vector(&format!("{t}.rg_lru.recurrent_param")),
                        h,
                        &a.lru_out,
                    ];
                    self.dispatch(&mut body, Kernel::RgLruGates, &buffers, Groups::Fixed(m.row_groups(), 1));

                    let w = format!("{t}.linear_out.weight");
                    self.matmul(&mut body, &w, None, &a.lru_out, &a.x, Epilogue::Add, false);
                }
                BlockType::Attention => {
                    let (keys, values) = (state.next().expect("state"), state.next().expect("state"));
                    let w = format!("{t}.q_proj.weight");
                    self.matmul(&mut body, &w, Some(&temporal_norm), &a.x, &a.qkv, Epilogue::Store, false);
                    let heads = config.num_attention_heads as u32;
                    let slots = (config.attention_window_size + CHUNK) as u32;
                    let rope = RopeParams {
                        heads,
                        head_dim: config.head_dim() as u32,
                        rotary_half: config.rotary_dims() as u32 / 2,
                        slots,
                    };
                    let rope = self.uniform("rope params", &rope);
                    let buffers = [&rope, &self.chunk_info, step, &inv_freq_buffer, &a.qkv, keys, values];
                    self.dispatch(&mut body, Kernel::RopeKv, &buffers, Groups::TokenMajor(heads + 1));
                    let blocks = key_blocks(config.attention_window_size);
                    let params = AttentionParams {
                        heads,
                        head_dim: config.head_dim() as u32,
                        window: config.attention_window_size as u32,
                        slots,
                        scale: (config.head_dim() as f32).powf(-0.5),
                        blocks,
                        _pad: [0; 2],
                    };
                    let params = self.uniform("attention params", &params);
                    let buffers = [&params, &self.chunk_info, step, &a.qkv, keys, values, &a.partial_a, &a.partial_ml];
                    self.dispatch(&mut body, Kernel::Attention, &buffers, Groups::PerToken(blocks));
                    let params = AttentionCombineParams { heads, head_dim: config.head_dim() as u32, blocks, _pad: 0 };
                    let params = self.uniform("attention combine params", &params);
                    let buffers = [&params, &self.chunk_info, &a.partial_a, &a.partial_ml, &a.attention_out];
                    self.dispatch(&mut body, Kernel::AttentionCombine, &buffers, Groups::PerToken(heads));
                    let w = format!("{t}.o_proj.weight");
                    self.matmul(&mut body, &w, None, &a.attention_out, &a.x, Epilogue::Add, false);
                }
            }
            // hidden = GELU(gate_proj(x̂)) ⊙ up_proj(x̂), then x += down_proj(hidden)
            let m = format!("{p}.mlp_block");
            let stack = self.stack(&format!("{m}.gate_proj.weight"));
            let rows = Int8Rows::pair(f, d).with_norm(eps).with_bias(stack.bias_offset);
            let params = self.uniform("geglu params", &PairParams { m: rows });
            let buffers = [
                &params,
                &self.chunk_info,
                self.pair_values(stack),
                self.weight(&stack.affine),
                self.vector(&format!("{p}.channel_pre_norm.weight")),
                &a.x,
                &a.hidden,
            ];
            self.dispatch(&mut body, Kernel::GegluInt8, &buffers, Groups::TokenTiles(rows.row_groups()));
            self.matmul(&mut body, &format!("{m}.down_proj.weight"), None, &a.hidden, &a.x, Epilogue::Add, false);
        }

        // logits = soft_cap(E · RMSNorm(x)), only for the rows the caller wants.
        let mut head = Vec::new();
        self.matmul(&mut head, embedding, Some("model.final_norm.weight"), &a.x, &a.logits, Epilogue::SoftCap, true);

        let buffers = [&self.sampling, &self.chunk_info, step, &a.logits, &self.tokens, &self.generated];
        let mut finish = Vec::new();
        self.dispatch(&mut finish, Kernel::Sample, &buffers, Groups::Fixed(1, 1));
        self.body = body;
        self.head = head;
        self.finish = finish;
    }
}

fn check_supported(ctx: &GpuContext, manifest: &Manifest) -> Result<()> {
    if manifest.quantization != Quantization::Int8 {
        return Err(Error::Gpu("the GPU engine runs int8 models; convert with --quant int8".into()));
    }
    let config = &manifest.config;
    for spec in tensor_specs(config).iter().filter(|s| s.is_matrix) {
        if spec.shape[1] % 4 != 0 {
            return Err(Error::Gpu(format!("{}: {} columns is not a multiple of 4", spec.name, spec.shape[1])));
        }
    }
    if config.conv1d_width > 8 {
        return Err(Error::Gpu(format!("conv1d_width {} is above the kernel's 8", config.conv1d_width)));
    }
    if config.num_attention_heads > MAX_HEADS {
        let heads = config.num_attention_heads;
        return Err(Error::Gpu(format!("{heads} attention heads is above the kernel's {MAX_HEADS}")));
    }
    let limit = ctx.device.limits().max_storage_buffer_binding_size;
    let biggest_activation = CHUNK as u64 * config.vocab_size as u64 * 4;
    if let Some(piece) = manifest.pieces.iter().find(|p| p.bytes > limit) {
        return Err(Error::Gpu(format!(
            "{}: {} bytes exceed the device's {limit}-byte binding limit",
            piece.name, piece.bytes
        )));
    }
    if biggest_activation > limit {
        return Err(Error::Gpu(format!("logits need {biggest_activation} bytes, above the device's {limit}")));
    }
    Ok(())
}

/// Writes each piece's bytes into its place in a GPU buffer (see [`Layout`]) as they arrive. `queue.write_buffer` needs
/// 4-byte multiples, so up to 3 bytes per piece wait for the next chunk. The RG-LRU `a_param` is
/// turned into `−8·softplus(a_param)` (in f64, as the CPU reference) on its way in.
pub struct WeightSink<'e> {
    engine: &'e Engine,
    pending: HashMap<String, (u64, Vec<u8>)>,
}

impl PieceSink for WeightSink<'_> {
    fn piece_bytes(&mut self, piece: &Piece, offset: u64, data: &[u8]) -> Result<()> {
        let (buffer, base) = &self.engine.layout.placement[&piece.name];
        let (buffer, base) = (self.engine.weight(buffer), *base);
        let queue = &self.engine.ctx.queue;
        let (start, held) = self.pending.entry(piece.name.clone()).or_insert((offset, Vec::new()));
        held.extend_from_slice(data);
        if piece.tensor.ends_with("rg_lru.recurrent_param") {
            if *start + held.len() as u64 == piece.bytes {
                let a_param: &[f32] = bytemuck::cast_slice(held);
                let log_a_scale: Vec<f32> = a_param.iter().map(|&a| (-8.0 * softplus(a)) as f32).collect();
                queue.write_buffer(buffer, base, bytemuck::cast_slice(&log_a_scale));
                self.pending.remove(&piece.name);
            }
            return Ok(());
        }
        let aligned = held.len() / 4 * 4;
        if aligned > 0 {
            queue.write_buffer(buffer, base + *start, &held[..aligned]);
            *start += aligned as u64;
            held.drain(..aligned);
        }
        Ok(())
    }
}

/// Native convenience: an engine with the web-format model in `dir` loaded.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_engine(ctx: GpuContext, dir: &std::path::Path) -> Result<Engine> {
    let manifest = crate::weights::load::read_manifest(dir)?;
    let engine = Engine::new(ctx, manifest.clone())?;
    crate::weights::load::stream_shards(dir, &manifest, &mut engine.weight_sink())?;
    Ok(engine)
}
