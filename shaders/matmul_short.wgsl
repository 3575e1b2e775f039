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
// w, its group scales and row scales come from the format's file as in matrix_rows.wgsl: a row
// of whole chunks (CHUNK_COLS columns, one 16-byte load and one scale each) is read a chunk at a
// time, any other row a 4-column block at a time. Each thread sums Σx² from the very x vectors
// it reads for the row. A workgroup holds THREADS ·
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
        let tokens = Tokens(tile_first, tile_tokens, x_stride, has_norm);
        // Rows of whole chunks (each row then starts on a 16-byte boundary) read a chunk per 16-byte
        // load with one scale for CHUNK_COLS columns; other rows go a block at a time below.
        let chunks = select(0u, params.m.cols / CHUNK_COLS, params.m.cols % CHUNK_COLS == 0u);
        for (var c = 0u; c < chunks; c++) {
            let weights = chunk_weights(row, params.m.cols, c);
            var dots = array<f32, TOKEN_TILE>();
            for (var j = 0u; j < CHUNK_COLS / 4u; j++) {
                add_vector(weights[j], c * CHUNK_COLS / 4u + j, x_base, tokens, &dots, &sq);
            }
            add_scaled(chunk_scale(affine_row, params.m.cols, c), dots, tile_tokens, &acc);
        }
        for (var b = chunks * CHUNK_COLS / (4u * BLOCK); b < blocks; b++) {
            let weights = block_weights(row, affine_row, params.m.cols, b);
            var dots = array<f32, TOKEN_TILE>();
            for (var j = 0u; j < BLOCK; j++) {
                add_vector(weights[j], b * BLOCK + j, x_base, tokens, &dots, &sq);
            }
            add_scaled(block_scale(affine_row, params.m.cols, b), dots, tile_tokens, &acc);
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

// The tile's tokens as add_vector reads them.
struct Tokens {
    first: u32,
    count: u32,
    x_stride: u32,
    has_norm: bool,
}

// dots[t] += w·(1 + norm_w[v]) · x[t][x_base + v] for four columns (vector v of the row), and
// sq[t] += x[t][x_base + v]² when the row is normalised.
fn add_vector(
    w: vec4<f32>,
    v: u32,
    x_base: u32,
    tokens: Tokens,
    dots: ptr<function, array<f32, TOKEN_TILE>>,
    sq: ptr<function, array<f32, TOKEN_TILE>>,
) {
    var weights = w;
    if tokens.has_norm {
        weights *= vec4<f32>(1.0) + norm_w[v];
    }
    for (var t = 0u; t < tokens.count; t++) {
        let xs = x[(tokens.first + t) * tokens.x_stride + x_base + v];
        (*dots)[t] += dot(weights, xs);
        if tokens.has_norm {
            (*sq)[t] += dot(xs, xs);
        }
    }
}

// acc[t] += scale · dots[t]: a chunk's or block's dot products under its one scale.
fn add_scaled(scale: f32, dots: array<f32, TOKEN_TILE>, count: u32, acc: ptr<function, array<f32, TOKEN_TILE>>) {
    for (var t = 0u; t < count; t++) {
        (*acc)[t] += scale * dots[t];
    }
}
