// The recurrent block's two branches in place over a prefill chunk, after the tiled matmul wrote
// the raw projections branches[t] = [y[t], x[t]] ([tokens, 2·lru]); the maths of recurrent_in.wgsl:
//
//   branches[t][ch]       ⟵ gelu_tanh(y[t][ch])                                (the gate branch)
//   branches[t][lru + ch] ⟵ b[ch] + Σ_{k<K} w[ch][k] · x[t − (K−1) + k][ch]    (the causal Conv1D)
//
// x[s] for s before the chunk comes from `history` (the last K−1 inputs, oldest first), taken as
// zero when the chunk starts the document (position 0); the history then becomes the last K−1
// inputs of history ++ chunk, unless a stop token halted the run (see Step).
//
// Workgroup: CONV_CHANNELS channels × SEGMENTS = THREADS / CONV_CHANNELS segments of
// ⌈n / SEGMENTS⌉ consecutive tokens. First every thread reads the K−1 inputs before its segment
// (and the segment-0 thread the chunk's last K−1, the new history); a barrier; then each walks its
// segment, overwriting it, TOKEN_TILE tokens' loads at a time. A channel's segments all live in
// one workgroup, so no input is overwritten before it is read. The conv window and the taps are
// right-aligned in MAX_CONV_WIDTH registers (the newest input last), so that every loop over them
// has a constant bound.

struct Params {
    lru: u32,
    width: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> chunk: Chunk;
@group(0) @binding(2) var<storage, read> step: Step;
@group(0) @binding(3) var<storage, read> conv: array<f32>;              // w [lru, K], then b [lru]
@group(0) @binding(4) var<storage, read_write> history: array<f32>;     // [K − 1, lru]
@group(0) @binding(5) var<storage, read_write> branches: array<f32>;    // [tokens, 2·lru]

const SEGMENTS: u32 = THREADS / CONV_CHANNELS;
const NEWEST: u32 = MAX_CONV_WIDTH - 1u;

// Input x[s][channel] of the chunk (s ≥ 0) or of the history (s < 0); zero before the document.
fn input(s: i32, channel: u32) -> f32 {
    let lru = params.lru;
    if s >= 0 {
        return branches[u32(s) * 2u * lru + lru + channel];
    }
    if step.position == 0u {
        return 0.0;
    }
    return history[u32(i32(params.width) - 1 + s) * lru + channel];
}

@compute @workgroup_size(THREADS)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let lru = params.lru;
    let width = params.width;
    let n = chunk.n_tokens;
    let channel = group.x * CONV_CHANNELS + li % CONV_CHANNELS;
    let segment = li / CONV_CHANNELS;
    let span = (n + SEGMENTS - 1u) / SEGMENTS;
    let start = min(segment * span, n);
    let end = min(start + span, n);
    let owner = channel < lru;

    // window[NEWEST − j] = x[start − 1 − j] for j < K − 1; taps[NEWEST − j] = w[K − 1 − j].
    var window = array<f32, MAX_CONV_WIDTH>();
    var taps = array<f32, MAX_CONV_WIDTH>();
    var new_history = array<f32, MAX_CONV_WIDTH>();
    var bias = 0.0;
    if owner {
        for (var j = 0u; j < MAX_CONV_WIDTH; j++) {
            if j < width {
                taps[NEWEST - j] = conv[channel * width + width - 1u - j];
            }
            if j + 1u < width && start < end {
                window[NEWEST - j] = input(i32(start) - 1 - i32(j), channel);
            }
            if j + 1u < width && segment == 0u {
                new_history[j] = input(i32(n) - i32(width) + 1 + i32(j), channel);
            }
        }
        bias = conv[lru * width + channel];
    }
    // Every input before a segment is read before any segment is overwritten.
    storageBarrier();

    if owner {
        for (var tile = start; tile < end; tile += TOKEN_TILE) {
            var ys = array<f32, TOKEN_TILE>();
            var xs = array<f32, TOKEN_TILE>();
            for (var i = 0u; i < TOKEN_TILE; i++) {
                if tile + i < end {
                    let row = (tile + i) * 2u * lru;
                    ys[i] = branches[row + channel];
                    xs[i] = branches[row + lru + channel];
                }
            }
            for (var i = 0u; i < TOKEN_TILE; i++) {
                if tile + i < end {
                    for (var k = 0u; k < NEWEST; k++) {
                        window[k] = window[k + 1u];
                    }
                    window[NEWEST] = xs[i];
                    var sum = bias;
                    for (var k = 0u; k < MAX_CONV_WIDTH; k++) {
                        sum += taps[k] * window[k];
                    }
                    let row = (tile + i) * 2u * lru;
                    branches[row + channel] = gelu_tanh(ys[i]);
                    branches[row + lru + channel] = sum;
                }
            }
        }
        if segment == 0u && step.halted == 0u {
            for (var j = 0u; j + 1u < MAX_CONV_WIDTH; j++) {
                if j + 1u < width {
                    history[j * lru + channel] = new_history[j];
                }
            }
        }
    }
}
