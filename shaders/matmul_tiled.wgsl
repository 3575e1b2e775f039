// Matrix × a chunk of activation vectors as a tiled matrix product, for prefill: a workgroup
// computes TILE_ROWS rows for TILE_TOKENS tokens, so each weight is read once per TILE_TOKENS
// tokens (the row kernels, matmul.wgsl and its kin, read it once per TOKEN_TILE and stay for
// decode). RMSNorm optionally fused in front, f32 accumulation:
//
//   total[t][r] = Σ_c w[r][c] · x̂[t][x_offset + block(r)·cols + c]
//   x̂[t][c]     = x[t][c] · rsqrt(mean_j x[t][j]² + eps) · (1 + norm_w[c])   (has_norm)
//   v[t][r]     = total[t][r] · row_scale[r] + bias[r]
//   epilogue 0: y[t][r] = v            1: y[t][r] += v   (residual add)
//            2: y[t][r] = cap · tanh(v / cap)            (logit soft-cap)
//            3: y[t][r] = gelu_tanh(v[t][r]) · v[t][r + pair_offset]   (GeGLU, a pair)
//
// w[r][c] is the format's block_weights · block_scale (int4: the group's scale; int8: 1), applied
// while the weights are staged, so int8 and int4 share this file; the per-row row_scale (int8)
// and the bias come once per output, in the epilogue, as in matrix_rows.wgsl.
//
// Tiling. Each step over TILE_K columns, every thread stages one block of 4 weights (one row of
// the tile) and one vector of 4 inputs (one token) into workgroup memory, transposed, so that the
// inner loop reads a column of either as one vec4 over 4 rows or over 4 tokens; every thread then
// accumulates its own 4 rows × 4 tokens with 16 multiply-adds per pair of vec4 loads. The next
// step's global loads are issued before this step's products, so they are in flight while it
// computes. (1 + norm_w) is folded into the staged x, and Σx² comes from the raw values the
// staging threads load anyway; 1/rms multiplies each token's totals in the epilogue. Workgroup
// memory is 9 KiB (both staged tiles in f32, 4 KiB each, and the Σx² shares), within WebGPU's
// default 16 KiB; double-buffering the tiles would need 17 KiB, hence the prefetch into registers
// and two barriers a step.
//
// A pair (halves = 2: [gate; up], or the RG-LRU's [input gate; recurrent gate]): a thread's 4
// rows are rows r, r + 1 of the first half and the same two of the second, so one thread holds
// both values of each of its outputs. Epilogue 3 writes hidden row r; the others write half h's
// row r at column y_offset + h·rows + r (a stacked output, as the stacked matrix).
// block(r) = (row_offset + r) / block_rows picks the input slice of a block-diagonal matrix; it is
// the same for all of a workgroup's rows (the host takes blocks that are a multiple of
// TILE_ROWS / halves rows), so that one tile of x serves them all.
//
// cols is a multiple of TILE_K; rows and tokens may end mid-tile: loads past them stage zeros and
// stores past them are skipped. token_source 1 takes only the tokens whose logits are wanted
// (chunk.head_*), written from y row 0. Every barrier sits in control flow that depends only on
// uniforms and the workgroup id.

