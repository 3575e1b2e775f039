// Shared by every kernel: src/gpu/kernels.rs prepends this file to each shader. It holds the
// per-submission blocks, the matrix row parameters, the activation functions and workgroup
// reductions over THREADS threads. Constants such as THREADS come from src/gpu/kernels.rs.
//
//   gelu_tanh(z) = 0.5·z·(1 + tanh(√(2/π)·(z + 0.044715·z³)))   (tanh argument clamped to ±10,
//                                                                where f32 tanh is already ±1)
//   sigmoid(x)   = 1 / (1 + e^(−x))                               (x clamped to ±80)

// Tokens in this submission, and which of them get logits.
struct Chunk {
    n_tokens: u32,
    head_first: u32,
    head_count: u32,
    _pad: u32,
}

// Advanced on the GPU by sample.wgsl, so many decode steps can be queued at once. The sampler
// sets `halted` when it draws a stop token: the steps queued behind it then change no state (every
// kernel that writes the state checks it), so a stop leaves exactly the state after the step that
// drew it. The host clears it before each new run.
struct Step {
    position: u32,
    generated: u32,
    halted: u32,
    _pad: u32,
}

// Which rows of which matrix a matrix kernel computes, over which input (see matrix_rows.wgsl).
struct MatrixRows {
    // Rows of this dispatch (per half in a pair kernel).
    rows: u32,
    cols: u32,
    block_rows: u32,
    x_stride: u32,
    x_offset: u32,
    // First row of this dispatch in `affine` and in block numbering (a row piece of a larger
    // tensor); the weights buffer holds only the dispatch's rows.
    row_offset: u32,
    pair_offset: u32,
    // Where the biases start in `affine` (in 4-byte words); 0 when the matrix has none.
    bias_offset: u32,
    lanes: u32,
    has_norm: u32,
    eps: f32,
    halves: u32,
}

// Partial RoPE, halves layout (rope_kv.wgsl, rope_chunk.wgsl): the pair (x[i], x[i + n]) of a head
// at `position`, n = rotary_dims / 2, θ = position · inv_freq[i]:
//
//   r[i] = x[i]·cos θ − x[i+n]·sin θ,   r[i+n] = x[i+n]·cos θ + x[i]·sin θ
//
// θ is computed as f32(position) · inv_freq, as the references do, then reduced to [−π, π] with a
// two-part 2π before sin/cos, whose GPU implementations are only accurate on that range.
const TWO_PI_HI: f32 = 6.28125;
const TWO_PI_LO: f32 = 0.0019353071795864769;

fn rope_pair(a: f32, b: f32, position: u32, inv_freq: f32) -> vec2<f32> {
    let angle = f32(position) * inv_freq;
    let turns = round(angle / (TWO_PI_HI + TWO_PI_LO));
    let reduced = (angle - turns * TWO_PI_HI) - turns * TWO_PI_LO;
    let c = cos(reduced);
    let s = sin(reduced);
    return vec2<f32>(a * c - b * s, b * c + a * s);
}

fn gelu_tanh(z: f32) -> f32 {
    let inner = 0.7978846 * (z + 0.044715 * z * z * z);
    return 0.5 * z * (1.0 + tanh(clamp(inner, -10.0, 10.0)));
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-clamp(x, -80.0, 80.0)));
}

var<workgroup> reduction: array<f32, THREADS>;

// The sum over a workgroup of THREADS threads; every thread gets it.
fn workgroup_sum(li: u32, value: f32) -> f32 {
    reduction[li] = value;
    workgroupBarrier();
    for (var stride = THREADS / 2u; stride > 0u; stride /= 2u) {
        if li < stride {
            reduction[li] += reduction[li + stride];
        }
        workgroupBarrier();
    }
    let result = reduction[0];
    workgroupBarrier();
    return result;
}

fn workgroup_max(li: u32, value: f32) -> f32 {
    reduction[li] = value;
    workgroupBarrier();
    for (var stride = THREADS / 2u; stride > 0u; stride /= 2u) {
        if li < stride {
            reduction[li] = max(reduction[li], reduction[li + stride]);
        }
        workgroupBarrier();
    }
    let result = reduction[0];
    workgroupBarrier();
    return result;
}

fn workgroup_min(li: u32, value: f32) -> f32 {
    return -workgroup_max(li, -value);
}
