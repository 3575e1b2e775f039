// The int4 weight format (src/gpu/matrix.rs, MatrixFormat::Int4), for the matrix kernels:
//
//   w[r][c] = q[r][c] · scale[r][c / 32]
//
// q is row-major [rows, cols] 4-bit two's complement, eight per u32: column 8w + k in bits
// 4k..4k + 3 of word w. `affine` holds the f16 scales [rows, S] two per u32 (S = cols / 32
// rounded up to even, so every row starts on a word), then (at bias_offset, in words) one f32
// bias per row. A block is 4 columns (half a word), as in int8, so that neighbouring threads of a
// row read neighbouring words of q and neighbouring vectors of x (coalesced loads); the 8 blocks
// of a group share its scale. Read through unpack2x16float: no `shader-f16` needed. A chunk
// (gemv.wgsl) is 16 bytes: 32 columns, one group, one scale. q is read as 16-byte vectors (the
// buffer is padded to 16 bytes).

@group(0) @binding(2) var<storage, read> q: array<vec4<u32>>;  // [rows, cols / 8] words
@group(0) @binding(3) var<storage, read> affine: array<u32>;   // f16 scales, then f32 biases

const BLOCK: u32 = 1u;

// The scale of group `g` of row `affine_row`.
fn group_scale(affine_row: u32, cols: u32, g: u32) -> f32 {
    let groups = cols / 32u;
    let i = affine_row * (groups + (groups & 1u)) + g;
    let pair = unpack2x16float(affine[i / 2u]);
    return select(pair.x, pair.y, (i & 1u) == 1u);
}

// Columns 4b..4b + 3 of the weights buffer's row `local_row`, before their scale.
fn block_weights(local_row: u32, affine_row: u32, cols: u32, b: u32) -> array<vec4<f32>, BLOCK> {
    let index = local_row * (cols / 8u) + b / 2u;
    let word = vec4<i32>(bitcast<i32>(q[index / 4u][index % 4u]));
    let shifts = select(LOW_NIBBLES, HIGH_NIBBLES, (b & 1u) == 1u);
    return array<vec4<f32>, BLOCK>(vec4<f32>((word << shifts) >> vec4<u32>(28u)));
}

// Shift each nibble to the top, then arithmetic-shift it back down: sign extension.
const LOW_NIBBLES = vec4<u32>(28u, 24u, 20u, 16u);
const HIGH_NIBBLES = vec4<u32>(12u, 8u, 4u, 0u);

fn nibbles(word: u32, shifts: vec4<u32>) -> vec4<f32> {
    return vec4<f32>((vec4<i32>(bitcast<i32>(word)) << shifts) >> vec4<u32>(28u));
}

const CHUNK_COLS: u32 = 32u;

// Chunk c (columns 32c..32c + 31, group c) of the weights buffer's row `local_row`, before its
// scale, as eight vectors of 4 columns.
fn chunk_weights(local_row: u32, cols: u32, c: u32) -> array<vec4<f32>, 8> {
    let w = q[local_row * (cols / 32u) + c];
    return array<vec4<f32>, 8>(
        nibbles(w.x, LOW_NIBBLES), nibbles(w.x, HIGH_NIBBLES),
        nibbles(w.y, LOW_NIBBLES), nibbles(w.y, HIGH_NIBBLES),
        nibbles(w.z, LOW_NIBBLES), nibbles(w.z, HIGH_NIBBLES),
        nibbles(w.w, LOW_NIBBLES), nibbles(w.w, HIGH_NIBBLES),
    );
}

// The scale of chunk c's dot product: its group's.
fn chunk_scale(affine_row: u32, cols: u32, c: u32) -> f32 {
    return group_scale(affine_row, cols, c);
}

// The scale of block b's group: applied to the block's dot product.
fn block_scale(affine_row: u32, cols: u32, b: u32) -> f32 {
    return group_scale(affine_row, cols, b / 8u);
}

fn row_scale(affine_row: u32) -> f32 {
    return 1.0;
}

fn row_bias(i: u32) -> f32 {
    return bitcast<f32>(affine[i]);
}
