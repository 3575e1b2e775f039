//! The WebGPU engine against the CPU reference on the same int8 and int4 models, through wgpu on a
//! real Vulkan driver (Mesa's lavapipe in CI, a GPU where there is one).

mod common;

use std::path::{Path, PathBuf};

use common::{ok, s, tiny, tokenizer_path};

use pollster::block_on;
use rgweb::chat::session::Generator;
use rgweb::chat::SamplingParams;
use rgweb::gpu::engine::{load_engine, Engine};
use rgweb::gpu::kernels::{KernelGeneration, KernelOptions};
use rgweb::gpu::GpuContext;
use rgweb::model::{Model, State};
use rgweb::weights::convert::convert;
use rgweb::weights::format::Quantization;
use rgweb::weights::load::load_model;

const TOLERANCE: f32 = 2e-3;
/// int4: the largest |GPU − CPU| logit as a share of the CPU logits' range. Both dequantize the
/// same way; only the order of the f32 sums differs.
const INT4_RELATIVE_TOLERANCE: f32 = 1e-4;

fn context() -> GpuContext {
    block_on(GpuContext::new())
        .expect("a GPU adapter: install Mesa's lavapipe (apt-get install mesa-vulkan-drivers) to run on the CPU")
}

/// An official golden checkpoint converted to `quantization`, loaded both on the GPU and on the CPU.
fn pair(case: &str, quantization: Quantization) -> (Engine, Model, tempfile::TempDir) {
    let source: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(case);
    let dir = tempfile::tempdir().unwrap();
    convert(&source, dir.path(), quantization).unwrap();
    let engine = load_engine(context(), dir.path()).unwrap();
    let model = load_model(dir.path()).unwrap();
    (engine, model, dir)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| if (x - y).abs() > m || (x - y).is_nan() { (x - y).abs() } else { m })
}

fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    std::iter::once(2).chain((1..n as u32).map(|i| (i * 7919 + 13) % vocab as u32)).collect()
}

fn check_logits(case: &str, n: usize, quantization: Quantization) {
    let (mut engine, model, _dir) = pair(case, quantization);
    let vocab = model.config.vocab_size;
    let ids = tokens(n, vocab);
    let cpu = model.forward(&ids, &mut State::new(&model.config)).unwrap();
    let range = cpu.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) - cpu.iter().fold(f32::INFINITY, |m, &v| m.min(v));
    let tolerance = match quantization {
        Quantization::Int4 => INT4_RELATIVE_TOLERANCE * range,
        _ => TOLERANCE,
    };

    // One token runs on gemv.wgsl (more than one weight load in flight), 2 to 8 on the row
    // kernels, more on the tiled ones: all three are compared here.
    assert!(engine.plan_cost(1, &SamplingParams::default()).weight_loads_in_flight > 1.0, "the step on gemv.wgsl");
    let gpu = block_on(engine.logits(&ids)).unwrap();
    let prefill = max_diff(&gpu, &cpu);
    engine.reset();
    let short = max_diff(&block_on(engine.logits(&ids[..5])).unwrap(), &cpu[..5 * vocab]);

    engine.reset();
    let mut stepped = Vec::new();
    for &t in &ids {
        stepped.extend(block_on(engine.logits(&[t])).unwrap());
    }
    let step = max_diff(&stepped, &cpu);

    engine.reset();
    let split = n / 2 + 3;
    let mut mixed = block_on(engine.logits(&ids[..split])).unwrap();
    for &t in &ids[split..] {
        mixed.extend(block_on(engine.logits(&[t])).unwrap());
    }
    let then = max_diff(&mixed, &cpu);
    let name = quantization.name();
    eprintln!(
        "{case} {name}: GPU vs CPU max |Δ| prefill {prefill:.2e}, step {step:.2e}, prefill+step {then:.2e} \
         (logit range {range:.2})"
    );
    assert!(
        prefill <= tolerance && short <= tolerance && step <= tolerance && then <= tolerance,
        "{case} {name}: {prefill} {short} {step} {then}"
    );
}

#[test]
fn gpu_matches_cpu_over_six_windows() {
    check_logits("window_long", 48, Quantization::Int8);
}

#[test]
fn gpu_matches_cpu_with_lru_width_above_hidden_size() {
    check_logits("lru_wide", 40, Quantization::Int8);
}

#[test]
fn gpu_matches_cpu_with_head_dim_64() {
    check_logits("head64", 40, Quantization::Int8);
}

#[test]
fn gpu_int4_matches_cpu_int4_over_six_windows() {
    check_logits("window_long", 48, Quantization::Int4);
}

/// The browser hands the loader chunks of any size (a few bytes of a network packet, a whole
/// 8 MiB cached segment): weights streamed in odd-sized chunks, so words and pieces split at every
/// offset and writes are both gathered and made straight from a large chunk, give the GPU exactly
/// the logits of a load in 1 MiB reads.
#[test]
fn weights_streamed_in_odd_chunks_load_exactly() {
    // The tiny model's 256,000-row embedding makes pieces of megabytes.
    for dir in [&tiny().int8, &tiny().int4] {
        let mut engine = load_engine(context(), dir).unwrap();
        let manifest = rgweb::weights::load::read_manifest(dir).unwrap();
        let mut odd = Engine::new(context(), manifest.clone()).unwrap();
        let sizes = [1usize, 3, 5, 4099, 2, 65_537, 7, (1 << 20) + 5];
        for (index, shard) in manifest.shards.iter().enumerate() {
            let bytes = std::fs::read(dir.join(&shard.file)).unwrap();
            let mut parser = rgweb::weights::stream::ShardParser::new(&manifest, index);
            let mut sink = odd.weight_sink();
            let (mut at, mut turn) = (0, 0);
            while at < bytes.len() {
                let end = (at + sizes[turn % sizes.len()]).min(bytes.len());
                parser.push(&bytes[at..end], &mut sink).unwrap();
                (at, turn) = (end, turn + 1);
            }
            parser.finish().unwrap();
        }
        let ids = tokens(20, engine.config.vocab_size);
        let expected = block_on(engine.logits(&ids)).unwrap();
        assert_eq!(block_on(odd.logits(&ids)).unwrap(), expected, "{}", dir.display());
    }
}

