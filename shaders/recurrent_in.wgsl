// The recurrent block's two input branches from one stacked matrix [linear_y; linear_x]
// (RMSNorm fused in front, see matrix_rows.wgsl), with the causal depthwise Conv1D on the x branch:
//
//   y[t][ch] = total[t][ch] · scale + bias,   x[t][ch] = the same for row ch + lru
//   out[t][ch]       = gelu_tanh(y[t][ch])                              (the gate branch)
//   out[t][lru + ch] = b[ch] + Σ_{k<K} w[ch][k] · x[t − (K−1) + k][ch]   (the conv output)
//
// x[s] for s before the chunk comes from `history` (the last K−1 inputs, oldest first), taken as
// zero when the chunk starts the document (position 0) and updated after the chunk (unless a stop
// token halted the run: see Step). A pair
// kernel: each workgroup owns THREADS / 2 / lanes channels for the whole chunk, and one thread per
// channel walks the tokens in order, tile after tile.

struct Params {
    m: MatrixRows,
    width: u32,
}

@group(0) @binding(6) var<storage, read> step: Step;
@group(0) @binding(7) var<storage, read> conv: array<f32>;            // w [lru, K], then b [lru]
@group(0) @binding(8) var<storage, read_write> history: array<f32>;   // [K − 1, lru]
@group(0) @binding(9) var<storage, read_write> out: array<f32>;       // [tokens, 2·lru]


@compute @workgroup_size(THREADS)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let n = params.m.rows;
    let width = params.width;
    let k_last = width - 1u;
    let channel = group.x * rows_per_group() + li;
    let owner = li < rows_per_group() && channel < n;

    var window = array<f32, MAX_CONV_WIDTH>();
    if owner {
        for (var k = 0u; k < k_last; k++) {
            window[k] = select(history[k * n + channel], 0.0, step.position == 0u);
        }
    }
    for (var tile_start = 0u; tile_start < chunk.n_tokens; tile_start += TOKEN_TILE) {
        let tile_tokens = min(TOKEN_TILE, chunk.n_tokens - tile_start);
        tile_partials(li, group.x, tile_start, tile_tokens);
        if owner {
            for (var t = 0u; t < tile_tokens; t++) {
                let row = (tile_start + t) * 2u * n;
                out[row + channel] = gelu_tanh(row_total(t, li, 0u, channel));
                window[k_last] = row_total(t, li, 1u, channel);
                var sum = conv[n * width + channel];
                for (var k = 0u; k < width; k++) {
                    sum += conv[channel * width + k] * window[k];
                }
                out[row + n + channel] = sum;
                for (var k = 0u; k < k_last; k++) {
                    window[k] = window[k + 1u];
                }
            }
        }
        // The next tile overwrites the partial sums.
        workgroupBarrier();
    }
    if owner && step.halted == 0u {
        for (var k = 0u; k < k_last; k++) {
            history[k * n + channel] = window[k];
        }
    }
}
