// The decode step's matrix–vector products (one token): what matrix_rows.wgsl computes for the
// row kernels (matmul, geglu, recurrent_in, rg_lru_gates), with the same three functions for
// their epilogues (tile_partials, row_total, rows_per_group), laid out for real GPUs. Prepended,
// with the weight format's file, after common.wgsl, by src/gpu/kernels.rs:
//
//   x̂[c]     = x[c] · rsqrt(mean_j x[j]² + eps) · (1 + norm_w[c])   (RMSNorm; x̂ = x without)
//   total[r] = Σ_c w[r][c] · x̂[x_offset + block(r)·cols + c]
//
// - x̂ is computed once per workgroup into workgroup memory, a tile of TILE_CHUNKS chunks at a
//   time, and read from there, not from global memory per row;
// - a team of TPR threads owns two rows: neighbouring rows 2·team, 2·team + 1 of the workgroup
//   (halves = 1), or row `team` of both halves of a pair (halves = 2: gate and up, linear_y and
//   linear_x, the two RG-LRU gates);
// - thread `lane` of a team reads 16-byte chunks lane, lane + TPR, … (neighbours on neighbouring
//   16 bytes of a row) of both rows: STEPS per tile, a pipeline constant, so all 2·STEPS loads of
//   a tile are issued before the first is used;
// - the team's partial sums meet in workgroup memory; one thread per row adds them.
//
// cols = TILES · STEPS · TPR · CHUNK_COLS exactly (src/gpu/matrix.rs `GemvShape`); the rows of a
// workgroup share one block of a block-diagonal matrix; the chunk holds one token (count = 1).

override TPR: u32 = 32u;
override STEPS: u32 = 5u;
override TILES: u32 = 1u;
// Vectors of x̂ per tile, and the passes of the workgroup's threads over it.
override TILE_VECTORS: u32 = STEPS * TPR * (CHUNK_COLS / 4u);
override TILE_PASSES: u32 = (TILE_VECTORS + THREADS - 1u) / THREADS;
override TEAMS: u32 = THREADS / TPR;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> chunk: Chunk;
// Read as vectors of 4: cols, x_stride, x_offset and block starts are all multiples of 4.
@group(0) @binding(4) var<storage, read> norm_w: array<vec4<f32>>;   // [cols] (unused without norm)
@group(0) @binding(5) var<storage, read> x: array<vec4<f32>>;        // [tokens, x_stride]

var<workgroup> xs: array<vec4<f32>, GEMV_TILE_COLS / 4u>;
// Per thread its two rows' partial sums, [team][row of 2][lane]; then per row its total.
var<workgroup> partial: array<f32, 2u * THREADS>;
var<workgroup> totals: array<f32, 2u * THREADS>;
var<workgroup> rms: f32;

fn rows_per_group() -> u32 {
    return select(2u * TEAMS, TEAMS, params.m.halves == 2u);
}

// The RMS of the token's whole input, for a matrix of several tiles (every thread calls it).
fn normalizer(li: u32, x_base: u32) {
    var sum = 0.0;
    for (var tile = 0u; tile < TILES; tile++) {
        for (var p = 0u; p < TILE_PASSES; p++) {
            let v = p * THREADS + li;
            if v < TILE_VECTORS {
                let value = x[x_base + tile * TILE_VECTORS + v];
                sum += dot(value, value);
            }
        }
    }
    let total = workgroup_sum(li, sum);
    if li == 0u {
        rms = sqrt(total / f32(params.m.cols) + params.m.eps);
    }
    workgroupBarrier();
}

// Chunk c of the weights buffer's row `weight_row` times x̂ from xs[x4], with the chunk's scale.
fn chunk_dot(weight_row: u32, c: u32, x4: u32) -> f32 {
    let w = chunk_weights(weight_row, params.m.cols, c);
    var sum = 0.0;
    for (var j = 0u; j < CHUNK_COLS / 4u; j++) {
        sum += dot(w[j], xs[x4 + j]);
    }
    return chunk_scale(params.m.row_offset + weight_row, params.m.cols, c) * sum;
}

