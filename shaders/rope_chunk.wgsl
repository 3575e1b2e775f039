// Partial RoPE in place on a prefill chunk's queries and key, for attention_chunk.wgsl (which reads
// the chunk's own keys from qkv); no ring is written here (ring_store.wgsl stores the keys after
// attention). With p = position + t and common.wgsl's rope_pair (halves layout, n = rotary_half):
//
//   θ_i = p · inv_freq[i],  i < n
//   x[i], x[i+n] ⟵ x[i]·cos θ_i − x[i+n]·sin θ_i,  x[i+n]·cos θ_i + x[i]·sin θ_i
//
// for x = each query head q_h[t] and the key k[t]; the value is left as it is.
//
// Workgroup (t, h): h < heads rotates query head h, h = heads the key.

struct Params {
    heads: u32,
    head_dim: u32,
    rotary_half: u32,
    // rope_kv.wgsl's block: not used here (no ring).
    slots: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> chunk: Chunk;
@group(0) @binding(2) var<storage, read> step: Step;
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;        // [rotary_half]
// Per token: the query heads, then the key, then the value (the stacked q/k/v projection).
@group(0) @binding(4) var<storage, read_write> qkv: array<f32>;       // [tokens, heads + 2, head_dim]

@compute @workgroup_size(SMALL_THREADS)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let t = group.x;
    let head = group.y;
    if t >= chunk.n_tokens || head > params.heads {
        return;
    }
    let position = step.position + t;
    let half = params.rotary_half;
    let base = (t * (params.heads + 2u) + head) * params.head_dim;
    for (var i = li; i < half; i += SMALL_THREADS) {
        let r = rope_pair(qkv[base + i], qkv[base + i + half], position, inv_freq[i]);
        qkv[base + i] = r.x;
        qkv[base + i + half] = r.y;
    }
}
