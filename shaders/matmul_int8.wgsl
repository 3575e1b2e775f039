// Int8 matrix × a chunk of activation vectors, f32 accumulation, with a fused epilogue:
//
//   acc[t][r] = scale[r] · Σ_c q[r][c] · x[t][block(r)·cols + c] + bias[r]
//   epilogue 0: y[t][r] = acc            1: y[t][r] += acc   (residual add)
//            2: y[t][r] = gelu_tanh(acc) · aux[t][r]       (GeGLU: aux holds the up branch)
//            3: y[t][r] = cap · tanh(acc / cap)            (logit soft-cap)
//
// q is row-major [rows, cols] int8, four per u32 (little-endian). block(r) = r / block_rows selects
// the input slice for the block-diagonal RG-LRU gates; an ordinary matrix has block_rows = rows.
// Rows index a piece of a larger tensor through scale_offset (the piece's first row) and y_offset.
// A workgroup computes 8 rows (32 lanes each) for up to 8 tokens, so weights are read once per
// 8 tokens during prefill and decode reads each weight exactly once.

struct Params {
    rows: u32,
    cols: u32,
    block_rows: u32,
    x_stride: u32,
    y_stride: u32,
    y_offset: u32,
    scale_offset: u32,
    epilogue: u32,
    has_bias: u32,
    // 0: the chunk's tokens; 1: only the tokens whose logits are wanted (chunk.head_*).
    token_source: u32,
    cap: f32,
    _pad: u32,
}

struct Chunk {
    n_tokens: u32,
    head_first: u32,
    head_count: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> chunk: Chunk;
@group(0) @binding(2) var<storage, read> q: array<u32>;         // [rows, cols / 4]
@group(0) @binding(3) var<storage, read> scales: array<f32>;    // [tensor rows]
@group(0) @binding(4) var<storage, read> bias: array<f32>;      // [tensor rows] (unused without bias)
@group(0) @binding(5) var<storage, read> x: array<f32>;         // [tokens, x_stride]
@group(0) @binding(6) var<storage, read> aux: array<f32>;       // [tokens, y_stride] (epilogue 2)
@group(0) @binding(7) var<storage, read_write> y: array<f32>;   // [tokens, y_stride]

const ROWS_PER_GROUP: u32 = 8u;
const LANES: u32 = 32u;
const TOKEN_TILE: u32 = 8u;

var<workgroup> partial: array<f32, 256>;

fn gelu_tanh(z: f32) -> f32 {
    let inner = 0.7978846 * (z + 0.044715 * z * z * z);
    return 0.5 * z * (1.0 + tanh(clamp(inner, -10.0, 10.0)));
}

fn unpack_int8(word: u32) -> vec4<f32> {
    let w = bitcast<i32>(word);
    return vec4<f32>(
        f32(extractBits(w, 0u, 8u)),
        f32(extractBits(w, 8u, 8u)),
        f32(extractBits(w, 16u, 8u)),
        f32(extractBits(w, 24u, 8u)),
    );
}

@compute @workgroup_size(256)
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
    let local_row = li / LANES;
    let lane = li % LANES;
    let row = group.x * ROWS_PER_GROUP + local_row;
    let row_ok = row < params.rows;

    var acc: array<f32, 8>;
    if row_ok {
        let words = params.cols / 4u;
        let x_base = (row / params.block_rows) * params.cols;
        for (var w = lane; w < words; w += LANES) {
            let weights = unpack_int8(q[row * words + w]);
            for (var t = 0u; t < tile_tokens; t++) {
                let at = (first + tile_start + t) * params.x_stride + x_base + 4u * w;
                acc[t] += dot(weights, vec4<f32>(x[at], x[at + 1u], x[at + 2u], x[at + 3u]));
            }
        }
    }

    for (var t = 0u; t < tile_tokens; t++) {
        partial[li] = acc[t];
        workgroupBarrier();
        for (var stride = LANES / 2u; stride > 0u; stride /= 2u) {
            if lane < stride {
                partial[li] += partial[li + stride];
            }
            workgroupBarrier();
        }
        if lane == 0u && row_ok {
            let tensor_row = params.scale_offset + row;
            var value = partial[li] * scales[tensor_row];
            if params.has_bias == 1u {
                value += bias[tensor_row];
            }
            let out = (tile_start + t) * params.y_stride + params.y_offset + row;
            switch params.epilogue {
                case 1u: { y[out] += value; }
                case 2u: { y[out] = gelu_tanh(value) * aux[out]; }
                case 3u: { y[out] = params.cap * tanh(clamp(value / params.cap, -10.0, 10.0)); }
                default: { y[out] = value; }
            }
        }
        workgroupBarrier();
    }
}
