// Embedding lookup from one row-piece of the int8 table, scaled by bf16(√D):
//
//   x[t][c] = q[token_t − row_start][c] · scale[token_t] · embedding_scale   if token_t is in this piece
//
// The table is split into pieces that each fit a storage binding; every piece is dispatched and
// only the one holding the token writes, so the token id can stay on the GPU.

struct Params {
    rows: u32,
    cols: u32,
    row_start: u32,
    embedding_scale: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> chunk: Chunk;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;    // [tokens]
@group(0) @binding(3) var<storage, read> q: array<u32>;         // [rows, cols / 4]
@group(0) @binding(4) var<storage, read> scales: array<f32>;    // [vocab]
@group(0) @binding(5) var<storage, read_write> x: array<f32>;   // [tokens, cols]

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let t = id.y;
    let word = id.x;
    if t >= chunk.n_tokens || word >= params.cols / 4u {
        return;
    }
    let token = tokens[t];
    if token < params.row_start || token >= params.row_start + params.rows {
        return;
    }
    let packed = bitcast<i32>(q[(token - params.row_start) * (params.cols / 4u) + word]);
    let scale = scales[token];
    for (var k = 0u; k < 4u; k++) {
        let value = f32(extractBits(packed, 8u * k, 8u)) * scale;
        x[t * params.cols + 4u * word + k] = value * params.embedding_scale;
    }
}