/// Widths of 96 and 288 columns: odd int4 group counts (3 and 9), so every row's scales are padded.
#[test]
fn gpu_int4_matches_cpu_int4_with_odd_group_counts() {
    check_logits("lru_wide", 40, Quantization::Int4);
}

/// A prompt of 600 tokens runs as prefill chunks of 256, 256 and 88 tokens (the tiled kernels,
/// the scans and chunked attention) over many windows and ring wraps: its logits equal the CPU
/// reference's, also when the chunks start elsewhere (37 tokens first), and so do the greedy
/// tokens decoded after it.
fn check_long_prefill(case: &str, quantization: Quantization) {
    let (mut engine, model, _dir) = pair(case, quantization);
    let vocab = model.config.vocab_size;
    let ids = tokens(600, vocab);
    let cpu = model.forward(&ids, &mut State::new(&model.config)).unwrap();
    let range = cpu.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) - cpu.iter().fold(f32::INFINITY, |m, &v| m.min(v));
    let tolerance = match quantization {
        Quantization::Int4 => INT4_RELATIVE_TOLERANCE * range,
        _ => TOLERANCE,
    };
    let whole = max_diff(&block_on(engine.logits(&ids)).unwrap(), &cpu);
    engine.reset();
    let mut shifted = block_on(engine.logits(&ids[..37])).unwrap();
    shifted.extend(block_on(engine.logits(&ids[37..])).unwrap());
    let shifted = max_diff(&shifted, &cpu);
    let name = quantization.name();
    eprintln!("{case} {name}, 600 tokens: GPU vs CPU max |Δ| {whole:.2e}, chunks shifted by 37 {shifted:.2e}");
    assert!(whole <= tolerance && shifted <= tolerance, "{case} {name}: {whole} {shifted}");

    engine.reset();
    let mut greedy = vec![block_on(engine.prefill(&ids)).unwrap()];
    greedy.extend(block_on(engine.decode(15)).unwrap());
    assert_eq!(greedy, cpu_greedy(&model, &ids, 16), "{case} {name}: greedy tokens after a long prefill");
}

#[test]
fn long_prefill_in_chunks_matches_cpu_int8() {
    for case in ["window_long", "lru_wide", "head64"] {
        check_long_prefill(case, Quantization::Int8);
    }
}

#[test]
fn long_prefill_in_chunks_matches_cpu_int4() {
    for case in ["window_long", "lru_wide"] {
        check_long_prefill(case, Quantization::Int4);
    }
}

/// Greedy decoding on the CPU reference: the argmax after each step.
fn cpu_greedy(model: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let argmax = |logits: &[f32]| {
        logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &l)| if l > best.1 { (i, l) } else { best }).0
            as u32
    };
    let vocab = model.config.vocab_size;
    let mut state = State::new(&model.config);
    let logits = model.forward(prompt, &mut state).unwrap();
    let mut ids = vec![argmax(&logits[logits.len() - vocab..])];
    while ids.len() < n {
        let next = argmax(&model.step(*ids.last().unwrap(), &mut state).unwrap());
        ids.push(next);
    }
    ids
}

fn check_greedy_tokens(dir: &Path) {
    let model = load_model(dir).unwrap();
    let mut engine = load_engine(context(), dir).unwrap();
    // 21 prompt tokens: two chunks, more than the tiny window of 16.
    let prompt = tokens(21, model.config.vocab_size);
    let mut gpu = vec![block_on(engine.prefill(&prompt)).unwrap()];
    gpu.extend(block_on(engine.decode(63)).unwrap());
    assert_eq!(gpu, cpu_greedy(&model, &prompt, 64));
}

#[test]
fn greedy_tokens_match_the_cpu_for_64_tokens_across_windows() {
    check_greedy_tokens(&tiny().int8);
}

#[test]
fn int4_greedy_tokens_match_the_cpu_for_64_tokens_across_windows() {
    check_greedy_tokens(&tiny().int4);
}

#[test]
fn generate_prints_the_same_greedy_text_on_gpu_and_cpu() {
    let tokenizer = tokenizer_path();
    let run = |backend: &str| {
        let args = ["generate", s(&tiny().int8), "--prompt", "The sky is", "--max-tokens", "24", "--backend", backend];
        ok(&[&args[..], &["--tokenizer", s(&tokenizer), "--print-ids"]].concat())
    };
    let (gpu, cpu) = (run("gpu"), run("cpu"));
    assert_eq!(String::from_utf8_lossy(&gpu.stdout), String::from_utf8_lossy(&cpu.stdout));
    assert_eq!(gpu.stderr, cpu.stderr, "same ids");
}

