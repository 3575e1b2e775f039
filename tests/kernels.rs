//! Each WGSL kernel on its own, against the plain Rust computation of its header comment, on odd
//! shapes: sizes that are not multiples of the workgroup size or of the matmul tiles, partial token
//! tiles, row pieces with offsets, document starts. Runs through wgpu on whatever adapter there is
//! (Mesa's lavapipe, Vulkan on the CPU, in CI). Bindings and workgroup counts are the engine's
//! (`build_dispatches` in `src/gpu/engine.rs`).

use bytemuck::Pod;
use pollster::block_on;
use rgweb::gpu::kernels::*;
use rgweb::gpu::GpuContext;
use rgweb::model::layers::{
    apply_rope, gelu_tanh, rms_norm, sigmoid, soft_cap, softplus, BlockDiagonal, Matrix, MatrixValues,
};
use rgweb::model::recurrent::RgLru;

/// Largest accepted |got − expected| / max(1, |expected|).
const TOLERANCE: f32 = 1e-5;
/// Written where a kernel must not write.
const SENTINEL: f32 = -777.25;

// ---------------------------------------------------------------- helpers

/// Deterministic inputs: a 64-bit LCG (Knuth's MMIX constants), its high 31 bits as the draw.
struct Lcg(u64);

impl Lcg {
    fn next_u32(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    /// Uniform in `[lo, hi)`.
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * (self.next_u32() as f32 / 2147483648.0)
    }

    fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    /// Multiples of 1/64 in [−1, 1]: their int8 dot products are exact in f32 in any order, so the
    /// GPU's summation order cannot matter.
    fn sixty_fourths(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| (self.next_u32() % 129) as f32 / 64.0 - 1.0).collect()
    }

    fn int8s(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| (self.next_u32() % 255) as i32 - 127).map(|v| v as i8).collect()
    }
}

/// Int8 values four per u32, little-endian, as the web format stores them.
fn pack_int8(values: &[i8]) -> Vec<u32> {
    assert_eq!(values.len() % 4, 0);
    values.chunks(4).map(|c| u32::from_le_bytes([c[0] as u8, c[1] as u8, c[2] as u8, c[3] as u8])).collect()
}

/// Every element within [`TOLERANCE`]; names the first that is not, as an index and as
/// `[row, column]` of rows `width` long.
fn assert_close(what: &str, got: &[f32], want: &[f32], width: usize) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = 0.0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let error = (g - w).abs() / w.abs().max(1.0);
        assert!(
            error <= TOLERANCE,
            "{what}: first mismatch at index {i} [{}, {}]: expected {w}, got {g}",
            i / width,
            i % width
        );
        worst = worst.max(error);
    }
    eprintln!("{what}: {} values, worst error {worst:.1e}", got.len());
}

fn chunk(n_tokens: usize) -> ChunkInfo {
    ChunkInfo { n_tokens: n_tokens as u32, head_first: 0, head_count: n_tokens as u32, _pad: 0 }
}

struct Gpu {
    ctx: GpuContext,
    kernels: Kernels,
}

impl Gpu {
    fn new() -> Self {
        let ctx = block_on(GpuContext::new())
            .expect("a GPU adapter: install Mesa's lavapipe (apt-get install mesa-vulkan-drivers) to run on the CPU");
        let kernels = Kernels::new(&ctx.device);
        Gpu { ctx, kernels }
    }

