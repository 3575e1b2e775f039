//! The WebGPU engine against the CPU reference on the same int8 models, through wgpu on a real
//! Vulkan driver (Mesa's lavapipe in CI, a GPU where there is one).

use std::path::{Path, PathBuf};

use pollster::block_on;
use rgweb::chat::SamplingParams;
use rgweb::gpu::engine::{load_engine, Engine};
use rgweb::gpu::GpuContext;
use rgweb::model::{Model, State};
use rgweb::weights::convert::convert;
use rgweb::weights::format::Quantization;
use rgweb::weights::load::load_model;

const TOLERANCE: f32 = 2e-3;

fn context() -> GpuContext {
    block_on(GpuContext::new())
        .expect("a GPU adapter: install Mesa's lavapipe (apt-get install mesa-vulkan-drivers) to run on the CPU")
}

/// An official golden checkpoint converted to int8, loaded both on the GPU and on the CPU.
fn int8_pair(case: &str) -> (Engine, Model, tempfile::TempDir) {
    let source: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(case);
    let dir = tempfile::tempdir().unwrap();
    convert(&source, dir.path(), Quantization::Int8).unwrap();
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

fn check_logits(case: &str, n: usize) {
    let (mut engine, model, _dir) = int8_pair(case);
    let vocab = model.config.vocab_size;
    let ids = tokens(n, vocab);
    let cpu = model.forward(&ids, &mut State::new(&model.config)).unwrap();

    let gpu = block_on(engine.logits(&ids)).unwrap();
    let prefill = max_diff(&gpu, &cpu);

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
    eprintln!("{case}: GPU vs CPU max |Δ| prefill {prefill:.2e}, step {step:.2e}, prefill+step {then:.2e}");
    assert!(prefill <= TOLERANCE && step <= TOLERANCE && then <= TOLERANCE, "{case}: {prefill} {step} {then}");
}

#[test]
fn gpu_matches_cpu_over_six_windows() {
    check_logits("window_long", 48);
}

#[test]
fn gpu_matches_cpu_with_lru_width_above_hidden_size() {
    check_logits("lru_wide", 40);
}

#[test]
fn gpu_matches_cpu_with_head_dim_64() {
    check_logits("head64", 40);
}