#[test]
fn sampling_on_the_gpu_is_seeded_and_narrowed_by_top_k() {
    let mut engine = load_engine(context(), &tiny().int8).unwrap();
    let prompt = tokens(5, engine.config.vocab_size);
    let mut run = |params: SamplingParams| {
        engine.set_sampling(&params).unwrap();
        engine.reset();
        let mut ids = vec![block_on(engine.prefill(&prompt)).unwrap()];
        ids.extend(block_on(engine.decode(15)).unwrap());
        ids
    };
    let greedy = run(SamplingParams::default());
    let hot = SamplingParams { temperature: 1.5, top_k: 0, top_p: 1.0, seed: 11, ..Default::default() };
    assert_eq!(run(hot.clone()), run(hot.clone()), "a seed replays");
    assert_ne!(run(hot.clone()), run(SamplingParams { seed: 12, ..hot.clone() }), "seeds differ");
    assert_ne!(run(hot.clone()), greedy, "temperature 1.5 over 256,000 tokens is not greedy");
    assert_eq!(run(SamplingParams { top_k: 1, ..hot.clone() }), greedy, "top-k 1 is greedy");
    assert_eq!(run(SamplingParams { top_p: 1e-6, ..hot.clone() }), greedy, "a tiny nucleus is greedy");
    let narrow = run(SamplingParams { top_k: 3, ..hot });
    let cpu = load_model(&tiny().int8).unwrap();
    let mut state = State::new(&cpu.config);
    let mut logits = cpu.forward(&prompt, &mut state).unwrap();
    let vocab = cpu.config.vocab_size;
    let mut top: Vec<(f32, u32)> = logits.split_off(logits.len() - vocab).into_iter().zip(0..).collect();
    top.sort_by(|a, b| b.0.total_cmp(&a.0));
    assert!(top[..3].iter().any(|&(_, id)| id == narrow[0]), "first top-3 draw {} is among the top 3", narrow[0]);
}

/// `n` tokens generated after `prompt` (no stop token), `times` times from the same state: a
/// later reply must not see an earlier one's repetition counts (each reply starts them anew).
fn reply(generator: &mut Generator, params: &SamplingParams, prompt: &[u32], n: usize, times: usize) -> Vec<u32> {
    generator.reset();
    generator.set_sampling(params.clone()).unwrap();
    let before = generator.checkpoint();
    let replies: Vec<Vec<u32>> = (0..times)
        .map(|_| {
            generator.restore(&before).unwrap();
            block_on(generator.generate(prompt, n, &[], || false, |_| Ok(true))).unwrap()
        })
        .collect();
    assert!(replies.iter().all(|r| *r == replies[0]), "{params:?}: the same reply again from the same state");
    replies[0].clone()
}

/// Frequency, presence and repetition penalties and logit biases on greedy decoding: the GPU's
/// reply (its counts kept on the GPU) equals the CPU reference's token for token, over 32
/// tokens after a 21-token prompt (both longer than the tiny model's window of 16), and each
/// setting changes the reply it is meant to change.
#[test]
fn penalties_and_logit_bias_match_the_cpu_on_greedy_decoding() {
    let mut cpu = Generator::cpu(load_model(&tiny().int8).unwrap(), SamplingParams::default()).unwrap();
    let mut gpu = Generator::gpu(load_engine(context(), &tiny().int8).unwrap(), SamplingParams::default()).unwrap();
    let prompt = tokens(21, cpu.vocab_size());
    let n = 32;
    // The CPU reference once per setting (it is the slow one), the GPU twice from the same state.
    let mut both = |params: &SamplingParams, cpu_times: usize| {
        let on_cpu = reply(&mut cpu, params, &prompt, n, cpu_times);
        assert_eq!(reply(&mut gpu, params, &prompt, n, 2), on_cpu, "{params:?}: GPU against CPU");
        on_cpu
    };
    let plain = both(&SamplingParams::default(), 1);
    let distinct = |ids: &[u32]| ids.iter().collect::<std::collections::BTreeSet<_>>().len();
    assert!(distinct(&plain) < n / 2, "the random model's greedy reply repeats itself: {plain:?}");

    // Twice on the CPU too: each reply starts its counts anew there as well.
    let frequency = both(&SamplingParams { frequency_penalty: 0.8, presence_penalty: 0.5, ..Default::default() }, 2);
    assert_ne!(frequency, plain, "frequency and presence penalties change the reply");
    assert!(distinct(&frequency) > distinct(&plain), "and it repeats less: {frequency:?}");
    let negative = both(&SamplingParams { frequency_penalty: -0.3, presence_penalty: 1.2, ..Default::default() }, 1);
    assert_ne!(negative, frequency);

    let repetition = both(&SamplingParams { repetition_penalty: 1.3, ..Default::default() }, 1);
    assert_ne!(repetition, plain, "a repetition penalty of 1.3 changes the reply");

    let banned = both(&SamplingParams { logit_bias: vec![(plain[0], -100.0)], ..Default::default() }, 1);
    assert!(!banned.contains(&plain[0]), "{} is banned: {banned:?}", plain[0]);
    let forced_id = (0..).find(|id| !plain.contains(id)).unwrap();
    let forced = both(&SamplingParams { logit_bias: vec![(forced_id, 100.0)], ..Default::default() }, 1);
    assert_eq!(forced, vec![forced_id; n], "+100 forces token {forced_id}");
    let mixed = SamplingParams {
        frequency_penalty: 0.5,
        repetition_penalty: 1.1,
        logit_bias: vec![(plain[0], -100.0), (forced_id, 2.0), (plain[n - 1], 1.5)],
        ..Default::default()
    };
    assert_ne!(both(&mixed, 1), banned);

    // An id beyond the vocabulary is one clear error: on the GPU at once, on the CPU (whose
    // sampler learns the vocabulary from the logits) at the first draw.
    let beyond = SamplingParams { logit_bias: vec![(256_000, 1.0)], ..Default::default() };
    let message = "logit_bias token id 256000 is out of range: vocab size is 256000";
    let error = gpu.set_sampling(beyond.clone()).unwrap_err().to_string();
    assert!(error.contains(message), "{error}");
    cpu.set_sampling(beyond).unwrap();
    let error = block_on(cpu.generate(&prompt, 2, &[], || false, |_| Ok(true))).unwrap_err().to_string();
    assert!(error.contains(message), "{error}");
}