    /// A storage buffer holding `data`.
    fn buffer<T: Pod>(&self, data: &[T]) -> wgpu::Buffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buffer = self.ctx.storage("test data", bytes.len() as u64);
        self.ctx.queue.write_buffer(&buffer, 0, bytes);
        buffer
    }

    fn uniform<T: Pod>(&self, value: &T) -> wgpu::Buffer {
        self.ctx.uniform("test uniform", bytemuck::bytes_of(value))
    }

    /// One dispatch of `kernel` with `@binding(i)` = `buffers[i]`, submitted on its own.
    fn run(&self, kernel: Kernel, buffers: &[&wgpu::Buffer], groups: (u32, u32)) {
        let bind_group = self.kernels.bind(&self.ctx.device, kernel, buffers);
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(self.kernels.pipeline(kernel));
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups.0, groups.1, 1);
        }
        self.ctx.queue.submit([encoder.finish()]);
    }

    /// The whole buffer, as `T`s.
    fn read<T: Pod>(&self, buffer: &wgpu::Buffer) -> Vec<T> {
        let size = buffer.size();
        let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        let staging = self.ctx.buffer("staging", size, usage);
        let bytes = block_on(self.ctx.read(buffer, 0, size, &staging)).expect("readback");
        bytemuck::pod_collect_to_vec(&bytes)
    }
}

// ---------------------------------------------------------------- matmul_int8

/// One `matmul_int8` dispatch: a piece of `rows` rows starting at `row_start` of a tensor of
/// `tensor_rows` rows, over `n_tokens` tokens (or the head range) of a 16-token chunk buffer.
#[derive(Clone, Copy, Debug)]
struct Matmul {
    rows: usize,
    cols: usize,
    tensor_rows: usize,
    row_start: usize,
    block_rows: usize,
    x_stride: usize,
    epilogue: Epilogue,
    bias: bool,
    /// Magnitude of the row scales: large for the soft-cap case, so values pass ±cap.
    scale: f32,
    n_tokens: usize,
    /// `(head_first, head_count)`: `token_source = 1`.
    head: Option<(usize, usize)>,
}

const CAP: f32 = 30.0;
const BUFFER_TOKENS: usize = CHUNK;

impl Matmul {
    fn plain(rows: usize, cols: usize, epilogue: Epilogue, bias: bool) -> Self {
        let scale = if epilogue == Epilogue::SoftCap { 0.3 } else { 0.01 };
        Matmul {
            rows,
            cols,
            tensor_rows: rows,
            row_start: 0,
            block_rows: rows,
            x_stride: cols,
            epilogue,
            bias,
            scale,
            n_tokens: 11,
            head: None,
        }
    }

