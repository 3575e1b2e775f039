//! RecurrentGemma on the GPU: the engine owns the buffers — weights ([`GpuWeights`]), the
//! fixed-size state, activations for one chunk of tokens — and submits the command list that
//! [`super::forward::plan`] builds once, in [`Engine::new`]. A token only writes a 16-byte
//! uniform and encodes the prebuilt ops. The sampled token stays on the GPU as the next step's
//! input; only its id is read back.

use std::collections::VecDeque;

use bytemuck::Zeroable;

use super::cost::{DeviceModel, PlanCost};
use super::forward::{self, Activations, Io, LayerState, Path, Plan};
use super::kernels::*;
use super::matrix::MatrixFormat;
use super::ops::{self, KeyValueRing, Ops, SamplerBuffers};
use super::weights::{GpuWeights, WeightSink};
use super::GpuContext;
use crate::chat::SamplingParams;
use crate::config::{BlockType, Config};
use crate::weights::format::{Manifest, Quantization};
use crate::weights::tensor_specs;
use crate::{Error, Result};

/// A copy of the state (GPU buffers), restorable into the engine that made it.
pub struct Snapshot {
    buffers: Vec<wgpu::Buffer>,
    position: usize,
    generated: u32,
}

/// On the web a dropped buffer keeps its GPU memory until JavaScript's garbage collector runs
/// (the 2B's snapshot is 34 MB): free it now. Work already submitted that reads it still runs.
impl Drop for Snapshot {
    fn drop(&mut self) {
        for buffer in &self.buffers {
            buffer.destroy();
        }
    }
}

impl Snapshot {
    /// Tokens the state holds.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Tokens sampled so far: the sampler's draw counter, part of a seeded draw.
    pub fn generated(&self) -> u32 {
        self.generated
    }
}

/// The version of the state buffers' order and layout as saved bytes ([`Engine::snapshot_bytes`]):
/// raise it whenever they change, so that older saved states are refused instead of restored as
/// garbage.
pub const STATE_LAYOUT: u16 = 1;

/// Decode steps the engine keeps queued ahead of the host while it streams a generation: the GPU
/// runs them while the host reads an id back, turns it into text and hands it on.
pub const STEPS_IN_FLIGHT: usize = 2;

/// What a streamed step's readback holds: the `Step` block after the step, then the next input.
const STEP_READBACK: u64 = std::mem::size_of::<StepState>() as u64 + 4;

/// A submitted step whose readback is on its way.
struct Pending {
    submission: wgpu::SubmissionIndex,
    staging: wgpu::Buffer,
    mapped: futures_channel::oneshot::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
}

/// A streamed generation ([`Engine::start`]): the steps queued and what may still be queued.
#[derive(Default)]
struct Stream {
    pending: VecDeque<Pending>,
    /// Readback buffers no step is using.
    free: Vec<wgpu::Buffer>,
    steps_left: usize,
    /// The GPU's count of sampled tokens as of the last readback: a step that did not raise it
    /// ran halted (behind a stop) and changed nothing.
    seen: u32,
    /// In a constrained generation: the mask of the next step is written, so it may be queued.
    step_allowed: bool,
}

/// How often [`Engine::profile`] runs each op back to back between two GPU timestamps.
pub const PROFILE_REPEATS: usize = 16;

/// One kernel's share of a profiled chunk.
#[derive(Clone, Debug)]
pub struct KernelTime {
    pub kernel: &'static str,
    pub dispatches: usize,
    /// Seconds per chunk, all its dispatches together.
    pub seconds: f64,
    pub weight_bytes: u64,
    pub activation_bytes: u64,
}

/// Where a chunk's time goes, and whether the GPU timed it ([`Engine::profile`]).
#[derive(Clone, Debug)]
pub struct Profile {
    pub timestamps: bool,
    pub kernels: Vec<KernelTime>,
}

