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
/// The same where the inputs are not exact in f32 (after RMSNorm), so that the order of a long sum
/// changes its rounding: a wrong index or a missed term is off by far more.
const ROUNDED_TOLERANCE: f32 = 1e-4;
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
    assert_close_within(what, got, want, width, TOLERANCE);
}

fn assert_close_within(what: &str, got: &[f32], want: &[f32], width: usize, tolerance: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = 0.0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let error = (g - w).abs() / w.abs().max(1.0);
        assert!(
            error <= tolerance,
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
        self.run_times(kernel, buffers, groups, 1);
    }

    /// `times` dispatches of `kernel` one after another, in one submission.
    fn run_times(&self, kernel: Kernel, buffers: &[&wgpu::Buffer], groups: (u32, u32), times: usize) {
        let bind_group = self.kernels.bind(&self.ctx.device, kernel, buffers);
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(self.kernels.pipeline(kernel));
            pass.set_bind_group(0, &bind_group, &[]);
            for _ in 0..times {
                pass.dispatch_workgroups(groups.0, groups.1, 1);
            }
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

// ---------------------------------------------------------------- int8 rows: shared reference

/// A random int8 matrix with its affine buffer as the engine lays it out: scales of all rows,
/// then (if `bias`) their biases.
struct Int8Matrix {
    rows: usize,
    cols: usize,
    q: Vec<i8>,
    affine: Vec<f32>,
    bias: bool,
}

impl Int8Matrix {
    fn random(rng: &mut Lcg, rows: usize, cols: usize, scale: f32, bias: bool) -> Self {
        let q = rng.int8s(rows * cols);
        let mut affine: Vec<f32> = (0..rows).map(|_| scale * rng.uniform(0.5, 1.5)).collect();
        if bias {
            affine.extend(rng.sixty_fourths(rows));
        }
        Int8Matrix { rows, cols, q, affine, bias }
    }

    fn bias_offset(&self) -> usize {
        if self.bias {
            self.rows
        } else {
            0
        }
    }

    /// `scale[r] · Σ_c q[r][c] · input[c] + bias[r]`.
    fn row(&self, r: usize, input: &[f32]) -> f32 {
        let dot: f32 = self.q[r * self.cols..][..self.cols].iter().zip(input).map(|(&q, &x)| q as f32 * x).sum();
        dot * self.affine[r] + if self.bias { self.affine[self.rows + r] } else { 0.0 }
    }

    /// The values of rows `rows`, as their own buffer.
    fn values(&self, gpu: &Gpu, rows: std::ops::Range<usize>) -> wgpu::Buffer {
        gpu.buffer(&pack_int8(&self.q[rows.start * self.cols..rows.end * self.cols]))
    }
}

/// x̂ for token t: the `cols` inputs at `offset` of row t, RMSNorm'ed with `norm` if given.
fn input_row(x: &[f32], t: usize, stride: usize, offset: usize, cols: usize, norm: Option<&[f32]>) -> Vec<f32> {
    let row = &x[t * stride + offset..][..cols];
    match norm {
        Some(w) => rms_norm(row, w, EPS),
        None => row.to_vec(),
    }
}

const EPS: f32 = 1e-6;

// ---------------------------------------------------------------- matmul_int8

/// One `matmul_int8` dispatch: a piece of `rows` rows starting at `row_start` of a tensor of
/// `tensor_rows` rows, over `n_tokens` tokens (or the head range) of a 16-token chunk buffer.
#[derive(Clone, Copy, Debug)]
struct Matmul {
    rows: usize,
    cols: usize,
    tensor_rows: usize,
    row_start: usize,
    /// `None`: an ordinary matrix.
    block_rows: Option<usize>,
    x_stride: usize,
    epilogue: Epilogue,
    bias: bool,
    norm: bool,
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
            block_rows: None,
            x_stride: cols,
            epilogue,
            bias,
            norm: false,
            scale,
            n_tokens: 11,
            head: None,
        }
    }

    fn check(&self, gpu: &Gpu, seed: u64) {
        let what = format!("matmul {self:?}");
        let mut rng = Lcg(seed);
        let (rows, cols, y_stride) = (self.rows, self.cols, self.tensor_rows);
        let matrix = Int8Matrix::random(&mut rng, self.tensor_rows, cols, self.scale, self.bias);
        let norm_w = rng.vec(cols, -0.5, 0.5);
        let norm = self.norm.then_some(&norm_w[..]);
        let x = if self.norm {
            rng.vec(BUFFER_TOKENS * self.x_stride, -2.0, 2.0)
        } else {
            rng.sixty_fourths(BUFFER_TOKENS * self.x_stride)
        };
        let y_before = match self.epilogue {
            Epilogue::Add => rng.vec(BUFFER_TOKENS * y_stride, -3.0, 3.0),
            _ => vec![SENTINEL; BUFFER_TOKENS * y_stride],
        };

        // The header's formula, token by token.
        let (first, count) = self.head.unwrap_or((0, self.n_tokens));
        let mut want = y_before.clone();
        for j in 0..count {
            for r in self.row_start..self.row_start + rows {
                let block = self.block_rows.map_or(0, |b| r / b);
                let input = input_row(&x, first + j, self.x_stride, block * cols, cols, norm);
                let value = matrix.row(r, &input);
                let out = j * y_stride + r;
                want[out] = match self.epilogue {
                    Epilogue::Store => value,
                    Epilogue::Add => want[out] + value,
                    Epilogue::SoftCap => {
                        let mut capped = [value];
                        soft_cap(&mut capped, CAP);
                        capped[0]
                    }
                };
            }
        }

        let mut m = Int8Rows {
            row_offset: self.row_start as u32,
            x_stride: self.x_stride as u32,
            ..Int8Rows::new(rows, cols).with_bias(matrix.bias_offset())
        };
        if let Some(block_rows) = self.block_rows {
            m.block_rows = block_rows as u32;
        }
        if self.norm {
            m = m.with_norm(EPS);
        }
        let params = MatmulParams {
            m,
            y_stride: y_stride as u32,
            y_offset: self.row_start as u32,
            epilogue: self.epilogue as u32,
            token_source: self.head.is_some() as u32,
            cap: CAP,
            _pad: [0; 3],
        };
        let chunk =
            ChunkInfo { n_tokens: self.n_tokens as u32, head_first: first as u32, head_count: count as u32, _pad: 0 };
        let (params, chunk) = (gpu.uniform(&params), gpu.uniform(&chunk));
        let values = matrix.values(gpu, self.row_start..self.row_start + rows);
        let (affine, norm_w, x, y) =
            (gpu.buffer(&matrix.affine), gpu.buffer(&norm_w), gpu.buffer(&x), gpu.buffer(&y_before));
        let groups = (m.row_groups(), (count as u32).div_ceil(TOKEN_TILE));
        gpu.run(Kernel::MatmulInt8, &[&params, &chunk, &values, &affine, &norm_w, &x, &y], groups);
        let tolerance = if self.norm { ROUNDED_TOLERANCE } else { TOLERANCE };
        assert_close_within(&what, &gpu.read::<f32>(&y), &want, y_stride, tolerance);
    }
}

