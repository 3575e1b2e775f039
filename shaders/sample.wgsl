// Picks the next token from the last row of logits on the GPU, so only its id is read back;
// then advances the position by the chunk's tokens.
//
//   greedy (temperature 0):  argmax_i l_i, lowest index on ties
//   otherwise:               p_i ∝ exp((l_i − max l) / T) over { i : l_i ≥ τ },
//                            τ = max(τ_k, τ_p): τ_k the k-th largest logit (top-k), τ_p the largest
//                            threshold keeping ≥ top_p of the remaining mass (top-p), both found by
//                            bisection on the logit value; one uniform draw u = hash(seed, n) per token
//   mode 0:                  no sampling, only the position advances (prefill without a draw)
//
// One workgroup of 256 threads. NaN logits count as −∞.

struct Sampling {
    temperature: f32,
    top_k: u32,
    top_p: f32,
    seed: u32,
    mode: u32,
    vocab: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> sampling: Sampling;
@group(0) @binding(1) var<uniform> chunk: Chunk;
@group(0) @binding(2) var<storage, read_write> step: Step;
@group(0) @binding(3) var<storage, read> logits: array<f32>;          // [head_count, vocab]
@group(0) @binding(4) var<storage, read_write> tokens: array<u32>;    // [0] = next input token
@group(0) @binding(5) var<storage, read_write> generated: array<u32>; // ring of sampled ids

const GENERATED_RING: u32 = 1024u;
const NEG_BIG: f32 = -3.0e38;

var<workgroup> reduce_u: array<u32, 256>;
var<workgroup> chosen: atomic<u32>;

fn logit(row: u32, i: u32) -> f32 {
    let v = logits[row + i];
    return select(NEG_BIG, v, v == v);
}

fn sum_u(li: u32, value: u32) -> u32 {
    reduce_u[li] = value;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride /= 2u) {
        if li < stride {
            reduce_u[li] += reduce_u[li + stride];
        }
        workgroupBarrier();
    }
    let result = reduce_u[0];
    workgroupBarrier();
    return result;
}

fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// Unnormalized probability of token i, or 0 below the threshold.
fn weight(row: u32, i: u32, threshold: f32, max_logit: f32) -> f32 {
    let l = logit(row, i);
    return select(0.0, exp((l - max_logit) / sampling.temperature), l >= threshold);
}

fn mass_at_least(li: u32, row: u32, threshold: f32, max_logit: f32) -> f32 {
    var local = 0.0;
    for (var i = li; i < sampling.vocab; i += 256u) {
        local += weight(row, i, threshold, max_logit);
    }
    return workgroup_sum(li, local);
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32) {
    if sampling.mode == 1u {
        let choice = pick(li);
        if li == 0u {
            tokens[0] = choice;
            generated[step.generated % GENERATED_RING] = choice;
            step.generated += 1u;
        }
    }
    if li == 0u {
        step.position += chunk.n_tokens;
    }
}

fn pick(li: u32) -> u32 {
    let vocab = sampling.vocab;
    let row = (chunk.head_count - 1u) * vocab;

    var best = NEG_BIG;
    var best_index = 0xffffffffu;
    for (var i = li; i < vocab; i += 256u) {
        let l = logit(row, i);
        if l > best || best_index == 0xffffffffu {
            best = l;
            best_index = i;
        }
    }
    reduction[li] = best;
    reduce_u[li] = best_index;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride /= 2u) {
        if li < stride {
            let other = reduction[li + stride];
            let other_index = reduce_u[li + stride];
            if other > reduction[li] || (other == reduction[li] && other_index < reduce_u[li]) {
                reduction[li] = other;
                reduce_u[li] = other_index;
            }
        }
        workgroupBarrier();
    }
    let max_logit = reduction[0];
    let argmax = reduce_u[0];
    workgroupBarrier();
    if sampling.temperature <= 0.0 {
        return argmax;
    }

    // Every branch that reaches a barrier depends only on uniforms, so browsers' uniformity
    // analysis accepts it; the thresholds themselves are per-thread copies of one value.
    var local_min = max_logit;
    for (var i = li; i < vocab; i += 256u) {
        local_min = min(local_min, logit(row, i));
    }
    var threshold = workgroup_min(li, local_min);
    if sampling.top_k > 0u && sampling.top_k < vocab {
        var lo = threshold;
        var hi = max_logit;
        for (var iteration = 0u; iteration < 40u; iteration++) {
            let mid = lo + (hi - lo) * 0.5;
            var local_count = 0u;
            for (var i = li; i < vocab; i += 256u) {
                local_count += select(0u, 1u, logit(row, i) >= mid);
            }
            if sum_u(li, local_count) >= sampling.top_k {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        threshold = lo;
    }
    if sampling.top_p < 1.0 {
        let wanted = sampling.top_p * mass_at_least(li, row, threshold, max_logit);
        var lo = threshold;
        var hi = max_logit;
        for (var iteration = 0u; iteration < 40u; iteration++) {
            let mid = lo + (hi - lo) * 0.5;
            if mass_at_least(li, row, mid, max_logit) >= wanted {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        threshold = lo;
    }

    // Inverse-CDF draw: each thread owns a contiguous segment; thread 0 prefix-sums the segments.
    let segment = (vocab + 255u) / 256u;
    let begin = min(li * segment, vocab);
    let end = min(begin + segment, vocab);
    var own = 0.0;
    for (var i = begin; i < end; i++) {
        own += weight(row, i, threshold, max_logit);
    }
    reduction[li] = own;
    if li == 0u {
        atomicStore(&chosen, argmax);
    }
    workgroupBarrier();
    if li == 0u {
        var running = 0.0;
        for (var j = 0u; j < 256u; j++) {
            let value = reduction[j];
            reduction[j] = running;
            running += value;
        }
        reduce_u[0] = bitcast<u32>(running);
    }
    workgroupBarrier();
    let total = bitcast<f32>(reduce_u[0]);
    let u = f32(pcg(sampling.seed ^ pcg(step.generated)) >> 8u) / 16777216.0;
    let target_mass = u * total;
    let before = reduction[li];
    if own > 0.0 && target_mass >= before && target_mass < before + own {
        var running = before;
        var pick_index = end - 1u;
        for (var i = begin; i < end; i++) {
            let w = weight(row, i, threshold, max_logit);
            if w > 0.0 {
                pick_index = i;
                running += w;
                if running > target_mass {
                    break;
                }
            }
        }
        atomicStore(&chosen, pick_index);
    }
    workgroupBarrier();
    return atomicLoad(&chosen);
}