struct Params {
    m: MatrixRows,
    y_stride: u32,
    y_offset: u32,
    epilogue: u32,
    // 0: the chunk's tokens; 1: only the tokens whose logits are wanted (chunk.head_*).
    token_source: u32,
    cap: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> chunk: Chunk;
// Read as vectors of 4: cols, x_stride, x_offset and block starts are all multiples of 4.
@group(0) @binding(4) var<storage, read> norm_w: array<vec4<f32>>;   // [cols] (unused without norm)
@group(0) @binding(5) var<storage, read> x: array<vec4<f32>>;        // [tokens, x_stride]
@group(0) @binding(6) var<storage, read_write> y: array<f32>;        // [tokens, y_stride]

// Vectors of 4 along each side of the tile. src/gpu/kernels.rs checks that THREADS threads are
// ROW_VECTORS · TOKEN_VECTORS blocks of 4 × 4 outputs, and TILE_ROWS = TILE_TOKENS rows of
// STEP_VECTORS stagers each.
const ROW_VECTORS: u32 = TILE_ROWS / 4u;
const TOKEN_VECTORS: u32 = TILE_TOKENS / 4u;
const STEP_VECTORS: u32 = TILE_K / 4u;

// [TILE_K, TILE_ROWS / 4] and [TILE_K, TILE_TOKENS / 4]: the step's column k of the weights as
// vectors of 4 rows, and of the inputs as vectors of 4 tokens (4 KiB each).
var<workgroup> tile_w: array<vec4<f32>, TILE_K * ROW_VECTORS>;
var<workgroup> tile_x: array<vec4<f32>, TILE_K * TOKEN_VECTORS>;
// [TILE_TOKENS, STEP_VECTORS]: each token's Σx² in the shares of its stagers (1 KiB).
var<workgroup> squares: array<f32, TILE_TOKENS * STEP_VECTORS>;

// The row (within its half) and the half of the tile's row j: a thread's rows 4i..4i + 3 are
// 4 consecutive rows, or (a pair) 2 consecutive rows of each half.
fn tile_row(group_x: u32, j: u32) -> vec2<u32> {
    let per_half = 4u / params.m.halves;
    let row = group_x * (TILE_ROWS / params.m.halves) + (j / 4u) * per_half + (j % 4u) % per_half;
    return vec2<u32>(row, (j % 4u) / per_half);
}

// Columns 4v..4v + 3 of a weights-buffer row, dequantized up to the row's scale (a format's block
// may hold several vectors of 4).
fn staged_weights(weight_row: u32, affine_row: u32, v: u32) -> vec4<f32> {
    let b = v / BLOCK;
    var vectors = block_weights(weight_row, affine_row, params.m.cols, b);
    return vectors[v % BLOCK] * block_scale(affine_row, params.m.cols, b);
}

// Token t of the tile (for `total`, its 4 rows) through the epilogue, with the rows' scales and
// biases.
fn finish(group_x: u32, rg: u32, tile_start: u32, count: u32, t: u32, total: vec4<f32>, scales: vec4<f32>, biases: vec4<f32>) {
    if tile_start + t >= count {
        return;
    }
    var inv_rms = 1.0;
    if params.m.has_norm == 1u {
        var sum_of_squares = 0.0;
        for (var i = 0u; i < STEP_VECTORS; i++) {
            sum_of_squares += squares[t * STEP_VECTORS + i];
        }
        inv_rms = 1.0 / sqrt(sum_of_squares / f32(params.m.cols) + params.m.eps);
    }
    let v = total * inv_rms * scales + biases;
    let out_row = (tile_start + t) * params.y_stride + params.y_offset;
    if params.epilogue == 3u {
        // Rows r, r + 1 of the gate in .xy, of up in .zw.
        for (var i = 0u; i < 2u; i++) {
            let row = tile_row(group_x, 4u * rg + i).x;
            if row < params.m.rows {
                y[out_row + row] = gelu_tanh(v[i]) * v[i + 2u];
            }
        }
        return;
    }
    for (var i = 0u; i < 4u; i++) {
        let tr = tile_row(group_x, 4u * rg + i);
        if tr.x < params.m.rows {
            let out = out_row + tr.y * params.m.rows + tr.x;
            switch params.epilogue {
                case 1u: { y[out] += v[i]; }
                case 2u: { y[out] = params.cap * tanh(clamp(v[i] / params.cap, -10.0, 10.0)); }
                default: { y[out] = v[i]; }
            }
        }
    }
}

@compute @workgroup_size(THREADS)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) group: vec3<u32>) {
    var first = 0u;
    var count = chunk.n_tokens;
    if params.token_source == 1u {
        first = chunk.head_first;
        count = chunk.head_count;
    }
    let tile_start = group.y * TILE_TOKENS;
    if tile_start >= count {
        return;
    }
    let m = params.m;
    let has_norm = m.has_norm == 1u;

    // Staging: this thread's vector `sv` of each step, of the tile's weight row j and of token j.
    let sv = li % STEP_VECTORS;
    let j = li / STEP_VECTORS;
    let staged_row = tile_row(group.x, j);
    let weights_live = staged_row.x < m.rows;
    let weight_row = staged_row.x + staged_row.y * m.pair_offset;
    let affine_row = m.row_offset + weight_row;
    let input_live = tile_start + j < count;
    let x_block = (m.row_offset + group.x * (TILE_ROWS / m.halves)) / m.block_rows;
    let x_row = (first + tile_start + j) * (m.x_stride / 4u) + (m.x_offset + x_block * m.cols) / 4u;

    // Products: this thread's rows 4·rg..4·rg + 3 and tokens 4·tg..4·tg + 3, one accumulator per
    // token (separate variables: a private array indexed in a loop may be moved to slow memory).
    let rg = li % ROW_VECTORS;
    let tg = li / ROW_VECTORS;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    var next_w = vec4<f32>(0.0);
    var next_x = vec4<f32>(0.0);
    if weights_live {
        next_w = staged_weights(weight_row, affine_row, sv);
    }
    if input_live {
        next_x = x[x_row + sv];
    }
    var sum_of_squares = 0.0;
    let steps = m.cols / TILE_K;
    for (var s = 0u; s < steps; s++) {
        var xs = next_x;
        if has_norm {
            sum_of_squares += dot(xs, xs);
            xs *= vec4<f32>(1.0) + norm_w[s * STEP_VECTORS + sv];
        }
        // Every thread is done reading the previous step.
        workgroupBarrier();
        for (var c = 0u; c < 4u; c++) {
            tile_w[(4u * sv + c) * ROW_VECTORS + j / 4u][j % 4u] = next_w[c];
            tile_x[(4u * sv + c) * TOKEN_VECTORS + j / 4u][j % 4u] = xs[c];
        }
        workgroupBarrier();
        if s + 1u < steps {
            let v = (s + 1u) * STEP_VECTORS + sv;
            if weights_live {
                next_w = staged_weights(weight_row, affine_row, v);
            }
            if input_live {
                next_x = x[x_row + v];
            }
        }
        for (var k = 0u; k < TILE_K; k++) {
            let w = tile_w[k * ROW_VECTORS + rg];
            let xv = tile_x[k * TOKEN_VECTORS + tg];
            acc0 += w * xv.x;
            acc1 += w * xv.y;
            acc2 += w * xv.z;
            acc3 += w * xv.w;
        }
    }
    if has_norm {
        squares[li] = sum_of_squares;
        workgroupBarrier();
    }

    var scales = vec4<f32>(0.0);
    var biases = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        let tr = tile_row(group.x, 4u * rg + i);
        if tr.x < m.rows {
            let row = m.row_offset + tr.x + tr.y * m.pair_offset;
            scales[i] = row_scale(row);
            if m.bias_offset != 0u {
                biases[i] = row_bias(m.bias_offset + row);
            }
        }
    }
    finish(group.x, rg, tile_start, count, 4u * tg, acc0, scales, biases);
    finish(group.x, rg, tile_start, count, 4u * tg + 1u, acc1, scales, biases);
    finish(group.x, rg, tile_start, count, 4u * tg + 2u, acc2, scales, biases);
    finish(group.x, rg, tile_start, count, 4u * tg + 3u, acc3, scales, biases);
}