#[test]
fn matmul_int8_every_epilogue_on_odd_shapes() {
    let gpu = Gpu::new();
    assert_eq!(matmul_lanes(20), 1);
    assert!(matmul_lanes(192) > 1);
    let mut seed = 1;
    for (rows, cols) in [(13, 20), (37, 192)] {
        for epilogue in [Epilogue::Store, Epilogue::Add, Epilogue::SoftCap] {
            for bias in [true, false] {
                Matmul::plain(rows, cols, epilogue, bias).check(&gpu, seed);
                seed += 1;
            }
        }
    }
}

#[test]
fn matmul_int8_with_rms_norm_in_front() {
    let gpu = Gpu::new();
    // Widths 20 (one lane per row) and 1028 (16 lanes); 11 tokens span two token tiles.
    for (seed, (rows, cols)) in [(13, 20), (37, 1028)].into_iter().enumerate() {
        for epilogue in [Epilogue::Store, Epilogue::Add] {
            Matmul { norm: true, ..Matmul::plain(rows, cols, epilogue, true) }.check(&gpu, 10 + seed as u64);
        }
    }
    // The head's configuration: final norm, soft-cap, only the wanted tokens.
    let head =
        Matmul { norm: true, n_tokens: 6, head: Some((3, 2)), ..Matmul::plain(37, 192, Epilogue::SoftCap, false) };
    head.check(&gpu, 12);
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
    let case = Matmul { block_rows: Some(4), x_stride: 24, ..Matmul::plain(12, 8, Epilogue::Store, true) };
    case.check(&gpu, 30);
}

