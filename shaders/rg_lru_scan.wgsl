// The RG-LRU over a prefill chunk, after the tiled matmul wrote the gate logits
// gates[t] = [gx[t], ga[t]] ([tokens, 2·lru]) from the conv half of conv_scan.wgsl's
// branches[t] = [g[t], c[t]] (g = GELU(y), c the conv output); the maths of rg_lru_gates.wgsl:
//
//   gate_x = σ(gx[t][ch]),  log_a = σ(ga[t][ch]) · log_a_scale[ch]   (log_a_scale = −8·softplus(a_param))
//   h      = a·h + sqrt(max(0, 1 − exp(2·log_a))) · gate_x · c[t][ch]   with a = exp(log_a)
//   h      = gate_x · c[t][ch]                                        at position 0 (document start)
//   out[t][ch] = h · g[t][ch]
//
// h stays f32 and is not written back once a stop token halted the run (see Step). One thread per
// channel walks the tokens in order; each tile of TOKEN_TILE tokens' inputs is loaded before the
// tile's recurrence, so the loads are in flight together rather than one per step.

struct Params {
    lru: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> chunk: Chunk;
@group(0) @binding(2) var<storage, read> step: Step;
@group(0) @binding(3) var<storage, read> gates: array<f32>;            // [tokens, 2·lru]
@group(0) @binding(4) var<storage, read> branches: array<f32>;         // [tokens, 2·lru]
@group(0) @binding(5) var<storage, read> log_a_scale: array<f32>;      // [lru]
@group(0) @binding(6) var<storage, read_write> h: array<f32>;          // [lru]
@group(0) @binding(7) var<storage, read_write> out: array<f32>;        // [tokens, lru]

@compute @workgroup_size(SMALL_THREADS)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let lru = params.lru;
    let channel = group.x * SMALL_THREADS + li;
    if channel >= lru {
        return;
    }
    let n = chunk.n_tokens;
    let position = step.position;
    let scale = log_a_scale[channel];
    var state = h[channel];
    for (var tile = 0u; tile < n; tile += TOKEN_TILE) {
        var gx = array<f32, TOKEN_TILE>();
        var ga = array<f32, TOKEN_TILE>();
        var g = array<f32, TOKEN_TILE>();
        var c = array<f32, TOKEN_TILE>();
        for (var i = 0u; i < TOKEN_TILE; i++) {
            if tile + i < n {
                let row = (tile + i) * 2u * lru + channel;
                gx[i] = gates[row];
                ga[i] = gates[row + lru];
                g[i] = branches[row];
                c[i] = branches[row + lru];
            }
        }
        for (var i = 0u; i < TOKEN_TILE; i++) {
            let token = tile + i;
            if token < n {
                let log_a = sigmoid(ga[i]) * scale;
                let normalized_x = c[i] * sigmoid(gx[i]);
                if position + token == 0u {
                    state = normalized_x;
                } else {
                    let multiplier = sqrt(max(0.0, 1.0 - exp(2.0 * log_a)));
                    state = exp(log_a) * state + normalized_x * multiplier;
                }
                out[token * lru + channel] = state * g[i];
            }
        }
    }
    if step.halted == 0u {
        h[channel] = state;
    }
}