/// `pcg` in sample.wgsl.
fn pcg(v: u32) -> u32 {
    let state = v.wrapping_mul(747796405).wrapping_add(2891336453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277803737);
    (word >> 22) ^ word
}

/// Draw `n` of sample.wgsl's header formula (top-k, no top-p), in f64 over `logits` (adjusted
/// already): the token, and how close rounding came to changing it (the target's distance from
/// the token's cumulative bounds as a share of the total, or the gap at the top-k threshold).
fn header_draw(logits: &[f32], params: &SamplingParams, n: u32) -> (u32, f64) {
    let mut sorted = logits.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let k = params.top_k;
    let (threshold, gap) = if k > 0 && k < sorted.len() {
        (sorted[k - 1], (sorted[k - 1] - sorted[k]) as f64)
    } else {
        (*sorted.last().unwrap(), f64::INFINITY)
    };
    let kept: Vec<(u32, f64)> = (0..)
        .zip(logits)
        .filter(|(_, &l)| l >= threshold)
        .map(|(id, &l)| (id, (((l - sorted[0]) / params.temperature) as f64).exp()))
        .collect();
    let total: f64 = kept.iter().map(|(_, w)| w).sum();
    let seed = (params.seed ^ (params.seed >> 32)) as u32;
    let target = (pcg(seed ^ pcg(n)) >> 8) as f64 / 16777216.0 * total;
    let mut before = 0.0;
    for &(id, weight) in &kept {
        if target < before + weight {
            return (id, gap.min((target - before) / total).min((before + weight - target) / total));
        }
        before += weight;
    }
    (kept.last().unwrap().0, 0.0)
}

/// Seeded temperature sampling with penalties and a bias: the GPU's draws are the header
/// formula's over the CPU reference's logits adjusted by the CPU sampler's rule, with the
/// counts of the GPU's own earlier draws (each logit fed the GPU's token: one draw decided by
/// rounding cannot derail the rest). The CPU sampler's own draws use another generator
/// (ChaCha8), so its sampled replies differ from the GPU's by design; greedy ones are equal.
#[test]
fn seeded_sampling_with_penalties_follows_the_header_formula_on_the_cpu_logits() {
    let model = load_model(&tiny().int8).unwrap();
    let mut gpu = Generator::gpu(load_engine(context(), &tiny().int8).unwrap(), SamplingParams::default()).unwrap();
    let prompt = tokens(21, model.config.vocab_size);
    let n = 48;
    // T = 0.5 over the top 8: a handful of tokens a few tenths apart, so the draws vary, and
    // the penalties (over a tenth each) reorder them.
    let params = SamplingParams {
        temperature: 0.5,
        top_k: 8,
        seed: 2024,
        frequency_penalty: 0.6,
        presence_penalty: 0.4,
        repetition_penalty: 1.2,
        logit_bias: vec![(603, -5.0), (42064, 0.25)],
        ..Default::default()
    };
    let drawn = reply(&mut gpu, &params, &prompt, n, 2);

    let mut state = State::new(&model.config);
    let vocab = model.config.vocab_size;
    let mut logits = model.forward(&prompt, &mut state).unwrap().split_off((prompt.len() - 1) * vocab);
    let mut counts = std::collections::HashMap::<u32, u32>::new();
    let mut decided_by_rounding = 0;
    for (i, &token) in drawn.iter().enumerate() {
        let bias = |id: u32| params.logit_bias.iter().find(|b| b.0 == id).map_or(0.0, |b| b.1);
        let adjusted: Vec<f32> = (0..)
            .zip(&logits)
            .map(|(id, &l)| params.adjust(l, bias(id), counts.get(&id).copied().unwrap_or(0)))
            .collect();
        let (want, margin) = header_draw(&adjusted, &params, i as u32);
        if token != want {
            assert!(margin < 1e-4, "draw {i}: the GPU drew {token}, the formula {want} (margin {margin:.2e})");
            decided_by_rounding += 1;
        }
        *counts.entry(token).or_insert(0) += 1;
        logits = model.step(token, &mut state).unwrap();
    }
    assert!(decided_by_rounding <= 1, "{decided_by_rounding} of {n} draws differ");
    let repeats = counts.values().filter(|&&c| c > 1).count();
    eprintln!("{n} draws: {} distinct tokens, {repeats} drawn more than once", counts.len());

    // The same seed and bias without the penalties: the reply repeats tokens, and is another.
    let unpenalised =
        SamplingParams { frequency_penalty: 0.0, presence_penalty: 0.0, repetition_penalty: 1.0, ..params.clone() };
    let plain = reply(&mut gpu, &unpenalised, &prompt, n, 1);
    let distinct = plain.iter().collect::<std::collections::BTreeSet<_>>().len();
    assert!(distinct < n, "without penalties some token comes again: {plain:?}");
    assert_ne!(plain, drawn, "the penalties change the seeded reply");
}

#[test]
fn snapshot_and_restore_replay_a_conversation() {
    let mut engine = load_engine(context(), &tiny().int8).unwrap();
    engine
        .set_sampling(&SamplingParams { temperature: 1.0, top_k: 40, top_p: 0.95, seed: 5, ..Default::default() })
        .unwrap();
    let prompt = tokens(19, engine.config.vocab_size);
    block_on(engine.prefill(&prompt)).unwrap();
    let snapshot = engine.snapshot();
    let first = block_on(engine.decode(20)).unwrap();
    engine.restore(&snapshot).unwrap();
    let second = block_on(engine.decode(20)).unwrap();
    assert_eq!(first, second);
    assert_eq!(engine.position(), 19 + 20);
}