    fn check(&self, gpu: &Gpu, seed: u64) {
        let what = format!("matmul {self:?}");
        let mut rng = Lcg(seed);
        let (rows, cols, y_stride) = (self.rows, self.cols, self.tensor_rows);
        let q = rng.int8s(rows * cols);
        let scales: Vec<f32> = (0..self.tensor_rows).map(|_| self.scale * rng.uniform(0.5, 1.5)).collect();
        let bias = rng.sixty_fourths(self.tensor_rows);
        let x = rng.sixty_fourths(BUFFER_TOKENS * self.x_stride);
        let aux = rng.vec(BUFFER_TOKENS * y_stride, -2.0, 2.0);
        let y_before = match self.epilogue {
            Epilogue::Add => rng.vec(BUFFER_TOKENS * y_stride, -3.0, 3.0),
            _ => vec![SENTINEL; BUFFER_TOKENS * y_stride],
        };

        // The header's formula, token by token.
        let (first, count) = self.head.unwrap_or((0, self.n_tokens));
        let mut want = y_before.clone();
        for j in 0..count {
            let x_row = &x[(first + j) * self.x_stride..];
            for r in 0..rows {
                let input = &x_row[((self.row_start + r) / self.block_rows) * cols..][..cols];
                let dot: f32 = q[r * cols..][..cols].iter().zip(input).map(|(&q, &x)| q as f32 * x).sum();
                let tensor_row = self.row_start + r;
                let mut value = dot * scales[tensor_row];
                if self.bias {
                    value += bias[tensor_row];
                }
                let out = j * y_stride + self.row_start + r;
                want[out] = match self.epilogue {
                    Epilogue::Store => value,
                    Epilogue::Add => want[out] + value,
                    Epilogue::GeluTimesAux => gelu_tanh(value) * aux[out],
                    Epilogue::SoftCap => {
                        let mut capped = [value];
                        soft_cap(&mut capped, CAP);
                        capped[0]
                    }
                };
            }
        }

        let lanes = matmul_lanes(cols);
        let params = MatmulParams {
            rows: rows as u32,
            cols: cols as u32,
            block_rows: self.block_rows as u32,
            x_stride: self.x_stride as u32,
            y_stride: y_stride as u32,
            y_offset: self.row_start as u32,
            scale_offset: self.row_start as u32,
            epilogue: self.epilogue as u32,
            has_bias: self.bias as u32,
            token_source: self.head.is_some() as u32,
            cap: CAP,
            lanes,
        };
        let chunk =
            ChunkInfo { n_tokens: self.n_tokens as u32, head_first: first as u32, head_count: count as u32, _pad: 0 };
        let (params, chunk) = (gpu.uniform(&params), gpu.uniform(&chunk));
        let q_buffer = gpu.buffer(&pack_int8(&q));
        let bias_buffer = if self.bias { gpu.buffer(&bias) } else { gpu.buffer(&[0.0f32; 4]) };
        let (scales, x, aux, y) = (gpu.buffer(&scales), gpu.buffer(&x), gpu.buffer(&aux), gpu.buffer(&y_before));
        let groups = ((rows as u32).div_ceil(MATMUL_THREADS / lanes), (count as u32).div_ceil(TOKEN_TILE));
        gpu.run(Kernel::MatmulInt8, &[&params, &chunk, &q_buffer, &scales, &bias_buffer, &x, &aux, &y], groups);
        assert_close(&what, &gpu.read::<f32>(&y), &want, y_stride);
    }
}

#[test]
fn matmul_int8_every_epilogue_on_odd_shapes() {
    let gpu = Gpu::new();
    assert_eq!(matmul_lanes(20), 1);
    assert!(matmul_lanes(192) > 1);
    let mut seed = 1;
    for (rows, cols) in [(13, 20), (37, 192)] {
        for epilogue in [Epilogue::Store, Epilogue::Add, Epilogue::GeluTimesAux, Epilogue::SoftCap] {
            for bias in [true, false] {
                Matmul::plain(rows, cols, epilogue, bias).check(&gpu, seed);
                seed += 1;
            }
        }
    }
}

#[test]
fn matmul_int8_several_row_workgroups() {
    let gpu = Gpu::new();
    // 16 lanes per row: 16 rows per workgroup, 3 workgroups for 37 rows.
    assert_eq!(matmul_lanes(1028), 16);
    Matmul::plain(37, 1028, Epilogue::Store, true).check(&gpu, 20);
    // One lane per row: 256 rows per workgroup, the second one partial.
    Matmul::plain(301, 12, Epilogue::Add, true).check(&gpu, 21);
}

#[test]
fn matmul_int8_block_diagonal() {
    let gpu = Gpu::new();
    // Three blocks of 4 rows; row r reads x[(r / 4)·8 .. +8] of a 24-wide input.
    let case = Matmul { block_rows: 4, x_stride: 24, ..Matmul::plain(12, 8, Epilogue::Store, true) };
    case.check(&gpu, 30);
}

#[test]
fn matmul_int8_row_piece() {
    let gpu = Gpu::new();
    // Rows 4..9 of a 9-row tensor: scales and bias at tensor rows, y rows 0..4 left alone.
    let case = Matmul { tensor_rows: 9, block_rows: 9, row_start: 4, ..Matmul::plain(5, 20, Epilogue::Store, true) };
    case.check(&gpu, 40);
    let case = Matmul { tensor_rows: 9, block_rows: 9, row_start: 4, ..Matmul::plain(5, 192, Epilogue::Add, true) };
    case.check(&gpu, 41);
    // Rows 4..12 of a block-diagonal tensor (blocks of 4 rows): the block counts tensor rows.
    let split_gates = Matmul {
        tensor_rows: 12,
        block_rows: 4,
        row_start: 4,
        x_stride: 24,
        ..Matmul::plain(8, 8, Epilogue::Store, true)
    };
    split_gates.check(&gpu, 42);
}

