// The int4 weight format (src/gpu/matrix.rs, MatrixFormat::Int4), for the matrix kernels:
//
//   w[r][c] = q[r][c] · scale[r][c / 32]
//
// q is row-major [rows, cols] 4-bit two's complement, eight per u32: column 8w + k in bits
// 4k..4k + 3 of word w, so one group of 32 columns is one vec4<u32> (a 16-byte load). `affine`
// holds the f16 scales [rows, S] two per u32 (S = cols / 32 rounded up to even, so every row
// starts on a word), then (at bias_offset, in words) one f32 bias per row. A block is one group.
// Read through unpack2x16float: no `shader-f16` needed.

@group(0) @binding(2) var<storage, read> q: array<vec4<u32>>;   // [rows, cols / 32]
@group(0) @binding(3) var<storage, read> affine: array<u32>;    // f16 scales, then f32 biases

const BLOCK: u32 = 8u;

// The scale of group `g` of row `affine_row`.
fn group_scale(affine_row: u32, cols: u32, g: u32) -> f32 {
    let groups = cols / 32u;
    let i = affine_row * (groups + (groups & 1u)) + g;
    let pair = unpack2x16float(affine[i / 2u]);
    return select(pair.x, pair.y, (i & 1u) == 1u);
}

// Group b of the weights buffer's row `local_row`, before its scale.
fn block_weights(local_row: u32, affine_row: u32, cols: u32, b: u32) -> array<vec4<f32>, BLOCK> {
    let packed = q[local_row * (cols / 32u) + b];
    var weights: array<vec4<f32>, BLOCK>;
    for (var k = 0u; k < 4u; k++) {
        // Shift each nibble to the top, then arithmetic-shift it back down: sign extension.
        let word = vec4<i32>(bitcast<i32>(packed[k]));
        weights[2u * k] = vec4<f32>((word << vec4<u32>(28u, 24u, 20u, 16u)) >> vec4<u32>(28u));
        weights[2u * k + 1u] = vec4<f32>((word << vec4<u32>(12u, 8u, 4u, 0u)) >> vec4<u32>(28u));
    }
    return weights;
}

// The scale of group b: applied to the group's dot product, as the CPU reference does.
fn block_scale(affine_row: u32, cols: u32, b: u32) -> f32 {
    return group_scale(affine_row, cols, b);
}

fn row_scale(affine_row: u32) -> f32 {
    return 1.0;
}

fn row_bias(i: u32) -> f32 {
    return bitcast<f32>(affine[i]);
}
