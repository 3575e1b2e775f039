// Embedding lookup from one row piece of the table (int8 or int4, see the format's file), scaled
// by bf16(√D):
//
//   x[t][c] = w[token_t − row_start][c] · embedding_scale   if token_t is in this piece
//
// The table is split into pieces that each fit a storage binding; every piece is dispatched and
// only the one holding the token writes, so the token id can stay on the GPU. One thread per
// block of the row (4·BLOCK columns).

struct Params {
    // rows: the piece's rows; row_offset: its first row (row_start).
    m: MatrixRows,
    embedding_scale: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> chunk: Chunk;
@group(0) @binding(4) var<storage, read> tokens: array<u32>;    // [tokens]
@group(0) @binding(5) var<storage, read_write> x: array<f32>;   // [tokens, cols]

@compute @workgroup_size(SMALL_THREADS)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let t = id.y;
    let b = id.x;
    let cols = params.m.cols;
    if t >= chunk.n_tokens || b >= cols / (4u * BLOCK) {
        return;
    }
    let token = tokens[t];
    let row_start = params.m.row_offset;
    if token < row_start || token >= row_start + params.m.rows {
        return;
    }
    let weights = block_weights(token - row_start, token, cols, b);
    // One of the two is 1 in either format, so this product is exact.
    let scale = block_scale(token, cols, b) * row_scale(token);
    for (var j = 0u; j < BLOCK; j++) {
        for (var k = 0u; k < 4u; k++) {
            // In the CPU reference's order: the weight, then the embedding scale.
            x[t * cols + 4u * (b * BLOCK + j) + k] = weights[j][k] * scale * params.embedding_scale;
        }
    }
}