#[test]
fn matmul_int8_row_piece() {
    let gpu = Gpu::new();
    // Rows 4..9 of a 9-row tensor: scales and bias at tensor rows, y rows 0..4 left alone.
    let case = Matmul { tensor_rows: 9, row_start: 4, ..Matmul::plain(5, 20, Epilogue::Store, true) };
    case.check(&gpu, 40);
    let case = Matmul { tensor_rows: 9, row_start: 4, norm: true, ..Matmul::plain(5, 192, Epilogue::Add, true) };
    case.check(&gpu, 41);
    // Rows 4..12 of a block-diagonal tensor (blocks of 4 rows): the block counts tensor rows.
    let split_gates = Matmul {
        tensor_rows: 12,
        block_rows: Some(4),
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

// ---------------------------------------------------------------- geglu_int8

#[test]
fn geglu_pairs_gate_and_up_rows() {
    let gpu = Gpu::new();
    // F = 37 rows per half; widths 20 (1 lane: 128 rows per workgroup) and 192 (4 lanes: 32 rows,
    // two workgroups); 11 tokens span two token tiles.
    for (seed, (f, d)) in [(37usize, 20usize), (37, 192)].into_iter().enumerate() {
        let mut rng = Lcg(60 + seed as u64);
        let tokens = 11;
        let matrix = Int8Matrix::random(&mut rng, 2 * f, d, 0.01, true);
        let norm_w = rng.vec(d, -0.5, 0.5);
        let x = rng.vec(BUFFER_TOKENS * d, -2.0, 2.0);
        let mut want = vec![SENTINEL; BUFFER_TOKENS * f];
        for t in 0..tokens {
            let input = input_row(&x, t, d, 0, d, Some(&norm_w));
            for r in 0..f {
                want[t * f + r] = gelu_tanh(matrix.row(r, &input)) * matrix.row(f + r, &input);
            }
        }
        let m = Int8Rows::pair(f, d).with_norm(EPS).with_bias(matrix.bias_offset());
        let hidden = gpu.buffer(&vec![SENTINEL; BUFFER_TOKENS * f]);
        let buffers = [
            &gpu.uniform(&PairParams { m }),
            &gpu.uniform(&chunk(tokens)),
            &matrix.values(&gpu, 0..2 * f),
            &gpu.buffer(&matrix.affine),
            &gpu.buffer(&norm_w),
            &gpu.buffer(&x),
            &hidden,
        ];
        gpu.run(Kernel::GegluInt8, &buffers, (m.row_groups(), (tokens as u32).div_ceil(TOKEN_TILE)));
        let what = format!("geglu F {f}, D {d}");
        assert_close_within(&what, &gpu.read::<f32>(&hidden), &want, f, ROUNDED_TOLERANCE);
    }
}

// ---------------------------------------------------------------- recurrent_in

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
fn recurrent_in_branches_and_conv_with_history_and_at_document_start() {
    let gpu = Gpu::new();
    let (width, mut seed) = (4usize, 80);
    // 70 channels: with D = 20 one workgroup of 128 channels, partly idle; with D = 192 (4
    // lanes) three workgroups of 32.
    for d in [20usize, 192] {
        let channels = 70usize;
        let mut rng = Lcg(seed);
        let matrix = Int8Matrix::random(&mut rng, 2 * channels, d, 0.01, true);
        let norm_w = rng.vec(d, -0.5, 0.5);
        let conv_w = rng.vec(channels * width, -1.0, 1.0);
        let conv_b = rng.vec(channels, -0.5, 0.5);
        let conv = gpu.buffer(&[conv_w.clone(), conv_b.clone()].concat());
        let m = Int8Rows::pair(channels, d).with_norm(EPS).with_bias(matrix.bias_offset());
        let params = gpu.uniform(&RecurrentInParams { m, width: width as u32, _pad: [0; 3] });
        let (values, affine, norm_buffer) =
            (matrix.values(&gpu, 0..2 * channels), gpu.buffer(&matrix.affine), gpu.buffer(&norm_w));

        // (position, tokens): 11 tokens (two tiles) continuing a document, 5 starting one (whatever
        // the history holds counts as zero), 2 tokens (fewer than K − 1, so the history keeps an
        // old row).
        for (position, tokens) in [(6u32, 11usize), (0, 5), (6, 2)] {
            seed += 1;
            let history = rng.vec((width - 1) * channels, -2.0, 2.0);
            let x = rng.vec(BUFFER_TOKENS * d, -2.0, 2.0);
            let history_buffer = gpu.buffer(&history);
            let out = gpu.buffer(&vec![SENTINEL; BUFFER_TOKENS * 2 * channels]);
            let step = gpu.buffer(&[StepState { position, generated: 0 }]);
            let buffers = [
                &params,
                &gpu.uniform(&chunk(tokens)),
                &values,
                &affine,
                &norm_buffer,
                &gpu.buffer(&x),
                &step,
                &conv,
                &history_buffer,
                &out,
            ];
            gpu.run(Kernel::RecurrentIn, &buffers, (m.row_groups(), 1));

            let mut gelu_y = Vec::new();
            let mut x_branch = Vec::new();
            for t in 0..tokens {
                let input = input_row(&x, t, d, 0, d, Some(&norm_w));
                gelu_y.extend((0..channels).map(|ch| gelu_tanh(matrix.row(ch, &input))));
                x_branch.extend((0..channels).map(|ch| matrix.row(channels + ch, &input)));
            }
            let seen = if position == 0 { vec![0.0; history.len()] } else { history.clone() };
            let (conv_out, want_history) = conv_reference(&conv_w, &conv_b, &seen, &x_branch, width);
            let mut want = vec![SENTINEL; BUFFER_TOKENS * 2 * channels];
            for t in 0..tokens {
                want[t * 2 * channels..][..channels].copy_from_slice(&gelu_y[t * channels..][..channels]);
                want[(2 * t + 1) * channels..][..channels].copy_from_slice(&conv_out[t * channels..][..channels]);
            }
            let what = format!("recurrent_in D {d} at position {position}, {tokens} tokens");
            let (out, history) = (gpu.read::<f32>(&out), gpu.read::<f32>(&history_buffer));
            assert_close_within(&format!("{what}: out"), &out, &want, 2 * channels, ROUNDED_TOLERANCE);
            assert_close_within(&format!("{what}: history"), &history, &want_history, channels, ROUNDED_TOLERANCE);
        }
    }
}

// ---------------------------------------------------------------- rg_lru_gates

/// The CPU reference's RG-LRU with gates that return exactly `gx` and `ga` (zero weights, the
/// gate logits as bias), so that `RgLru::step` sees the logits the kernel computed.
fn cpu_lru(log_a_scale: &[f32], gx: &[f32], ga: &[f32]) -> RgLru {
    let channels = log_a_scale.len();
    let gate = |logits: &[f32]| BlockDiagonal {
        weight: Matrix { rows: channels, cols: 1, values: MatrixValues::F32(vec![0.0; channels]) },
        bias: logits.to_vec(),
    };
    RgLru { input_gate: gate(gx), recurrent_gate: gate(ga), log_a_scale: log_a_scale.to_vec() }
}

#[test]
fn rg_lru_gates_at_document_start_then_continuing() {
    let gpu = Gpu::new();
    // 84 channels in 7 blocks of 12; 11 tokens span two token tiles.
    let (channels, block, tokens) = (84usize, 12usize, 11usize);
    let mut rng = Lcg(90);
    // Gate logits within about ±5, where sqrt(1 − a²) is well conditioned in f32 (the RG-LRU's
    // own trap, which the model tests cover at real scale).
    let matrix = Int8Matrix::random(&mut rng, 2 * channels, block, 0.01, true);
    let a_param = rng.vec(channels, -3.0, 3.0);
    let log_a_scale: Vec<f32> = a_param.iter().map(|&a| (-8.0 * softplus(a)) as f32).collect();
    let m = Int8Rows {
        block_rows: block as u32,
        x_stride: 2 * channels as u32,
        x_offset: channels as u32,
        ..Int8Rows::pair(channels, block)
    }
    .with_bias(matrix.bias_offset());
    let params = gpu.uniform(&PairParams { m });
    let (values, affine) = (matrix.values(&gpu, 0..2 * channels), gpu.buffer(&matrix.affine));
    let scale_buffer = gpu.buffer(&log_a_scale);
    // Garbage in h: position 0 must ignore it.
    let h0 = rng.vec(channels, -5.0, 5.0);
    let h = gpu.buffer(&h0);
    let mut h_formula = h0.clone();
    let mut h_cpu = h0;

    for position in [0u32, 11] {
        // Per token: GELU(y) (the gate branch), then the conv output c; multiples of 1/64, so the
        // gate logits are exact whatever the order of their sums.
        let branches = rng.sixty_fourths(BUFFER_TOKENS * 2 * channels);
        let out = gpu.buffer(&vec![SENTINEL; BUFFER_TOKENS * channels]);
        let step = gpu.buffer(&[StepState { position, generated: 0 }]);
        let buffers = [
            &params,
            &gpu.uniform(&chunk(tokens)),
            &values,
            &affine,
            &gpu.buffer(&[0.0f32; 4]),
            &gpu.buffer(&branches),
            &step,
            &scale_buffer,
            &h,
            &out,
        ];
        gpu.run(Kernel::RgLruGates, &buffers, (m.row_groups(), 1));

        // The shader header's formula, written out.
        let mut want = vec![SENTINEL; BUFFER_TOKENS * channels];
        let (mut gx, mut ga) = (Vec::new(), Vec::new());
        for t in 0..tokens {
            let g = &branches[t * 2 * channels..][..channels];
            let c = &branches[t * 2 * channels + channels..][..channels];
            for (ch, state) in h_formula.iter_mut().enumerate() {
                let input = &c[(ch / block) * block..][..block];
                let (x_logit, a_logit) = (matrix.row(ch, input), matrix.row(channels + ch, input));
                gx.push(x_logit);
                ga.push(a_logit);
                let log_a = sigmoid(a_logit) * log_a_scale[ch];
                let normalized_x = c[ch] * sigmoid(x_logit);
                *state = if position as usize + t == 0 {
                    normalized_x
                } else {
                    log_a.exp() * *state + normalized_x * (1.0 - (2.0 * log_a).exp()).max(0.0).sqrt()
                };
                want[t * channels + ch] = *state * g[ch];
            }
        }
        let what = format!("rg_lru_gates at position {position}");
        let got_out = gpu.read::<f32>(&out);
        assert_close(&format!("{what}: out"), &got_out, &want, channels);
        assert_close(&format!("{what}: h"), &gpu.read::<f32>(&h), &h_formula, channels);

        // And the CPU model's own step, fed the same gate logits.
        let mut cpu_out = Vec::new();
        for t in 0..tokens {
            let range = t * channels..(t + 1) * channels;
            let lru = cpu_lru(&log_a_scale, &gx[range.clone()], &ga[range.clone()]);
            let c = &branches[t * 2 * channels + channels..][..channels];
            let state = lru.step(c, position as usize + t, &mut h_cpu);
            let g = &branches[t * 2 * channels..][..channels];
            cpu_out.extend(state.iter().zip(g).map(|(h, &g)| h * g));
        }
        assert_close(&format!("{what}: out against RgLru::step"), &got_out[..tokens * channels], &cpu_out, channels);
    }
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

// ---------------------------------------------------------------- rope_kv + attention

#[test]
fn rope_kv_and_attention() {
    let gpu = Gpu::new();
    // Slots 9 ≥ window 5 + 3 tokens, one key block. Position 4: no wrap; position 10: keys wrap
    // around the ring.
    check_attention(&gpu, 4, 100, 5, 9);
    check_attention(&gpu, 10, 101, 5, 9);
    // Window 40: three key blocks of 16, the last partial; at position 20 the third is empty for
    // the first token; at position 60 the window wraps around 45 slots.
    check_attention(&gpu, 20, 102, 40, 45);
    check_attention(&gpu, 60, 103, 40, 45);
}

/// `[rows, cols]` → `[cols, rows]`.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols).flat_map(|c| (0..rows).map(move |r| values[r * cols + c])).collect()
}

fn check_attention(gpu: &Gpu, position: usize, seed: u64, window: usize, slots: usize) {
    let (heads, hd, rotary_half, tokens) = (3usize, 20usize, 5usize, 3usize);
    let (rotary_dims, theta) = (2 * rotary_half, 10_000.0f32);
    let mut rng = Lcg(seed);
    let q = rng.vec(tokens * heads * hd, -1.5, 1.5);
    let k = rng.vec(tokens * hd, -1.5, 1.5);
    let v = rng.vec(tokens * hd, -1.0, 1.0);
    // As the stacked projection writes them: per token the query heads, the key, the value.
    let qkv: Vec<f32> = (0..tokens)
        .flat_map(|t| [&q[t * heads * hd..][..heads * hd], &k[t * hd..][..hd], &v[t * hd..][..hd]].concat())
        .collect();
    // Every slot filled: the keys of earlier positions, and stale ones that must not be read.
    let ring_k = rng.vec(slots * hd, -1.5, 1.5);
    let ring_v = rng.vec(slots * hd, -1.0, 1.0);
    let inv_freq: Vec<f32> = (0..rotary_half).map(|i| 1.0 / theta.powf((2 * i) as f32 / rotary_dims as f32)).collect();

    let step = gpu.buffer(&[StepState { position: position as u32, generated: 0 }]);
    let chunk = gpu.uniform(&chunk(tokens));
    // The key ring is stored transposed, [hd, slots].
    let ring_k_buffer = gpu.buffer(&transpose(&ring_k, slots, hd));
    let (qkv_buffer, ring_v_buffer) = (gpu.buffer(&qkv), gpu.buffer(&ring_v));
    let rope =
        RopeParams { heads: heads as u32, head_dim: hd as u32, rotary_half: rotary_half as u32, slots: slots as u32 };
    let buffers =
        [&gpu.uniform(&rope), &chunk, &step, &gpu.buffer(&inv_freq), &qkv_buffer, &ring_k_buffer, &ring_v_buffer];
    gpu.run(Kernel::RopeKv, &buffers, (tokens as u32, heads as u32 + 1));
    let blocks = key_blocks(window);
    let params = AttentionParams {
        heads: heads as u32,
        head_dim: hd as u32,
        window: window as u32,
        slots: slots as u32,
        scale: (hd as f32).powf(-0.5),
        blocks,
        _pad: [0; 2],
    };
    let partial_a = gpu.buffer(&vec![SENTINEL; tokens * blocks as usize * heads * hd]);
    let partial_ml = gpu.buffer(&vec![SENTINEL; tokens * blocks as usize * heads * 2]);
    let buffers =
        [&gpu.uniform(&params), &chunk, &step, &qkv_buffer, &ring_k_buffer, &ring_v_buffer, &partial_a, &partial_ml];
    gpu.run(Kernel::Attention, &buffers, (blocks, tokens as u32));
    let out = gpu.buffer(&vec![SENTINEL; tokens * heads * hd]);
    let params = AttentionCombineParams { heads: heads as u32, head_dim: hd as u32, blocks, _pad: 0 };
    let buffers = [&gpu.uniform(&params), &chunk, &partial_a, &partial_ml, &out];
    gpu.run(Kernel::AttentionCombine, &buffers, (heads as u32, tokens as u32));

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
    // Only the queries change in qkv.
    let got_q: Vec<f32> =
        gpu.read::<f32>(&qkv_buffer).chunks((heads + 2) * hd).flat_map(|row| row[..heads * hd].to_vec()).collect();
    assert_close(&format!("{what}: queries"), &got_q, &want_q, hd);
    let unchanged: Vec<f32> =
        gpu.read::<f32>(&qkv_buffer).chunks((heads + 2) * hd).flat_map(|row| row[heads * hd..].to_vec()).collect();
    let want_kv: Vec<f32> = qkv.chunks((heads + 2) * hd).flat_map(|row| row[heads * hd..].to_vec()).collect();
    assert_close(&format!("{what}: keys and values in qkv"), &unchanged, &want_kv, hd);
    let got_ring_k = transpose(&gpu.read::<f32>(&ring_k_buffer), hd, slots);
    assert_close(&format!("{what}: key ring"), &got_ring_k, &want_ring_k, hd);
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
    run_sample_with(gpu, sampling, logits)
}

fn run_sample_with(gpu: &Gpu, sampling: SampleParams, logits: &[f32]) -> (StepState, Vec<u32>, Vec<u32>) {
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

#[test]
fn sample_reports_a_row_without_a_usable_logit() {
    let gpu = Gpu::new();
    let vocab = 700;
    let usable_first_row = vec![1.0; vocab];
    let broken: Vec<f32> = (0..vocab).map(|i| if i % 3 == 0 { f32::NEG_INFINITY } else { f32::NAN }).collect();
    let logits = [usable_first_row, broken].concat();
    for (temperature, top_k, top_p) in [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.8, 40, 0.9)] {
        let sampling = SampleParams { temperature, top_k, top_p, seed: 7, mode: 1, vocab: vocab as u32, _pad: [0; 2] };
        let (_, tokens, generated) = run_sample_with(&gpu, sampling, &logits);
        assert_eq!(tokens[0], NO_TOKEN, "T {temperature}, top-k {top_k}, top-p {top_p}: no token to pick");
        assert_eq!(generated[1030 % GENERATED_RING as usize], NO_TOKEN, "the host reads NO_TOKEN as an error");
    }
}

/// `pcg` in sample.wgsl.
fn pcg(v: u32) -> u32 {
    let state = v.wrapping_mul(747796405).wrapping_add(2891336453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277803737);
    (word >> 22) ^ word
}

/// What sample.wgsl's header says it draws, in f64: the threshold from the sorted logits, the
/// inverse CDF walked in vocabulary order. Returns the allowed tokens' cumulative weights (as
/// `(id, weight before, weight after)`), their total, and the target of draw `n`.
fn sample_reference(logits: &[f32], params: &SampleParams, n: u32) -> (Vec<(u32, f64, f64)>, f64, f64) {
    let value = |l: f32| if l.is_nan() { -3.0e38 } else { l };
    let mut sorted: Vec<f32> = logits.iter().map(|&l| value(l)).collect();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let max = sorted[0];
    let weight = |l: f32| (((l - max) / params.temperature) as f64).exp();
    let mut threshold = *sorted.last().unwrap();
    if params.top_k > 0 && (params.top_k as usize) < sorted.len() {
        threshold = sorted[params.top_k as usize - 1];
    }
    if params.top_p < 1.0 {
        let kept = sorted.iter().take_while(|&&l| l >= threshold);
        let wanted = params.top_p as f64 * kept.clone().map(|&l| weight(l)).sum::<f64>();
        // The largest logit value whose tokens at or above it carry at least `wanted`.
        let mut mass = 0.0;
        for (i, &l) in sorted.iter().enumerate() {
            mass += weight(l);
            let last_of_value = sorted.get(i + 1).is_none_or(|&next| next < l);
            if last_of_value && mass >= wanted {
                threshold = l;
                break;
            }
        }
    }
    let u = (pcg(params.seed ^ pcg(n)) >> 8) as f64 / 16777216.0;
    let mut cumulative = Vec::new();
    let mut total = 0.0;
    for (id, &l) in logits.iter().enumerate() {
        if value(l) >= threshold {
            let w = weight(value(l));
            cumulative.push((id as u32, total, total + w));
            total += w;
        }
    }
    (cumulative, total, u * total)
}

#[test]
fn sample_draws_follow_the_header_formula() {
    let gpu = Gpu::new();
    let vocab = 3001;
    let mut rng = Lcg(120);
    // Logits of a spread like a model's, a few NaNs, and a tied maximum.
    let mut logits: Vec<f32> = (0..vocab).map(|_| rng.uniform(-1.0, 1.0) * rng.uniform(0.0, 8.0)).collect();
    for i in [17, 1800, 2999] {
        logits[i] = f32::NAN;
    }
    logits[400] = 9.5;
    logits[2500] = 9.5;
    let draws = 48;
    let cases =
        [(1.0, 0, 1.0), (0.7, 40, 1.0), (1.3, 0, 0.9), (1.0, 50, 0.8), (0.5, 300, 0.5), (2.0, 1, 1.0), (1.0, 0, 1e-6)];
    for (temperature, top_k, top_p) in cases {
        let params = SampleParams { temperature, top_k, top_p, seed: 777, mode: 1, vocab: vocab as u32, _pad: [0; 2] };
        let chunk = ChunkInfo { n_tokens: 1, head_first: 0, head_count: 1, _pad: 0 };
        let first_draw = 5u32;
        let step = gpu.buffer(&[StepState { position: 9, generated: first_draw }]);
        let tokens = gpu.buffer(&[GENERATED_SENTINEL; CHUNK]);
        let generated = gpu.buffer(&vec![GENERATED_SENTINEL; GENERATED_RING as usize]);
        let buffers = [&gpu.uniform(&params), &gpu.uniform(&chunk), &step, &gpu.buffer(&logits), &tokens, &generated];
        gpu.run_times(Kernel::Sample, &buffers, (1, 1), draws);
        let picks = gpu.read::<u32>(&generated);

        let what = format!("T {temperature}, top-k {top_k}, top-p {top_p}");
        let mut distinct = std::collections::BTreeSet::new();
        for n in first_draw..first_draw + draws as u32 {
            let pick = picks[n as usize];
            let (allowed, total, target) = sample_reference(&logits, &params, n);
            let entry = allowed.iter().find(|(id, _, _)| *id == pick);
            let (_, before, after) =
                *entry.unwrap_or_else(|| panic!("{what}: draw {n} picked {pick}, outside the kept set"));
            // Summation order moves the boundaries by rounding only.
            let slack = 1e-5 * total;
            assert!(
                before - slack <= target && target < after + slack,
                "{what}: draw {n} picked {pick} (cumulative {before}..{after}) for target {target} of {total}"
            );
            distinct.insert(pick);
        }
        let kept = sample_reference(&logits, &params, 0).0.len();
        eprintln!("{what}: {draws} draws, {} distinct tokens of {kept} kept", distinct.len());
        if kept == 1 {
            assert_eq!(distinct.into_iter().collect::<Vec<_>>(), [400], "{what}: only the argmax");
        } else {
            assert!(distinct.len() > 1, "{what}: draws vary");
        }
    }
}