#[test]
fn matmul_int8_head_tokens_only() {
    let gpu = Gpu::new();
    // token_source = 1: x rows 3 and 4 in, y rows 0 and 1 out, every other y row untouched.
    let case = Matmul { n_tokens: 6, head: Some((3, 2)), ..Matmul::plain(13, 20, Epilogue::Store, true) };
    case.check(&gpu, 50);
    // The logits' own configuration: soft-cap, no bias, several lanes.
    let case = Matmul { n_tokens: 6, head: Some((3, 2)), ..Matmul::plain(37, 192, Epilogue::SoftCap, false) };
    case.check(&gpu, 51);
}

// ---------------------------------------------------------------- rms_norm

#[test]
fn rms_norm_width_77() {
    let gpu = Gpu::new();
    let (width, tokens, eps) = (77, 3, 1e-6f32);
    let mut rng = Lcg(60);
    let w = rng.vec(width, -0.5, 0.5);
    let x = rng.vec(tokens * width, -2.0, 2.0);
    // One extra row the kernel must not touch.
    let y = gpu.buffer(&vec![SENTINEL; (tokens + 1) * width]);
    let params = gpu.uniform(&NormParams { width: width as u32, eps, _pad: [0; 2] });
    let buffers = [&params, &gpu.uniform(&chunk(tokens)), &gpu.buffer(&w), &gpu.buffer(&x), &y];
    gpu.run(Kernel::RmsNorm, &buffers, (tokens as u32, 1));

    let mut want: Vec<f32> = x.chunks(width).flat_map(|row| rms_norm(row, &w, eps)).collect();
    want.extend(vec![SENTINEL; width]);
    assert_close("rms_norm", &gpu.read::<f32>(&y), &want, width);
}

// ---------------------------------------------------------------- embed

#[test]
fn embed_from_row_pieces() {
    let gpu = Gpu::new();
    let (vocab, cols, embedding_scale) = (10usize, 8usize, 2.828125f32);
    let mut rng = Lcg(70);
    let table = rng.int8s(vocab * cols);
    let scales = rng.vec(vocab, 0.001, 0.02);
    let tokens = [3u32, 9, 7];
    let x = gpu.buffer(&vec![SENTINEL; tokens.len() * cols]);
    let (chunk, token_buffer, scale_buffer) = (gpu.uniform(&chunk(3)), gpu.buffer(&tokens), gpu.buffer(&scales));
    let run_piece = |row_start: usize, rows: usize| {
        let params = EmbedParams { rows: rows as u32, cols: cols as u32, row_start: row_start as u32, embedding_scale };
        let piece = gpu.buffer(&pack_int8(&table[row_start * cols..(row_start + rows) * cols]));
        let buffers = [&gpu.uniform(&params), &chunk, &token_buffer, &piece, &scale_buffer, &x];
        gpu.run(Kernel::Embed, &buffers, ((cols as u32 / 4).div_ceil(64), tokens.len() as u32));
    };
    let row = |token: usize| -> Vec<f32> {
        table[token * cols..][..cols].iter().map(|&q| q as f32 * scales[token] * embedding_scale).collect()
    };

    // Rows 3..8: tokens 3 (the piece's first row) and 7 (its last); token 9 is not in it.
    run_piece(3, 5);
    let want: Vec<f32> = [row(3), vec![SENTINEL; cols], row(7)].concat();
    assert_close("embed, piece 3..8", &gpu.read::<f32>(&x), &want, cols);

    // The other pieces of the table fill in token 9 and change nothing else.
    run_piece(0, 3);
    run_piece(8, 2);
    let want: Vec<f32> = [row(3), row(9), row(7)].concat();
    assert_close("embed, all pieces", &gpu.read::<f32>(&x), &want, cols);
}

