//! The trained demo model (`models/demo-kjv/`, made by `tools/train_demo/train.py`): the first
//! model here with real, peaky distributions. Its compact checkpoint expands, converts and loads;
//! the CPU reference matches the official implementation's logits on it
//! (`tests/golden/trained/`, from `tools/train_demo/golden.py`); `rg perplexity` on held-out text
//! agrees with the official one, shows that the model learned, that int8 costs under 2 %, and that
//! the GPU equals the CPU.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{ok, s, tokenizer_path};
use rgweb::model::perplexity::log_sum_exp;
use rgweb::model::{Model, State};
use rgweb::weights::load::load_model;
use rgweb::weights::safetensors::header_of;

/// The held-out tokens `rg perplexity` scores here: `golden.py` scored the same prefix.
const PREFIX: usize = 512;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The demo expanded and converted once: f32, int8 and int4.
struct Demo {
    _dir: tempfile::TempDir,
    hf: PathBuf,
    f32: PathBuf,
    int8: PathBuf,
    int4: PathBuf,
}

fn demo() -> &'static Demo {
    static DEMO: OnceLock<Demo> = OnceLock::new();
    DEMO.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let [hf, f32, int8, int4] = ["hf", "f32", "int8", "int4"].map(|name| dir.path().join(name));
        ok(&["expand", s(&root().join("models/demo-kjv")), s(&hf)]);
        for (out, quant) in [(&f32, "f32"), (&int8, "int8"), (&int4, "int4")] {
            ok(&["convert", s(&hf), s(out), "--quant", quant]);
        }
        Demo { _dir: dir, hf, f32, int8, int4 }
    })
}

/// The f32 conversion's score, shared by the tests that compare with it.
fn f32_score() -> Score {
    static SCORE: OnceLock<Score> = OnceLock::new();
    *SCORE.get_or_init(|| perplexity(&demo().f32, "cpu"))
}

