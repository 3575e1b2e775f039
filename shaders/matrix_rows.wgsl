// Shared by the row kernels (matmul, geglu, recurrent_in, rg_lru_gates): src/gpu/kernels.rs
// prepends it, with the weight format's file (format_int8.wgsl or format_int4.wgsl), after
// common.wgsl. It computes, for one workgroup's rows and a tile of up to TOKEN_TILE tokens,
//
//   total[t][r] = Σ_c w[r][c] · x̂[t][x_offset + block(r)·cols + c]
//   x̂[t][c]     = x[t][c] · rsqrt(mean_j x[t][j]² + eps) · (1 + norm_w[c])   (RMSNorm fused in)
//   x̂[t][c]     = x[t][c]                                                   (no norm)
//
// w comes from the format's `block_weights` and `block_scale`: a block is BLOCK vectors of 4
// consecutive columns (4 in both formats, so neighbouring lanes read neighbouring memory), whose
// dot product is scaled by `block_scale` (int4: its group's scale; int8: 1). block(r) = r / block_rows picks
// the input slice of a block-diagonal matrix (block_rows = 2³² − 1 for an ordinary one). `lanes`
// threads share a row (a power of two ≤ MAX_LANES chosen from the row length). In a pair kernel
// (halves = 2) the first half of the threads computes row r and the other half row r +
// pair_offset, so one workgroup holds both rows of a pair (gate and up, linear_y and linear_x,
// the two RG-LRU gates). The total is then scaled by the format's `row_scale` (int8's per-row
// scale; 1 where the blocks carry their scales) and shifted by `row_bias`.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> chunk: Chunk;
// Read as vectors of 4: cols, x_stride, x_offset and block starts are all multiples of 4.
@group(0) @binding(4) var<storage, read> norm_w: array<vec4<f32>>;   // [cols] (unused without norm)
@group(0) @binding(5) var<storage, read> x: array<vec4<f32>>;        // [tokens, x_stride]

// Per-lane partial dot products [TOKEN_TILE, THREADS], and the per-lane partial Σx² of the first
// row's lanes [TOKEN_TILE, MAX_LANES]: a row's lanes read every column of x once between them, so
// the RMSNorm's sum of squares comes from the same loads, and a tile needs a single barrier.
var<workgroup> partial: array<f32, TOKEN_TILE * THREADS>;
var<workgroup> squares: array<f32, TOKEN_TILE * MAX_LANES>;

// Threads per half of the workgroup, and rows per workgroup.
fn half_threads() -> u32 {
    return THREADS / params.m.halves;
}

fn rows_per_group() -> u32 {
    return half_threads() / params.m.lanes;
}

// Each thread's share of Σ_c w[row][c] · x[t][…] · (1 + norm_w[c]) (and of Σ x²) for the tile
// of tokens first..first + count, left in workgroup memory for `row_total`. Every thread of the
// workgroup must call it; a kernel that calls it again for another tile must first wait until
// every reader of this one is done.
fn tile_partials(li: u32, group_row: u32, first: u32, count: u32) {
    let half = li / half_threads();
    let local = li % half_threads();
    let lanes = params.m.lanes;
    let lane = local % lanes;
    let row = group_row * rows_per_group() + local / lanes;
    var acc = array<f32, TOKEN_TILE>();
    var sq = array<f32, TOKEN_TILE>();
    if row < params.m.rows {
        let blocks = params.m.cols / (4u * BLOCK);
        let x_base = (params.m.x_offset + ((params.m.row_offset + row) / params.m.block_rows) * params.m.cols) / 4u;
        let x_stride = params.m.x_stride / 4u;
        let weight_row = row + half * params.m.pair_offset;
        let affine_row = params.m.row_offset + weight_row;
        for (var b = lane; b < blocks; b += lanes) {
            var weights = block_weights(weight_row, affine_row, params.m.cols, b);
            let scale = block_scale(affine_row, params.m.cols, b);
            let column = x_base + b * BLOCK;
            if params.m.has_norm == 1u {
                for (var j = 0u; j < BLOCK; j++) {
                    weights[j] *= vec4<f32>(1.0) + norm_w[b * BLOCK + j];
                }
                for (var t = 0u; t < count; t++) {
                    var block_dot = 0.0;
                    for (var j = 0u; j < BLOCK; j++) {
                        let xs = x[(first + t) * x_stride + column + j];
                        block_dot += dot(weights[j], xs);
                        sq[t] += dot(xs, xs);
                    }
                    acc[t] += scale * block_dot;
                }
            } else {
                for (var t = 0u; t < count; t++) {
                    var block_dot = 0.0;
                    for (var j = 0u; j < BLOCK; j++) {
                        block_dot += dot(weights[j], x[(first + t) * x_stride + column + j]);
                    }
                    acc[t] += scale * block_dot;
                }
            }
        }
    }
    for (var t = 0u; t < TOKEN_TILE; t++) {
        partial[t * THREADS + li] = acc[t];
    }
    if li < lanes {
        for (var t = 0u; t < TOKEN_TILE; t++) {
            squares[t * MAX_LANES + li] = sq[t];
        }
    }
    workgroupBarrier();
}

// row_scale · total + bias of the workgroup's local row `local_row` in half `half` for tile
// token t, RMSNorm's 1/rms applied; `row` is its row in the dispatch.
fn row_total(t: u32, local_row: u32, half: u32, row: u32) -> f32 {
    let lanes = params.m.lanes;
    let first_lane = t * THREADS + half * half_threads() + local_row * lanes;
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
    var value = sum * row_scale(affine_row);
    if params.m.bias_offset != 0u {
        value += row_bias(params.m.bias_offset + affine_row);
    }
    return value;
}
