// Real-Gated Linear Recurrent Unit with its two block-diagonal gates from one stacked
// matrix [input_gate; recurrent_gate] (see matrix_rows.wgsl), times the GELU gate branch:
//
//   gate_x = σ(gx[t]), gate_a = σ(ga[t])     gx, ga = total · scale + bias of rows ch, ch + lru
//   log_a  = gate_a · log_a_scale            (log_a_scale = −8·softplus(a_param), made on upload)
//   h      = a·h + sqrt(max(0, 1 − exp(2·log_a))) · gate_x · c[t]   with a = exp(log_a)
//   h      = gate_x · c[t]                                          at position 0 (document start)
//   out[t] = h · g[t]
//
// The input is recurrent_in's output [tokens, 2·lru]: g = gelu(y) in the first half, the conv
// output c (which the gates read too) in the second. h stays f32, and is not written back once a
// stop token halted the run (see Step). The max(0, ·) guards against exp
// rounding 2·log_a ≈ 0 to a value above 1, which would give sqrt of a negative number. A pair
// kernel: each workgroup owns THREADS / 2 / lanes channels for the whole chunk, and one thread per channel
// walks the tokens in order, tile after tile.

struct Params {
    m: MatrixRows,
}

@group(0) @binding(6) var<storage, read> step: Step;
@group(0) @binding(7) var<storage, read> log_a_scale: array<f32>;   // [lru]
@group(0) @binding(8) var<storage, read_write> h: array<f32>;       // [lru]
@group(0) @binding(9) var<storage, read_write> out: array<f32>;     // [tokens, lru]

// Element i of the input, which matrix_rows.wgsl binds as vectors of 4.
fn input(i: u32) -> f32 {
    return x[i / 4u][i % 4u];
}

@compute @workgroup_size(THREADS)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let n = params.m.rows;
    let channel = group.x * rows_per_group() + li;
    let owner = li < rows_per_group() && channel < n;

    var state = 0.0;
    if owner {
        state = h[channel];
    }
    for (var tile_start = 0u; tile_start < chunk.n_tokens; tile_start += TOKEN_TILE) {
        let tile_tokens = min(TOKEN_TILE, chunk.n_tokens - tile_start);
        tile_partials(li, group.x, tile_start, tile_tokens);
        if owner {
            for (var t = 0u; t < tile_tokens; t++) {
                let token = tile_start + t;
                let log_a = sigmoid(row_total(t, li, 1u, channel)) * log_a_scale[channel];
                let normalized_x = input(token * 2u * n + n + channel) * sigmoid(row_total(t, li, 0u, channel));
                if step.position + token == 0u {
                    state = normalized_x;
                } else {
                    let multiplier = sqrt(max(0.0, 1.0 - exp(2.0 * log_a)));
                    state = exp(log_a) * state + normalized_x * multiplier;
                }
                out[token * n + channel] = state * input(token * 2u * n + channel);
            }
        }
        // The next tile overwrites the partial sums.
        workgroupBarrier();
    }
    if owner && step.halted == 0u {
        h[channel] = state;
    }
}
