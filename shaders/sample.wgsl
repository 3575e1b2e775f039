// Picks the next token from the last row of logits on the GPU, so only its id is read back;
// then advances the position by the chunk's tokens.
//
//   adjusted logits:         l_i = logit_i + bias[i]; then, if c_i = counts[i] > 0 (token i drawn
//                            c_i times in this reply):
//                              l_i = l_i / repetition_penalty if l_i > 0, else l_i · repetition_penalty
//                              l_i = l_i − (frequency_penalty · c_i + presence_penalty)
//                            (sampling.adjust = 0: l_i = logit_i, and neither buffer is read)
//   constrained (masked = 1): l_i = −∞ unless bit i % 32 of mask[i / 32] is set (the tokens a
//                            grammar allows next, written by the host before the step)
//   greedy (temperature 0):  argmax_i l_i, lowest index on ties
//   otherwise:               p_i ∝ exp((l_i − max l) / T) over { i : l_i ≥ τ }, drawn by inverting
//                            the cumulative sum in vocabulary order at u = hash(seed, n), n the
//                            draw's index in this reply (step.generated − first_draw), one
//                            uniform draw per token;
//                            τ = max(τ_k, τ_p): τ_k the k-th largest logit (top-k), τ_p the largest
//                            threshold keeping ≥ top_p of the mass above τ_k (top-p), both found by
//                            bisection on the logit value
//   mode 0:                  no sampling, only the position advances (prefill without a draw)
//   no usable logit:         NO_TOKEN (every logit NaN or −∞: the model's output is broken, and
//                            the host reports it as an error, as the CPU sampler does)
//   a token drawn:           counts[id] += 1 (mode 1 only, whatever `adjust` says; the engine
//                            clears `counts` when a reply starts)
//   a stop id drawn:         step.halted = 1 (the token is still written and counted); while
//                            halted the sampler does nothing at all, so a step queued behind a
//                            stop leaves the position, the ring, the counts and the next input as
//                            the stop left them
//
// One workgroup of 256 threads. NaN logits count as −∞, and ±∞ as ±3·10³⁸. Each bisection step
// counts (and weighs) the logits at or above its midpoint; as soon as at most CANDIDATES logits
// lie at or above the lower end of the search, they are copied once, in vocabulary order, into
// workgroup memory, and the remaining steps and the draw read only them instead of the whole
// vocabulary (for top-k 40 over 256,000 logits: a handful of passes over the logits, not 40).

struct Sampling {
    temperature: f32,
    top_k: u32,
    top_p: f32,
    seed: u32,
    mode: u32,
    vocab: u32,
    stop_count: u32,
    adjust: u32,
    frequency_penalty: f32,
    presence_penalty: f32,
    repetition_penalty: f32,
    first_draw: u32,
    masked: u32,
    stops: array<vec4<u32>, MAX_STOPS / 4u>,
}

@group(0) @binding(0) var<uniform> sampling: Sampling;
@group(0) @binding(1) var<uniform> chunk: Chunk;
@group(0) @binding(2) var<storage, read_write> step: Step;
@group(0) @binding(3) var<storage, read> logits: array<f32>;          // [head_count, vocab]
@group(0) @binding(4) var<storage, read_write> tokens: array<u32>;    // [0] = next input token
@group(0) @binding(5) var<storage, read_write> generated: array<u32>; // ring of sampled ids
@group(0) @binding(6) var<storage, read_write> counts: array<u32>;    // [vocab] draws in this reply
@group(0) @binding(7) var<storage, read> bias: array<f32>;            // [vocab] logit_bias, dense
@group(0) @binding(8) var<storage, read> mask: array<u32>;            // [vocab / 32] allowed ids

const NEG_BIG: f32 = -3.0e38;
const BIG: f32 = 3.0e38;
const CANDIDATES: u32 = 1024u;

var<workgroup> reduce_u: array<u32, THREADS>;
var<workgroup> reduce_pair: array<vec2<f32>, THREADS>;
var<workgroup> candidate_logit: array<f32, CANDIDATES>;
var<workgroup> candidate_id: array<u32, CANDIDATES>;
var<workgroup> candidate_count: u32;
var<workgroup> chosen: atomic<u32>;

