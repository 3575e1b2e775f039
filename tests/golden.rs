//! The CPU reference against logits produced by Google DeepMind's official `recurrentgemma`
//! (JAX, float32) on small random-weight models (`tests/golden/make.py`). Each checkpoint goes
//! through the converter (`--quant f32`) and the web-format loader first.

use std::path::{Path, PathBuf};

use rgweb::model::{Model, State};
use rgweb::weights::convert::convert;
use rgweb::weights::format::Quantization;
use rgweb::weights::load::load_model;
use rgweb::weights::safetensors::header_of;

const TOLERANCE: f32 = 2e-3;

struct Golden {
    tokens: Vec<u32>,
    /// Official full-sequence forward, `[T, V]`.
    logits: Vec<f32>,
    /// Official one-token-at-a-time decode through its cache, `[T, V]`.
    logits_decode: Vec<f32>,
}

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(case)
}

fn read_expected(case: &str) -> Golden {
    let bytes = std::fs::read(case_dir(case).join("expected.safetensors")).unwrap();
    let header = header_of(&bytes).unwrap();
    let raw = |name: &str| {
        let e = header.entries.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("{name} in {case}"));
        bytes[e.start as usize..e.end as usize].chunks_exact(4).map(|b| b.try_into().unwrap()).collect::<Vec<[u8; 4]>>()
    };
    Golden {
        tokens: raw("tokens").into_iter().map(|b| i32::from_le_bytes(b) as u32).collect(),
        logits: raw("logits").into_iter().map(f32::from_le_bytes).collect(),
        logits_decode: raw("logits_decode").into_iter().map(f32::from_le_bytes).collect(),
    }
}

fn converted_model(case: &str) -> (Model, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    convert(&case_dir(case), out.path(), Quantization::F32).unwrap();
    (load_model(out.path()).unwrap(), out)
}

fn assert_close(actual: &[f32], expected: &[f32], vocab: usize, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    let (worst, index) = actual
        .iter()
        .zip(expected)
        .enumerate()
        .map(|(i, (a, e))| ((a - e).abs(), i))
        .fold((0.0f32, 0), |best, (d, i)| if d > best.0 || d.is_nan() { (d, i) } else { best });
    eprintln!("{what}: max |Δ| = {worst:.2e}");
    assert!(
        worst <= TOLERANCE,
        "{what}: max |Δ| = {worst} at position {} token logit {}",
        index / vocab,
        index % vocab
    );
}

fn check_case(case: &str) {
    let golden = read_expected(case);
    let (model, _dir) = converted_model(case);
    let vocab = model.config.vocab_size;
    let n = golden.tokens.len();
    assert!(n > 2 * model.config.attention_window_size, "{case} must span several windows");

    let mut state = State::new(&model.config);
    let prefill = model.forward(&golden.tokens, &mut state).unwrap();
    assert_close(&prefill, &golden.logits, vocab, &format!("{case} prefill"));

    let mut state = State::new(&model.config);
    let stepped: Vec<f32> = golden.tokens.iter().flat_map(|&t| model.step(t, &mut state).unwrap()).collect();
    assert_close(&stepped, &golden.logits_decode, vocab, &format!("{case} step by step"));

    // Prefill part of the sequence, then decode the rest from the saved state.
    let split = n / 2 + 1;
    let mut state = State::new(&model.config);
    let mut mixed = model.forward(&golden.tokens[..split], &mut state).unwrap();
    for &t in &golden.tokens[split..] {
        mixed.extend(model.step(t, &mut state).unwrap());
    }
    assert_close(&mixed, &golden.logits, vocab, &format!("{case} prefill then step"));

    // Chunked prefill of uneven chunks, each continuing from the state of the last.
    let mut state = State::new(&model.config);
    let mut chunked = Vec::new();
    for chunk in golden.tokens.chunks(model.config.attention_window_size + 3) {
        chunked.extend(model.forward(chunk, &mut state).unwrap());
    }
    assert_close(&chunked, &golden.logits, vocab, &format!("{case} chunked prefill"));
}

#[test]
fn window_long_sequence_six_windows_long() {
    check_case("window_long");
}

#[test]
fn lru_width_differs_from_hidden_size() {
    check_case("lru_wide");
}

#[test]
fn head_dim_64() {
    check_case("head64");
}