pub struct Engine {
    ctx: GpuContext,
    pub config: Config,
    manifest: Manifest,
    weights: GpuWeights,
    chunk_info: wgpu::Buffer,
    sampling: wgpu::Buffer,
    sampling_params: SamplingParams,
    /// `[vocab]` u32: how often the sampler drew each id in this reply, counted on the GPU by
    /// `sample.wgsl`; what the penalties read.
    counts: wgpu::Buffer,
    /// The counts are cleared at the start of the next submission: a reply starts
    /// ([`Engine::start_reply`]).
    clear_counts: bool,
    /// `generated_count` when the current reply started (see `SampleParams::first_draw`).
    first_draw: u32,
    /// `[vocab]` f32: `logit_bias` as a dense row, written when it changes.
    bias: wgpu::Buffer,
    /// `[vocab / 32]` u32: the ids a constrained reply may draw next, one bit each
    /// ([`Engine::allow`]).
    mask: wgpu::Buffer,
    /// A constrained reply is streaming: each step samples under `mask`, and is queued only once
    /// the host wrote the mask for it, so one step is in flight, not [`STEPS_IN_FLIGHT`].
    constrained: bool,
    /// The ids that halt a streamed generation when drawn (end of turn, EOS, the caller's).
    stops: Vec<u32>,
    stream: Stream,
    /// `[CHUNK]` input token ids; `[0]` receives each sampled token.
    tokens: wgpu::Buffer,
    generated: wgpu::Buffer,
    readback: wgpu::Buffer,
    acts: Activations,
    /// The step counter first, then per layer conv history + h, or key ring + value ring.
    state: Vec<wgpu::Buffer>,
    state_bytes: u64,
    /// The command lists of a decode step (up to TOKEN_TILE tokens) and of a prefill chunk.
    /// One token (a decode step) on `gemv.wgsl`, unless `RG_KERNELS=v1`.
    step_plan: Option<Plan>,
    decode_plan: Plan,
    prefill_plan: Plan,
    position: usize,
    generated_count: u32,
}

impl Engine {
    /// Allocates everything for `manifest`'s model; weights arrive afterwards through
    /// [`Engine::weight_sink`].
    /// Its kernels as `RG_SHADER_CHECKS` and `RG_KERNELS` say natively ([`KernelOptions::from_env`]).
    pub fn new(ctx: GpuContext, manifest: Manifest) -> Result<Self> {
        Self::with_kernels(ctx, manifest, KernelOptions::from_env()?)
    }

