//! Each WGSL kernel on its own, against the plain Rust computation of its header comment, on odd
//! shapes: sizes that are not multiples of the workgroup size or of the matmul tiles, partial token
//! tiles, row pieces with offsets, document starts. The matrix kernels (matmul, geglu,
//! recurrent_in, rg_lru_gates, embed) run in both weight formats, int8 and int4, from one test
//! body per kernel; int4 rows are whole groups of 32 columns but never a multiple of 256, with an
//! odd group count so that the padding of each row's scales matters. Runs through wgpu on whatever
//! adapter there is (Mesa's lavapipe, Vulkan on the CPU, in CI).
//!
//! Every dispatch is built by the engine's own op constructors (`src/gpu/ops.rs`) and recorded
//! with `ops::record`, so bindings and workgroup counts are the engine's: no test spells them.
//! What the tests spell is the weight formats, bit for bit (`shaders/format_int8.wgsl`,
//! `shaders/format_int4.wgsl`), as the buffers of a [`GpuMatrix`].

use bytemuck::{Pod, Zeroable};
use half::f16;
use pollster::block_on;
use rgweb::gpu::kernels::*;
use rgweb::gpu::matrix::{GpuMatrix, MatrixFormat, MatrixFormat::Int4, MatrixFormat::Int8, MatrixPart};
use rgweb::gpu::ops::{
    self, AttentionBuffers, AttentionShape, KeyValueRing, Norm, Op, Ops, Output, RecurrentIn, SamplerBuffers,
};
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

    /// Multiples of 1/64 in [−1, 1]: their dot products with int8 weights, or with int4 weights
    /// scaled as [`TestMatrix::random`] scales them, are exact in f32 in any order, so the GPU's
    /// summation order cannot matter.
    fn sixty_fourths(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| (self.next_u32() % 129) as f32 / 64.0 - 1.0).collect()
    }

    fn int8s(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| (self.next_u32() % 255) as i32 - 127).map(|v| v as i8).collect()
    }

    /// Uniform in −8..=7: every 4-bit two's complement value.
    fn int4s(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| (self.next_u32() % 16) as i8 - 8).collect()
    }
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

/// A chunk of `n_tokens` tokens, all of which get logits.
fn chunk(n_tokens: usize) -> ChunkInfo {
    ChunkInfo { n_tokens: n_tokens as u32, head_first: 0, head_count: n_tokens as u32, _pad: 0 }
}

struct Gpu {
    ctx: GpuContext,
    kernels: Kernels,
    /// The ops' filler for an absent optional input.
    unused: wgpu::Buffer,
    /// What computes the row kernels' products.
    core: Core,
}

impl Gpu {
    fn new() -> Self {
        Self::with_core(Core::Rows)
    }

    fn with_core(core: Core) -> Self {
        let ctx = block_on(GpuContext::new())
            .expect("a GPU adapter: install Mesa's lavapipe (apt-get install mesa-vulkan-drivers) to run on the CPU");
        let kernels = Kernels::new(&ctx.device, &MatrixFormat::ALL, ShaderChecks::from_env().unwrap());
        let unused = ctx.storage("unused", 16);
        Gpu { ctx, kernels, unused, core }
    }

    /// A storage buffer holding `data`.
    fn buffer<T: Pod>(&self, data: &[T]) -> wgpu::Buffer {
        self.padded_buffer(data, 4)
    }

    /// A storage buffer holding `data`, its size padded to a multiple of `padding` bytes (16 for
    /// weights, which the matrix kernels read as 16-byte vectors, as the engine pads them).
    fn padded_buffer<T: Pod>(&self, data: &[T], padding: u64) -> wgpu::Buffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buffer = self.ctx.storage("test data", (bytes.len() as u64).next_multiple_of(padding));
        self.ctx.queue.write_buffer(&buffer, 0, bytes);
        buffer
    }

    fn uniform<T: Pod>(&self, value: &T) -> wgpu::Buffer {
        self.ctx.uniform("test uniform", bytemuck::bytes_of(value))
    }

    /// The ops `build` makes over a `Chunk` block holding `chunk`, recorded as the engine records
    /// them and submitted on their own; returns their pipelines.
    fn run(&self, chunk: ChunkInfo, build: impl FnOnce(&Ops) -> Vec<Op>) -> Vec<PipelineId> {
        self.run_times(chunk, 1, build)
    }

    /// The same, the whole list recorded `times` over, one after another, in one submission.
    fn run_times(&self, chunk: ChunkInfo, times: usize, build: impl FnOnce(&Ops) -> Vec<Op>) -> Vec<PipelineId> {
        let chunk_buffer = self.uniform(&chunk);
        let ops =
            Ops { ctx: &self.ctx, kernels: &self.kernels, chunk: &chunk_buffer, unused: &self.unused, core: self.core };
        let list = build(&ops);
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            for _ in 0..times {
                ops::record(&mut pass, &list, chunk.n_tokens, chunk.head_count);
            }
        }
        self.ctx.queue.submit([encoder.finish()]);
        list.iter().map(Op::pipeline).collect()
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

// ---------------------------------------------------------------- the weight formats

/// Columns per int4 group: one f16 scale each.
const GROUP: usize = 32;

/// Int8 values four per u32, little-endian, as the web format stores them.
fn pack_int8(values: &[i8]) -> Vec<u32> {
    assert_eq!(values.len() % 4, 0);
    values.chunks(4).map(|c| u32::from_le_bytes([c[0] as u8, c[1] as u8, c[2] as u8, c[3] as u8])).collect()
}

/// Int4 values (−8..=7) eight per u32: value 8w + k in bits 4k..4k + 3 of word w, two's
/// complement.
fn pack_int4(values: &[i8]) -> Vec<u32> {
    assert_eq!(values.len() % 8, 0);
    values
        .chunks(8)
        .map(|c| c.iter().enumerate().fold(0, |word, (k, &q)| word | ((q as u8 & 0xf) as u32) << (4 * k)))
        .collect()
}

/// f16 scale slots per int4 row: the groups, rounded up to even so that every row's scales start
/// on a word.
fn int4_scale_slots(cols: usize) -> usize {
    (cols / GROUP).next_multiple_of(2)
}

/// A random quantized matrix, kept as its integers and scales for the reference and laid out
/// for the GPU as its format says.
struct TestMatrix {
    format: MatrixFormat,
    rows: usize,
    cols: usize,
    /// `[rows, cols]`: int8 in −127..=127, int4 in −8..=7.
    q: Vec<i8>,
    /// int8: one per row; int4: `[rows, cols / 32]`, one per group.
    scales: Vec<f32>,
    biases: Option<Vec<f32>>,
}

impl TestMatrix {
    /// Weights about `scale · 127` in magnitude. int8: row scales `scale · U(0.5, 1.5)`. int4: the
    /// same magnitude with 16 times fewer levels, `16·scale` rounded to a power of two `u`, each
    /// group's scale `u · k / 32` for k in 16..=48: exact in f16, and with a 6-bit mantissa, so
    /// that a row of up to 352 products q · scale · x (x a multiple of 1/64) sums exactly in f32.
    fn random(rng: &mut Lcg, format: MatrixFormat, rows: usize, cols: usize, scale: f32, bias: bool) -> Self {
        let (q, scales) = match format {
            Int8 => {
                let q = rng.int8s(rows * cols);
                (q, (0..rows).map(|_| scale * rng.uniform(0.5, 1.5)).collect())
            }
            Int4 => {
                assert_eq!(cols % GROUP, 0, "int4 rows are whole groups");
                let q = rng.int4s(rows * cols);
                let unit = (16.0 * scale).log2().round().exp2();
                (q, (0..rows * cols / GROUP).map(|_| unit * (16 + rng.next_u32() % 33) as f32 / 32.0).collect())
            }
        };
        let biases = bias.then(|| rng.sixty_fourths(rows));
        TestMatrix { format, rows, cols, q, scales, biases }
    }

    /// The dequantized weight w[r][c]: `q · scale[r]` (int8), `q · scale[r][c / 32]` (int4).
    fn weight(&self, r: usize, c: usize) -> f32 {
        let q = self.q[r * self.cols + c] as f32;
        match self.format {
            Int8 => q * self.scales[r],
            Int4 => q * self.scales[r * self.cols / GROUP + c / GROUP],
        }
    }

    /// Row r times `input`, plus its bias, in the format's order: int8 `scale[r] · Σ_c q · x`
    /// (the scale after the sum), int4 `Σ_c (q · scale[r][c / 32]) · x`.
    fn row(&self, r: usize, input: &[f32]) -> f32 {
        let value = match self.format {
            Int8 => {
                let q = &self.q[r * self.cols..][..self.cols];
                q.iter().zip(input).map(|(&q, &x)| q as f32 * x).sum::<f32>() * self.scales[r]
            }
            Int4 => input.iter().enumerate().map(|(c, &x)| self.weight(r, c) * x).sum(),
        };
        value + self.biases.as_ref().map_or(0.0, |b| b[r])
    }

    /// The values of rows `rows`, packed as the format stores them.
    fn values(&self, rows: std::ops::Range<usize>) -> Vec<u32> {
        let q = &self.q[rows.start * self.cols..rows.end * self.cols];
        match self.format {
            Int8 => pack_int8(q),
            Int4 => pack_int4(q),
        }
    }

    /// The affine buffer: the scales of all rows (int8: one f32 each; int4: `[rows, S]` f16, two
    /// per u32, low half first, padded with 0 to S = the groups rounded up to even), then the f32
    /// biases if any.
    fn affine(&self) -> Vec<u32> {
        let mut words: Vec<u32> = match self.format {
            Int8 => self.scales.iter().map(|s| s.to_bits()).collect(),
            Int4 => {
                let groups = self.cols / GROUP;
                let slots = int4_scale_slots(self.cols);
                let halves: Vec<u16> = (0..self.rows * slots)
                    .map(|i| {
                        let (r, g) = (i / slots, i % slots);
                        let scale = if g < groups { self.scales[r * groups + g] } else { 0.0 };
                        let half = f16::from_f32(scale);
                        assert_eq!(half.to_f32(), scale, "int4 test scales are exact in f16");
                        half.to_bits()
                    })
                    .collect();
                halves.chunks(2).map(|pair| pair[0] as u32 | (pair[1] as u32) << 16).collect()
            }
        };
        if let Some(biases) = &self.biases {
            words.extend(biases.iter().map(|b| b.to_bits()));
        }
        words
    }