// ---------------------------------------------------------------- conv1d

/// `out[t][ch] = b[ch] + Σ_k w[ch][k] · in[t − (K−1) + k][ch]` over history ++ inputs, and the
/// last K−1 inputs as the new history.
fn conv_reference(w: &[f32], b: &[f32], history: &[f32], inputs: &[f32], width: usize) -> (Vec<f32>, Vec<f32>) {
    let channels = b.len();
    let all = [history, inputs].concat();
    let tokens = inputs.len() / channels;
    let mut out = vec![0.0; tokens * channels];
    for (t, out_row) in out.chunks_mut(channels).enumerate() {
        for (ch, (value, &bias)) in out_row.iter_mut().zip(b).enumerate() {
            let taps = w[ch * width..][..width].iter().enumerate();
            *value = taps.fold(bias, |sum, (k, w)| sum + w * all[(t + k) * channels + ch]);
        }
    }
    (out, all[all.len() - history.len()..].to_vec())
}

#[test]
fn conv1d_with_history_and_at_document_start() {
    let gpu = Gpu::new();
    let (channels, width) = (70usize, 4usize);
    let mut rng = Lcg(80);
    let w = rng.vec(channels * width, -1.0, 1.0);
    let b = rng.vec(channels, -0.5, 0.5);
    let params = gpu.uniform(&ConvParams { channels: channels as u32, width: width as u32, _pad: [0; 2] });
    let (w_buffer, b_buffer) = (gpu.buffer(&w), gpu.buffer(&b));

    // (position, tokens): 5 tokens continuing a document, 5 starting one (whatever the history
    // holds counts as zero), 2 tokens (fewer than K − 1, so the history keeps an old row).
    for (position, tokens) in [(6u32, 5usize), (0, 5), (6, 2)] {
        let history = rng.vec((width - 1) * channels, -2.0, 2.0);
        let inputs = rng.vec(tokens * channels, -2.0, 2.0);
        let history_buffer = gpu.buffer(&history);
        let out = gpu.buffer(&vec![SENTINEL; tokens * channels]);
        let step = gpu.buffer(&[StepState { position, generated: 0 }]);
        let buffers = [
            &params,
            &gpu.uniform(&chunk(tokens)),
            &step,
            &w_buffer,
            &b_buffer,
            &gpu.buffer(&inputs),
            &history_buffer,
            &out,
        ];
        gpu.run(Kernel::Conv1d, &buffers, ((channels as u32).div_ceil(64), 1));

        let seen = if position == 0 { vec![0.0; history.len()] } else { history.clone() };
        let (want_out, want_history) = conv_reference(&w, &b, &seen, &inputs, width);
        let what = format!("conv1d at position {position}, {tokens} tokens");
        assert_close(&format!("{what}: out"), &gpu.read::<f32>(&out), &want_out, channels);
        assert_close(&format!("{what}: history"), &gpu.read::<f32>(&history_buffer), &want_history, channels);
    }
}

// ---------------------------------------------------------------- rg_lru

/// The CPU reference's RG-LRU with gates that return exactly `gx` and `ga` (zero weights, the
/// gate logits as bias), so that `RgLru::step` sees the logits the kernel reads.
fn cpu_lru(log_a_scale: &[f32], gx: &[f32], ga: &[f32]) -> RgLru {
    let channels = log_a_scale.len();
    let gate = |logits: &[f32]| BlockDiagonal {
        weight: Matrix { rows: channels, cols: 10, values: MatrixValues::F32(vec![0.0; channels * 10]) },
        bias: logits.to_vec(),
    };
    RgLru { input_gate: gate(gx), recurrent_gate: gate(ga), log_a_scale: log_a_scale.to_vec() }
}