    /// As [`Engine::new`], with these kernels.
    pub fn with_kernels(ctx: GpuContext, manifest: Manifest, options: KernelOptions) -> Result<Self> {
        let config = manifest.config.clone();
        let format = check_supported(&ctx, &manifest)?;
        let acts = Activations::new(&ctx, &config)?;
        let weights = GpuWeights::new(&ctx, &manifest)?;

        let (lru, hd) = (config.lru_width() as u64, config.head_dim() as u64);
        let slots = ring_slots(config.attention_window_size) as u64;
        let mut state = vec![ctx.storage("step", std::mem::size_of::<StepState>() as u64)];
        for layer in 0..config.num_hidden_layers {
            match config.block_type(layer) {
                BlockType::Recurrent => {
                    state.push(ctx.storage("conv history", 4 * (config.conv1d_width as u64 - 1) * lru));
                    state.push(ctx.storage("h", 4 * lru));
                }
                BlockType::Attention => {
                    state.push(ctx.storage("key ring", 4 * slots * hd));
                    state.push(ctx.storage("value ring", 4 * slots * hd));
                }
            }
        }
        let state_bytes = state.iter().map(|b| b.size()).sum();

        let chunk_info = ctx.uniform("chunk", bytemuck::bytes_of(&ChunkInfo::zeroed()));
        let sampling = ctx.uniform("sampling", bytemuck::bytes_of(&SampleParams::zeroed()));
        let tokens = ctx.storage("tokens", 4 * CHUNK as u64);
        let generated = ctx.storage("generated", 4 * GENERATED_RING as u64);
        // Zeroed at creation: no draws, no bias.
        let counts = ctx.storage("repetition counts", 4 * config.vocab_size as u64);
        let bias = ctx.storage("logit bias", 4 * config.vocab_size as u64);
        let mask = ctx.storage("allowed tokens", 4 * config.vocab_size.div_ceil(32) as u64);
        let readback_bytes = 4 * (LOGIT_ROWS * config.vocab_size) as u64;
        let readback =
            ctx.buffer("readback", readback_bytes, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        let unused = ctx.storage("unused", 16);
        let kernels = Kernels::new(&ctx.device, &[format], options.checks);
        let ops = Ops { ctx: &ctx, kernels: &kernels, chunk: &chunk_info, unused: &unused, core: Core::Rows };
        let mut layer_state = state[1..].chunks(2);
        let layers = (0..config.num_hidden_layers)
            .map(|layer| {
                let pair = layer_state.next().expect("two state buffers per layer");
                match config.block_type(layer) {
                    BlockType::Recurrent => LayerState::Recurrent { history: &pair[0], h: &pair[1] },
                    BlockType::Attention => LayerState::Attention(KeyValueRing { keys: &pair[0], values: &pair[1] }),
                }
            })
            .collect();
        let sampler = SamplerBuffers {
            sampling: &sampling,
            tokens: &tokens,
            generated: &generated,
            counts: &counts,
            bias: &bias,
            mask: &mask,
        };
        let io = Io { step: &state[0], layers, sampler };
        let decode_plan = forward::plan(&ops, &config, &weights, &acts, &io, Path::Decode);
        let prefill_plan = forward::plan(&ops, &config, &weights, &acts, &io, Path::Prefill);
        let step_plan = match options.generation {
            KernelGeneration::V1 => None,
            KernelGeneration::V2 => {
                let gemv = Ops { core: Core::Gemv, ..ops };
                Some(forward::plan(&gemv, &config, &weights, &acts, &io, Path::Decode))
            }
        };

        let mut engine = Engine {
            ctx,
            config,
            manifest,
            weights,
            chunk_info,
            sampling,
            sampling_params: SamplingParams::default(),
            counts,
            clear_counts: false,
            first_draw: 0,
            bias,
            mask,
            constrained: false,
            stops: Vec::new(),
            stream: Stream::default(),
            tokens,
            generated,
            readback,
            acts,
            state,
            state_bytes,
            step_plan,
            decode_plan,
            prefill_plan,
            position: 0,
            generated_count: 0,
        };
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

    /// Compute dispatches of one submission of `n` tokens with logits for the last: the whole
    /// forward pass plus sampling (a decode step is `n` = 1).
    pub fn dispatches(&self, n: usize) -> usize {
        let plan = self.plan_for(n as u32);
        plan.body.len() + plan.head.len() + plan.finish.len()
    }

    /// What one submission of `n` tokens (at most [`CHUNK`]) with logits for the last costs a
    /// GPU, counted from its ops' kernels, the sampler drawing with `sampling`.
    pub fn plan_cost(&self, n: usize, sampling: &SamplingParams) -> PlanCost {
        let n = n.clamp(1, CHUNK) as u32;
        self.plan_for(n).cost(n, 1, sampling, self.config.vocab_size)
    }

    /// Seconds one submission of `n` tokens (at most [`CHUNK`]) with logits for the last would
    /// take on `device`, by its analytic model.
    pub fn predict(&self, n: usize, sampling: &SamplingParams, device: &DeviceModel) -> f64 {
        let n = n.clamp(1, CHUNK) as u32;
        self.plan_for(n).predict(n, 1, sampling, self.config.vocab_size, device)
    }

    /// The command list for a chunk of `n` tokens.
    fn plan_for(&self, n: u32) -> &Plan {
        if let (1, Some(step)) = (n, &self.step_plan) {
            step
        } else if n <= TOKEN_TILE {
            &self.decode_plan
        } else {
            &self.prefill_plan
        }
    }

    /// How the model's matrices are stored: `int8` or `int4`.
    pub fn quantization(&self) -> Quantization {
        self.manifest.quantization
    }

    /// Bytes of weights the command list reads for a chunk of `n` tokens of which `head` get
    /// logits, counted from its ops: a decoded token is `(1, 1)`, a prompt of n tokens `(n, 1)`.
    pub fn weight_bytes_read(&self, n: usize, head: usize) -> u64 {
        // As the engine runs a prompt: chunks of CHUNK tokens, the head on the last one.
        let chunks = n.div_ceil(CHUNK).max(1);
        (0..chunks)
            .map(|i| {
                let len = (n - i * CHUNK).min(CHUNK) as u32;
                let head = if i + 1 == chunks { head as u32 } else { 0 };
                self.plan_for(len).weight_bytes_read(len, head)
            })
            .sum()
    }

    pub fn weight_bytes(&self) -> u64 {
        self.manifest.pieces.iter().map(|p| p.bytes).sum()
    }

    /// Where the time of a chunk of `n` tokens with logits for its last goes, kernel by kernel in
    /// order of first use. With GPU timestamps (`TIMESTAMP_QUERY`) each op runs
    /// [`PROFILE_REPEATS`] times back to back in a pass of its own, timed on the GPU; without,
    /// each op is submitted alone and waited for, which adds the host's round trip to every
    /// dispatch. Natively only (a browser cannot block on the GPU). Leaves the state garbled (the
    /// ops run again on their own outputs): [`Engine::reset`] it after.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile(&mut self, tokens: &[u32]) -> Result<Profile> {
        if tokens.is_empty() || tokens.len() > CHUNK {
            return Err(Error::Input(format!("profile takes 1 to {CHUNK} tokens")));
        }
        self.check_tokens(tokens)?;
        self.resume()?;
        let n = tokens.len() as u32;
        self.ctx.queue.write_buffer(&self.tokens, 0, bytemuck::cast_slice(tokens));
        let info = ChunkInfo { n_tokens: n, head_first: n - 1, head_count: 1, _pad: 0 };
        self.ctx.queue.write_buffer(&self.chunk_info, 0, bytemuck::bytes_of(&info));
        let plan = self.plan_for(n);
        let body = plan.body.iter().chain(&plan.finish).map(|op| (op, n));
        let ops: Vec<(&ops::Op, u32)> = body.chain(plan.head.iter().map(|op| (op, 1))).collect();
        let timestamps = self.ctx.device.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let seconds = if timestamps { self.time_on_gpu(&ops, n)? } else { self.time_on_host(&ops, n)? };
        let mut kernels: Vec<KernelTime> = Vec::new();
        for ((op, tokens), seconds) in ops.iter().zip(seconds) {
            let weight_bytes = op.weight_bytes_read(*tokens);
            let activation_bytes = op.cost().activations.over(*tokens);
            match kernels.iter_mut().find(|k| k.kernel == op.kernel_name()) {
                Some(k) => {
                    k.dispatches += 1;
                    k.seconds += seconds;
                    k.weight_bytes += weight_bytes;
                    k.activation_bytes += activation_bytes;
                }
                None => kernels.push(KernelTime {
                    kernel: op.kernel_name(),
                    dispatches: 1,
                    seconds,
                    weight_bytes,
                    activation_bytes,
                }),
            }
        }
        self.position += n as usize;
        self.ctx.check()?;
        Ok(Profile { timestamps, kernels })
    }

    /// Seconds per dispatch of each op, from timestamps around [`PROFILE_REPEATS`] of it.
    #[cfg(not(target_arch = "wasm32"))]
    fn time_on_gpu(&self, ops: &[(&ops::Op, u32)], n: u32) -> Result<Vec<f64>> {
        let count = 2 * ops.len() as u32;
        let queries = self.ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let bytes = 8 * count as u64;
        let resolved =
            self.ctx.buffer("timestamps", bytes, wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC);
        let staging =
            self.ctx.buffer("timestamps read", bytes, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        for (i, (op, _)) in ops.iter().enumerate() {
            let writes = wgpu::ComputePassTimestampWrites {
                query_set: &queries,
                beginning_of_pass_write_index: Some(2 * i as u32),
                end_of_pass_write_index: Some(2 * i as u32 + 1),
            };
            let mut pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: Some(writes) });
            ops::record(&mut pass, std::iter::repeat_n(*op, PROFILE_REPEATS), n, 1);
        }
        encoder.resolve_query_set(&queries, 0..count, &resolved, 0);
        self.ctx.queue.submit([encoder.finish()]);
        let read = pollster::block_on(self.ctx.read(&resolved, 0, bytes, &staging));
        resolved.destroy();
        staging.destroy();
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&read?);
        let tick_seconds = self.ctx.queue.get_timestamp_period() as f64 * 1e-9;
        Ok(ticks
            .chunks_exact(2)
            .map(|t| t[1].saturating_sub(t[0]) as f64 * tick_seconds / PROFILE_REPEATS as f64)
            .collect())
    }

    /// Seconds of each op submitted alone and waited for, host round trip included.
    #[cfg(not(target_arch = "wasm32"))]
    fn time_on_host(&self, ops: &[(&ops::Op, u32)], n: u32) -> Result<Vec<f64>> {
        let mut seconds = Vec::with_capacity(ops.len());
        for (op, _) in ops {
            let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
            ops::record(&mut encoder.begin_compute_pass(&Default::default()), [*op], n, 1);
            let start = web_time::Instant::now();
            self.ctx.queue.submit([encoder.finish()]);
            self.ctx
                .device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
            seconds.push(start.elapsed().as_secs_f64());
        }
        Ok(seconds)
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
        self.weights.sink(&self.ctx.queue)
    }

    /// How the next tokens are drawn, from the next submission on. The repetition counts are
    /// kept (they change only by drawing, [`Engine::start_reply`] and [`Engine::reset`]); a new
    /// `logit_bias` is uploaded as a dense row (4 bytes per vocabulary entry), only when it
    /// changed.
    pub fn set_sampling(&mut self, params: &SamplingParams) -> Result<()> {
        params.validate()?;
        params.validate_ids(self.config.vocab_size)?;
        if params.logit_bias != self.sampling_params.logit_bias {
            let mut dense = vec![0.0f32; self.config.vocab_size];
            for &(id, bias) in &params.logit_bias {
                dense[id as usize] = bias;
            }
            self.ctx.queue.write_buffer(&self.bias, 0, bytemuck::cast_slice(&dense));
        }
        self.sampling_params = params.clone();
        Ok(())
    }

    /// A new reply starts: the repetition counts (the tokens drawn in this reply, which the
    /// penalties read) are cleared on the GPU at the start of the next submission, before it
    /// samples. Prompt tokens are never counted; every token the sampler draws is, penalties on
    /// or off.
    pub fn start_reply(&mut self) {
        self.clear_counts = true;
        self.first_draw = self.generated_count;
    }

    /// The ids that end a streamed generation ([`Engine::start`]) when sampled: the step that
    /// draws one halts the GPU, and the steps queued behind it change nothing.
    pub fn set_stops(&mut self, stops: &[u32]) -> Result<()> {
        if stops.len() > MAX_STOPS as usize {
            return Err(Error::Input(format!("{} stop tokens: at most {MAX_STOPS}", stops.len())));
        }
        self.check_tokens(stops)?;
        self.stops = stops.to_vec();
        Ok(())
    }

    /// Frees all of the engine's GPU memory now, rather than whenever the buffers are dropped
    /// (in a browser, when the garbage collector gets to them).
    pub fn destroy(self) {
        self.ctx.forget_lost_listener();
        self.ctx.device.destroy();
    }

    /// Forgets the conversation: zeroes the state and the repetition counts.
    pub fn reset(&mut self) {
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        for buffer in self.state.iter().chain([&self.counts]) {
            encoder.clear_buffer(buffer, 0, None);
        }
        self.clear_counts = false;
        self.first_draw = 0;
        self.ctx.queue.submit([encoder.finish()]);
        self.position = 0;
        self.generated_count = 0;
        // A streamed generation left unfinished: its steps ran before the clear.
        self.stream.pending.clear();
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
        // A streamed generation left unfinished: its steps ran before the copy.
        self.stream.pending.clear();
        Ok(())
    }

    /// The bytes of a snapshot's buffers, in order, read back from the GPU.
    pub async fn snapshot_bytes(&self, snapshot: &Snapshot) -> Result<Vec<Vec<u8>>> {
        let piece = self.readback.size();
        let mut parts = Vec::with_capacity(snapshot.buffers.len());
        for buffer in &snapshot.buffers {
            let mut bytes = Vec::with_capacity(buffer.size() as usize);
            let mut offset = 0;
            while offset < buffer.size() {
                let size = piece.min(buffer.size() - offset);
                bytes.extend(self.ctx.read(buffer, offset, size, &self.readback).await?);
                offset += size;
            }
            parts.push(bytes);
        }
        Ok(parts)
    }

    /// A snapshot made of bytes that [`Engine::snapshot_bytes`] gave: one buffer of exactly the
    /// engine's size for each of its conversation buffers.
    pub fn snapshot_from_bytes(&self, parts: &[Vec<u8>], position: usize, generated: u32) -> Result<Snapshot> {
        let sizes: Vec<u64> = self.conversation_buffers().map(wgpu::Buffer::size).collect();
        let given: Vec<u64> = parts.iter().map(|p| p.len() as u64).collect();
        if given != sizes {
            return Err(Error::Input(format!(
                "saved state: its buffers ({} of {} bytes) do not fit this model's ({} of {} bytes)",
                given.len(),
                given.iter().sum::<u64>(),
                sizes.len(),
                sizes.iter().sum::<u64>()
            )));
        }
        let buffers = parts
            .iter()
            .map(|bytes| {
                let buffer = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("snapshot"),
                    size: bytes.len() as u64,
                    usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                self.ctx.queue.write_buffer(&buffer, 0, bytes);
                buffer
            })
            .collect();
        self.ctx.check()?;
        Ok(Snapshot { buffers, position, generated })
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
    /// which is returned and also kept on the GPU as the input of the next [`Engine::decode`].
    pub async fn prefill(&mut self, tokens: &[u32]) -> Result<u32> {
        if tokens.is_empty() {
            return Err(Error::Input("prefill needs at least one token".into()));
        }
        self.check_tokens(tokens)?;
        self.resume()?;
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
        self.resume()?;
        for chunk in tokens.chunks(CHUNK) {
            self.ctx.queue.write_buffer(&self.tokens, 0, bytemuck::cast_slice(chunk));
            self.submit_chunk(chunk.len() as u32, None, false, 1);
        }
        self.ctx.read(&self.tokens, 0, 4, &self.readback).await.map(drop)
    }

    /// `n` decode steps queued in one submission; returns the `n` sampled tokens. A stop token
    /// does not end the run: callers cut the result where they like.
    pub async fn decode(&mut self, n: usize) -> Result<Vec<u32>> {
        if self.position == 0 {
            return Err(Error::Input("decode needs a prefill first".into()));
        }
        self.resume()?;
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
        self.resume()?;
        let mut all = Vec::with_capacity(tokens.len() * self.config.vocab_size);
        for chunk in tokens.chunks(CHUNK) {
            let n = chunk.len() as u32;
            self.ctx.queue.write_buffer(&self.tokens, 0, bytemuck::cast_slice(chunk));
            self.submit_chunk(n, None, false, 1);
            // The head reads the chunk's final x, which the body left: LOGIT_ROWS rows at a time.
            for first in (0..n).step_by(LOGIT_ROWS) {
                let count = (n - first).min(LOGIT_ROWS as u32);
                self.submit_head(n, first, count);
                let size = count as u64 * self.config.vocab_size as u64 * 4;
                let raw = self.ctx.read(&self.acts.logits, 0, size, &self.readback).await?;
                all.extend(bytemuck::cast_slice::<u8, f32>(&raw));
            }
        }
        Ok(all)
    }

    /// Only the head (final norm and logits) for tokens `first..first + count` of the last chunk
    /// of `n` tokens.
    fn submit_head(&mut self, n: u32, first: u32, count: u32) {
        let info = ChunkInfo { n_tokens: n, head_first: first, head_count: count, _pad: 0 };
        self.ctx.queue.write_buffer(&self.chunk_info, 0, bytemuck::bytes_of(&info));
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            ops::record(&mut pass, &self.plan_for(n).head, n, count);
        }
        self.ctx.queue.submit([encoder.finish()]);
    }

    /// Encodes `repeat` × (body, head for `head` = (first, count) if any, finish) for a chunk of
    /// `n` tokens, in one compute pass and one submission.
    fn submit_chunk(&mut self, n: u32, head: Option<(u32, u32)>, sample: bool, repeat: usize) {
        self.submit_chunk_with(n, head, sample, repeat, false, None);
    }

    /// [`Engine::submit_chunk`], halting on the stop ids if `halt_on_stops`, and copying the
    /// `Step` block and the next input into `readback` after the chunk.
    fn submit_chunk_with(
        &mut self,
        n: u32,
        head: Option<(u32, u32)>,
        sample: bool,
        repeat: usize,
        halt_on_stops: bool,
        readback: Option<&wgpu::Buffer>,
    ) -> wgpu::SubmissionIndex {
        let (head_first, head_count) = head.unwrap_or((0, 0));
        let info = ChunkInfo { n_tokens: n, head_first, head_count, _pad: 0 };
        self.ctx.queue.write_buffer(&self.chunk_info, 0, bytemuck::bytes_of(&info));
        let p = &self.sampling_params;
        let mut sample_params = SampleParams {
            temperature: p.temperature,
            top_k: p.top_k.min(u32::MAX as usize) as u32,
            top_p: p.top_p,
            seed: (p.seed ^ (p.seed >> 32)) as u32,
            mode: sample as u32,
            vocab: self.config.vocab_size as u32,
            adjust: p.adjusts_logits() as u32,
            frequency_penalty: p.frequency_penalty,
            presence_penalty: p.presence_penalty,
            repetition_penalty: p.repetition_penalty,
            first_draw: self.first_draw,
            masked: (sample && self.constrained) as u32,
            ..SampleParams::zeroed()
        };
        if halt_on_stops {
            sample_params.stop_count = self.stops.len() as u32;
            sample_params.stops[..self.stops.len()].copy_from_slice(&self.stops);
        }
        self.ctx.queue.write_buffer(&self.sampling, 0, bytemuck::bytes_of(&sample_params));
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        if std::mem::take(&mut self.clear_counts) {
            encoder.clear_buffer(&self.counts, 0, None);
        }
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            let plan = self.plan_for(n);
            let head_ops = if head.is_some() { &plan.head[..] } else { &[] };
            for _ in 0..repeat {
                ops::record(&mut pass, plan.body.iter().chain(head_ops).chain(&plan.finish), n, head_count);
            }
        }
        if let Some(readback) = readback {
            encoder.copy_buffer_to_buffer(&self.state[0], 0, readback, 0, STEP_READBACK - 4);
            encoder.copy_buffer_to_buffer(&self.tokens, 0, readback, STEP_READBACK - 4, 4);
        }
        let submission = self.ctx.queue.submit([encoder.finish()]);
        self.position += n as usize * repeat;
        if sample {
            self.generated_count += repeat as u32;
        }
        submission
    }

    /// Ready for a new run: no streamed generation is pending, and the state-writing kernels run
    /// again after a stop token halted them.
    fn resume(&self) -> Result<()> {
        if !self.stream.pending.is_empty() {
            return Err(Error::Input("a generation is still running: finish it first".into()));
        }
        self.ctx.queue.write_buffer(&self.state[0], std::mem::offset_of!(StepState, halted) as u64, &[0; 4]);
        Ok(())
    }

    /// Starts streaming a generation: prefills `prompt` and samples the token after it, then
    /// queues up to `steps` decode steps behind it, each feeding the token the one before drew,
    /// [`STEPS_IN_FLIGHT`] ahead of the host. [`Engine::next_token`] returns the drawn ids in
    /// order; [`Engine::finish`] ends the generation. A stop id ([`Engine::set_stops`]) halts the
    /// GPU in the step that draws it, so the state ends exactly as after that step, whatever was
    /// queued behind it. An empty `prompt` continues from the pending token.
    pub fn start(&mut self, prompt: &[u32], steps: usize) -> Result<()> {
        if prompt.is_empty() && self.position == 0 {
            return Err(Error::Input("decode needs a prefill first".into()));
        }
        self.check_tokens(prompt)?;
        self.resume()?;
        self.stream.seen = self.generated_count;
        self.stream.steps_left = steps;
        let chunks: Vec<&[u32]> = prompt.chunks(CHUNK).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            self.ctx.queue.write_buffer(&self.tokens, 0, bytemuck::cast_slice(chunk));
            let n = chunk.len() as u32;
            if i + 1 < chunks.len() {
                self.submit_chunk(n, None, false, 1);
            } else {
                let staging = self.staging();
                let submission = self.submit_chunk_with(n, Some((n - 1, 1)), true, 1, true, Some(&staging));
                self.await_later(submission, staging);
            }
        }
        // The prefill's draw used the mask written for it.
        self.stream.step_allowed = false;
        self.queue_steps();
        Ok(())
    }

    /// Holds the next draw to the ids `allowed` (bit `i % 32` of word `i / 32` over the
    /// vocabulary), and in a streamed generation queues the step that makes it. Until
    /// [`Engine::unconstrain`], each draw needs its own call, made before the step that draws
    /// (before [`Engine::start`] for the prefill's draw): one step is in flight, not
    /// [`STEPS_IN_FLIGHT`].
    pub fn allow(&mut self, allowed: &[u32]) -> Result<()> {
        let words = self.config.vocab_size.div_ceil(32);
        if allowed.len() != words {
            return Err(Error::Input(format!("a mask of {} words for {words}", allowed.len())));
        }
        self.ctx.queue.write_buffer(&self.mask, 0, bytemuck::cast_slice(allowed));
        self.constrained = true;
        self.stream.step_allowed = true;
        self.queue_steps();
        Ok(())
    }

    /// Draws are no longer held to a mask, and streamed steps run ahead again.
    pub fn unconstrain(&mut self) {
        self.constrained = false;
        self.stream.step_allowed = false;
    }

    /// Queues decode steps until [`STEPS_IN_FLIGHT`] are pending or none may be; in a
    /// constrained generation, the one step whose mask [`Engine::allow`] wrote.
    fn queue_steps(&mut self) {
        let in_flight = if self.constrained { 1 } else { STEPS_IN_FLIGHT };
        while self.stream.steps_left > 0 && self.stream.pending.len() < in_flight {
            if self.constrained && !std::mem::take(&mut self.stream.step_allowed) {
                return;
            }
            self.stream.steps_left -= 1;
            let staging = self.staging();
            let submission = self.submit_chunk_with(1, Some((0, 1)), true, 1, true, Some(&staging));
            self.await_later(submission, staging);
        }
    }

    fn staging(&mut self) -> wgpu::Buffer {
        self.stream.free.pop().unwrap_or_else(|| {
            // Readback buffers are not counted as engine memory: a few bytes each.
            self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("step readback"),
                size: STEP_READBACK,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
    }

    fn await_later(&mut self, submission: wgpu::SubmissionIndex, staging: wgpu::Buffer) {
        let (sender, mapped) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |result| {
            let _ = sender.send(result);
        });
        self.stream.pending.push_back(Pending { submission, staging, mapped });
    }

    /// The bytes a queued step read back.
    async fn read_back(ctx: &GpuContext, pending: &mut Pending) -> Result<Vec<u8>> {
        // Natively the callback runs inside poll; on the web the browser runs it and poll is a no-op.
        let wait = wgpu::PollType::Wait { submission_index: Some(pending.submission.clone()), timeout: None };
        ctx.device.poll(wait).map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        (&mut pending.mapped)
            .await
            .map_err(|_| Error::Gpu("readback was cancelled".into()))?
            .map_err(|e| Error::Gpu(format!("reading back: {e}")))?;
        let bytes =
            pending.staging.get_mapped_range(..).map_err(|e| Error::Gpu(format!("reading back: {e}")))?.to_vec();
        pending.staging.unmap();
        ctx.check()?;
        Ok(bytes)
    }

    /// Waits for the oldest queued step: the `Step` block after it and the token it drew, or
    /// None if it ran halted.
    async fn complete_oldest(&mut self) -> Result<Option<(StepState, u32)>> {
        let Some(mut pending) = self.stream.pending.pop_front() else { return Ok(None) };
        let bytes = match Self::read_back(&self.ctx, &mut pending).await {
            Ok(bytes) => {
                self.stream.free.push(pending.staging);
                bytes
            }
            Err(e) => {
                // Its memory, now, not when the garbage collector runs (on the web).
                pending.staging.destroy();
                return Err(e);
            }
        };
        let step: StepState = bytemuck::pod_read_unaligned(&bytes[..STEP_READBACK as usize - 4]);
        let token = u32::from_le_bytes(bytes[STEP_READBACK as usize - 4..].try_into().expect("4 bytes"));
        if self.stream.pending.is_empty() {
            // Nothing queued after it: the host's counts are the GPU's (a halt may have skipped steps).
            self.position = step.position as usize;
            self.generated_count = step.generated;
        }
        if step.generated == self.stream.seen {
            return Ok(None);
        }
        self.stream.seen = step.generated;
        if token == NO_TOKEN {
            return Err(Error::Input(format!("cannot sample: all {} logits are NaN or -inf", self.config.vocab_size)));
        }
        Ok(Some((step, token)))
    }

    /// The next id the streamed generation drew (queuing another step first), or None when it
    /// is over: every allowed step read, or halted by a stop id already returned.
    pub async fn next_token(&mut self) -> Result<Option<u32>> {
        let drawn = match self.complete_oldest().await {
            Ok(drawn) => drawn,
            Err(e) => {
                self.abandon().await;
                return Err(e);
            }
        };
        self.queue_steps();
        Ok(drawn.map(|(_, token)| token))
    }

    /// Ends a streamed generation that failed: queues nothing more and waits for what is queued,
    /// whatever it read back, so that the next run can start ("a generation is still running"
    /// otherwise, for ever).
    async fn abandon(&mut self) {
        self.stream.steps_left = 0;
        while !self.stream.pending.is_empty() {
            let _ = self.complete_oldest().await;
        }
    }

    /// Ends the streamed generation: queues no more steps and waits for those queued. Returns
    /// the ids they drew that the state now holds (each was fed by the step after it), in order,
    /// up to a stop: after an abort, the state and the reply hold these too. The last step's
    /// own draw is not fed; it stays pending as the next input, as after any step.
    pub async fn finish(&mut self) -> Result<Vec<u32>> {
        self.stream.steps_left = 0;
        let mut drawn = Vec::new();
        while !self.stream.pending.is_empty() {
            match self.complete_oldest().await {
                Ok(Some((_, token))) => drawn.push(token),
                Ok(None) => {}
                Err(e) => {
                    self.abandon().await;
                    return Err(e);
                }
            }
        }
        drawn.pop();
        Ok(drawn)
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
}

/// The device can run `manifest`'s model; returns its weight format.
fn check_supported(ctx: &GpuContext, manifest: &Manifest) -> Result<MatrixFormat> {
    let format = MatrixFormat::of(manifest.quantization)?;
    let config = &manifest.config;
    for spec in tensor_specs(config).iter().filter(|s| s.is_matrix) {
        let multiple = format.column_multiple();
        if spec.shape[1] % multiple != 0 {
            return Err(Error::Gpu(format!(
                "{}: {} columns is not a multiple of {multiple}",
                spec.name, spec.shape[1]
            )));
        }
    }
    if config.conv1d_width > MAX_CONV_WIDTH as usize {
        return Err(Error::Gpu(format!("conv1d_width {} is above the kernel's {MAX_CONV_WIDTH}", config.conv1d_width)));
    }
    if config.num_attention_heads > MAX_HEADS as usize {
        let heads = config.num_attention_heads;
        return Err(Error::Gpu(format!("{heads} attention heads is above the kernel's {MAX_HEADS}")));
    }
    let limit = ctx.device.limits().max_storage_buffer_binding_size;
    if let Some(piece) = manifest.pieces.iter().find(|p| p.bytes > limit) {
        return Err(Error::Gpu(format!(
            "{}: {} bytes exceed the device's {limit}-byte binding limit",
            piece.name, piece.bytes
        )));
    }
    Ok(format)
}

/// Native convenience: an engine with the web-format model in `dir` loaded.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_engine(ctx: GpuContext, dir: &std::path::Path) -> Result<Engine> {
    load_engine_with(ctx, dir, KernelOptions::from_env()?)
}

/// As [`load_engine`], with these kernels.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_engine_with(ctx: GpuContext, dir: &std::path::Path, options: KernelOptions) -> Result<Engine> {
    let manifest = crate::weights::load::read_manifest(dir)?;
    let engine = Engine::with_kernels(ctx, manifest.clone(), options)?;
    crate::weights::load::stream_shards(dir, &manifest, &mut engine.weight_sink())?;
    Ok(engine)
}