fn meta() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("tests/golden/trained/meta.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[derive(Debug, Clone, Copy)]
struct Score {
    tokens: usize,
    nll: f64,
}

fn perplexity(model: &Path, backend: &str) -> Score {
    let held_out = root().join("tests/data/demo-heldout.txt");
    let out = ok(&[
        "perplexity",
        s(model),
        "--tokenizer",
        s(&tokenizer_path()),
        "--file",
        s(&held_out),
        "--backend",
        backend,
        "--max-tokens",
        &PREFIX.to_string(),
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let score = Score { tokens: json["tokens"].as_u64().unwrap() as usize, nll: json["nll"].as_f64().unwrap() };
    assert!((json["perplexity"].as_f64().unwrap() - score.nll.exp()).abs() < 1e-9 * score.nll.exp());
    eprintln!("{backend} {}: {score:?}, perplexity {:.3}", model.display(), score.nll.exp());
    score
}

/// A tensor of `tests/golden/trained/expected.safetensors` as its 4-byte little-endian words.
fn golden_words(name: &str) -> Vec<[u8; 4]> {
    let bytes = std::fs::read(root().join("tests/golden/trained/expected.safetensors")).unwrap();
    let entry = header_of(&bytes).unwrap().entries.into_iter().find(|e| e.name == name).unwrap();
    bytes[entry.start as usize..entry.end as usize].chunks_exact(4).map(|b| b.try_into().unwrap()).collect()
}

fn golden_f32s(name: &str) -> Vec<f32> {
    golden_words(name).into_iter().map(f32::from_le_bytes).collect()
}

/// Non-negative I32 values (ids).
fn golden_ids(name: &str) -> Vec<u32> {
    golden_words(name).into_iter().map(u32::from_le_bytes).collect()
}

#[test]
fn the_compact_checkpoint_expands_to_the_full_table_with_zero_rows() {
    let bytes = std::fs::read(demo().hf.join("model.safetensors")).unwrap();
    let header = header_of(&bytes).unwrap();
    let table = header.entries.iter().find(|e| e.name == "model.embed_tokens.weight").unwrap();
    assert_eq!(table.shape, [256_000, 128]);
    let row_bytes = 128 * 2;
    let rows = &bytes[table.start as usize..table.end as usize];
    let nonzero = rows.chunks_exact(row_bytes).filter(|row| row.iter().any(|&b| b != 0)).count();
    let compact = std::fs::read(root().join("models/demo-kjv/weights.safetensors")).unwrap();
    let ids = header_of(&compact).unwrap().entries.into_iter().find(|e| e.name == "model.embed_tokens.ids").unwrap();
    assert_eq!(nonzero, ids.shape[0], "one stored row per listed id, zero elsewhere");
}

#[test]
fn cpu_reference_matches_the_official_logits_of_the_trained_model() {
    let tokens = golden_ids("tokens");
    let columns: Vec<usize> = golden_ids("columns").into_iter().map(|c| c as usize).collect();
    let expected = golden_f32s("logits");
    let logsumexp = golden_f32s("logsumexp");

    let model: Model = load_model(&demo().f32).unwrap();
    let window = model.config.attention_window_size;
    assert!(tokens.len() > 2 * window, "the passage crosses the window twice");
    let vocab = model.config.vocab_size;
    let logits = model.forward(&tokens, &mut State::new(&model.config)).unwrap();

    let mut worst = 0.0f32;
    let mut worst_lse = 0.0f64;
    for (t, row) in logits.chunks_exact(vocab).enumerate() {
        for (k, &c) in columns.iter().enumerate() {
            worst = worst.max((row[c] - expected[t * columns.len() + k]).abs());
        }
        worst_lse = worst_lse.max((log_sum_exp(row) - logsumexp[t] as f64).abs());
    }
    eprintln!("max |Δ logit| {worst:.2e} over {} columns; max |Δ logsumexp| {worst_lse:.2e}", columns.len());
    assert!(worst <= 2e-3, "logits differ from the official ones by {worst}");
    assert!(worst_lse <= 2e-3, "the full distribution's normaliser differs by {worst_lse}");
    // Peaky, unlike a random model's: the official top token carries real mass somewhere.
    let peak = logits
        .chunks_exact(vocab)
        .zip(&logsumexp)
        .map(|(row, &lse)| (row.iter().copied().fold(f32::NEG_INFINITY, f32::max) - lse).exp())
        .fold(0.0f32, f32::max);
    assert!(peak > 0.9, "the most confident prediction has p = {peak}");
}

#[test]
fn held_out_perplexity_matches_the_official_and_halves_the_unigram() {
    let meta = meta();
    let official = &meta["heldout_prefix"];
    let cpu = f32_score();
    assert_eq!(cpu.tokens, PREFIX);
    assert!(
        (cpu.nll - official["nll"].as_f64().unwrap()).abs() < 1e-3,
        "rg perplexity {} vs the official {}",
        cpu.nll,
        official["nll"]
    );
    let unigram = official["unigram_nll"].as_f64().unwrap();
    assert!(
        cpu.nll < unigram - 2f64.ln(),
        "perplexity {} is not below half the unigram {}",
        cpu.nll.exp(),
        unigram.exp()
    );
}

#[test]
fn int8_costs_under_2_percent_of_perplexity_and_the_gpu_equals_the_cpu() {
    let f32 = f32_score();
    let int8 = perplexity(&demo().int8, "cpu");
    let ratio = (int8.nll - f32.nll).exp();
    eprintln!("int8 / f32 perplexity: {ratio:.4}");
    assert!(ratio < 1.02, "int8 perplexity is {ratio}× the f32 one");
    let gpu = perplexity(&demo().int8, "gpu");
    assert_eq!(gpu.tokens, int8.tokens);
    assert!((gpu.nll - int8.nll).abs() < 1e-3, "GPU {} vs CPU {}", gpu.nll, int8.nll);
}

#[test]
fn int4_gpu_equals_int4_cpu() {
    let cpu = perplexity(&demo().int4, "cpu");
    let gpu = perplexity(&demo().int4, "gpu");
    eprintln!("int4 / f32 perplexity: {:.4}", (cpu.nll - f32_score().nll).exp());
    assert!((gpu.nll - cpu.nll).abs() < 1e-3, "GPU {} vs CPU {}", gpu.nll, cpu.nll);
}

#[test]
fn quantized_models_pick_the_f32_top_token() {
    let tokens = golden_ids("tokens");
    let top1 = |dir: &Path| {
        let model: Model = load_model(dir).unwrap();
        let logits = model.forward(&tokens, &mut State::new(&model.config)).unwrap();
        logits
            .chunks_exact(model.config.vocab_size)
            .map(|row| (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap())
            .collect::<Vec<_>>()
    };
    let reference = top1(&demo().f32);
    for (name, dir, bound) in [("int8", &demo().int8, 0.97), ("int4", &demo().int4, 0.85)] {
        let same = top1(dir).iter().zip(&reference).filter(|(a, b)| a == b).count();
        let share = same as f64 / reference.len() as f64;
        eprintln!("{name}: top-1 equals f32 at {same} of {} positions", reference.len());
        assert!(share >= bound, "{name} agrees with f32 at {share:.3} of the positions");
    }
}
