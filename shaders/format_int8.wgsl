// The int8 weight format (src/gpu/matrix.rs, MatrixFormat::Int8), for the matrix kernels:
//
//   w[r][c] = q[r][c] · scale[r]
//
// q is row-major [rows, cols] int8, four per u32 (little-endian); `affine` holds one f32 scale
// per row, then (at bias_offset) one f32 bias per row. A block is one packed word: 4 columns
// (the row kernels); a chunk is 16 bytes: 16 columns (gemv.wgsl, rows of a multiple of 16).
// q is read as 16-byte vectors (the buffer is padded to 16 bytes).

@group(0) @binding(2) var<storage, read> q: array<vec4<u32>>;  // [rows, cols / 4] words
@group(0) @binding(3) var<storage, read> affine: array<f32>;   // scales, then biases

const BLOCK: u32 = 1u;

fn unpack_int8(word: u32) -> vec4<f32> {
    let w = bitcast<i32>(word);
    return vec4<f32>(
        f32(extractBits(w, 0u, 8u)),
        f32(extractBits(w, 8u, 8u)),
        f32(extractBits(w, 16u, 8u)),
        f32(extractBits(w, 24u, 8u)),
    );
}

// Block b of the weights buffer's row `local_row`, before the row's scale.
fn block_weights(local_row: u32, affine_row: u32, cols: u32, b: u32) -> array<vec4<f32>, BLOCK> {
    let word = local_row * (cols / 4u) + b;
    return array<vec4<f32>, BLOCK>(unpack_int8(q[word / 4u][word % 4u]));
}

const CHUNK_COLS: u32 = 16u;

// Chunk c (columns 16c..16c + 15) of the weights buffer's row `local_row`, before the row's
// scale, as four vectors of 4 columns.
fn chunk_weights(local_row: u32, cols: u32, c: u32) -> array<vec4<f32>, 4> {
    let w = q[local_row * (cols / 16u) + c];
    return array<vec4<f32>, 4>(unpack_int8(w.x), unpack_int8(w.y), unpack_int8(w.z), unpack_int8(w.w));
}

// The scale of chunk c's dot product: 1, the row's scale applies to the whole sum.
fn chunk_scale(affine_row: u32, cols: u32, c: u32) -> f32 {
    return 1.0;
}

// The row's scale applies once, to its whole sum.
fn block_scale(affine_row: u32, cols: u32, b: u32) -> f32 {
    return 1.0;
}

fn row_scale(affine_row: u32) -> f32 {
    return affine[affine_row];
}

fn row_bias(i: u32) -> f32 {
    return affine[i];
}