#[test]
fn rg_lru_at_document_start_then_continuing() {
    let gpu = Gpu::new();
    let (channels, tokens) = (70usize, 5usize);
    let mut rng = Lcg(90);
    let a_param = rng.vec(channels, -3.0, 3.0);
    let log_a_scale: Vec<f32> = a_param.iter().map(|&a| (-8.0 * softplus(a)) as f32).collect();
    let params = gpu.uniform(&LruParams { channels: channels as u32, _pad: [0; 3] });
    let scale_buffer = gpu.buffer(&log_a_scale);
    // Garbage in h: position 0 must ignore it.
    let h0 = rng.vec(channels, -5.0, 5.0);
    let h = gpu.buffer(&h0);
    let mut h_formula = h0.clone();
    let mut h_cpu = h0;

    for position in [0u32, 5] {
        let c = rng.vec(tokens * channels, -2.0, 2.0);
        let gx = rng.vec(tokens * channels, -4.0, 4.0);
        let ga = rng.vec(tokens * channels, -4.0, 4.0);
        let y = rng.vec(tokens * channels, -3.0, 3.0);
        let out = gpu.buffer(&vec![SENTINEL; tokens * channels]);
        let step = gpu.buffer(&[StepState { position, generated: 0 }]);
        let buffers = [
            &params,
            &gpu.uniform(&chunk(tokens)),
            &step,
            &scale_buffer,
            &gpu.buffer(&c),
            &gpu.buffer(&gx),
            &gpu.buffer(&ga),
            &gpu.buffer(&y),
            &h,
            &out,
        ];
        gpu.run(Kernel::RgLru, &buffers, ((channels as u32).div_ceil(64), 1));

        // The shader header's formula, written out.
        let mut want = vec![0.0; tokens * channels];
        for t in 0..tokens {
            for (ch, state) in h_formula.iter_mut().enumerate() {
                let i = t * channels + ch;
                let log_a = sigmoid(ga[i]) * log_a_scale[ch];
                let normalized_x = c[i] * sigmoid(gx[i]);
                *state = if position as usize + t == 0 {
                    normalized_x
                } else {
                    log_a.exp() * *state + normalized_x * (1.0 - (2.0 * log_a).exp()).max(0.0).sqrt()
                };
                want[i] = *state * gelu_tanh(y[i]);
            }
        }
        let what = format!("rg_lru at position {position}");
        let got_out = gpu.read::<f32>(&out);
        assert_close(&format!("{what}: out"), &got_out, &want, channels);
        assert_close(&format!("{what}: h"), &gpu.read::<f32>(&h), &h_formula, channels);

        // And the CPU model's own step.
        let mut cpu_out = Vec::new();
        for t in 0..tokens {
            let range = t * channels..(t + 1) * channels;
            let lru = cpu_lru(&log_a_scale, &gx[range.clone()], &ga[range.clone()]);
            let state = lru.step(&c[range.clone()], position as usize + t, &mut h_cpu);
            cpu_out.extend(state.iter().zip(&y[range]).map(|(h, &y)| h * gelu_tanh(y)));
        }
        assert_close(&format!("{what}: out against RgLru::step"), &got_out, &cpu_out, channels);
    }
}

// ---------------------------------------------------------------- rope_kv + attention

#[test]
fn rope_kv_and_attention() {
    let gpu = Gpu::new();
    // Slots 9 ≥ window 5 + 3 tokens. Position 4: no wrap; position 10: keys wrap around the ring.
    check_attention(&gpu, 4, 100);
    check_attention(&gpu, 10, 101);
}