/// Tokens generated by the constant-memory test. lavapipe decodes the small model at about 100–250
/// tokens/s, and its host memory grows with every dispatch it runs (a driver-side effect), so CI
/// checks 10 against 4,000; the 100,000-token run is `rg bench --gen-tokens 100000` on a GPU (see
/// BENCHMARKS.md).
const LONG_GENERATION: usize = 4_000;

/// Buffers alive in the driver and their bytes: made and not yet freed, whoever made them
/// (wgpu's `counters` feature, which the dev-dependency turns on for tests).
fn live_buffers(engine: &Engine) -> (isize, isize) {
    let device = &engine.context().device;
    device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let hal = device.get_internal_counters().hal;
    (hal.buffers.read(), hal.buffer_memory.read())
}

#[test]
fn gpu_memory_is_constant_however_long_the_generation() {
    let (mut engine, _, _dir) = pair("window_long", Quantization::Int8);
    block_on(engine.prefill(&[2, 3, 4])).unwrap();
    block_on(engine.decode(10)).unwrap();
    let after_ten = live_buffers(&engine);
    assert!(after_ten.0 > 10 && after_ten.1 as u64 > engine.state_bytes(), "the counters count: {after_ten:?}");
    let state = engine.state_bytes();
    block_on(engine.decode(LONG_GENERATION - 10)).unwrap();
    assert_eq!(engine.position(), 3 + LONG_GENERATION);
    assert_eq!(live_buffers(&engine), after_ten, "live GPU buffers after 10 and after {LONG_GENERATION} tokens");
    assert_eq!(engine.state_bytes(), state);
    // A snapshot's buffers and a readback's staging buffer are freed, not left to a collector.
    let snapshot = engine.snapshot();
    assert!(live_buffers(&engine).0 > after_ten.0, "a snapshot holds buffers");
    drop(snapshot);
    block_on(engine.decode(1)).unwrap();
    assert_eq!(live_buffers(&engine), after_ten, "a dropped snapshot's buffers are freed");
    let logits = block_on(engine.logits(&[7])).unwrap();
    assert!(logits.iter().all(|v| v.is_finite()), "still finite after {LONG_GENERATION} tokens");
}

#[test]
fn the_2b_state_is_about_33_mib() {
    use rgweb::config::{Config, Preset};
    use rgweb::weights::format::Manifest;
    let manifest = Manifest::plan(&Config::preset(Preset::RecurrentGemma2b), Quantization::Int8);
    let engine = Engine::new(context(), manifest).unwrap();
    let mib = engine.state_bytes() as f64 / (1 << 20) as f64;
    eprintln!("2B GPU state: {} B = {mib:.2} MiB", engine.state_bytes());
    assert!((16.0..=33.5).contains(&mib), "{mib} MiB");
    // Per layer: recurrent 5 (recurrent_in, rg_lru_gates, linear_out, geglu, down) or attention 7
    // (qkv, rope_kv, attention, attention_combine, o_proj, geglu, down); plus the embedding's and the head's
    // dispatches (one per values buffer of the table) and the sampler.
    let table_bytes = 256_000 * 2560;
    let binding_limit = engine.context().device.limits().max_storage_buffer_binding_size as usize;
    let rows_per_piece = rgweb::weights::format::MAX_PIECE_BYTES as usize / 2560;
    let table_buffers = if table_bytes <= binding_limit { 1 } else { 256_000usize.div_ceil(rows_per_piece) };
    eprintln!("2B decode: {} dispatches per token (binding limit {binding_limit} B)", engine.dispatches(1));
    assert_eq!(engine.dispatches(1), 18 * 5 + 8 * 7 + 2 * table_buffers + 1);
}

/// Prefill reads each of the 2B's body weights once per 64 prompt tokens (the tiled kernels), in
/// both formats, counted from the command lists' own ops: a prompt token of a 2,048-token prompt
/// costs at most 1/64 of a decoded token's weight traffic, plus its share of the head (read once,
/// for the last token).
#[test]
fn prefill_reads_the_2b_weights_once_per_64_tokens() {
    use rgweb::config::{Config, Preset};
    use rgweb::weights::format::Manifest;
    for quantization in [Quantization::Int8, Quantization::Int4] {
        let manifest = Manifest::plan(&Config::preset(Preset::RecurrentGemma2b), quantization);
        let engine = Engine::new(context(), manifest).unwrap();
        let decoded = engine.weight_bytes_read(1, 1);
        // The tied table: once per decoded token for the logits (the embedding reads one row).
        let head = engine.weight_bytes_read(1, 1) - engine.weight_bytes_read(1, 0);
        let body = decoded - head;
        let at_512 = engine.weight_bytes_read(512, 1) / 512;
        eprintln!("2B {}: {at_512} B per prompt token of a 512-token prompt", quantization.name());
        let n = 2048;
        let per_prompt_token = engine.weight_bytes_read(n, 1) as f64 / n as f64;
        let share = (per_prompt_token - head as f64 / n as f64) / body as f64;
        eprintln!(
            "2B {}: {decoded} B per decoded token, {per_prompt_token:.0} B per prompt token ({n} tokens): \
             1/{:.1} of the body plus the head's share",
            quantization.name(),
            1.0 / share
        );
        assert!(share <= 1.0 / 64.0 + 1e-3, "{}: 1/{} of the body per prompt token", quantization.name(), 1.0 / share);
    }
}