fn logit(row: u32, i: u32) -> f32 {
    var v = logits[row + i];
    if sampling.adjust != 0u {
        v = adjusted(v, i);
    }
    if sampling.masked != 0u && (mask[i / 32u] & (1u << (i % 32u))) == 0u {
        return NEG_BIG;
    }
    return select(NEG_BIG, clamp(v, NEG_BIG, BIG), v == v);
}

// The header's adjusted logit of token i (SamplingParams::adjust on the CPU).
fn adjusted(raw: f32, i: u32) -> f32 {
    var l = raw + bias[i];
    let count = counts[i];
    if count > 0u {
        let r = sampling.repetition_penalty;
        l = select(l * r, l / r, l > 0.0);
        l -= sampling.frequency_penalty * f32(count) + sampling.presence_penalty;
    }
    return l;
}

// The logits still in the running: the whole row, or the candidates once copied.
struct Source {
    row: u32,
    copied: bool,
    len: u32,
}

fn source_logit(s: Source, j: u32) -> f32 {
    if s.copied {
        return candidate_logit[j];
    }
    return logit(s.row, j);
}

fn source_id(s: Source, j: u32) -> u32 {
    if s.copied {
        return candidate_id[j];
    }
    return j;
}

fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// Unnormalized probability of a logit, or 0 below the threshold.
fn weight(l: f32, threshold: f32, max_logit: f32) -> f32 {
    return select(0.0, exp((l - max_logit) / sampling.temperature), l >= threshold);
}

// (count, Σ weight) of the source's logits at or above `threshold`, the same in every thread.
fn count_and_mass(li: u32, s: Source, threshold: f32, max_logit: f32) -> vec2<f32> {
    var local = vec2<f32>(0.0);
    for (var j = li; j < s.len; j += THREADS) {
        let l = source_logit(s, j);
        if l >= threshold {
            local += vec2<f32>(1.0, exp((l - max_logit) / sampling.temperature));
        }
    }
    reduce_pair[li] = local;
    workgroupBarrier();
    for (var stride = THREADS / 2u; stride > 0u; stride /= 2u) {
        if li < stride {
            reduce_pair[li] += reduce_pair[li + stride];
        }
        workgroupBarrier();
    }
    let result = workgroupUniformLoad(&reduce_pair[0]);
    workgroupBarrier();
    return result;
}

// Copies the row's logits at or above `threshold` (at most CANDIDATES of them) into workgroup
// memory in vocabulary order: each thread takes a contiguous segment, and a prefix sum over the
// threads' counts gives each its place.
fn copy_candidates(li: u32, row: u32, threshold: f32) -> Source {
    let vocab = sampling.vocab;
    let segment = (vocab + THREADS - 1u) / THREADS;
    let begin = min(li * segment, vocab);
    let end = min(begin + segment, vocab);
    var mine = 0u;
    for (var i = begin; i < end; i++) {
        mine += select(0u, 1u, logit(row, i) >= threshold);
    }
    reduce_u[li] = mine;
    workgroupBarrier();
    if li == 0u {
        var running = 0u;
        for (var j = 0u; j < THREADS; j++) {
            let count = reduce_u[j];
            reduce_u[j] = running;
            running += count;
        }
        candidate_count = min(running, CANDIDATES);
    }
    workgroupBarrier();
    var at = reduce_u[li];
    for (var i = begin; i < end; i++) {
        let l = logit(row, i);
        if l >= threshold && at < CANDIDATES {
            candidate_logit[at] = l;
            candidate_id[at] = i;
            at++;
        }
    }
    return Source(row, true, workgroupUniformLoad(&candidate_count));
}

var<workgroup> halted: u32;

fn is_stop(id: u32) -> bool {
    for (var i = 0u; i < sampling.stop_count; i++) {
        if sampling.stops[i / 4u][i % 4u] == id {
            return true;
        }
    }
    return false;
}

@compute @workgroup_size(THREADS)
fn main(@builtin(local_invocation_index) li: u32) {
    if li == 0u {
        halted = step.halted;
    }
    if workgroupUniformLoad(&halted) != 0u {
        return;
    }
    if sampling.mode == 1u {
        let choice = pick(li);
        if li == 0u {
            tokens[0] = choice;
            generated[step.generated % GENERATED_RING] = choice;
            step.generated += 1u;
            if choice < sampling.vocab {
                counts[choice] += 1u;
            }
            if is_stop(choice) {
                step.halted = 1u;
            }
        }
    }
    if li == 0u {
        step.position += chunk.n_tokens;
    }
}