    /// The matrix on the GPU, its values in the row pieces `parts` (first row, rows): rows in no
    /// piece are not dispatched.
    fn upload(&self, gpu: &Gpu, parts: &[(usize, usize)]) -> GpuMatrix {
        GpuMatrix {
            format: self.format,
            parts: parts
                .iter()
                .map(|&(row_start, rows)| MatrixPart {
                    values: gpu.padded_buffer(&self.values(row_start..row_start + rows), 16),
                    row_start,
                    rows,
                })
                .collect(),
            affine: gpu.buffer(&self.affine()),
            rows: self.rows,
            cols: self.cols,
            has_bias: self.biases.is_some(),
        }
    }

    /// The matrix on the GPU in one piece.
    fn upload_whole(&self, gpu: &Gpu) -> GpuMatrix {
        self.upload(gpu, &[(0, self.rows)])
    }
}

/// Row lengths for each format: one lane per row, a few lanes, many lanes. int8 as before; int4
/// multiples of 32 but not of 256, each an odd number of groups (3, 5, 11).
fn widths(format: MatrixFormat) -> [usize; 3] {
    match format {
        Int8 => [20, 192, 1028],
        Int4 => [96, 160, 352],
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

// ---------------------------------------------------------------- matmul

/// One `Ops::matmul`: a tensor of `rows` rows whose row pieces `parts` are uploaded and
/// dispatched (rows in no piece must be left alone), over `n_tokens` tokens of a 16-token chunk
/// buffer, or over the head range for the logits' soft-cap.
#[derive(Clone, Debug)]
struct Matmul {
    format: MatrixFormat,
    rows: usize,
    cols: usize,
    /// `(first row, rows)` of each piece.
    parts: Vec<(usize, usize)>,
    output: Output,
    bias: bool,
    norm: bool,
    /// Magnitude of the row scales: large for the soft-cap case, so values pass ±cap.
    scale: f32,
    n_tokens: usize,
    /// `(head_first, head_count)` for [`Output::SoftCapLogits`]; `None`: every token.
    head: Option<(usize, usize)>,
    /// Through `Ops::matmul_tiled` (prefill) instead of `Ops::matmul`: then up to 150 tokens, and
    /// every y element the dispatched rows and tokens do not cover (rows in no piece, tokens past
    /// the last, the last tile's padding) must keep what it held.
    tiled: bool,
}

const CAP: f32 = 30.0;
const BUFFER_TOKENS: usize = CHUNK;

impl Matmul {
    fn plain(format: MatrixFormat, rows: usize, cols: usize, output: Output, bias: bool) -> Self {
        let scale = if matches!(output, Output::SoftCapLogits(_)) { 0.3 } else { 0.01 };
        Matmul {
            format,
            rows,
            cols,
            parts: vec![(0, rows)],
            output,
            bias,
            norm: false,
            scale,
            n_tokens: 11,
            head: None,
            tiled: false,
        }
    }

    fn tiled(format: MatrixFormat, rows: usize, cols: usize, output: Output, n_tokens: usize) -> Self {
        Matmul { n_tokens, tiled: true, ..Matmul::plain(format, rows, cols, output, true) }
    }

    /// Runs the case against the header's formula; returns the pipelines that ran.
    fn check(&self, gpu: &Gpu, seed: u64) -> Vec<PipelineId> {
        assert!(self.head.is_none() || matches!(self.output, Output::SoftCapLogits(_)), "only logits take the head");
        let what = format!("matmul {self:?}");
        let mut rng = Lcg(seed);
        let (cols, y_stride) = (self.cols, self.rows);
        let matrix = TestMatrix::random(&mut rng, self.format, self.rows, cols, self.scale, self.bias);
        let buffer_tokens = if self.tiled { tiled_buffer_tokens(self.n_tokens) } else { BUFFER_TOKENS };
        let norm_w = rng.vec(cols, -0.5, 0.5);
        let norm = self.norm.then_some(&norm_w[..]);
        let x =
            if self.norm { rng.vec(buffer_tokens * cols, -2.0, 2.0) } else { rng.sixty_fourths(buffer_tokens * cols) };
        let y_before = match self.output {
            Output::Add => rng.vec(buffer_tokens * y_stride, -3.0, 3.0),
            _ => vec![SENTINEL; buffer_tokens * y_stride],
        };

        // The header's formula, token by token.
        let (first, count) = self.head.unwrap_or((0, self.n_tokens));
        let mut want = y_before.clone();
        for j in 0..count {
            let input = input_row(&x, first + j, cols, 0, cols, norm);
            for r in self.parts.iter().flat_map(|&(start, rows)| start..start + rows) {
                let value = matrix.row(r, &input);
                let out = j * y_stride + r;
                want[out] = match self.output {
                    Output::Store => value,
                    Output::Add => want[out] + value,
                    Output::SoftCapLogits(cap) => {
                        let mut capped = [value];
                        soft_cap(&mut capped, cap);
                        capped[0]
                    }
                };
            }
        }

        let w = matrix.upload(gpu, &self.parts);
        let (norm_w, x, y) = (gpu.buffer(&norm_w), gpu.buffer(&x), gpu.buffer(&y_before));
        let chunk =
            ChunkInfo { n_tokens: self.n_tokens as u32, head_first: first as u32, head_count: count as u32, _pad: 0 };
        let norm = self.norm.then_some(Norm { weight: &norm_w, eps: EPS });
        let pipelines = if self.tiled {
            assert!(w.fits_tiles(), "{what}: fits the tiles");
            gpu.run(chunk, |ops| ops.matmul_tiled(&w, norm, &x, &y, self.output))
        } else {
            gpu.run(chunk, |ops| ops.matmul(&w, norm, &x, &y, self.output))
        };
        let tolerance = if self.norm { ROUNDED_TOLERANCE } else { TOLERANCE };
        assert_close_within(&what, &gpu.read::<f32>(&y), &want, y_stride, tolerance);
        pipelines
    }
}

fn every_epilogue_on_odd_shapes(format: MatrixFormat) {
    let gpu = Gpu::new();
    let [narrow, wide, _] = widths(format);
    assert_eq!(matmul_lanes(narrow), 1);
    assert!(matmul_lanes(wide) > 1);
    let mut seed = 1;
    for (rows, cols) in [(13, narrow), (37, wide)] {
        for output in [Output::Store, Output::Add, Output::SoftCapLogits(CAP)] {
            for bias in [true, false] {
                Matmul::plain(format, rows, cols, output, bias).check(&gpu, seed);
                seed += 1;
            }
        }
    }
}

#[test]
fn matmul_int8_every_epilogue_on_odd_shapes() {
    every_epilogue_on_odd_shapes(Int8);
}

#[test]
fn matmul_int4_every_epilogue_on_odd_shapes() {
    every_epilogue_on_odd_shapes(Int4);
}

fn rms_norm_in_front(format: MatrixFormat) {
    let gpu = Gpu::new();
    // One lane per row, and many (int8: 16 lanes; int4: 8 lanes over 11 groups, so the lanes
    // take unequal shares); 11 tokens span two token tiles.
    let [narrow, wide, widest] = widths(format);
    for (seed, (rows, cols)) in [(13, narrow), (37, widest)].into_iter().enumerate() {
        for output in [Output::Store, Output::Add] {
            Matmul { norm: true, ..Matmul::plain(format, rows, cols, output, true) }.check(&gpu, 10 + seed as u64);
        }
    }
    // The head's configuration: final norm, soft-cap, only the wanted tokens.
    let head = Matmul {
        norm: true,
        n_tokens: 6,
        head: Some((3, 2)),
        ..Matmul::plain(format, 37, wide, Output::SoftCapLogits(CAP), false)
    };
    head.check(&gpu, 12);
}

#[test]
fn matmul_int8_with_rms_norm_in_front() {
    rms_norm_in_front(Int8);
}

#[test]
fn matmul_int4_with_rms_norm_in_front() {
    rms_norm_in_front(Int4);
}

fn several_row_workgroups(format: MatrixFormat, short_row: usize) {
    let gpu = Gpu::new();
    // Many lanes per row: 37 rows over several workgroups, the last partial (int8: 16 lanes, 16
    // rows per workgroup, 3 workgroups; int4: 8 lanes, 32 rows per workgroup, 2 workgroups).
    let widest = widths(format)[2];
    let rows_per_group = THREADS / matmul_lanes(widest);
    assert!(37 > rows_per_group && 37 % rows_per_group != 0);
    Matmul::plain(format, 37, widest, Output::Store, true).check(&gpu, 20);
    // One lane per row: 256 rows per workgroup, the second one partial.
    assert_eq!(matmul_lanes(short_row), 1);
    Matmul::plain(format, 301, short_row, Output::Add, true).check(&gpu, 21);
}

#[test]
fn matmul_int8_several_row_workgroups() {
    assert_eq!(matmul_lanes(1028), 16);
    several_row_workgroups(Int8, 12);
}

#[test]
fn matmul_int4_several_row_workgroups() {
    assert_eq!(matmul_lanes(352), 8);
    several_row_workgroups(Int4, 96);
}

fn row_pieces(format: MatrixFormat) {
    let gpu = Gpu::new();
    let [narrow, wide, widest] = widths(format);
    // Rows 4..9 of a 9-row tensor alone: scales and bias at tensor rows, y rows 0..4 left alone.
    let piece = |m: Matmul| Matmul { rows: 9, parts: vec![(4, 5)], ..m };
    piece(Matmul::plain(format, 5, narrow, Output::Store, true)).check(&gpu, 40);
    piece(Matmul { norm: true, ..Matmul::plain(format, 5, wide, Output::Add, true) }).check(&gpu, 41);
    // A tensor in two pieces, the second at an offset, as the embedding is stored: every row of
    // both; then the embedding's own use, the logits (final norm, soft-cap, head tokens, no bias).
    let two = |m: Matmul| Matmul { parts: vec![(0, 16), (16, 21)], ..m };
    two(Matmul::plain(format, 37, widest, Output::Store, true)).check(&gpu, 42);
    let logits = Matmul {
        norm: true,
        n_tokens: 6,
        head: Some((3, 2)),
        ..Matmul::plain(format, 37, wide, Output::SoftCapLogits(CAP), false)
    };
    two(logits).check(&gpu, 43);
}

#[test]
fn matmul_int8_row_pieces() {
    row_pieces(Int8);
}

#[test]
fn matmul_int4_row_pieces() {
    row_pieces(Int4);
}

fn head_tokens_only(format: MatrixFormat) {
    let gpu = Gpu::new();
    let [narrow, wide, _] = widths(format);
    // token_source = 1: x rows 3 and 4 in, y rows 0 and 1 out, every other y row untouched.
    let head = |m: Matmul| Matmul { n_tokens: 6, head: Some((3, 2)), ..m };
    head(Matmul::plain(format, 13, narrow, Output::SoftCapLogits(CAP), true)).check(&gpu, 50);
    // The logits' own configuration: soft-cap, no bias, several lanes.
    head(Matmul::plain(format, 37, wide, Output::SoftCapLogits(CAP), false)).check(&gpu, 51);
}

#[test]
fn matmul_int8_head_tokens_only() {
    head_tokens_only(Int8);
}

#[test]
fn matmul_int4_head_tokens_only() {
    head_tokens_only(Int4);
}

// ---------------------------------------------------------------- gemv.wgsl (one token)

/// Asserts every pipeline ran on `gemv.wgsl`.
fn all_gemv(what: &str, pipelines: &[PipelineId]) {
    assert!(!pipelines.is_empty() && pipelines.iter().all(|p| p.gemv.is_some()), "{what}: {pipelines:?}");
}

/// The decode step's products (`gemv.wgsl`) on one token, against the header's formula: rows
/// that leave the last workgroup partial, odd chunk counts (int4: 3, 5 and 11 groups, so one or
/// a few threads per row), x̂ in several tiles with and without RMSNorm, every epilogue, row
/// pieces, and the logits' configuration (the head token at an offset).
fn gemv_matmul(format: MatrixFormat) {
    let gpu = Gpu::with_core(Core::Gemv);
    let one = |m: Matmul| Matmul { n_tokens: 1, ..m };
    let chunk = format.chunk_columns() as usize;
    // A few chunks per row; an odd number (int8 65: one thread per row, 65 steps; int4 11); and
    // several tiles (int8: 192 chunks, 32 threads × 3 steps × 2 tiles; int4: 96, 32 × 1 × 3).
    let (wide, odd): (usize, usize) = if format == Int8 { (192, 1040) } else { (160, 352) };
    let tiled = 3072;
    let mut seed = 300;
    for (rows, cols) in [(37, wide), (301, odd), (37, tiled)] {
        assert!(cols.is_multiple_of(chunk));
        let shape = GemvShape::for_cols(cols as u32, format).unwrap();
        assert_eq!(shape.tiles * shape.steps * shape.tpr * chunk as u32, cols as u32);
        for output in [Output::Store, Output::Add, Output::SoftCapLogits(CAP)] {
            for (bias, norm) in [(true, false), (false, true)] {
                let case = one(Matmul { norm, ..Matmul::plain(format, rows, cols, output, bias) });
                all_gemv(&format!("{case:?}"), &case.check(&gpu, seed));
                seed += 1;
            }
        }
    }
    assert!(GemvShape::for_cols(tiled as u32, format).unwrap().tiles > 1);
    // A tensor in two pieces, the second at an offset, as the embedding is stored, as the logits:
    // the final norm, soft-cap, the head token the fourth of six.
    let logits = Matmul {
        norm: true,
        n_tokens: 6,
        head: Some((3, 1)),
        parts: vec![(0, 16), (16, 21)],
        ..Matmul::plain(format, 37, odd, Output::SoftCapLogits(CAP), false)
    };
    all_gemv("logits in two pieces", &logits.check(&gpu, seed));
    // int8 rows the core does not take (not whole 16-column chunks) fall back to the row kernels.
    if format == Int8 {
        let odd = one(Matmul::plain(format, 13, 200, Output::Store, true));
        assert!(odd.check(&gpu, seed + 1).iter().all(|p| p.gemv.is_none()));
    }
}

#[test]
fn gemv_int8_matmul_on_one_token() {
    gemv_matmul(Int8);
}

#[test]
fn gemv_int4_matmul_on_one_token() {
    gemv_matmul(Int4);
}

/// Rows of one lane go to `matmul_short.wgsl`: THREADS · SHORT_ROWS rows per workgroup, each
/// thread taking whole rows. Enough rows for several workgroups, the last one partial (and its
/// last thread short of its SHORT_ROWS rows), over two token tiles; with RMSNorm and every
/// epilogue; the logits' configuration in two row pieces, the second at an odd offset. Rows of
/// whole 16-byte chunks (int4 always; int8 at 112 columns) are read a chunk at a time, others
/// (int8 at 20 columns) a 4-column block at a time.
fn short_rows(format: MatrixFormat) {
    let gpu = Gpu::new();
    let narrow = widths(format)[0];
    let per_group = (THREADS * SHORT_ROWS) as usize;
    let rows = 2 * per_group + THREADS as usize + 37;
    // With RMSNorm the soft-cap's weights are smaller (values up to about the cap, not far past
    // it): the sums cancel less, so that the f32 rounding of 4,389 rows × 11 tokens in another
    // order than the reference's stays within ROUNDED_TOLERANCE.
    let normed_logits_scale = 0.03;
    let mut seed = 60;
    // int8: 20 columns (blocks) and 112 (7 chunks); int4: 96 (3 chunks).
    let cols = match format {
        Int8 => vec![narrow, 112],
        Int4 => vec![narrow],
    };
    for &cols in &cols {
        assert_eq!(matmul_lanes(cols), 1);
        for output in [Output::Store, Output::Add, Output::SoftCapLogits(CAP)] {
            for norm in [false, true] {
                let plain = Matmul::plain(format, rows, cols, output, true);
                let scale =
                    if norm && matches!(output, Output::SoftCapLogits(_)) { normed_logits_scale } else { plain.scale };
                Matmul { norm, scale, ..plain }.check(&gpu, seed);
                seed += 1;
            }
        }
    }
    let logits = Matmul {
        norm: true,
        scale: normed_logits_scale,
        n_tokens: 13,
        head: Some((2, 10)),
        parts: vec![(0, 301), (301, rows - 301)],
        ..Matmul::plain(format, rows, narrow, Output::SoftCapLogits(CAP), false)
    };
    logits.check(&gpu, seed);
    // A piece of a larger tensor alone: the rows before it left alone.
    let piece = Matmul { parts: vec![(5, per_group + 3)], ..Matmul::plain(format, rows, narrow, Output::Add, true) };
    piece.check(&gpu, seed + 1);
}

#[test]
fn matmul_int8_short_rows() {
    short_rows(Int8);
}

#[test]
fn matmul_int4_short_rows() {
    short_rows(Int4);
}

// ---------------------------------------------------------------- geglu

/// On `Core::Gemv`, one token (the decode step), the rows of whole chunks on `gemv.wgsl`.
fn geglu_pairs_gate_and_up_rows(format: MatrixFormat, core: Core) {
    let gpu = Gpu::with_core(core);
    // F = 37 rows per half; one lane per row (128 rows per workgroup) and several (int8: 4 lanes,
    // 32 rows, two workgroups; int4: 8 lanes, 16 rows, three workgroups); 11 tokens span two
    // token tiles.
    let [narrow, wide, widest] = widths(format);
    let d_wide = if format == Int8 { wide } else { widest };
    for (seed, (f, d)) in [(37usize, narrow), (37, d_wide)].into_iter().enumerate() {
        let mut rng = Lcg(60 + seed as u64);
        let tokens = if core == Core::Gemv { 1 } else { 11 };
        let matrix = TestMatrix::random(&mut rng, format, 2 * f, d, 0.01, true);
        let norm_w = rng.vec(d, -0.5, 0.5);
        let x = rng.vec(BUFFER_TOKENS * d, -2.0, 2.0);
        let mut want = vec![SENTINEL; BUFFER_TOKENS * f];
        for t in 0..tokens {
            let input = input_row(&x, t, d, 0, d, Some(&norm_w));
            for r in 0..f {
                want[t * f + r] = gelu_tanh(matrix.row(r, &input)) * matrix.row(f + r, &input);
            }
        }
        let gate_up = matrix.upload_whole(&gpu);
        let (norm_w, x) = (gpu.buffer(&norm_w), gpu.buffer(&x));
        let hidden = gpu.buffer(&vec![SENTINEL; BUFFER_TOKENS * f]);
        let pipelines =
            gpu.run(chunk(tokens), |ops| vec![ops.geglu(&gate_up, Norm { weight: &norm_w, eps: EPS }, &x, &hidden)]);
        let what = format!("geglu {format:?} F {f}, D {d}, {core:?}");
        if core == Core::Gemv && d.is_multiple_of(format.chunk_columns() as usize) {
            all_gemv(&what, &pipelines);
        }
        assert_close_within(&what, &gpu.read::<f32>(&hidden), &want, f, ROUNDED_TOLERANCE);
    }
}

#[test]
fn geglu_int8_pairs_gate_and_up_rows() {
    geglu_pairs_gate_and_up_rows(Int8, Core::Rows);
    geglu_pairs_gate_and_up_rows(Int8, Core::Gemv);
}

#[test]
fn geglu_int4_pairs_gate_and_up_rows() {
    geglu_pairs_gate_and_up_rows(Int4, Core::Rows);
    geglu_pairs_gate_and_up_rows(Int4, Core::Gemv);
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

/// On `Core::Gemv`, one token at a time (the decode step).
fn recurrent_in_branches_and_conv(format: MatrixFormat, core: Core) {
    let gpu = Gpu::with_core(core);
    let (width, mut seed) = (4usize, 80);
    // 70 channels: with one lane per row one workgroup of 128 channels, partly idle; with several
    // (int8 D = 192: 4 lanes, three workgroups of 32; int4 D = 352: 8 lanes, five of 16).
    let [narrow, wide, widest] = widths(format);
    let d_wide = if format == Int8 { wide } else { widest };
    for d in [narrow, d_wide] {
        let channels = 70usize;
        let mut rng = Lcg(seed);
        let matrix = TestMatrix::random(&mut rng, format, 2 * channels, d, 0.01, true);
        let norm_w = rng.vec(d, -0.5, 0.5);
        let conv_w = rng.vec(channels * width, -1.0, 1.0);
        let conv_b = rng.vec(channels, -0.5, 0.5);
        let conv = gpu.buffer(&[conv_w.clone(), conv_b.clone()].concat());
        let (linear_y_x, norm_buffer) = (matrix.upload_whole(&gpu), gpu.buffer(&norm_w));

        // (position, tokens): 11 tokens (two tiles) continuing a document, 5 starting one (whatever
        // the history holds counts as zero), 2 tokens (fewer than K − 1, so the history keeps an
        // old row).
        let runs: &[(u32, usize)] = if core == Core::Gemv { &[(6, 1), (0, 1)] } else { &[(6, 11), (0, 5), (6, 2)] };
        for &(position, tokens) in runs {
            seed += 1;
            let history = rng.vec((width - 1) * channels, -2.0, 2.0);
            let x = rng.vec(BUFFER_TOKENS * d, -2.0, 2.0);
            let (history_buffer, x_buffer) = (gpu.buffer(&history), gpu.buffer(&x));
            let out = gpu.buffer(&vec![SENTINEL; BUFFER_TOKENS * 2 * channels]);
            let step = gpu.buffer(&[StepState { position, generated: 0, ..StepState::zeroed() }]);
            let pipelines = gpu.run(chunk(tokens), |ops| {
                vec![ops.recurrent_in(RecurrentIn {
                    linear_y_x: &linear_y_x,
                    norm: Norm { weight: &norm_buffer, eps: EPS },
                    x: &x_buffer,
                    step: &step,
                    conv: &conv,
                    conv_width: width,
                    history: &history_buffer,
                    branches: &out,
                })]
            });

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
            let what = format!("recurrent_in {format:?} D {d} at position {position}, {tokens} tokens, {core:?}");
            if core == Core::Gemv && d.is_multiple_of(format.chunk_columns() as usize) {
                all_gemv(&what, &pipelines);
            }
            let (out, history) = (gpu.read::<f32>(&out), gpu.read::<f32>(&history_buffer));
            assert_close_within(&format!("{what}: out"), &out, &want, 2 * channels, ROUNDED_TOLERANCE);
            assert_close_within(&format!("{what}: history"), &history, &want_history, channels, ROUNDED_TOLERANCE);
        }
    }
}

#[test]
fn recurrent_in_int8_branches_and_conv_with_history_and_at_document_start() {
    recurrent_in_branches_and_conv(Int8, Core::Rows);
    recurrent_in_branches_and_conv(Int8, Core::Gemv);
}

#[test]
fn recurrent_in_int4_branches_and_conv_with_history_and_at_document_start() {
    recurrent_in_branches_and_conv(Int4, Core::Rows);
    recurrent_in_branches_and_conv(Int4, Core::Gemv);
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

/// `channels` channels in blocks of `block`: the gates `[input_gate; recurrent_gate]` are
/// `[2·channels, block]`, row ch reading c[(ch / block)·block ..][..block].
/// On `Core::Gemv`, one token (the decode step).
fn rg_lru_gates_at_document_start_then_continuing(format: MatrixFormat, channels: usize, block: usize, core: Core) {
    let gpu = Gpu::with_core(core);
    let tokens = if core == Core::Gemv { 1 } else { 11usize };
    let mut rng = Lcg(90);
    // Gate logits within about ±5, where sqrt(1 − a²) is well conditioned in f32 (the RG-LRU's
    // own trap, which the model tests cover at real scale).
    // Smaller weights over wider blocks keep the logits as small.
    let weight_scale = if block > 64 { 0.002 } else { 0.01 };
    let matrix = TestMatrix::random(&mut rng, format, 2 * channels, block, weight_scale, true);
    let a_param = rng.vec(channels, -3.0, 3.0);
    let log_a_scale: Vec<f32> = a_param.iter().map(|&a| (-8.0 * softplus(a)) as f32).collect();
    let gates = matrix.upload_whole(&gpu);
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
        let step = gpu.buffer(&[StepState { position, generated: 0, ..StepState::zeroed() }]);
        let branches_buffer = gpu.buffer(&branches);
        let pipelines = gpu.run(chunk(tokens), |ops| {
            vec![ops.rg_lru(ops::RgLru {
                gates: &gates,
                branches: &branches_buffer,
                step: &step,
                log_a_scale: &scale_buffer,
                h: &h,
                out: &out,
            })]
        });

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
        let what = format!("rg_lru_gates {format:?} at position {position}, {core:?}");
        if core == Core::Gemv {
            all_gemv(&what, &pipelines);
        }
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

#[test]
fn rg_lru_gates_int8_at_document_start_then_continuing() {
    // 84 channels in 7 blocks of 12; 11 tokens span two token tiles.
    rg_lru_gates_at_document_start_then_continuing(Int8, 84, 12, Core::Rows);
    // The 2B's blocks of 256 (16 rows per workgroup on gemv.wgsl: 16 blocks share none).
    rg_lru_gates_at_document_start_then_continuing(Int8, 512, 256, Core::Gemv);
}

#[test]
fn rg_lru_gates_int4_at_document_start_then_continuing() {
    // 160 channels in 5 blocks of one group (32 columns: one scale, padded to two, per row): one
    // lane per row, 128 channels per workgroup, the second workgroup partial.
    rg_lru_gates_at_document_start_then_continuing(Int4, 160, 32, Core::Rows);
    rg_lru_gates_at_document_start_then_continuing(Int4, 512, 256, Core::Gemv);
}

// ---------------------------------------------------------------- embed

fn embed_from_row_pieces(format: MatrixFormat, cols: usize) {
    let gpu = Gpu::new();
    let (vocab, embedding_scale) = (10usize, 2.828125f32);
    let mut rng = Lcg(70);
    let table = TestMatrix::random(&mut rng, format, vocab, cols, 0.01, false);
    let tokens = [3u32, 9, 7];
    let x = gpu.buffer(&vec![SENTINEL; tokens.len() * cols]);
    let token_buffer = gpu.buffer(&tokens);
    let run_pieces = |parts: &[(usize, usize)]| {
        let table = table.upload(&gpu, parts);
        gpu.run(chunk(tokens.len()), |ops| ops.embed(&table, &token_buffer, &x, embedding_scale));
    };
    // In the CPU reference's order: the weight, then the embedding scale.
    let row = |token: usize| -> Vec<f32> { (0..cols).map(|c| table.weight(token, c) * embedding_scale).collect() };

    // Rows 3..8 alone: tokens 3 (the piece's first row) and 7 (its last); token 9 is not in it.
    run_pieces(&[(3, 5)]);
    let want: Vec<f32> = [row(3), vec![SENTINEL; cols], row(7)].concat();
    assert_close(&format!("embed {format:?}, piece 3..8"), &gpu.read::<f32>(&x), &want, cols);

    // The other pieces of the table fill in token 9 and change nothing else.
    run_pieces(&[(0, 3), (8, 2)]);
    let want: Vec<f32> = [row(3), row(9), row(7)].concat();
    assert_close(&format!("embed {format:?}, all pieces"), &gpu.read::<f32>(&x), &want, cols);
}

#[test]
fn embed_int8_from_row_pieces() {
    embed_from_row_pieces(Int8, 8);
}

#[test]
fn embed_int4_from_row_pieces() {
    // Three groups: the scale row padded to four.
    embed_from_row_pieces(Int4, 96);
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
    // Window 600: 38 key blocks, more than the combine's 16 groups of threads (2 or 3 each), and
    // heads of 20 dimensions in two slices of 16, the second partial.
    assert!(key_blocks(600) > THREADS / COMBINE_DIMS && !20u32.is_multiple_of(COMBINE_DIMS));
    check_attention(&gpu, 700, 104, 600, 603);
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

    let step = gpu.buffer(&[StepState { position: position as u32, generated: 0, ..StepState::zeroed() }]);
    // The key ring is stored transposed, [hd, slots].
    let ring_k_buffer = gpu.buffer(&transpose(&ring_k, slots, hd));
    let (qkv_buffer, ring_v_buffer, inv_freq_buffer) = (gpu.buffer(&qkv), gpu.buffer(&ring_v), gpu.buffer(&inv_freq));
    let blocks = key_blocks(window) as usize;
    let partial_a = gpu.buffer(&vec![SENTINEL; tokens * blocks * heads * hd]);
    let partial_ml = gpu.buffer(&vec![SENTINEL; tokens * blocks * heads * 2]);
    let out = gpu.buffer(&vec![SENTINEL; tokens * heads * hd]);
    // As the engine records an attention block: RoPE and the ring, attention, the combine.
    gpu.run(chunk(tokens), |ops| {
        let shape = AttentionShape { heads, head_dim: hd, window, slots };
        let ring = KeyValueRing { keys: &ring_k_buffer, values: &ring_v_buffer };
        let buffers = AttentionBuffers { qkv: &qkv_buffer, partial_a: &partial_a, partial_ml: &partial_ml, out: &out };
        let mut list = vec![ops.rope_kv(shape, rotary_half, &step, &inv_freq_buffer, &qkv_buffer, ring)];
        list.extend(ops.attention(shape, &step, ring, buffers));
        list
    });

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

// ---------------------------------------------------------------- prefill chunk kernels

/// The bits of a buffer, for "left exactly as it was".
fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// One attention layer over a conversation for the prefill kernels: its GPU ring, and on the CPU
/// every position's rotated key and value so far and the ring as it should be.
struct AttentionLayer<'g> {
    gpu: &'g Gpu,
    shape: AttentionShape,
    rotary_half: usize,
    theta: f32,
    inv_freq: wgpu::Buffer,
    /// `[head_dim, slots]`, as the kernels keep it.
    ring_k: wgpu::Buffer,
    ring_v: wgpu::Buffer,
    /// The rings as they should be, `[slots, head_dim]` each.
    want_ring_k: Vec<f32>,
    want_ring_v: Vec<f32>,
    /// Rotated key and value of each position before [`Self::position`] (empty where the ring
    /// never held one).
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    rng: Lcg,
}

impl<'g> AttentionLayer<'g> {
    /// A layer at `position` whose ring holds the last `slots` positions before it (random keys and
    /// values, as earlier chunks left them) and, in the slots no position has reached yet, large
    /// garbage that must never be read.
    fn new(gpu: &'g Gpu, heads: usize, head_dim: usize, window: usize, position: usize, seed: u64) -> Self {
        let slots = ring_slots(window);
        let shape = AttentionShape { heads, head_dim, window, slots };
        // Half of each head rotated, as in the real model: pairs (i, i + head_dim / 4).
        let (rotary_half, theta) = (head_dim / 4, 10_000.0f32);
        let mut rng = Lcg(seed);
        let mut want_ring_k = rng.vec(slots * head_dim, -40.0, 40.0);
        let mut want_ring_v = rng.vec(slots * head_dim, -40.0, 40.0);
        let (mut keys, mut values) = (vec![Vec::new(); position], vec![Vec::new(); position]);
        for p in position.saturating_sub(slots)..position {
            keys[p] = rng.vec(head_dim, -1.5, 1.5);
            values[p] = rng.vec(head_dim, -1.0, 1.0);
            let slot = p % slots;
            want_ring_k[slot * head_dim..][..head_dim].copy_from_slice(&keys[p]);
            want_ring_v[slot * head_dim..][..head_dim].copy_from_slice(&values[p]);
        }
        let rotary_dims = 2 * rotary_half;
        let inv_freq: Vec<f32> =
            (0..rotary_half).map(|i| 1.0 / theta.powf((2 * i) as f32 / rotary_dims as f32)).collect();
        AttentionLayer {
            gpu,
            shape,
            rotary_half,
            theta,
            inv_freq: gpu.buffer(&inv_freq),
            ring_k: gpu.buffer(&transpose(&want_ring_k, slots, head_dim)),
            ring_v: gpu.buffer(&want_ring_v),
            want_ring_k,
            want_ring_v,
            keys,
            values,
            rng,
        }
    }

    fn position(&self) -> usize {
        self.keys.len()
    }

    fn ring(&self) -> KeyValueRing<'_> {
        KeyValueRing { keys: &self.ring_k, values: &self.ring_v }
    }

    fn step(&self, halted: bool) -> wgpu::Buffer {
        let position = self.position() as u32;
        self.gpu.buffer(&[StepState { position, generated: 0, halted: halted as u32, _pad: 0 }])
    }

    /// Random projections of `n` tokens as the stacked q/k/v matrix writes them, and the same
    /// with every query head and the key rotated at its position.
    fn projections(&mut self, n: usize) -> (Vec<f32>, Vec<f32>) {
        let (heads, hd) = (self.shape.heads, self.shape.head_dim);
        let mut qkv = Vec::new();
        for _ in 0..n {
            qkv.extend(self.rng.vec(heads * hd, -1.5, 1.5));
            qkv.extend(self.rng.vec(hd, -1.5, 1.5));
            qkv.extend(self.rng.vec(hd, -1.0, 1.0));
        }
        let mut rotated = qkv.clone();
        for (t, row) in rotated.chunks_mut((heads + 2) * hd).enumerate() {
            for head in row[..(heads + 1) * hd].chunks_mut(hd) {
                apply_rope(head, self.position() + t, 2 * self.rotary_half, self.theta);
            }
        }
        (qkv, rotated)
    }

    /// softmax over positions max(0, P − W)..=P in f64, for the chunk whose rotated projections
    /// are `rotated`, after its keys and values joined [`Self::keys`] and [`Self::values`].
    fn reference(&self, rotated: &[f32], n: usize) -> Vec<f32> {
        let (heads, hd, window) = (self.shape.heads, self.shape.head_dim, self.shape.window);
        let start = self.position() - n;
        let mut want = Vec::with_capacity(n * heads * hd);
        for t in 0..n {
            let p = start + t;
            let visible = p.saturating_sub(window)..=p;
            for query in rotated[t * (heads + 2) * hd..][..heads * hd].chunks(hd) {
                let scores: Vec<f64> = visible
                    .clone()
                    .map(|s| {
                        let dot: f64 = query.iter().zip(&self.keys[s]).map(|(&a, &b)| a as f64 * b as f64).sum();
                        dot / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for d in 0..hd {
                    let value: f64 = visible.clone().zip(&weights).map(|(s, w)| w * self.values[s][d] as f64).sum();
                    want.push((value / total) as f32);
                }
            }
        }
        want
    }

    /// The chunk's rotated keys and values join the history; the ring takes those of `stored`.
    fn remember(&mut self, rotated: &[f32], n: usize, stored: std::ops::Range<usize>) {
        let (heads, hd, slots) = (self.shape.heads, self.shape.head_dim, self.shape.slots);
        let start = self.position();
        for row in rotated.chunks((heads + 2) * hd).take(n) {
            self.keys.push(row[heads * hd..][..hd].to_vec());
            self.values.push(row[(heads + 1) * hd..].to_vec());
        }
        for t in stored {
            let slot = (start + t) % slots;
            self.want_ring_k[slot * hd..][..hd].copy_from_slice(&self.keys[start + t]);
            self.want_ring_v[slot * hd..][..hd].copy_from_slice(&self.values[start + t]);
        }
    }

    fn check_ring(&self, what: &str) {
        let (hd, slots) = (self.shape.head_dim, self.shape.slots);
        let got_k = transpose(&self.gpu.read::<f32>(&self.ring_k), hd, slots);
        assert_close(&format!("{what}: key ring"), &got_k, &self.want_ring_k, hd);
        assert_close(&format!("{what}: value ring"), &self.gpu.read::<f32>(&self.ring_v), &self.want_ring_v, hd);
    }

    /// A prefill chunk of `n` tokens as the engine records it: rope_chunk, attention_chunk,
    /// ring_store. Checks qkv after RoPE, the output (and nothing written past it) and the ring.
    fn prefill(&mut self, n: usize) {
        let (heads, hd) = (self.shape.heads, self.shape.head_dim);
        let what =
            format!("attention_chunk H {heads} hd {hd} W {} at {}, {n} tokens", self.shape.window, self.position());
        let (qkv, rotated) = self.projections(n);
        let got = self.run_prefill(&qkv, n, false);
        assert_close(&format!("{what}: qkv after rope_chunk"), &got.0, &rotated, hd);
        self.remember(&rotated, n, n.saturating_sub(self.shape.slots)..n);
        let mut want = self.reference(&rotated, n);
        want.extend(vec![SENTINEL; heads * hd]);
        assert_close(&format!("{what}: out"), &got.1, &want, hd);
        self.check_ring(&what);
    }

    /// The same with the run halted by a stop token: the same output, the ring left exactly as it
    /// was, and nothing remembered.
    fn prefill_halted(&mut self, n: usize) {
        let (heads, hd) = (self.shape.heads, self.shape.head_dim);
        let what = format!("halted attention_chunk H {heads} at {}, {n} tokens", self.position());
        let ring_before = (self.gpu.read::<f32>(&self.ring_k), self.gpu.read::<f32>(&self.ring_v));
        let (qkv, rotated) = self.projections(n);
        let (_, out) = self.run_prefill(&qkv, n, true);
        let (keys, values) = (self.keys.len(), self.values.len());
        self.remember(&rotated, n, 0..0);
        let want = self.reference(&rotated, n);
        assert_close(&format!("{what}: out"), &out[..n * heads * hd], &want, hd);
        self.keys.truncate(keys);
        self.values.truncate(values);
        assert_eq!(bits(&self.gpu.read::<f32>(&self.ring_k)), bits(&ring_before.0), "{what}: key ring unchanged");
        assert_eq!(bits(&self.gpu.read::<f32>(&self.ring_v)), bits(&ring_before.1), "{what}: value ring unchanged");
    }

    /// (qkv, out) after the three prefill ops, out one row longer than the chunk.
    fn run_prefill(&self, qkv: &[f32], n: usize, halted: bool) -> (Vec<f32>, Vec<f32>) {
        let (heads, hd) = (self.shape.heads, self.shape.head_dim);
        let step = self.step(halted);
        let qkv_buffer = self.gpu.buffer(qkv);
        let out = self.gpu.buffer(&vec![SENTINEL; (n + 1) * heads * hd]);
        self.gpu.run(chunk(n), |ops| {
            vec![
                ops.rope_chunk(self.shape, self.rotary_half, &step, &self.inv_freq, &qkv_buffer),
                ops.attention_chunk(self.shape, &step, self.ring(), &qkv_buffer, &out),
                ops.ring_store(self.shape, &step, &qkv_buffer, self.ring()),
            ]
        });
        (self.gpu.read(&qkv_buffer), self.gpu.read(&out))
    }

    /// `n` ≤ TOKEN_TILE tokens through the decode path (rope_kv, then attention and its combine)
    /// over the ring the prefill kernels left.
    fn decode(&mut self, n: usize) {
        let (heads, hd) = (self.shape.heads, self.shape.head_dim);
        let what = format!("decode attention H {heads} hd {hd} after the chunks, at {}, {n} tokens", self.position());
        let (qkv, rotated) = self.projections(n);
        let step = self.step(false);
        let qkv_buffer = self.gpu.buffer(&qkv);
        let blocks = key_blocks(self.shape.window) as usize;
        let partial_a = self.gpu.buffer(&vec![SENTINEL; n * blocks * heads * hd]);
        let partial_ml = self.gpu.buffer(&vec![SENTINEL; n * blocks * heads * 2]);
        let out = self.gpu.buffer(&vec![SENTINEL; n * heads * hd]);
        self.gpu.run(chunk(n), |ops| {
            let buffers =
                AttentionBuffers { qkv: &qkv_buffer, partial_a: &partial_a, partial_ml: &partial_ml, out: &out };
            let mut list =
                vec![ops.rope_kv(self.shape, self.rotary_half, &step, &self.inv_freq, &qkv_buffer, self.ring())];
            list.extend(ops.attention(self.shape, &step, self.ring(), buffers));
            list
        });
        self.remember(&rotated, n, 0..n);
        assert_close(&format!("{what}: out"), &self.gpu.read::<f32>(&out), &self.reference(&rotated, n), hd);
        self.check_ring(&what);
    }
}

#[test]
fn attention_chunk_from_document_start_over_more_tokens_than_slots() {
    let gpu = Gpu::new();
    // Window 16, 24 slots: 150 tokens at position 0 (the ring's garbage must not be read, and only
    // the last 24 tokens are stored), then chunks of 7 and 1 continuing from the ring, then decode.
    let mut layer = AttentionLayer::new(&gpu, 10, 32, 16, 0, 200);
    layer.prefill(150);
    layer.prefill(7);
    layer.prefill(1);
    layer.decode(3);
}

#[test]
fn attention_chunk_inside_the_first_window_head_dim_256() {
    let gpu = Gpu::new();
    // Window 40, 48 slots: at position 20 the ring holds positions 0..20 and garbage; 64 tokens
    // reach past the window and wrap the ring, then one token, then decode.
    let mut layer = AttentionLayer::new(&gpu, 2, 256, 40, 20, 201);
    layer.prefill(64);
    layer.prefill(1);
    layer.decode(2);
}

#[test]
fn attention_chunk_after_the_ring_wrapped() {
    let gpu = Gpu::new();
    // One head, window 100, 108 slots: position 1072 is slot 100, near the ring's end: 7 tokens
    // stop just before it, the 64 after them wrap round it; then a whole decode tile.
    let mut layer = AttentionLayer::new(&gpu, 1, 32, 100, 108 * 9 + 100, 202);
    layer.prefill(7);
    layer.prefill(64);
    layer.decode(TOKEN_TILE as usize);
    // The 2B's shape (10 heads of 256, three tokens per workgroup) at a smaller window, a whole
    // 256-token chunk from slot 300 of 308.
    let mut layer = AttentionLayer::new(&gpu, 10, 256, 300, 308 * 6 + 300, 203);
    layer.prefill(256);
    layer.decode(3);
}

#[test]
fn attention_chunk_odd_head_dims_and_the_most_heads() {
    let gpu = Gpu::new();
    // MAX_HEADS heads: one token per workgroup; 36 dims: a second slice with one vec4 column.
    let mut layer = AttentionLayer::new(&gpu, MAX_HEADS as usize, 36, 16, 30, 204);
    layer.prefill(40);
    layer.decode(1);
    // 3 heads of 20 dims: ten tokens per workgroup (30 of 32 rows), part of one slice.
    let mut layer = AttentionLayer::new(&gpu, 3, 20, 5, 0, 205);
    layer.prefill(23);
    layer.prefill(9);
}

#[test]
fn ring_store_leaves_the_ring_when_halted() {
    let gpu = Gpu::new();
    let mut layer = AttentionLayer::new(&gpu, 2, 32, 16, 50, 206);
    layer.prefill_halted(9);
    layer.prefill_halted(40);
    // And the ring it left is still the one that continues.
    layer.prefill(5);
}

/// conv_scan with a Conv1D `width` wide over a few chunks: raw branches `[n, 2·lru]` (plus a row
/// past the chunk that must stay as it is) against GELU and [`conv_reference`].
fn conv_scan_case(width: usize, seed: u64) {
    let gpu = Gpu::new();
    // 300 channels: ten workgroups of 32, the last with 12.
    let lru = 300usize;
    let mut rng = Lcg(seed);
    let conv_w = rng.vec(lru * width, -1.0, 1.0);
    let conv_b = rng.vec(lru, -0.5, 0.5);
    let conv = gpu.buffer(&[conv_w.clone(), conv_b.clone()].concat());
    // Garbage history: position 0 must take it as zeros.
    let mut history = rng.vec((width - 1) * lru, -2.0, 2.0);
    let history_buffer = gpu.buffer(&history);
    // (position, tokens, halted): 37 tokens starting the document (eight segments of 5, the last
    // of 2); 2 tokens (fewer than K − 1 for K > 3: the history keeps old rows; six segments empty);
    // 150 continuing; 20 with the run halted.
    for (position, n, halted) in [(0u32, 37usize, false), (37, 2, false), (39, 150, false), (189, 20, true)] {
        let raw = rng.vec((n + 1) * 2 * lru, -2.0, 2.0);
        let branches = gpu.buffer(&raw);
        let step = gpu.buffer(&[StepState { position, generated: 0, halted: halted as u32, _pad: 0 }]);
        gpu.run(chunk(n), |ops| vec![ops.conv_scan(&step, &conv, width, &history_buffer, &branches, lru)]);

        let x_branch: Vec<f32> = raw.chunks(2 * lru).take(n).flat_map(|row| row[lru..].to_vec()).collect();
        let seen = if position == 0 { vec![0.0; history.len()] } else { history.clone() };
        let (conv_out, new_history) = conv_reference(&conv_w, &conv_b, &seen, &x_branch, width);
        let mut want = raw.clone();
        for t in 0..n {
            for ch in 0..lru {
                want[t * 2 * lru + ch] = gelu_tanh(raw[t * 2 * lru + ch]);
                want[t * 2 * lru + lru + ch] = conv_out[t * lru + ch];
            }
        }
        let what = format!("conv_scan K {width} at position {position}, {n} tokens");
        assert_close(&format!("{what}: branches"), &gpu.read::<f32>(&branches), &want, 2 * lru);
        let got_history = gpu.read::<f32>(&history_buffer);
        if halted {
            assert_eq!(bits(&got_history), bits(&history), "{what}: the history is left as it was");
        } else {
            assert_close(&format!("{what}: history"), &got_history, &new_history, lru);
            history = got_history;
        }
    }
}

#[test]
fn conv_scan_at_document_start_continuing_and_halted() {
    conv_scan_case(4, 210);
    conv_scan_case(MAX_CONV_WIDTH as usize, 211);
}

#[test]
fn rg_lru_scan_at_document_start_continuing_and_halted() {
    let gpu = Gpu::new();
    // 300 channels: five workgroups of 64, the last with 44.
    let lru = 300usize;
    let mut rng = Lcg(220);
    let a_param = rng.vec(lru, -3.0, 3.0);
    let log_a_scale: Vec<f32> = a_param.iter().map(|&a| (-8.0 * softplus(a)) as f32).collect();
    let scale_buffer = gpu.buffer(&log_a_scale);
    // Garbage in h: position 0 must ignore it.
    let h0 = rng.vec(lru, -5.0, 5.0);
    let h = gpu.buffer(&h0);
    let (mut h_formula, mut h_cpu) = (h0.clone(), h0);
    // (position, tokens, halted): 37 tokens (five token tiles, the last partial) starting the
    // document, 150 continuing, 5 with the run halted.
    for (position, n, halted) in [(0u32, 37usize, false), (37, 150, false), (187, 5, true)] {
        // Gate logits within ±5, where sqrt(1 − a²) is well conditioned in f32.
        let gates = rng.vec((n + 1) * 2 * lru, -5.0, 5.0);
        let branches = rng.vec((n + 1) * 2 * lru, -2.0, 2.0);
        let (gates_buffer, branches_buffer) = (gpu.buffer(&gates), gpu.buffer(&branches));
        let out = gpu.buffer(&vec![SENTINEL; (n + 1) * lru]);
        let step = gpu.buffer(&[StepState { position, generated: 0, halted: halted as u32, _pad: 0 }]);
        let h_before = gpu.read::<f32>(&h);
        gpu.run(chunk(n), |ops| {
            vec![ops.rg_lru_scan(&step, &gates_buffer, &branches_buffer, &scale_buffer, &h, &out, lru)]
        });

        // The shader header's formula, written out.
        let mut want = vec![SENTINEL; (n + 1) * lru];
        let mut state = h_formula.clone();
        for t in 0..n {
            for (ch, value) in state.iter_mut().enumerate() {
                let row = t * 2 * lru;
                let log_a = sigmoid(gates[row + lru + ch]) * log_a_scale[ch];
                let normalized_x = branches[row + lru + ch] * sigmoid(gates[row + ch]);
                *value = if position as usize + t == 0 {
                    normalized_x
                } else {
                    log_a.exp() * *value + normalized_x * (1.0 - (2.0 * log_a).exp()).max(0.0).sqrt()
                };
                want[t * lru + ch] = *value * branches[row + ch];
            }
        }
        let what = format!("rg_lru_scan at position {position}, {n} tokens");
        let got = gpu.read::<f32>(&out);
        assert_close(&format!("{what}: out"), &got, &want, lru);

        // And the CPU model's own step.
        let mut cpu_state = h_cpu.clone();
        let mut cpu_out = Vec::new();
        for t in 0..n {
            let row = &gates[t * 2 * lru..][..2 * lru];
            let lru_model = cpu_lru(&log_a_scale, &row[..lru], &row[lru..]);
            let c = &branches[t * 2 * lru + lru..][..lru];
            let new = lru_model.step(c, position as usize + t, &mut cpu_state);
            cpu_out.extend(new.iter().zip(&branches[t * 2 * lru..][..lru]).map(|(h, &g)| h * g));
        }
        assert_close(&format!("{what}: out against RgLru::step"), &got[..n * lru], &cpu_out, lru);

        let got_h = gpu.read::<f32>(&h);
        if halted {
            assert_eq!(bits(&got_h), bits(&h_before), "{what}: h is left as it was");
        } else {
            assert_close(&format!("{what}: h"), &got_h, &state, lru);
            (h_formula, h_cpu) = (state, cpu_state);
        }
    }
}

#[test]
fn attention_chunk_fits_webgpu_default_workgroup_memory() {
    let (name, source) = all_modules().into_iter().find(|(name, _)| name == "attention_chunk").unwrap();
    // q_tile and kv_tile (QUERY_ROWS rows of LANES + 1 vec4), the scores (rows of KEY_TILE + 1)
    // and the start position.
    let lanes = THREADS / QUERY_ROWS;
    let bytes = 2 * QUERY_ROWS * (lanes + 1) * 16 + QUERY_ROWS * (KEY_TILE + 1) * 4 + 4;
    assert_eq!(workgroup_bytes(&name, &source), bytes);
    assert_eq!(bytes, 13_444);
    assert!(bytes <= WEBGPU_WORKGROUP_BYTES);
}

// ---------------------------------------------------------------- sample

const GENERATED_SENTINEL: u32 = 0xdead;

/// Runs `sample` once over two rows of logits (it must read the second, the last head row) and
/// returns (step, tokens, generated ring).
fn run_sample(gpu: &Gpu, mode: u32, logits: &[f32], vocab: usize) -> (StepState, Vec<u32>, Vec<u32>) {
    let sampling = SampleParams {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 12345,
        mode,
        vocab: vocab as u32,
        ..SampleParams::zeroed()
    };
    run_sample_with(gpu, sampling, logits)
}

fn run_sample_with(gpu: &Gpu, sampling: SampleParams, logits: &[f32]) -> (StepState, Vec<u32>, Vec<u32>) {
    run_sample_masked(gpu, sampling, logits, &vec![0; (sampling.vocab as usize).div_ceil(32)])
}

fn run_sample_masked(
    gpu: &Gpu,
    sampling: SampleParams,
    logits: &[f32],
    mask: &[u32],
) -> (StepState, Vec<u32>, Vec<u32>) {
    let chunk = ChunkInfo { n_tokens: 7, head_first: 5, head_count: 2, _pad: 0 };
    let step = gpu.buffer(&[StepState { position: 4, generated: 1030, ..StepState::zeroed() }]);
    let tokens = gpu.buffer(&[GENERATED_SENTINEL; CHUNK]);
    let generated = gpu.buffer(&vec![GENERATED_SENTINEL; GENERATED_RING as usize]);
    let counts = gpu.buffer(&vec![0u32; sampling.vocab as usize]);
    let bias = gpu.buffer(&vec![0f32; sampling.vocab as usize]);
    let mask = gpu.buffer(mask);
    let (sampling, logits) = (gpu.uniform(&sampling), gpu.buffer(logits));
    let sampler = SamplerBuffers {
        sampling: &sampling,
        tokens: &tokens,
        generated: &generated,
        counts: &counts,
        bias: &bias,
        mask: &mask,
    };
    gpu.run(chunk, |ops| vec![ops.sample(&step, &logits, &sampler)]);
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
        let sampling =
            SampleParams { temperature, top_k, top_p, seed: 7, mode: 1, vocab: vocab as u32, ..SampleParams::zeroed() };
        let (_, tokens, generated) = run_sample_with(&gpu, sampling, &logits);
        assert_eq!(tokens[0], NO_TOKEN, "T {temperature}, top-k {top_k}, top-p {top_p}: no token to pick");
        assert_eq!(generated[1030 % GENERATED_RING as usize], NO_TOKEN, "the host reads NO_TOKEN as an error");
    }
}

/// Under a mask only the ids whose bit is set can be drawn: greedy takes the best of them, a draw
/// at temperature 1 never leaves them, and a mask allowing none gives NO_TOKEN, as on the CPU
/// (`Sampler::sample_allowed`).
#[test]
fn sample_draws_only_what_the_mask_allows() {
    let gpu = Gpu::new();
    let vocab: usize = 1000;
    let logits: Vec<f32> = (0..vocab).map(|i| ((i * 37 % 101) as f32) / 10.0).collect();
    let allowed_ids = [3u32, 64, 65, 500, 999];
    let mut mask = vec![0u32; vocab.div_ceil(32)];
    for id in allowed_ids {
        mask[id as usize / 32] |= 1 << (id % 32);
    }
    let best_allowed =
        *allowed_ids.iter().max_by(|a, b| logits[**a as usize].total_cmp(&logits[**b as usize])).unwrap();
    let row = [vec![0.0; vocab], logits.clone()].concat();
    for (temperature, top_k, top_p) in [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.8, 2, 0.9), (5.0, 0, 1.0)] {
        for seed in 0..8 {
            let sampling = SampleParams {
                temperature,
                top_k,
                top_p,
                seed,
                mode: 1,
                vocab: vocab as u32,
                masked: 1,
                ..SampleParams::zeroed()
            };
            let (_, tokens, _) = run_sample_masked(&gpu, sampling, &row, &mask);
            assert!(allowed_ids.contains(&tokens[0]), "T {temperature}: drew {} outside the mask", tokens[0]);
            if temperature == 0.0 {
                assert_eq!(tokens[0], best_allowed);
            }
            let unmasked = run_sample_masked(&gpu, SampleParams { masked: 0, ..sampling }, &row, &mask).1[0];
            if temperature == 0.0 {
                assert!(!allowed_ids.contains(&unmasked), "the test's best logit must lie outside the mask");
            }
        }
    }
    let none = SampleParams { mode: 1, vocab: vocab as u32, masked: 1, ..SampleParams::zeroed() };
    assert_eq!(run_sample_masked(&gpu, none, &row, &vec![0; mask.len()]).1[0], NO_TOKEN);
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
        let params = SampleParams {
            temperature,
            top_k,
            top_p,
            seed: 777,
            mode: 1,
            vocab: vocab as u32,
            ..SampleParams::zeroed()
        };
        let chunk = ChunkInfo { n_tokens: 1, head_first: 0, head_count: 1, _pad: 0 };
        let first_draw = 5u32;
        let step = gpu.buffer(&[StepState { position: 9, generated: first_draw, ..StepState::zeroed() }]);
        let tokens = gpu.buffer(&[GENERATED_SENTINEL; CHUNK]);
        let generated = gpu.buffer(&vec![GENERATED_SENTINEL; GENERATED_RING as usize]);
        let (counts, bias) = (gpu.buffer(&vec![0u32; vocab]), gpu.buffer(&vec![0f32; vocab]));
        let (sampling, logits_buffer) = (gpu.uniform(&params), gpu.buffer(&logits));
        let mask = gpu.buffer(&vec![0u32; vocab.div_ceil(32)]);
        let sampler = SamplerBuffers {
            sampling: &sampling,
            tokens: &tokens,
            generated: &generated,
            counts: &counts,
            bias: &bias,
            mask: &mask,
        };
        gpu.run_times(chunk, draws, |ops| vec![ops.sample(&step, &logits_buffer, &sampler)]);
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

// ---------------------------------------------------------------- tiled matrix kernel

/// Token counts around the tiled kernel's tile of [`TILE_TOKENS`] = 64: one, one short, exactly
/// one tile, one over, and two tiles and a partial third.
const TILED_TOKENS: [usize; 5] = [1, 63, 64, 65, 150];

/// Row lengths for the tiled kernel: whole steps of [`TILE_K`] = 16 columns (int8: 1, 13 and 65
/// steps; int4 as [`widths`]: 3, 5 and 11 groups, an odd count, so each row's scales are padded,
/// and 6, 10 and 22 steps).
fn tiled_widths(format: MatrixFormat) -> [usize; 3] {
    match format {
        Int8 => [16, 208, 1040],
        Int4 => widths(Int4),
    }
}

/// Token rows of the test buffers for `n` tokens: the whole last tile and one row more, so that a
/// store for a padding token of the last tile would land in the buffer, where it shows.
fn tiled_buffer_tokens(n: usize) -> usize {
    n.next_multiple_of(TILE_TOKENS as usize) + 1
}

fn tiled_store_and_add_over_partial_tiles(format: MatrixFormat) {
    let gpu = Gpu::new();
    let [narrow, wide, widest] = tiled_widths(format);
    // Rows: one partial tile, two (the second partial), four (the last partial).
    let mut seed = 200;
    for (rows, cols) in [(13, narrow), (100, wide), (200, widest)] {
        for n in TILED_TOKENS {
            for output in [Output::Store, Output::Add] {
                let bias = seed % 2 == 0;
                Matmul { bias, ..Matmul::tiled(format, rows, cols, output, n) }.check(&gpu, seed);
                seed += 1;
            }
        }
    }
}

#[test]
fn tiled_matmul_int8_store_and_add_over_partial_tiles() {
    tiled_store_and_add_over_partial_tiles(Int8);
}

#[test]
fn tiled_matmul_int4_store_and_add_over_partial_tiles() {
    tiled_store_and_add_over_partial_tiles(Int4);
}

fn tiled_rms_norm_in_front(format: MatrixFormat) {
    let gpu = Gpu::new();
    let [narrow, wide, widest] = tiled_widths(format);
    let mut seed = 300;
    for (rows, cols) in [(13, narrow), (100, wide), (200, widest)] {
        for n in [1, 64, 65, 150] {
            for output in [Output::Store, Output::Add] {
                Matmul { norm: true, ..Matmul::tiled(format, rows, cols, output, n) }.check(&gpu, seed);
                seed += 1;
            }
        }
    }
}

#[test]
fn tiled_matmul_int8_with_rms_norm_in_front() {
    tiled_rms_norm_in_front(Int8);
}

#[test]
fn tiled_matmul_int4_with_rms_norm_in_front() {
    tiled_rms_norm_in_front(Int4);
}

fn tiled_head_tokens_and_row_pieces(format: MatrixFormat) {
    let gpu = Gpu::new();
    let [narrow, wide, widest] = tiled_widths(format);
    // token_source = 1: x rows first..first + count in, y rows 0..count out, the rest untouched.
    // 66 head tokens from 70 (two tiles, the second of 2 tokens, not starting on a tile), the
    // last token alone, a whole tile from 0.
    let mut seed = 400;
    for (first, count) in [(70, 66), (149, 1), (0, 64)] {
        let head =
            Matmul { head: Some((first, count)), ..Matmul::tiled(format, 100, wide, Output::SoftCapLogits(CAP), 150) };
        head.check(&gpu, seed);
        seed += 1;
    }
    // Row pieces, as `matmul` takes them: rows 4..9 of a 9-row tensor alone, y rows 0..4 left
    // alone; a 200-row tensor in three pieces at offsets 0, 70 (a whole tile) and 150, rows 134..150
    // in none.
    for n in [63, 150] {
        let piece = Matmul { rows: 9, parts: vec![(4, 5)], ..Matmul::tiled(format, 5, narrow, Output::Store, n) };
        piece.check(&gpu, seed);
        let three = vec![(0, 70), (70, 64), (150, 50)];
        let pieces = Matmul { parts: three, norm: true, ..Matmul::tiled(format, 200, widest, Output::Add, n) };
        pieces.check(&gpu, seed + 1);
        seed += 2;
    }
    // The logits' own configuration: the embedding in two pieces, final norm, soft-cap, no bias,
    // the head tokens only.
    // Smaller weights after RMSNorm, whose inputs are not exact in f32, so that rounding in a
    // sum that cancels stays far below the tolerance.
    let logits = Matmul {
        parts: vec![(0, 64), (64, 73)],
        bias: false,
        norm: true,
        head: Some((5, 65)),
        scale: 0.05,
        ..Matmul::tiled(format, 137, wide, Output::SoftCapLogits(CAP), 150)
    };
    logits.check(&gpu, seed);
}

#[test]
fn tiled_matmul_int8_head_tokens_and_row_pieces() {
    tiled_head_tokens_and_row_pieces(Int8);
}

#[test]
fn tiled_matmul_int4_head_tokens_and_row_pieces() {
    tiled_head_tokens_and_row_pieces(Int4);
}

fn tiled_geglu_pairs_gate_and_up_rows(format: MatrixFormat) {
    let gpu = Gpu::new();
    let [narrow, wide, widest] = tiled_widths(format);
    // F rows per half: one partial workgroup of 32, and four (the last partial).
    let mut seed = 500;
    for (f, d) in [(13usize, narrow), (100, wide), (100, widest)] {
        for tokens in [1, 64, 65, 150] {
            let mut rng = Lcg(seed);
            seed += 1;
            let buffer_tokens = tiled_buffer_tokens(tokens);
            // Gates of a few units (a spread of 0.6 to 5 over these widths), where GELU bends;
            // much larger ones would multiply the f32 reference's rounding in up's sum past the
            // tolerance.
            let matrix = TestMatrix::random(&mut rng, format, 2 * f, d, 0.002, true);
            let norm_w = rng.vec(d, -0.5, 0.5);
            let x = rng.vec(buffer_tokens * d, -2.0, 2.0);
            let mut want = vec![SENTINEL; buffer_tokens * f];
            for t in 0..tokens {
                let input = input_row(&x, t, d, 0, d, Some(&norm_w));
                for r in 0..f {
                    want[t * f + r] = gelu_tanh(matrix.row(r, &input)) * matrix.row(f + r, &input);
                }
            }
            let gate_up = matrix.upload_whole(&gpu);
            let (norm_w, x) = (gpu.buffer(&norm_w), gpu.buffer(&x));
            let hidden = gpu.buffer(&vec![SENTINEL; buffer_tokens * f]);
            let norm = Norm { weight: &norm_w, eps: EPS };
            gpu.run(chunk(tokens), |ops| vec![ops.geglu_tiled(&gate_up, norm, &x, &hidden)]);
            let what = format!("geglu_tiled {format:?} F {f}, D {d}, {tokens} tokens");
            assert_close_within(&what, &gpu.read::<f32>(&hidden), &want, f, ROUNDED_TOLERANCE);
        }
    }
}

#[test]
fn tiled_geglu_int8_pairs_gate_and_up_rows() {
    tiled_geglu_pairs_gate_and_up_rows(Int8);
}

#[test]
fn tiled_geglu_int4_pairs_gate_and_up_rows() {
    tiled_geglu_pairs_gate_and_up_rows(Int4);
}

/// `lru` channels in blocks of `block`: the gates `[input_gate; recurrent_gate]` are
/// `[2·lru, block]`, row ch reading the conv output c[(ch / block)·block ..][..block] of
/// `branches = [GELU(y), c]`; the logits, before σ, go to `[n, 2·lru]`.
fn tiled_gates_block_diagonal(format: MatrixFormat, lru: usize, block: usize) {
    let gpu = Gpu::new();
    let mut rng = Lcg(600 + block as u64);
    let matrix = TestMatrix::random(&mut rng, format, 2 * lru, block, 0.01, true);
    let gates = matrix.upload_whole(&gpu);
    assert!(gates.gates_fit_tiles());
    for tokens in [1, 65, 150] {
        let buffer_tokens = tiled_buffer_tokens(tokens);
        // Multiples of 1/64: the logits are exact whatever the order of their sums.
        let branches = rng.sixty_fourths(buffer_tokens * 2 * lru);
        let mut want = vec![SENTINEL; buffer_tokens * 2 * lru];
        for t in 0..tokens {
            let c = &branches[t * 2 * lru + lru..][..lru];
            for ch in 0..lru {
                let input = &c[(ch / block) * block..][..block];
                want[t * 2 * lru + ch] = matrix.row(ch, input);
                want[t * 2 * lru + lru + ch] = matrix.row(lru + ch, input);
            }
        }
        let (branches, out) = (gpu.buffer(&branches), gpu.buffer(&vec![SENTINEL; buffer_tokens * 2 * lru]));
        gpu.run(chunk(tokens), |ops| vec![ops.gates_tiled(&gates, &branches, &out)]);
        let what = format!("gates_tiled {format:?}, {lru} channels in blocks of {block}, {tokens} tokens");
        assert_close(&what, &gpu.read::<f32>(&out), &want, 2 * lru);
    }
}

#[test]
fn tiled_gates_int8_block_diagonal_in_blocks_of_32_and_64() {
    // Blocks of half a tile's rows (one workgroup each), and of a whole tile (two).
    tiled_gates_block_diagonal(Int8, 160, 32);
    tiled_gates_block_diagonal(Int8, 192, 64);
}

#[test]
fn tiled_gates_int4_block_diagonal_in_blocks_of_32_and_64() {
    // One group per row (its scale padded to two), and two.
    tiled_gates_block_diagonal(Int4, 160, 32);
    tiled_gates_block_diagonal(Int4, 192, 64);
}

#[test]
fn tiled_kernel_takes_whole_steps_and_gate_blocks_of_half_a_tile() {
    let gpu = Gpu::new();
    let mut rng = Lcg(700);
    let mut fits = |format, rows, cols, parts: &[(usize, usize)]| {
        let w = TestMatrix::random(&mut rng, format, rows, cols, 0.01, false).upload(&gpu, parts);
        (w.fits_tiles(), w.gates_fit_tiles())
    };
    // Row lengths: int8 rows of 4-column blocks that are not whole 16-column steps go to the row
    // kernels; int4 groups of 32 always are whole steps.
    assert!(!fits(Int8, 8, 20, &[(0, 8)]).0);
    assert!(fits(Int8, 8, 48, &[(0, 8)]).0);
    assert!(fits(Int4, 8, 96, &[(0, 8)]).0);
    // Gates [2·lru, block]: blocks of 32 or 64 rows; not 12 (not whole steps), not 48 (whole steps,
    // but a workgroup's 32 rows of a half would straddle two blocks); one part only.
    assert_eq!(fits(Int8, 2 * 96, 32, &[(0, 192)]), (true, true));
    assert_eq!(fits(Int4, 2 * 128, 64, &[(0, 256)]), (true, true));
    assert_eq!(fits(Int8, 2 * 84, 12, &[(0, 168)]), (false, false));
    assert_eq!(fits(Int8, 2 * 96, 48, &[(0, 192)]), (true, false));
    assert_eq!(fits(Int8, 2 * 96, 32, &[(0, 96), (96, 96)]), (true, false));
}

#[test]
fn tiled_ops_read_each_weight_once_per_tile_of_tokens() {
    let gpu = Gpu::new();
    let mut rng = Lcg(710);
    let matrix = TestMatrix::random(&mut rng, Int8, 100, 64, 0.01, true).upload(&gpu, &[(0, 60), (60, 40)]);
    let norm_w = gpu.buffer(&vec![0.0f32; 64]);
    let (x, y) = (gpu.buffer(&vec![0.0f32; 64 * 150]), gpu.buffer(&vec![0.0f32; 100 * 150]));
    let chunk_buffer = gpu.uniform(&chunk(150));
    let ops = Ops { ctx: &gpu.ctx, kernels: &gpu.kernels, chunk: &chunk_buffer, unused: &gpu.unused, core: gpu.core };
    let norm = Norm { weight: &norm_w, eps: EPS };
    let read = |ops: &[Op], n: u32| ops.iter().map(|op| op.weight_bytes_read(n)).sum::<u64>();
    let (tiled, rows) = (
        ops.matmul_tiled(&matrix, Some(norm), &x, &y, Output::Store),
        ops.matmul(&matrix, Some(norm), &x, &y, Output::Store),
    );
    // Both pieces read their rows; each reads the norm weight too.
    let once = matrix.bytes() + 2 * 64 * 4;
    for (n, tiles, row_tiles) in [(1, 1, 1), (64, 1, 8), (65, 2, 9), (150, 3, 19)] {
        assert_eq!(read(&tiled, n), tiles * once, "matmul_tiled over {n} tokens");
        assert_eq!(read(&rows, n), row_tiles * once, "matmul over {n} tokens");
    }
    let pair = TestMatrix::random(&mut rng, Int4, 2 * 64, 64, 0.01, true).upload_whole(&gpu);
    let geglu = ops.geglu_tiled(&pair, norm, &x, &y);
    assert_eq!(geglu.weight_bytes_read(65), 2 * (pair.bytes() + 64 * 4));
    let gates = ops.gates_tiled(&pair, &x, &y);
    assert_eq!(gates.weight_bytes_read(150), 3 * pair.bytes());
}

/// Bytes of workgroup memory each module's entry point uses, counting every `var<workgroup>` it
/// (or a function it calls) touches, the shared prefixes' included.
fn workgroup_bytes(name: &str, source: &str) -> u32 {
    use wgpu::naga;
    let module =
        naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    let index = module.entry_points.iter().position(|ep| ep.name == "main").expect("an entry point main");
    let uses = info.get_entry_point(index);
    module
        .global_variables
        .iter()
        .filter(|(handle, var)| var.space == naga::AddressSpace::WorkGroup && !uses[*handle].is_empty())
        .map(|(_, var)| module.types[var.ty].inner.size(module.to_ctx()))
        .sum()
}

/// WebGPU's default `maxComputeWorkgroupStorageSize`, which the browser's device has unless it asks
/// for more: native adapters (lavapipe's 32 KiB) would not show a kernel over it.
const WEBGPU_WORKGROUP_BYTES: u32 = 16384;

#[test]
fn tiled_kernel_fits_webgpu_default_workgroup_memory() {
    let mut tiled = 0;
    for (name, source) in all_modules() {
        let bytes = workgroup_bytes(&name, &source);
        eprintln!("{name}: {bytes} bytes of workgroup memory");
        if name.starts_with("matmul_tiled.") {
            // The staged weights and inputs, 4 KiB each, and the tokens' Σx² shares: nothing else.
            let staged = 2 * TILE_K * (TILE_ROWS / 4) * 16 + TILE_TOKENS * (TILE_K / 4) * 4;
            assert_eq!(bytes, staged, "{name}");
            tiled += 1;
        }
        assert!(bytes <= WEBGPU_WORKGROUP_BYTES, "{name}: {bytes} bytes of workgroup memory");
    }
    assert_eq!(tiled, MatrixFormat::ALL.len(), "one tiled module per format");
    // The count sees a prefix's array that an entry point uses: the row kernels' partial sums.
    let rows = all_modules().into_iter().find(|(name, _)| name == "matmul.int8").unwrap();
    assert!(workgroup_bytes(&rows.0, &rows.1) >= TOKEN_TILE * THREADS * 4);
}
