// The attention output from attention.wgsl's per-block partials (m_b, l_b, a_b) of one token and
// one query head:
//
//   M = max_b m_b,   out[d] = Σ_b e^(m_b − M) · a_b[d] / Σ_b e^(m_b − M) · l_b
//
// Blocks with no key in the window carry m = −3·10³⁸ and l = 0, so they weigh nothing.

struct Params {
    heads: u32,
    head_dim: u32,
    blocks: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> chunk: Chunk;
@group(0) @binding(2) var<storage, read> partial_a: array<f32>;          // [tokens, blocks, heads, head_dim]
@group(0) @binding(3) var<storage, read> partial_ml: array<vec2<f32>>;   // [tokens, blocks, heads]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;          // [tokens, heads, head_dim]

@compute @workgroup_size(THREADS)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let h = group.x;
    let t = group.y;
    if t >= chunk.n_tokens {
        return;
    }
    let heads = params.heads;
    let hd = params.head_dim;
    let first = t * params.blocks * heads + h;
    var m = -3.0e38;
    for (var b = 0u; b < params.blocks; b++) {
        m = max(m, partial_ml[first + b * heads].x);
    }
    var l = 0.0;
    for (var b = 0u; b < params.blocks; b++) {
        let ml = partial_ml[first + b * heads];
        l += exp(ml.x - m) * ml.y;
    }
    for (var d = li; d < hd; d += THREADS) {
        var a = 0.0;
        for (var b = 0u; b < params.blocks; b++) {
            a += exp(partial_ml[first + b * heads].x - m) * partial_a[(first + b * heads) * hd + d];
        }
        out[(t * heads + h) * hd + d] = a / l;
    }
}
