// Partial RoPE on the chunk's queries (in place) and keys, then keys and values into the ring:
//
//   θ_i = p · inv_freq[i], p = position + t, i < n = rotary_dims / 2 (halves layout):
//   r[i] = x[i]·cos θ_i − x[i+n]·sin θ_i,   r[i+n] = x[i+n]·cos θ_i + x[i]·sin θ_i
//   ring_k[·][p mod slots] = RoPE(k[t]),    ring_v[p mod slots] = v[t]
//
// The key ring is transposed ([head_dim, slots]) so that attention's neighbouring threads, which
// take neighbouring keys, read neighbouring addresses.
//
// Workgroup (t, h): h < heads rotates query head h; h = heads handles the key and value. The
// rotation itself is common.wgsl's rope_pair (shared with rope_chunk.wgsl).

struct Params {
    heads: u32,
    head_dim: u32,
    rotary_half: u32,
    slots: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> chunk: Chunk;
@group(0) @binding(2) var<storage, read> step: Step;
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;        // [rotary_half]
// Per token: the query heads, then the key, then the value (the stacked q/k/v projection).
@group(0) @binding(4) var<storage, read_write> qkv: array<f32>;       // [tokens, heads + 2, head_dim]
@group(0) @binding(5) var<storage, read_write> ring_k: array<f32>;    // [head_dim, slots]
@group(0) @binding(6) var<storage, read_write> ring_v: array<f32>;    // [slots, head_dim]

// The pair (x[i], x[i + n]) rotated by θ_i at `position`.
fn rotate(a: f32, b: f32, position: u32, i: u32) -> vec2<f32> {
    return rope_pair(a, b, position, inv_freq[i]);
}

@compute @workgroup_size(SMALL_THREADS)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let t = group.x;
    let head = group.y;
    if t >= chunk.n_tokens {
        return;
    }
    let position = step.position + t;
    let hd = params.head_dim;
    let token_base = t * (params.heads + 2u) * hd;
    if head < params.heads {
        let base = token_base + head * hd;
        for (var i = li; i < params.rotary_half; i += 64u) {
            let r = rotate(qkv[base + i], qkv[base + i + params.rotary_half], position, i);
            qkv[base + i] = r.x;
            qkv[base + i + params.rotary_half] = r.y;
        }
        return;
    }
    // Once a stop token halted the run, the ring (state) is left as it is.
    if step.halted != 0u {
        return;
    }
    let slot = position % params.slots;
    let n = params.slots;
    let k = token_base + params.heads * hd;
    let v = k + hd;
    for (var i = li; i < hd; i += 64u) {
        ring_v[slot * hd + i] = qkv[v + i];
        if i >= 2u * params.rotary_half {
            ring_k[i * n + slot] = qkv[k + i];
        } else if i < params.rotary_half {
            let r = rotate(qkv[k + i], qkv[k + i + params.rotary_half], position, i);
            ring_k[i * n + slot] = r.x;
            ring_k[(i + params.rotary_half) * n + slot] = r.y;
        }
    }
}