/// The 2B's plan on the v1 kernels, counted from their constants by the op constructors, against
/// the analysis of `../shared/notes/decode-kernels.md` §2 worked out here from the config: one
/// 4-column block per weight load and one load in flight, 60 serial trips in down_proj, the
/// input (and the norm weight) re-read per row (≈ 18.6 GB), attention's combine 3 × 129 serial
/// loads, and the sampler's one workgroup passing over the vocabulary once greedy and up to 43
/// times for top-p. Then the decode step on `gemv.wgsl` (v2), against issue 21's targets for
/// the matrices.
#[test]
fn the_2b_plan_counts_what_its_kernels_do() {
    use rgweb::config::{Config, Preset};
    use rgweb::gpu::cost::DeviceModel;
    use rgweb::gpu::kernels::{key_blocks, matmul_lanes, CHUNK, TILE_K};
    use rgweb::weights::format::Manifest;
    let config = Config::preset(Preset::RecurrentGemma2b);
    let (d, lru, f, v) = (config.hidden_size as u64, config.lru_width() as u64, config.mlp_width() as u64, 256_000);
    let (heads, hd) = (config.num_attention_heads as u64, config.head_dim() as u64);
    // Each row reads its whole input and, in front of a norm, the norm weight.
    let row_reads = |rows: u64, cols: u64, norm: bool| rows * cols * 4 * (1 + norm as u64);
    let recurrent = row_reads(2 * lru, d, true) + row_reads(2 * lru, lru / heads, false) + row_reads(d, lru, false);
    let attention = row_reads((heads + 2) * hd, d, true) + row_reads(d, heads * hd, false);
    let mlp = row_reads(2 * f, d, true) + row_reads(d, f, false);
    let matrices = 18 * recurrent + 8 * attention + 26 * mlp + row_reads(v, d, true);
    assert!((18.5e9..18.7e9).contains(&(matrices as f64)), "the note's 18.6 GB: {matrices}");
    let greedy = SamplingParams::default();
    let top_p = SamplingParams { temperature: 1.0, top_p: 0.9, ..SamplingParams::default() };
    for quantization in [Quantization::Int8, Quantization::Int4] {
        let v1 = KernelOptions { generation: KernelGeneration::V1, ..KernelOptions::default() };
        let engine = Engine::with_kernels(context(), Manifest::plan(&config, quantization), v1).unwrap();
        let decode = engine.plan_cost(1, &greedy);
        eprintln!("2B {} decode: {decode:?}", quantization.name());
        assert_eq!(decode.dispatches, engine.dispatches(1));
        assert_eq!(decode.weight_bytes, engine.weight_bytes_read(1, 1));
        let block_bytes = if quantization == Quantization::Int8 { 4.0 } else { 2.0 };
        assert_eq!(decode.weight_load_bytes, block_bytes);
        assert_eq!(decode.weight_loads_in_flight, 1.0);
        assert_eq!(matmul_lanes(f as usize), 32);
        assert_eq!(decode.max_serial_weight_trips, (f / 4).div_ceil(32) as u32);
        // Beyond the matrices: attention's queries, keys and values (at least the window's keys
        // and values once per attention layer) and the sampler's pass.
        let extra = decode.activation_bytes - matrices;
        let window = 8 * 2 * (config.attention_window_size as u64 + 1) * hd * 4;
        assert!(extra > window && extra < matrices / 40, "{extra} B besides the matrices' inputs");
        assert_eq!(decode.single_workgroup_vocab_passes, 1);
        // Attention's q·k loop over the head's dimensions, then its block of 16 values; the
        // combine (once 3 × 129 serial loads) splits the blocks among 16 groups of threads.
        assert_eq!(decode.attention_serial_trips as u64, hd + 16);
        let blocks = key_blocks(config.attention_window_size);
        assert!(2 + blocks.div_ceil(16) <= 16, "the combine's own chain");
        let sampled = engine.plan_cost(1, &top_p);
        // The maximum, the total mass, 40 bisection steps and the draw.
        assert_eq!(sampled.single_workgroup_vocab_passes, 1 + 1 + 40 + 1);
        assert_eq!(sampled.activation_bytes - decode.activation_bytes, 42 * v * 4);
        // The analytic model reproduces the step the H200 measured (BENCHMARKS.md: 10.2 ms int8,
        // 10.5 ms int4), and finds the H100 no faster: the step is latency, not bandwidth.
        let h200 = DeviceModel::named("h200").unwrap();
        let predicted = engine.predict(1, &greedy, &h200);
        assert!((8.2e-3..12.5e-3).contains(&predicted), "{predicted} s on the H200");
        let h100 = engine.predict(1, &greedy, &DeviceModel::named("h100").unwrap());
        assert!(h100 < predicted * 1.1, "{h100} s on the H100");
        let prefill = engine.plan_cost(CHUNK, &greedy);
        eprintln!("2B {} prefill chunk: {prefill:?}", quantization.name());
        assert_eq!(prefill.weight_bytes, engine.weight_bytes_read(CHUNK, 1));
        assert_eq!(prefill.dispatches, engine.dispatches(CHUNK));
        assert_eq!(prefill.max_serial_weight_trips, f as u32 / TILE_K);

        // v2: 16-byte loads, 10 in flight (5 per row of a team's two; the gates' 256 columns
        // fewer), down_proj's 3 tiles of x̂ the longest chain of trips; x̂ read once per
        // workgroup instead of per row.
        let v2 = Engine::new(context(), Manifest::plan(&config, quantization)).unwrap();
        let step = v2.plan_cost(1, &greedy);
        eprintln!("2B {} decode step on gemv.wgsl: {step:?}", quantization.name());
        assert_eq!((step.dispatches, step.weight_bytes), (decode.dispatches, decode.weight_bytes));
        assert_eq!(step.weight_load_bytes, 16.0);
        assert!(step.weight_loads_in_flight >= 8.0, "{}", step.weight_loads_in_flight);
        assert_eq!(step.max_serial_weight_trips, 3);
        let matrices_v2 = step.activation_bytes - extra;
        assert!(matrices_v2 < matrices / 15, "{matrices_v2} B of the matrices' inputs");
        assert_eq!(step.attention_serial_trips, decode.attention_serial_trips, "attention is unchanged");
        assert!(v2.predict(1, &greedy, &h200) < predicted / 2.0);
        assert_eq!(v2.plan_cost(CHUNK, &greedy), prefill, "prefill is unchanged");
    }
}