fn check_attention(gpu: &Gpu, position: usize, seed: u64) {
    let (heads, hd, rotary_half, window, slots, tokens) = (3usize, 20usize, 5usize, 5usize, 9usize, 3usize);
    let (rotary_dims, theta) = (2 * rotary_half, 10_000.0f32);
    let mut rng = Lcg(seed);
    let q = rng.vec(tokens * heads * hd, -1.5, 1.5);
    let k = rng.vec(tokens * hd, -1.5, 1.5);
    let v = rng.vec(tokens * hd, -1.0, 1.0);
    // Every slot filled: the keys of earlier positions, and stale ones that must not be read.
    let ring_k = rng.vec(slots * hd, -1.5, 1.5);
    let ring_v = rng.vec(slots * hd, -1.0, 1.0);
    let inv_freq: Vec<f32> = (0..rotary_half).map(|i| 1.0 / theta.powf((2 * i) as f32 / rotary_dims as f32)).collect();

    let step = gpu.buffer(&[StepState { position: position as u32, generated: 0 }]);
    let chunk = gpu.uniform(&chunk(tokens));
    let (q_buffer, ring_k_buffer, ring_v_buffer) = (gpu.buffer(&q), gpu.buffer(&ring_k), gpu.buffer(&ring_v));
    let rope =
        RopeParams { heads: heads as u32, head_dim: hd as u32, rotary_half: rotary_half as u32, slots: slots as u32 };
    let buffers = [
        &gpu.uniform(&rope),
        &chunk,
        &step,
        &gpu.buffer(&inv_freq),
        &q_buffer,
        &gpu.buffer(&k),
        &gpu.buffer(&v),
        &ring_k_buffer,
        &ring_v_buffer,
    ];
    gpu.run(Kernel::RopeKv, &buffers, (tokens as u32, heads as u32 + 1));
    let params = AttentionParams {
        heads: heads as u32,
        head_dim: hd as u32,
        window: window as u32,
        slots: slots as u32,
        scale: (hd as f32).powf(-0.5),
        _pad: [0; 3],
    };
    let scores = gpu.buffer(&vec![0.0f32; tokens * heads * (window + 1)]);
    let out = gpu.buffer(&vec![SENTINEL; tokens * heads * hd]);
    let buffers = [&gpu.uniform(&params), &chunk, &step, &q_buffer, &ring_k_buffer, &ring_v_buffer, &scores, &out];
    gpu.run(Kernel::Attention, &buffers, (heads as u32, tokens as u32));

    // RoPE on every query head and the key, then keys and values into slot p mod slots.
    let mut want_q = q.clone();
    for t in 0..tokens {
        for head in want_q[t * heads * hd..(t + 1) * heads * hd].chunks_mut(hd) {
            apply_rope(head, position + t, rotary_dims, theta);
        }
    }
    let (mut want_ring_k, mut want_ring_v) = (ring_k.clone(), ring_v.clone());
    for t in 0..tokens {
        let mut key = k[t * hd..(t + 1) * hd].to_vec();
        apply_rope(&mut key, position + t, rotary_dims, theta);
        let slot = (position + t) % slots;
        want_ring_k[slot * hd..(slot + 1) * hd].copy_from_slice(&key);
        want_ring_v[slot * hd..(slot + 1) * hd].copy_from_slice(&v[t * hd..(t + 1) * hd]);
    }
    let what = format!("rope_kv at position {position}");
    assert_close(&format!("{what}: queries"), &gpu.read::<f32>(&q_buffer), &want_q, hd);
    assert_close(&format!("{what}: key ring"), &gpu.read::<f32>(&ring_k_buffer), &want_ring_k, hd);
    assert_close(&format!("{what}: value ring"), &gpu.read::<f32>(&ring_v_buffer), &want_ring_v, hd);

    // softmax over positions max(0, p − W)..=p, in f64.
    let mut want = vec![0.0f32; tokens * heads * hd];
    for t in 0..tokens {
        let p = position + t;
        let visible: Vec<usize> = (p.saturating_sub(window)..=p).map(|s| s % slots).collect();
        for head in 0..heads {
            let base = (t * heads + head) * hd;
            let query = &want_q[base..base + hd];
            let scores: Vec<f64> = visible
                .iter()
                .map(|&slot| {
                    let key = &want_ring_k[slot * hd..(slot + 1) * hd];
                    query.iter().zip(key).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() / (hd as f64).sqrt()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for d in 0..hd {
                let value: f64 =
                    visible.iter().zip(&weights).map(|(&slot, w)| w * want_ring_v[slot * hd + d] as f64).sum();
                want[base + d] = (value / total) as f32;
            }
        }
    }
    assert_close(&format!("attention at position {position}"), &gpu.read::<f32>(&out), &want, hd);
}

// ---------------------------------------------------------------- sample

const GENERATED_SENTINEL: u32 = 0xdead;

/// Runs `sample` once over two rows of logits (it must read the second, the last head row) and
/// returns (step, tokens, generated ring).
fn run_sample(gpu: &Gpu, mode: u32, logits: &[f32], vocab: usize) -> (StepState, Vec<u32>, Vec<u32>) {
    let sampling =
        SampleParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 12345, mode, vocab: vocab as u32, _pad: [0; 2] };
    let chunk = ChunkInfo { n_tokens: 7, head_first: 5, head_count: 2, _pad: 0 };
    let step = gpu.buffer(&[StepState { position: 4, generated: 1030 }]);
    let tokens = gpu.buffer(&[GENERATED_SENTINEL; CHUNK]);
    let generated = gpu.buffer(&vec![GENERATED_SENTINEL; GENERATED_RING as usize]);
    let buffers = [&gpu.uniform(&sampling), &gpu.uniform(&chunk), &step, &gpu.buffer(logits), &tokens, &generated];
    gpu.run(Kernel::Sample, &buffers, (1, 1));
    let step: Vec<StepState> = gpu.read(&step);
    (step[0], gpu.read(&tokens), gpu.read(&generated))
}

#[test]
fn sample_greedy_ties_nans_and_prefill_mode() {
    let gpu = Gpu::new();
    let vocab = 1000;
    let mut rng = Lcg(110);
    // Row 0 is not the last head row: its huge logit must not be picked.
    let mut first_row = rng.vec(vocab, -5.0, 5.0);
    first_row[3] = 100.0;
    let mut last_row = rng.vec(vocab, -5.0, 5.0);
    // The maximum four times: thread 46's first element, thread 45's, and two in thread 5, whose
    // first element is NaN. NaN also at index 0 (thread 0's first) and after the maximum.
    for i in [46, 301, 261, 773] {
        last_row[i] = 9.0;
    }
    for i in [0, 5, 302, 999] {
        last_row[i] = f32::NAN;
    }
    let logits = [first_row, last_row].concat();

    let (step, tokens, generated) = run_sample(&gpu, 1, &logits, vocab);
    assert_eq!(tokens[0], 46, "greedy pick (lowest index of the tied maximum, NaNs ignored)");
    assert!(tokens[1..].iter().all(|&t| t == GENERATED_SENTINEL), "only tokens[0] is written");
    let slot = 1030 % GENERATED_RING as usize;
    assert_eq!(generated[slot], 46, "the pick in generated[1030 mod 1024]");
    assert!(generated.iter().enumerate().all(|(i, &g)| i == slot || g == GENERATED_SENTINEL), "one ring entry");
    assert_eq!((step.position, step.generated), (4 + 7, 1031), "position += n_tokens, generated += 1");

    let (step, tokens, generated) = run_sample(&gpu, 0, &logits, vocab);
    assert!(tokens.iter().all(|&t| t == GENERATED_SENTINEL), "mode 0 writes no token");
    assert!(generated.iter().all(|&g| g == GENERATED_SENTINEL), "mode 0 records nothing");
    assert_eq!((step.position, step.generated), (4 + 7, 1030), "mode 0 only advances the position");
}
