// Real-Gated Linear Recurrent Unit over a chunk, times the GELU gate branch:
//
//   gate_x = σ(gx[t]), gate_a = σ(ga[t]), log_a = gate_a · log_a_scale   (log_a_scale = −8·softplus(a_param))
//   h      = a·h + sqrt(max(0, 1 − exp(2·log_a))) · gate_x · c[t]   with a = exp(log_a)
//   h      = gate_x · c[t]                                          at position 0 (document start)
//   out[t] = h · gelu_tanh(y[t])
//
// h stays f32. One thread per channel walks the chunk in order. The max(0, ·) guards against exp
// rounding 2·log_a ≈ 0 to a value above 1, which would give sqrt of a negative number.

struct Params {
    channels: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> chunk: Chunk;
@group(0) @binding(2) var<storage, read> step: Step;
@group(0) @binding(3) var<storage, read> log_a_scale: array<f32>;  // [channels]
@group(0) @binding(4) var<storage, read> c: array<f32>;            // [tokens, channels] conv output
@group(0) @binding(5) var<storage, read> gx: array<f32>;           // [tokens, channels] input gate logits
@group(0) @binding(6) var<storage, read> ga: array<f32>;           // [tokens, channels] recurrence gate logits
@group(0) @binding(7) var<storage, read> y: array<f32>;            // [tokens, channels] linear_y output
@group(0) @binding(8) var<storage, read_write> h: array<f32>;      // [channels]
@group(0) @binding(9) var<storage, read_write> out: array<f32>;    // [tokens, channels]

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let ch = id.x;
    if ch >= params.channels {
        return;
    }
    let n = params.channels;
    var state = h[ch];
    for (var t = 0u; t < chunk.n_tokens; t++) {
        let i = t * n + ch;
        let log_a = sigmoid(ga[i]) * log_a_scale[ch];
        let normalized_x = c[i] * sigmoid(gx[i]);
        if step.position + t == 0u {
            state = normalized_x;
        } else {
            let multiplier = sqrt(max(0.0, 1.0 - exp(2.0 * log_a)));
            state = exp(log_a) * state + normalized_x * multiplier;
        }
        out[i] = state * gelu_tanh(y[i]);
    }
    h[ch] = state;
}