/// The tiny preset's step on the H200's model: measured there at 0.86 ms (BENCHMARKS.md), when
/// `matmul_short.wgsl` read its 256,000-row head 4 columns per trip; its weights stay in the cache,
/// and the one-workgroup sampler is a third of it. The head now reads a 16-byte chunk per trip,
/// for which the model predicts ≈ 0.6 ms (not measured on a GPU yet): within a factor of 2 of
/// the measurement, and no slower than it plus 40 %.
#[test]
fn the_analytic_model_reproduces_the_tiny_step_on_the_h200() {
    use rgweb::config::{Config, Preset};
    use rgweb::gpu::cost::DeviceModel;
    use rgweb::weights::format::Manifest;
    for quantization in [Quantization::Int8, Quantization::Int4] {
        let engine = Engine::new(context(), Manifest::plan(&Config::preset(Preset::Tiny), quantization)).unwrap();
        let predicted = engine.predict(1, &SamplingParams::default(), &DeviceModel::named("h200").unwrap());
        assert!((0.43e-3..1.2e-3).contains(&predicted), "{predicted} s");
    }
}

/// The profile times every dispatch of a chunk once, on the GPU where it has timestamps (lavapipe
/// has), and accounts for the bytes the plan reads.
#[test]
fn the_profile_times_every_dispatch_of_a_chunk() {
    let mut engine = load_engine(context(), &tiny().int8).unwrap();
    for n in [1, 40] {
        engine.reset();
        let profile = engine.profile(&tokens(n, 256_000)).unwrap();
        assert_eq!(profile.timestamps, engine.context().device.features().contains(wgpu::Features::TIMESTAMP_QUERY));
        let dispatches: usize = profile.kernels.iter().map(|k| k.dispatches).sum();
        assert_eq!(dispatches, engine.dispatches(n));
        let weight_bytes: u64 = profile.kernels.iter().map(|k| k.weight_bytes).sum();
        assert_eq!(weight_bytes, engine.weight_bytes_read(n, 1));
        assert!(profile.kernels.iter().all(|k| k.seconds > 0.0), "{:?}", profile.kernels);
        let names: Vec<&str> = profile.kernels.iter().map(|k| k.kernel).collect();
        assert!(names.contains(&"sample") && names.contains(&"embed"), "{names:?}");
    }
    // It garbles the state; a reset makes the engine answer as a new one.
    engine.reset();
    let mut fresh = load_engine(context(), &tiny().int8).unwrap();
    assert_eq!(block_on(engine.logits(&[2, 17])).unwrap(), block_on(fresh.logits(&[2, 17])).unwrap());
}

#[test]
fn device_errors_become_errors_not_panics() {
    let ctx = context();
    assert!(ctx.check().is_ok());
    let _too_big = ctx.storage("too big", 1 << 60);
    let error = ctx.check().unwrap_err().to_string();
    assert!(error.starts_with("gpu: ") && error.to_lowercase().contains("buffer"), "{error}");
}

#[test]
fn rg_logits_on_the_gpu_match_the_cpu() {
    let read = |backend: &str| {
        let out = tempfile::NamedTempFile::new().unwrap();
        let tokens = "2,17,99,1000,255999,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20";
        ok(&["logits", s(&tiny().int8), "--tokens", tokens, "--backend", backend, "--out", s(out.path())]);
        let bytes = std::fs::read(out.path()).unwrap();
        let header = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        bytes[header..].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect::<Vec<f32>>()
    };
    let (gpu, cpu) = (read("gpu"), read("cpu"));
    assert_eq!(gpu.len(), 21 * 256_000);
    assert!(max_diff(&gpu, &cpu) <= TOLERANCE, "max |Δ| {}", max_diff(&gpu, &cpu));
}

/// Modules made without naga's loop-bounding counter (`RG_SHADER_CHECKS=trusted`) compute the
/// same logits, bit for bit, in both formats and across the window (prefill and decode kernels);
/// a value other than checked or trusted is one clear error.
#[test]
fn trusted_shader_modules_give_the_same_logits() {
    let logits = |model: &Path, checks: &str| {
        let out = tempfile::NamedTempFile::new().unwrap();
        let tokens: Vec<String> = tokens(40, 256_000).iter().map(u32::to_string).collect();
        let args = ["logits", s(model), "--tokens", &tokens.join(","), "--backend", "gpu", "--out", s(out.path())];
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_rg"))
            .args(args)
            .env("RG_SHADER_CHECKS", checks)
            .output()
            .unwrap();
        assert!(run.status.success(), "{checks}: {}", String::from_utf8_lossy(&run.stderr));
        std::fs::read(out.path()).unwrap()
    };
    for model in [&tiny().int8, &tiny().int4] {
        assert_eq!(logits(model, "trusted"), logits(model, "checked"));
    }
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_rg"))
        .args(["logits", s(&tiny().int8), "--tokens", "2", "--backend", "gpu", "--out", "/dev/null"])
        .env("RG_SHADER_CHECKS", "fast")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && stderr.contains("RG_SHADER_CHECKS is checked or trusted"), "{stderr}");
}

