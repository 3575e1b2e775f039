// Shared by the int8 matrix kernels (matmul_int8, geglu_int8, recurrent_in, rg_lru_gates):
// src/gpu/kernels.rs prepends it after common.wgsl. It computes, for one workgroup's rows and a
// tile of up to TOKEN_TILE tokens,
//
//   total[t][r] = Σ_c q[r][c] · x̂[t][x_offset + block(r)·cols + c]
//   x̂[t][c]     = x[t][c] · rsqrt(mean_j x[t][j]² + eps) · (1 + norm_w[c])   (RMSNorm fused in)
//   x̂[t][c]     = x[t][c]                                                   (no norm)
//
// q is row-major [rows, cols] int8, four per u32 (little-endian); block(r) = r / block_rows picks
// the input slice of a block-diagonal matrix (block_rows = 2³² − 1 for an ordinary one). `lanes`
// threads share a row (a power of two ≤ 32 chosen from the row length). In a pair kernel
// (halves = 2) the first 128 threads compute row r and the other 128 row r + pair_offset, so one
// workgroup holds both rows of a pair (gate and up, linear_y and linear_x, the two RG-LRU gates).
// Rows scale and shift through `affine`: scale[r] at r, bias[r] at bias_offset + r.

struct Int8Rows {
    // Rows of this dispatch (per half in a pair kernel).
    rows: u32,
    cols: u32,
    block_rows: u32,
    x_stride: u32,
    x_offset: u32,
    // First row of this dispatch in `affine` and in block numbering (a row piece of a larger
    // tensor); the weights buffer holds only the dispatch's rows.
    row_offset: u32,
    pair_offset: u32,
    // Where the biases start in `affine`; 0 when the matrix has none.
    bias_offset: u32,
    lanes: u32,
    has_norm: u32,
    eps: f32,
    halves: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> chunk: Chunk;
@group(0) @binding(2) var<storage, read> q: array<u32>;        // [rows, cols / 4]
@group(0) @binding(3) var<storage, read> affine: array<f32>;   // scales, then biases
// Read as vectors of 4: cols, x_stride, x_offset and block starts are all multiples of 4.
@group(0) @binding(4) var<storage, read> norm_w: array<vec4<f32>>;   // [cols] (unused without norm)
@group(0) @binding(5) var<storage, read> x: array<vec4<f32>>;        // [tokens, x_stride]

const TOKEN_TILE: u32 = 8u;
// The most lanes a row can have (matmul_lanes in src/gpu/kernels.rs).
const MAX_LANES: u32 = 32u;

// Per-lane partial dot products [TOKEN_TILE, 256], and the per-lane partial Σx² of the first
// row's lanes [TOKEN_TILE, MAX_LANES]: a row's lanes read every column of x once between them, so
// the RMSNorm's sum of squares comes from the same loads, and a tile needs a single barrier.
var<workgroup> partial: array<f32, 2048>;
var<workgroup> squares: array<f32, 256>;

fn unpack_int8(word: u32) -> vec4<f32> {
    let w = bitcast<i32>(word);
    return vec4<f32>(
        f32(extractBits(w, 0u, 8u)),
        f32(extractBits(w, 8u, 8u)),
        f32(extractBits(w, 16u, 8u)),
        f32(extractBits(w, 24u, 8u)),
    );
}

// Threads per half of the workgroup, and rows per workgroup.
fn half_threads() -> u32 {
    return 256u / params.m.halves;
}

fn rows_per_group() -> u32 {
    return half_threads() / params.m.lanes;
}

// Each thread's share of Σ_c q[row][c] · x[t][…] · (1 + norm_w[c]) (and of Σ x²) for the tile
// of tokens first..first + count, left in workgroup memory for `row_total`. Every thread of the
// workgroup must call it; a kernel that calls it again for another tile must first wait until
// every reader of this one is done.
fn tile_partials(li: u32, group_row: u32, first: u32, count: u32) {
    let half = li / half_threads();
    let local = li % half_threads();
    let lanes = params.m.lanes;
    let lane = local % lanes;
    let row = group_row * rows_per_group() + local / lanes;
    var acc: array<f32, 8>;
    var sq: array<f32, 8>;
    if row < params.m.rows {
        let words = params.m.cols / 4u;
        let x_base = (params.m.x_offset + ((params.m.row_offset + row) / params.m.block_rows) * params.m.cols) / 4u;
        let x_stride = params.m.x_stride / 4u;
        let weight_base = (row + half * params.m.pair_offset) * words;
        if params.m.has_norm == 1u {
            for (var w = lane; w < words; w += lanes) {
                let weights = unpack_int8(q[weight_base + w]) * (vec4<f32>(1.0) + norm_w[w]);
                for (var t = 0u; t < count; t++) {
                    let xs = x[(first + t) * x_stride + x_base + w];
                    acc[t] += dot(weights, xs);
                    sq[t] += dot(xs, xs);
                }
            }
        } else {
            for (var w = lane; w < words; w += lanes) {
                let weights = unpack_int8(q[weight_base + w]);
                for (var t = 0u; t < count; t++) {
                    acc[t] += dot(weights, x[(first + t) * x_stride + x_base + w]);
                }
            }
        }
    }
    for (var t = 0u; t < TOKEN_TILE; t++) {
        partial[t * 256u + li] = acc[t];
    }
    if li < lanes {
        for (var t = 0u; t < TOKEN_TILE; t++) {
            squares[t * MAX_LANES + li] = sq[t];
        }
    }
    workgroupBarrier();
}

// scale · total + bias of the workgroup's local row `local_row` in half `half` for tile token t,
// RMSNorm's 1/rms applied; `row` is its row in the dispatch.
fn row_total(t: u32, local_row: u32, half: u32, row: u32) -> f32 {
    let lanes = params.m.lanes;
    let first_lane = t * 256u + half * half_threads() + local_row * lanes;
    var sum = 0.0;
    for (var lane = 0u; lane < lanes; lane++) {
        sum += partial[first_lane + lane];
    }
    if params.m.has_norm == 1u {
        var sum_of_squares = 0.0;
        for (var lane = 0u; lane < lanes; lane++) {
            sum_of_squares += squares[t * MAX_LANES + lane];
        }
        sum /= sqrt(sum_of_squares / f32(params.m.cols) + params.m.eps);
    }
    let affine_row = params.m.row_offset + row + half * params.m.pair_offset;
    var value = sum * affine[affine_row];
    if params.m.bias_offset != 0u {
        value += affine[params.m.bias_offset + affine_row];
    }
    return value;
}
