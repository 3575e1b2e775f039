// The chunk's keys (rotated by rope_chunk.wgsl) and values into the ring, after attention_chunk.wgsl
// has read them from qkv. For the chunk's last min(n, slots) tokens t (an earlier token's slot is
// taken again by a later one), p = position + t:
//
//   ring_k[d][p mod slots] = qkv[t][heads][d],   ring_v[p mod slots][d] = qkv[t][heads + 1][d]
//
// The key ring is transposed ([head_dim, slots]), as rope_kv.wgsl writes it. Nothing is written
// once a stop token halted the run (see Step). Workgroup t: one token, SMALL_THREADS threads over
// its head dims.

struct Params {
    heads: u32,
    head_dim: u32,
    slots: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> chunk: Chunk;
@group(0) @binding(2) var<storage, read> step: Step;
@group(0) @binding(3) var<storage, read> qkv: array<f32>;             // [tokens, heads + 2, head_dim]
@group(0) @binding(4) var<storage, read_write> ring_k: array<f32>;    // [head_dim, slots]
@group(0) @binding(5) var<storage, read_write> ring_v: array<f32>;    // [slots, head_dim]

@compute @workgroup_size(SMALL_THREADS)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let t = group.x;
    let n = chunk.n_tokens;
    let slots = params.slots;
    // Tokens before the last `slots` would be overwritten by later ones in the same slot.
    if t >= n || t + slots < n || step.halted != 0u {
        return;
    }
    let hd = params.head_dim;
    let slot = (step.position + t) % slots;
    let k = (t * (params.heads + 2u) + params.heads) * hd;
    let v = k + hd;
    for (var d = li; d < hd; d += SMALL_THREADS) {
        ring_k[d * slots + slot] = qkv[k + d];
        ring_v[slot * hd + d] = qkv[v + d];
    }
}