// tile_partials of matrix_rows.wgsl for one token (`count` is 1): the workgroup's row totals
// into `totals`, for `row_total`. Every thread must call it.
fn tile_partials(li: u32, group_row: u32, first: u32, count: u32) {
    let team = li / TPR;
    let lane = li % TPR;
    let pair = params.m.halves == 2u;
    let rows = params.m.rows;
    // The team's two rows in the dispatch, and where their weights are.
    let row0 = select(group_row * 2u * TEAMS + 2u * team, group_row * TEAMS + team, pair);
    let row1 = select(row0 + 1u, row0, pair);
    let weight_row1 = select(row1, row0 + params.m.pair_offset, pair);
    let live0 = row0 < rows;
    let live1 = row1 < rows;
    // Every row of the workgroup reads the block of its first row.
    let first_row = group_row * rows_per_group();
    let x_base = ((params.m.x_offset + ((params.m.row_offset + first_row) / params.m.block_rows) * params.m.cols)
        + first * params.m.x_stride) / 4u;
    let has_norm = params.m.has_norm == 1u;
    // One tile: Σx² from the staged tile itself (x read once); several: a pass over x first.
    let norm_in_tile = has_norm && TILES == 1u;
    let norm_before = has_norm && TILES > 1u;
    if norm_before {
        normalizer(li, x_base);
    }

    var acc0 = 0.0;
    var acc1 = 0.0;
    for (var tile = 0u; tile < TILES; tile++) {
        // The previous tile's readers are done before it is overwritten.
        workgroupBarrier();
        var sum_of_squares = 0.0;
        for (var p = 0u; p < TILE_PASSES; p++) {
            let v = p * THREADS + li;
            if v < TILE_VECTORS {
                let c = tile * TILE_VECTORS + v;
                var value = x[x_base + c];
                sum_of_squares += dot(value, value);
                if norm_before {
                    value = value / rms * (vec4<f32>(1.0) + norm_w[c]);
                }
                xs[v] = value;
            }
        }
        if norm_in_tile {
            // A division, not inverseSqrt or 1 / sqrt, which drivers may approximate to 12 bits.
            let tile_rms = sqrt(workgroup_sum(li, sum_of_squares) / f32(params.m.cols) + params.m.eps);
            // Each thread scales the vectors it staged.
            for (var p = 0u; p < TILE_PASSES; p++) {
                let v = p * THREADS + li;
                if v < TILE_VECTORS {
                    xs[v] = xs[v] / tile_rms * (vec4<f32>(1.0) + norm_w[v]);
                }
            }
        }
        workgroupBarrier();
        for (var s = 0u; s < STEPS; s++) {
            let local_chunk = s * TPR + lane;
            let c = tile * STEPS * TPR + local_chunk;
            let x4 = local_chunk * (CHUNK_COLS / 4u);
            if live0 {
                acc0 += chunk_dot(row0, c, x4);
            }
            if live1 {
                acc1 += chunk_dot(weight_row1, c, x4);
            }
        }
    }
    partial[(2u * team) * TPR + lane] = acc0;
    partial[(2u * team + 1u) * TPR + lane] = acc1;
    workgroupBarrier();
    // Total of slot i = 2·team + k: the team's row k.
    for (var p = 0u; p < 2u; p++) {
        let i = p * THREADS + li;
        if i < 2u * TEAMS {
            var sum = 0.0;
            for (var k = 0u; k < TPR; k++) {
                sum += partial[i * TPR + k];
            }
            totals[i] = sum;
        }
    }
    workgroupBarrier();
}

// row_scale · total + bias of the workgroup's local row `local_row` in half `half`; `row` is its
// row in the dispatch. (One token: `t` is 0; RMSNorm is already in x̂.)
fn row_total(t: u32, local_row: u32, half: u32, row: u32) -> f32 {
    let slot = select(local_row, 2u * local_row + half, params.m.halves == 2u);
    let affine_row = params.m.row_offset + row + half * params.m.pair_offset;
    var value = totals[slot] * row_scale(affine_row);
    if params.m.bias_offset != 0u {
        value += row_bias(params.m.bias_offset + affine_row);
    }
    return value;
}
