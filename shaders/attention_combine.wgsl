// The attention output from attention.wgsl's per-block partials (m_b, l_b, a_b) of one token and
// one query head:
//
//   M = max_b m_b,   out[d] = Σ_b e^(m_b − M) · a_b[d] / Σ_b e^(m_b − M) · l_b
//
// Blocks with no key in the window carry m = −3·10³⁸ and l = 0, so they weigh nothing.
//
// A workgroup takes COMBINE_DIMS dimensions of one head: M and the denominator by all its threads
// over the blocks, then the numerators with the blocks split among COMBINE_GROUPS groups of
// threads (each a few dependent loads long, not one per block), added up in workgroup memory.

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

const COMBINE_GROUPS: u32 = THREADS / COMBINE_DIMS;

var<workgroup> numerators: array<f32, THREADS>;

@compute @workgroup_size(THREADS)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let t = group.y;
    if t >= chunk.n_tokens {
        return;
    }
    let heads = params.heads;
    let hd = params.head_dim;
    let slices = (hd + COMBINE_DIMS - 1u) / COMBINE_DIMS;
    let h = group.x / slices;
    let d = (group.x % slices) * COMBINE_DIMS + li % COMBINE_DIMS;
    let first = t * params.blocks * heads + h;

    var m = -3.0e38;
    for (var b = li; b < params.blocks; b += THREADS) {
        m = max(m, partial_ml[first + b * heads].x);
    }
    m = workgroup_max(li, m);
    var l = 0.0;
    for (var b = li; b < params.blocks; b += THREADS) {
        let ml = partial_ml[first + b * heads];
        l += exp(ml.x - m) * ml.y;
    }
    l = workgroup_sum(li, l);

    var a = 0.0;
    if d < hd {
        for (var b = li / COMBINE_DIMS; b < params.blocks; b += COMBINE_GROUPS) {
            let at = first + b * heads;
            a += exp(partial_ml[at].x - m) * partial_a[at * hd + d];
        }
    }
    numerators[li] = a;
    workgroupBarrier();
    if li < COMBINE_DIMS && d < hd {
        var sum = 0.0;
        for (var g = 0u; g < COMBINE_GROUPS; g++) {
            sum += numerators[g * COMBINE_DIMS + li];
        }
        out[(t * heads + h) * hd + d] = sum / l;
    }
}
