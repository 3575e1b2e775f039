// Local multi-query attention of one query head of one token over the window in the key ring:
//
//   s_p = (q · k_p) · head_dim^(−1/2)      for max(0, t − W) ≤ p ≤ t   (t = position of the token)
//   out = Σ_p softmax(s)_p · v_p           (f32, maximum subtracted)
//
// Key p lives in ring slot p mod slots; slots ≥ W + chunk, so the chunk's own keys (written by
// rope_kv first) never overwrite a key still in some query's window. Scores go through a global
// scratch row because W + 1 of them do not fit in workgroup memory for W = 2048.

struct Params {
    heads: u32,
    head_dim: u32,
    window: u32,
    slots: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> chunk: Chunk;
@group(0) @binding(2) var<storage, read> step: Step;
@group(0) @binding(3) var<storage, read> qkv: array<f32>;             // [tokens, heads + 2, head_dim]
@group(0) @binding(4) var<storage, read> ring_k: array<f32>;          // [slots, head_dim]
@group(0) @binding(5) var<storage, read> ring_v: array<f32>;          // [slots, head_dim]
@group(0) @binding(6) var<storage, read_write> scores: array<f32>;    // [tokens, heads, window + 1]
@group(0) @binding(7) var<storage, read_write> out: array<f32>;       // [tokens, heads, head_dim]

var<workgroup> start_position: u32;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let head = group.x;
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
    let hd = params.head_dim;
    let q_base = (t * (params.heads + 2u) + head) * hd;
    let out_base = (t * params.heads + head) * hd;
    let row = (t * params.heads + head) * (params.window + 1u);

    var local_max = -3.0e38;
    for (var j = li; j < count; j += 256u) {
        let key = ((first + j) % params.slots) * hd;
        var dot_qk = 0.0;
        for (var d = 0u; d < hd; d++) {
            dot_qk += qkv[q_base + d] * ring_k[key + d];
        }
        let score = dot_qk * params.scale;
        scores[row + j] = score;
        local_max = max(local_max, score);
    }
    let max_score = workgroup_max(li, local_max);

    var local_sum = 0.0;
    for (var j = li; j < count; j += 256u) {
        let e = exp(scores[row + j] - max_score);
        scores[row + j] = e;
        local_sum += e;
    }
    let total = workgroup_sum(li, local_sum);
    storageBarrier();

    for (var d = li; d < hd; d += 256u) {
        var acc = 0.0;
        for (var j = 0u; j < count; j++) {
            acc += scores[row + j] * ring_v[((first + j) % params.slots) * hd + d];
        }
        out[out_base + d] = acc / total;
    }
}
