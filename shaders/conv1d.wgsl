// Causal depthwise Conv1D over a chunk, continuing from the saved inputs:
//
//   c[t][ch] = b[ch] + Σ_{k<K} w[ch][k] · in[t − (K−1) + k][ch]
//
// in[s] for s before the chunk comes from `history` (the last K−1 inputs, oldest first), which is
// taken as zero when the chunk starts the document (position 0), and is updated after the chunk.
// One thread per channel walks the chunk in order.

struct Params {
    channels: u32,
    width: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> chunk: Chunk;
@group(0) @binding(2) var<storage, read> step: Step;
@group(0) @binding(3) var<storage, read> w: array<f32>;              // [channels, K]
@group(0) @binding(4) var<storage, read> b: array<f32>;              // [channels]
@group(0) @binding(5) var<storage, read> inputs: array<f32>;         // [tokens, channels]
@group(0) @binding(6) var<storage, read_write> history: array<f32>;  // [K − 1, channels]
@group(0) @binding(7) var<storage, read_write> out: array<f32>;      // [tokens, channels]

const MAX_WIDTH: u32 = 8u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let ch = id.x;
    if ch >= params.channels {
        return;
    }
    let n = params.channels;
    let k_last = params.width - 1u;
    var window: array<f32, MAX_WIDTH>;
    for (var k = 0u; k < k_last; k++) {
        window[k] = select(history[k * n + ch], 0.0, step.position == 0u);
    }
    for (var t = 0u; t < chunk.n_tokens; t++) {
        window[k_last] = inputs[t * n + ch];
        var sum = b[ch];
        for (var k = 0u; k < params.width; k++) {
            sum += w[ch * params.width + k] * window[k];
        }
        out[t * n + ch] = sum;
        for (var k = 0u; k < k_last; k++) {
            window[k] = window[k + 1u];
        }
    }
    for (var k = 0u; k < k_last; k++) {
        history[k * n + ch] = window[k];
    }
}
