// matmul.wgsl for short rows (one lane per row, `matmul_lanes` = 1): the same maths and epilogues,
// but each thread computes whole rows, SHORT_ROWS of them, with no workgroup memory and no barrier
// (CPU drivers such as SwiftShader pay a fixed cost per workgroup and per barrier, which a
// 256,000 × 64 logits head would otherwise pay 1,000 times):
//
//   total[t][r] = Σ_c w[r][c] · x[t][x_offset + block(r)·cols + c] · (1 + norm_w[c])
//   v[t][r]     = total[t][r] · scale[r] · inv_rms[t][r] + bias[r]
//   inv_rms     = rsqrt(mean_c x[t][…c]² + eps)   (RMSNorm; 1 without norm)
//   epilogue 0: y[t][r] = v            1: y[t][r] += v   (residual add)
//            2: y[t][r] = cap · tanh(v / cap)            (logit soft-cap)
//
// w, its block scales and row scales come from the format's file as in matrix_rows.wgsl; each
// thread sums Σx² from the very x vectors it reads for the row. A workgroup holds THREADS ·
// SHORT_ROWS rows: thread i takes rows i, i + THREADS, i + 2·THREADS, … of them, so at each step
// neighbouring threads read neighbouring rows. Each weight is read once per tile of up to
// TOKEN_TILE tokens (group.y); token_source 1 takes only the tokens whose logits are wanted.

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

@compute @workgroup_size(THREADS)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) group: vec3<u32>) {
    var first = 0u;
    var count = chunk.n_tokens;
    if params.token_source == 1u {
        first = chunk.head_first;
        count = chunk.head_count;
    }
    let tile_start = group.y * TOKEN_TILE;
    if tile_start >= count {
        return;
    }
    let tile_tokens = min(TOKEN_TILE, count - tile_start);
    let tile_first = first + tile_start;
    let blocks = params.m.cols / (4u * BLOCK);
    let x_stride = params.m.x_stride / 4u;
    let has_norm = params.m.has_norm == 1u;

    for (var k = 0u; k < SHORT_ROWS; k++) {
        let row = (group.x * SHORT_ROWS + k) * THREADS + li;
        if row >= params.m.rows {
            break;
        }
        let affine_row = params.m.row_offset + row;
        let x_base = (params.m.x_offset + (affine_row / params.m.block_rows) * params.m.cols) / 4u;
        var acc = array<f32, TOKEN_TILE>();
        var sq = array<f32, TOKEN_TILE>();
        for (var b = 0u; b < blocks; b++) {
            var weights = block_weights(row, affine_row, params.m.cols, b);
            let scale = block_scale(affine_row, params.m.cols, b);
            let column = x_base + b * BLOCK;
            if has_norm {
                for (var j = 0u; j < BLOCK; j++) {
                    weights[j] *= vec4<f32>(1.0) + norm_w[b * BLOCK + j];
                }
            }
            for (var t = 0u; t < tile_tokens; t++) {
                var block_dot = 0.0;
                for (var j = 0u; j < BLOCK; j++) {
                    let xs = x[(tile_first + t) * x_stride + column + j];
                    block_dot += dot(weights[j], xs);
                    if has_norm {
                        sq[t] += dot(xs, xs);
                    }
                }
                acc[t] += scale * block_dot;
            }
        }

        let scale = row_scale(affine_row);
        var bias = 0.0;
        if params.m.bias_offset != 0u {
            bias = row_bias(params.m.bias_offset + affine_row);
        }
        for (var t = 0u; t < tile_tokens; t++) {
            var sum = acc[t];
            if has_norm {
                sum /= sqrt(sq[t] / f32(params.m.cols) + params.m.eps);
            }
            let value = sum * scale + bias;
            let out = (tile_start + t) * params.y_stride + params.y_offset + row;
            switch params.epilogue {
                case 1u: { y[out] += value; }
                case 2u: { y[out] = params.cap * tanh(clamp(value / params.cap, -10.0, 10.0)); }
                default: { y[out] = value; }
            }
        }
    }
}
