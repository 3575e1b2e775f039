// Local multi-query attention, split over blocks of KEY_BLOCK keys (flash-decoding). For token t
// at position P, key block b and each query head h, over the keys p of the block that are in the
// window max(0, P − W) ≤ p ≤ P:
//
//   s_p = (q_h · k_p) · head_dim^(−1/2),   m = max_p s_p,   l = Σ_p e^(s_p − m)
//   a[d] = Σ_p e^(s_p − m) · v_p[d]
//
// written per (t, b, h) for attention_combine.wgsl; a block with no key in the window writes
// m = −3·10³⁸, l = 0. Key p lives in ring slot p mod slots, keys transposed ([head_dim, slots]) so
// that neighbouring threads read neighbouring keys, values as [slots, head_dim]. Every head shares
// the block's keys and values (one key/value head), so each is read once per token; splitting the
// window over blocks puts the whole GPU to work instead of one workgroup per head.
// slots ≥ W + chunk, so the chunk's own keys (written by rope_kv first) never overwrite a key
// still in some query's window.

struct Params {
    heads: u32,
    head_dim: u32,
    window: u32,
    slots: u32,
    scale: f32,
    // Key blocks per token: ⌈(W + 1) / KEY_BLOCK⌉.
    blocks: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> chunk: Chunk;
@group(0) @binding(2) var<storage, read> step: Step;
@group(0) @binding(3) var<storage, read> qkv: array<f32>;                  // [tokens, heads + 2, head_dim]
@group(0) @binding(4) var<storage, read> ring_k: array<f32>;               // [head_dim, slots]
@group(0) @binding(5) var<storage, read> ring_v: array<f32>;               // [slots, head_dim]
@group(0) @binding(6) var<storage, read_write> partial_a: array<f32>;      // [tokens, blocks, heads, head_dim]
@group(0) @binding(7) var<storage, read_write> partial_ml: array<vec2<f32>>; // [tokens, blocks, heads]

const NONE: f32 = -3.0e38;

var<workgroup> start_position: u32;
// [heads, KEY_BLOCK]: the scores, then e^(s − m).
var<workgroup> weights: array<f32, MAX_HEADS * KEY_BLOCK>;

@compute @workgroup_size(THREADS)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let block = group.x;
    let t = group.y;
    if t >= chunk.n_tokens {
        return;
    }
    if li == 0u {
        start_position = step.position;
    }
    let position = workgroupUniformLoad(&start_position) + t;
    let first = position - min(position, params.window);
    let count = position - first + 1u;
    let skipped = min(count, block * KEY_BLOCK);
    let keys = min(KEY_BLOCK, count - skipped);
    let first_key = first + skipped;
    let heads = params.heads;
    let hd = params.head_dim;
    let out = (t * params.blocks + block) * heads;
    if keys == 0u {
        for (var h = li; h < heads; h += THREADS) {
            partial_ml[out + h] = vec2<f32>(NONE, 0.0);
        }
        return;
    }

    for (var pair = li; pair < heads * KEY_BLOCK; pair += THREADS) {
        let h = pair / KEY_BLOCK;
        let j = pair % KEY_BLOCK;
        var score = NONE;
        if j < keys {
            let slot = (first_key + j) % params.slots;
            let q = (t * (heads + 2u) + h) * hd;
            var dot_qk = 0.0;
            for (var d = 0u; d < hd; d++) {
                dot_qk += qkv[q + d] * ring_k[d * params.slots + slot];
            }
            score = dot_qk * params.scale;
        }
        weights[pair] = score;
    }
    workgroupBarrier();
    for (var h = li; h < heads; h += THREADS) {
        var m = NONE;
        for (var j = 0u; j < keys; j++) {
            m = max(m, weights[h * KEY_BLOCK + j]);
        }
        var l = 0.0;
        for (var j = 0u; j < KEY_BLOCK; j++) {
            let e = select(0.0, exp(weights[h * KEY_BLOCK + j] - m), j < keys);
            weights[h * KEY_BLOCK + j] = e;
            l += e;
        }
        partial_ml[out + h] = vec2<f32>(m, l);
    }
    workgroupBarrier();
    for (var d = li; d < hd; d += THREADS) {
        var a = array<f32, MAX_HEADS>();
        for (var j = 0u; j < keys; j++) {
            let v = ring_v[((first_key + j) % params.slots) * hd + d];
            for (var h = 0u; h < heads; h++) {
                a[h] += weights[h * KEY_BLOCK + j] * v;
            }
        }
        for (var h = 0u; h < heads; h++) {
            partial_a[(out + h) * hd + d] = a[h];
        }
    }
}