#[test]
fn rg_bench_reports_speed_and_sizes() {
    let out = ok(&["bench", s(&tiny().int8), "--prompt-tokens", "20,300", "--gen-tokens", "4,8", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let prefill = report["prefill"].as_array().unwrap();
    assert_eq!(prefill.iter().map(|p| p["prompt_tokens"].as_u64().unwrap()).collect::<Vec<_>>(), [20, 300]);
    for p in prefill {
        assert!(p["tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(p["time_to_first_token_s"].as_f64().unwrap() > 0.0);
    }
    let decode = report["decode"].as_array().unwrap();
    assert_eq!(decode.iter().map(|d| d["gen_tokens"].as_u64().unwrap()).collect::<Vec<_>>(), [4, 8]);
    for d in decode {
        assert!(d["streamed_tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(d["batched_tokens_per_s"].as_f64().unwrap() > 0.0);
    }
    let weight_bytes = 17_762_560.0;
    assert_eq!(report["weight_bytes"], weight_bytes as u64);
    // A decoded token reads every weight once (the embedding twice: one row, then the whole
    // table for the logits).
    let per_decoded = report["weight_bytes_per_decoded_token"].as_f64().unwrap();
    assert!((per_decoded / weight_bytes - 1.0).abs() < 0.01, "{per_decoded}");
    // A prompt token of a long prompt: its share of the body read once per tile, plus its share
    // of the head, read once for the last token.
    let per_prompt = prefill[1]["weight_bytes_per_prompt_token"].as_f64().unwrap();
    assert!(per_prompt < per_decoded / 16.0, "{per_prompt}");
    let config = rgweb::config::Config::preset(rgweb::config::Preset::Tiny);
    let engine = load_engine(context(), &tiny().int8).unwrap();
    assert_eq!(report["state_bytes"], engine.state_bytes());
    assert_eq!(engine.state_bytes(), expected_state_bytes(&config));
    assert_eq!(report["dispatches_per_token"], engine.dispatches(1));
    assert_eq!(report["sampling"]["temperature"], 0.0, "greedy unless asked");
    // The plan's counts, under the key names other tools read.
    let out = ok(&["bench", s(&tiny().int8), "--plan-only", "--json"]);
    let plans: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = [
        "activation_bytes",
        "attention_serial_trips",
        "dispatches",
        "max_serial_weight_trips",
        "single_workgroup_vocab_passes",
        "weight_bytes",
        "weight_load_bytes",
        "weight_loads_in_flight",
    ];
    for plan in ["decode_plan", "decode_plan_top_p", "prefill_plan"] {
        // Sorted: serde_json keeps insertion order when a dependency asks it to (llguidance does).
        let mut fields: Vec<&str> = plans[plan].as_object().unwrap().keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(fields, keys, "{plan}");
    }
    // Floats parsed back from the JSON may differ in the last bit.
    let counted = serde_json::to_value(engine.plan_cost(1, &SamplingParams::default())).unwrap();
    for key in keys {
        let (printed, counted) = (&plans["decode_plan"][key], &counted[key]);
        match (printed.as_u64(), counted.as_u64()) {
            (Some(printed), Some(counted)) => assert_eq!(printed, counted, "{key}"),
            _ => assert!((printed.as_f64().unwrap() - counted.as_f64().unwrap()).abs() < 1e-9, "{key}"),
        }
    }
    assert_eq!(plans["decode_plan"]["weight_bytes"], engine.weight_bytes_read(1, 1));
    assert_eq!(plans["prefill_plan"]["dispatches"], engine.dispatches(rgweb::gpu::kernels::CHUNK));
    assert!(plans["decode_plan_top_p"]["single_workgroup_vocab_passes"].as_u64() > Some(1));
    assert_eq!(report["plan"]["decode_plan"]["weight_bytes"], plans["decode_plan"]["weight_bytes"]);
    assert_eq!(report["plan"]["prefill_plan"]["dispatches"], plans["prefill_plan"]["dispatches"]);
    let out = ok(&["bench", s(&tiny().int8), "--plan-only", "--json", "--model", "m2"]);
    let predicted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(predicted["prediction"]["device"], "m2");
    assert!(predicted["prediction"]["decode_ms"].as_f64() > Some(0.0));
    let unknown = common::rg(&["bench", s(&tiny().int8), "--plan-only", "--model", "x1"]);
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success() && stderr.contains("one of h200, h100, m2"), "{stderr}");
    let sampled =
        ["bench", s(&tiny().int8), "--prompt-tokens", "8", "--gen-tokens", "4", "--json", "--temperature", "0.8"];
    let out = ok(&[&sampled[..], &["--top-k", "40", "--top-p", "0.9"]].concat());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sampling"]["top_k"], 40);
    assert!(report["decode"][0]["streamed_tokens_per_s"].as_f64().unwrap() > 0.0);
}

/// The state a conversation carries, from the config (griffin.md §6): the step block; per
/// recurrent layer the conv's last K − 1 inputs and h, per attention layer the key and value
/// rings of `ring_slots(W)` positions, all f32.
fn expected_state_bytes(config: &rgweb::config::Config) -> u64 {
    let step = std::mem::size_of::<rgweb::gpu::kernels::StepState>();
    let layers: usize = (0..config.num_hidden_layers)
        .map(|layer| match config.block_type(layer) {
            rgweb::config::BlockType::Recurrent => (config.conv1d_width - 1 + 1) * config.lru_width(),
            rgweb::config::BlockType::Attention => {
                2 * rgweb::gpu::kernels::ring_slots(config.attention_window_size) * config.head_dim()
            }
        })
        .sum();
    (step + 4 * layers) as u64
}
