// Int8 matrix × a chunk of activation vectors, f32 accumulation, with a fused epilogue:
//
//   acc[t][r] = scale[r] · Σ_c q[r][c] · x[t][block(r)·cols + c] + bias[r]
//   epilogue 0: y[t][r] = acc            1: y[t][r] += acc   (residual add)
//            2: y[t][r] = gelu_tanh(acc) · aux[t][r]       (GeGLU: aux holds the up branch)
//            3: y[t][r] = cap · tanh(acc / cap)            (logit soft-cap)
//
// q is row-major [rows, cols] int8, four per u32 (little-endian). block(r) = (scale_offset + r) /
// block_rows, counted in rows of the whole tensor, selects the input slice for the block-diagonal
// RG-LRU gates; an ordinary matrix has block_rows = its row count, so block(r) = 0.
// Rows index a piece of a larger tensor through scale_offset (the piece's first row) and y_offset.
// A workgroup of 256 threads computes 256 / lanes rows (`lanes` threads per row, a power of two
// up to 32 chosen from the row length) for up to 8 tokens, so weights are read once per 8 tokens
// during prefill and decode reads each weight exactly once.

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
    lanes: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> chunk: Chunk;
@group(0) @binding(2) var<storage, read> q: array<u32>;         // [rows, cols / 4]
@group(0) @binding(3) var<storage, read> scales: array<f32>;    // [tensor rows]
@group(0) @binding(4) var<storage, read> bias: array<f32>;      // [tensor rows] (unused without bias)
@group(0) @binding(5) var<storage, read> x: array<f32>;         // [tokens, x_stride]
@group(0) @binding(6) var<storage, read> aux: array<f32>;       // [tokens, y_stride] (epilogue 2)
@group(0) @binding(7) var<storage, read_write> y: array<f32>;   // [tokens, y_stride]

const TOKEN_TILE: u32 = 8u;

// Per-lane partial sums, [TOKEN_TILE, 256]: one barrier, then one thread per (row, token) adds
// its row's lanes (fewer barriers than a tree, which matters on CPU Vulkan drivers).
var<workgroup> partial: array<f32, 2048>;

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
    let lanes = params.lanes;
    let rows_per_group = 256u / lanes;
    let local_row = li / lanes;
    let lane = li % lanes;
    let row = group.x * rows_per_group + local_row;
    let row_ok = row < params.rows;

    var acc: array<f32, 8>;
    if row_ok {
        let words = params.cols / 4u;
        let x_base = ((params.scale_offset + row) / params.block_rows) * params.cols;
        for (var w = lane; w < words; w += lanes) {
            let weights = unpack_int8(q[row * words + w]);
            for (var t = 0u; t < tile_tokens; t++) {
                let at = (first + tile_start + t) * params.x_stride + x_base + 4u * w;
                acc[t] += dot(weights, vec4<f32>(x[at], x[at + 1u], x[at + 2u], x[at + 3u]));
            }
        }
    }

    for (var t = 0u; t < tile_tokens; t++) {
        partial[t * 256u + li] = acc[t];
    }
    workgroupBarrier();
    for (var pair = li; pair < rows_per_group * tile_tokens; pair += 256u) {
        let t = pair / rows_per_group;
        let pair_row = pair % rows_per_group;
        let out_row = group.x * rows_per_group + pair_row;
        if out_row >= params.rows {
            continue;
        }
        var sum = 0.0;
        let first_lane = t * 256u + pair_row * lanes;
        for (var lane_index = 0u; lane_index < lanes; lane_index++) {
            sum += partial[first_lane + lane_index];
        }
        let tensor_row = params.scale_offset + out_row;
        var value = sum * scales[tensor_row];
        if params.has_bias == 1u {
            value += bias[tensor_row];
        }
        let out = (tile_start + t) * params.y_stride + params.y_offset + out_row;
        switch params.epilogue {
            case 1u: { y[out] += value; }
            case 2u: { y[out] = gelu_tanh(value) * aux[out]; }
            case 3u: { y[out] = params.cap * tanh(clamp(value / params.cap, -10.0, 10.0)); }
            default: { y[out] = value; }
        }
    }
}