fn pick(li: u32) -> u32 {
    let vocab = sampling.vocab;
    let row = (chunk.head_count - 1u) * vocab;

    // One pass: the maximum (lowest index on ties) and the lowest logit that is not −∞.
    var best = NEG_BIG;
    var best_index = 0xffffffffu;
    var local_min = BIG;
    for (var i = li; i < vocab; i += THREADS) {
        let l = logit(row, i);
        if l > best || best_index == 0xffffffffu {
            best = l;
            best_index = i;
        }
        if l > NEG_BIG {
            local_min = min(local_min, l);
        }
    }
    reduction[li] = best;
    reduce_u[li] = best_index;
    workgroupBarrier();
    for (var stride = THREADS / 2u; stride > 0u; stride /= 2u) {
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
    let max_logit = workgroupUniformLoad(&reduction[0]);
    let argmax = workgroupUniformLoad(&reduce_u[0]);
    workgroupBarrier();
    if max_logit <= NEG_BIG {
        return NO_TOKEN;
    }
    if sampling.temperature <= 0.0 {
        return argmax;
    }
    var threshold = workgroup_min(li, local_min);

    // Every value below is the same in all threads (workgroupUniformLoad), so the branches
    // around barriers are uniform, as browsers check.
    var source = Source(row, false, vocab);
    // The number of logits at or above the threshold, or an upper bound of it.
    var count_above = f32(vocab);
    if sampling.top_k > 0u && sampling.top_k < vocab {
        var lo = threshold;
        var hi = max_logit;
        for (var iteration = 0u; iteration < BISECTION_STEPS; iteration++) {
            if !source.copied && count_above <= f32(CANDIDATES) {
                source = copy_candidates(li, row, lo);
            }
            let mid = lo + (hi - lo) * 0.5;
            let above = count_and_mass(li, source, mid, max_logit);
            if above.x >= f32(sampling.top_k) {
                lo = mid;
                count_above = above.x;
            } else {
                hi = mid;
            }
        }
        threshold = lo;
    }
    if !source.copied && count_above <= f32(CANDIDATES) {
        source = copy_candidates(li, row, threshold);
    }
    if sampling.top_p < 1.0 {
        let wanted = sampling.top_p * count_and_mass(li, source, threshold, max_logit).y;
        var lo = threshold;
        var hi = max_logit;
        for (var iteration = 0u; iteration < BISECTION_STEPS; iteration++) {
            if !source.copied && count_above <= f32(CANDIDATES) {
                source = copy_candidates(li, row, lo);
            }
            let mid = lo + (hi - lo) * 0.5;
            let above = count_and_mass(li, source, mid, max_logit);
            if above.y >= wanted {
                lo = mid;
                count_above = above.x;
            } else {
                hi = mid;
            }
        }
        threshold = lo;
    }

    // Inverse-CDF draw: each thread owns a contiguous segment; thread 0 prefix-sums the segments.
    let segment = (source.len + THREADS - 1u) / THREADS;
    let begin = min(li * segment, source.len);
    let end = min(begin + segment, source.len);
    var own = 0.0;
    for (var j = begin; j < end; j++) {
        own += weight(source_logit(source, j), threshold, max_logit);
    }
    reduction[li] = own;
    if li == 0u {
        atomicStore(&chosen, argmax);
    }
    workgroupBarrier();
    if li == 0u {
        var running = 0.0;
        for (var j = 0u; j < THREADS; j++) {
            let value = reduction[j];
            reduction[j] = running;
            running += value;
        }
        reduce_u[0] = bitcast<u32>(running);
    }
    workgroupBarrier();
    let total = bitcast<f32>(reduce_u[0]);
    let u = f32(pcg(sampling.seed ^ pcg(step.generated - sampling.first_draw)) >> 8u) / 16777216.0;
    let target_mass = u * total;
    let before = reduction[li];
    if own > 0.0 && target_mass >= before && target_mass < before + own {
        var running = before;
        var pick_index = source_id(source, end - 1u);
        for (var j = begin; j < end; j++) {
            let w = weight(source_logit(source, j), threshold, max_logit);
            if w > 0.0 {
                pick_index = source_id(source, j);
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
