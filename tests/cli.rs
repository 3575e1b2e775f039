//! The `rg` binary end to end: random checkpoint → convert → logits / generate, and a clear
//! one-line error (never a panic) for every kind of bad input.

mod common;

use std::path::Path;

use common::{fails_with, logits_fail_with, ok, s, tensor_range, tiny};

use rgweb::weights::safetensors::{header_of, write_header, Dtype};

/// Documented bound for int8 per-channel quantization on the tiny random model: the largest
/// logit difference from the f32 model, relative to the largest |logit| (see README).
const INT8_MAX_RELATIVE_LOGIT_ERROR: f32 = 0.05;

fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(header.contains("'descr': '<f4'") && (10 + len).is_multiple_of(64), "{header}");
    let shape_text = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape = shape_text.split(',').filter(|t| !t.trim().is_empty()).map(|t| t.trim().parse().unwrap()).collect();
    let data = bytes[10 + len..].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    (shape, data)
}

fn logits(model: &Path, tokens: &str) -> (Vec<usize>, Vec<f32>) {
    let out = tempfile::NamedTempFile::new().unwrap();
    ok(&["logits", s(model), "--tokens", tokens, "--out", s(out.path())]);
    read_npy(out.path())
}

/// 40 tokens: 2.5 attention windows of the tiny preset.
const TOKENS: &str = "2,9,77,1000,255999,3,5,8,13,21,34,55,89,144,233,377,610,987,1597,2584,4181,6765,10946,17711,28657,46368,75025,121393,196418,7,1,0,42,4242,424,24,2424,240,4,2";

#[test]
fn f32_conversion_is_exact() {
    let (shape, original) = logits(&tiny().hf, TOKENS);
    assert_eq!(shape, [40, 256_000]);
    assert!(original.iter().all(|v| v.is_finite()));
    let (_, converted) = logits(&tiny().f32, TOKENS);
    assert_eq!(original, converted, "f32 web format must reproduce the checkpoint bit for bit");
}

#[test]
fn int8_conversion_stays_within_its_bound() {
    let (_, reference) = logits(&tiny().f32, TOKENS);
    let (_, quantized) = logits(&tiny().int8, TOKENS);
    let peak = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = reference.iter().zip(&quantized).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("int8 vs f32: max |Δlogit| = {worst}, max |logit| = {peak}, relative {}", worst / peak);
    assert!(worst / peak <= INT8_MAX_RELATIVE_LOGIT_ERROR, "int8 error {worst} vs peak {peak}");
    assert!(worst > 0.0, "int8 must actually quantize");
    let size = |dir: &Path| std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum::<u64>();
    assert!(size(&tiny().int8) * 3 < size(&tiny().f32), "int8 is about a quarter of f32");
}

#[test]
fn generate_streams_text_deterministically() {
    let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor/gemma-tokenizer/tokenizer.json");
    assert!(tokenizer.exists(), "run scripts/fetch-tokenizer.sh first ({})", tokenizer.display());
    let args = [
        "generate",
        s(&tiny().int8),
        "--prompt",
        "Hello",
        "--max-tokens",
        "12",
        "--tokenizer",
        s(&tokenizer),
        "--print-ids",
    ];
    let first = ok(&args);
    let second = ok(&args);
    assert_eq!(first.stdout, second.stdout);
    let ids_line = String::from_utf8(first.stderr).unwrap();
    let ids: Vec<u32> = ids_line.trim().strip_prefix("ids: ").unwrap().split(',').map(|t| t.parse().unwrap()).collect();
    assert_eq!(ids.len(), 12, "random weights rarely emit <eos> within 12 tokens: {ids:?}");
    let sampled = ok(&[&args[..], &["--temperature", "1.0", "--top-p", "0.9", "--seed", "3"]].concat());
    let sampled_ids = String::from_utf8(sampled.stderr).unwrap();
    assert_eq!(sampled_ids.split(',').count(), 12, "{sampled_ids}");
    assert_ne!(sampled_ids, ids_line, "sampling at T = 1 over a random model's flat distribution is not greedy");
    assert!(sampled.stdout.len() > 1, "the sampled text is printed, not just a newline");
}

#[test]
fn bad_command_lines_fail_clearly() {
    let tiny = tiny();
    fails_with(&["logits", s(&tiny.f32), "--tokens", "2,256000", "--out", "/tmp/x.npy"], "out of range");
    fails_with(
        &["logits", s(&tiny.f32), "--tokens", "2", "--backend", "gpu", "--out", "/tmp/x.npy"],
        "runs int8 and int4 models",
    );
    fails_with(&["logits", "/nonexistent/model", "--tokens", "2", "--out", "/tmp/x.npy"], "neither manifest.json");
    fails_with(&["convert", "/nonexistent/hf", "/tmp/rg-out"], "No such file");
    fails_with(&["generate", s(&tiny.f32), "--prompt", "hi", "--tokenizer", "/nonexistent.json"], "nonexistent.json");
}

/// The penalty and bias flags: every bad value is one `error:` line naming the field or flag,
/// checked before anything is generated; good ones change the greedy reply.
#[test]
fn sampling_penalties_and_logit_bias_on_the_command_line() {
    let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor/gemma-tokenizer/tokenizer.json");
    let base = ["generate", s(&tiny().f32), "--prompt", "The sky is", "--tokenizer", s(&tokenizer), "--backend", "cpu"];
    let args = |extra: &[&str]| -> Vec<String> { base.iter().chain(extra).map(|a| a.to_string()).collect() };
    for (extra, message) in [
        (&["--frequency-penalty", "3"][..], "frequency_penalty must be in [-2, 2], got 3"),
        (&["--presence-penalty=-2.5"][..], "presence_penalty must be in [-2, 2], got -2.5"),
        (&["--presence-penalty", "NaN"][..], "presence_penalty"),
        (&["--repetition-penalty", "0"][..], "repetition_penalty must be a finite number > 0, got 0"),
        (&["--logit-bias", "5"][..], "--logit-bias takes ID=BIAS"),
        (&["--logit-bias", "x=1"][..], "--logit-bias takes ID=BIAS"),
        (&["--logit-bias", "5=101"][..], "logit_bias of token 5 must be in [-100, 100], got 101"),
        (&["--logit-bias", "5=1", "--logit-bias", "5=-1"][..], "logit_bias names token 5 twice"),
        (&["--logit-bias", "256000=1"][..], "logit_bias token id 256000 is out of range: vocab size is 256000"),
    ] {
        let args = args(extra);
        fails_with(&args.iter().map(String::as_str).collect::<Vec<_>>(), message);
    }

    let ids = |extra: &[&str]| -> Vec<String> {
        let args = args(&[&["--max-tokens", "24", "--print-ids"][..], extra].concat());
        let out = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let line = String::from_utf8(out.stderr).unwrap();
        line.trim().strip_prefix("ids: ").unwrap().split(',').map(str::to_string).collect()
    };
    let greedy = ids(&[]);
    let penalised = ids(&["--frequency-penalty", "-0.5", "--presence-penalty", "1.5", "--repetition-penalty", "1.3"]);
    assert_ne!(penalised, greedy, "the random model's greedy reply repeats itself; penalties change it");
    let banned = ids(&["--logit-bias", &format!("{}=-100", greedy[0])]);
    assert!(!banned.contains(&greedy[0]), "{} is banned: {banned:?}", greedy[0]);
}

/// A copy of a web-format folder with one shard's bytes changed by `edit`.
fn damaged_copy(edit: impl Fn(&mut Vec<u8>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&tiny().int8).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let shard = dir.path().join("model-00000.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    edit(&mut bytes);
    std::fs::write(&shard, bytes).unwrap();
    dir
}

#[test]
fn damaged_web_shards_are_detected() {
    let truncated = damaged_copy(|b| b.truncate(b.len() - 100));
    fails_with(&["logits", s(truncated.path()), "--tokens", "2", "--out", "/tmp/x.npy"], "truncated, got");
    let flipped = damaged_copy(|b| {
        let last = b.len() - 1;
        b[last] ^= 0x55;
    });
    fails_with(&["logits", s(flipped.path()), "--tokens", "2", "--out", "/tmp/x.npy"], "sha256 mismatch");
    let longer = damaged_copy(|b| b.push(0));
    fails_with(&["logits", s(longer.path()), "--tokens", "2", "--out", "/tmp/x.npy"], "longer than");
    let renamed = damaged_copy(|b| {
        let at = b.windows(5).position(|w| w == b"model").unwrap();
        b[at] = b'M';
    });
    fails_with(&["logits", s(renamed.path()), "--tokens", "2", "--out", "/tmp/x.npy"], "does not match the manifest");
    let manifest = damaged_copy(|_| {});
    std::fs::write(manifest.path().join("manifest.json"), "{\"format\": 1").unwrap();
    fails_with(&["logits", s(manifest.path()), "--tokens", "2", "--out", "/tmp/x.npy"], "manifest.json");
}

/// A copy of the tiny int8 web-format folder with one shard's bytes edited by `edit_shard` (its
/// sha256 in the manifest updated to match, as a hostile host would) and then the manifest's
/// JSON edited by `edit_manifest`.
fn rehashed_copy(
    edit_shard: impl Fn(&mut Vec<u8>),
    edit_manifest: impl Fn(&mut serde_json::Value),
) -> tempfile::TempDir {
    use sha2::{Digest, Sha256};
    let dir = damaged_copy(&edit_shard);
    let bytes = std::fs::read(dir.path().join("model-00000.safetensors")).unwrap();
    let path = dir.path().join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    manifest["shards"][0]["sha256"] = rgweb::weights::stream::hex(&Sha256::digest(&bytes)).into();
    edit_manifest(&mut manifest);
    std::fs::write(&path, manifest.to_string()).unwrap();
    dir
}

#[test]
fn hostile_manifests_fail_before_anything_is_sized_or_opened() {
    let config_field = |field: &'static str, value: serde_json::Value| {
        move |m: &mut serde_json::Value| m["config"][field] = value.clone()
    };
    for (field, value, message) in [
        ("num_hidden_layers", serde_json::json!(100_000_000), "num_hidden_layers is 100000000, above"),
        ("hidden_size", serde_json::json!(1u64 << 40), "hidden_size is 1099511627776, above"),
        ("vocab_size", serde_json::json!(0), "vocab_size must be positive"),
        ("rope_theta", serde_json::json!(0.0), "rope_theta is 0, it must be a finite number > 0"),
        ("rope_theta", serde_json::json!(-10.0), "rope_theta is -10"),
        ("logits_soft_cap", serde_json::json!(0.0), "logits_soft_cap is 0"),
        ("eos_token_id", serde_json::json!(256_000), "eos_token_id 256000 is not below vocab_size"),
    ] {
        logits_fail_with(&rehashed_copy(|_| {}, config_field(field, value)), message);
    }
    // The last check is 40 billion parameters; each field alone is within its bound.
    logits_fail_with(
        &rehashed_copy(
            |_| {},
            |m| {
                m["config"]["hidden_size"] = 32768.into();
                m["config"]["vocab_size"] = 1_000_000.into();
                m["config"]["lru_width"] = 32768.into();
            },
        ),
        "parameters, above",
    );
    for name in [
        "../other/model-00000.safetensors",
        "/etc/passwd",
        "a?b.safetensors",
        "x#.safetensors",
        "https://evil.example/m.safetensors",
        "..safetensors",
    ] {
        logits_fail_with(&rehashed_copy(|_| {}, |m| m["shards"][0]["file"] = name.into()), "is not a plain file name");
    }
    for digest in ["", "ABCDEF", &"A".repeat(64), &"g".repeat(64)] {
        logits_fail_with(&rehashed_copy(|_| {}, |m| m["shards"][0]["sha256"] = digest.into()), "not 64 lower-case hex");
    }
    let huge = rehashed_copy(|_| {}, |_| {});
    std::fs::write(huge.path().join("manifest.json"), vec![b' '; 17 << 20]).unwrap();
    logits_fail_with(&huge, "larger than");
}

#[test]
fn a_correctly_hashed_shard_must_still_be_well_formed() {
    // A header length that claims more than the manifest's header (here 64 bytes more, which
    // would read into the first piece): exit 0 with zeroed pieces before, an error now.
    let longer_header = rehashed_copy(
        |b| {
            let len = u64::from_le_bytes(b[..8].try_into().unwrap()) + 64;
            b[..8].copy_from_slice(&len.to_le_bytes());
        },
        |_| {},
    );
    logits_fail_with(&longer_header, "its header claims");
    let beyond_the_shard = rehashed_copy(|b| b[..8].copy_from_slice(&(50u64 << 20).to_le_bytes()), |_| {});
    logits_fail_with(&beyond_the_shard, "its header claims");

    let scales = "model.embed_tokens.weight.scales";
    let nan_scale = rehashed_copy(
        |b| {
            let at = tensor_range(b, scales).start + 4 * 1000;
            b[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        },
        |_| {},
    );
    logits_fail_with(&nan_scale, "model.embed_tokens.weight.scales holds a non-finite value (NaN) at element 1000");
    let infinite_norm = rehashed_copy(
        |b| {
            let at = tensor_range(b, "model.final_norm.weight").end - 4;
            b[at..at + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
        },
        |_| {},
    );
    logits_fail_with(&infinite_norm, "model.final_norm.weight holds a non-finite value (inf) at element 63");
}

#[test]
fn logits_with_no_usable_value_are_an_error() {
    // Finite weights whose products overflow: 127 · 1e38 is +inf in f32, RMSNorm of it is NaN,
    // and so is every logit. Sampling must say so instead of streaming token 0. (Only the CPU:
    // WGSL may assume finite maths, and lavapipe turns this NaN into −30; the GPU sampler's
    // answer to a row with no usable logit is tested in tests/kernels.rs.)
    let overflowing = rehashed_copy(
        |b| {
            let range = tensor_range(b, "model.embed_tokens.weight.scales");
            for value in b[range].chunks_exact_mut(4) {
                value.copy_from_slice(&1e38f32.to_le_bytes());
            }
        },
        |_| {},
    );
    let tokenizer = common::tokenizer_path();
    fails_with(
        &[
            "generate",
            s(overflowing.path()),
            "--prompt",
            "Hello",
            "--max-tokens",
            "4",
            "--tokenizer",
            s(&tokenizer),
            "--backend",
            "cpu",
        ],
        "cannot sample: all 256000 logits are NaN or -inf",
    );
}

#[test]
fn the_tokenizer_must_be_the_one_the_manifest_names() {
    let dir = tempfile::tempdir().unwrap();
    let (hf, web) = (dir.path().join("hf"), dir.path().join("web"));
    std::fs::create_dir(&hf).unwrap();
    for entry in std::fs::read_dir(&tiny().hf).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), hf.join(entry.file_name())).unwrap();
    }
    std::fs::copy(common::tokenizer_path(), hf.join("tokenizer.json")).unwrap();
    ok(&["convert", s(&hf), s(&web)]);
    let generate = ["generate", s(&web), "--prompt", "Hello", "--max-tokens", "2", "--backend", "cpu"];
    ok(&generate);
    // What a static host's fallback page puts where the tokenizer should be.
    std::fs::write(web.join("tokenizer.json"), "<!doctype html><title>Not found</title>").unwrap();
    fails_with(&generate, "tokenizer.json is 39 bytes, the manifest says");
    let mut same_size = std::fs::read(common::tokenizer_path()).unwrap();
    same_size[100] ^= 1;
    std::fs::write(web.join("tokenizer.json"), same_size).unwrap();
    fails_with(&generate, "tokenizer.json: sha256 mismatch");
}

type TensorEdit = dyn Fn(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>);

/// A copy of a small official-golden HF checkpoint whose tensors were changed by `edit`.
fn edited_checkpoint(edit: &TensorEdit) -> tempfile::TempDir {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/window_long");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(source.join("config.json"), dir.path().join("config.json")).unwrap();
    let bytes = std::fs::read(source.join("model.safetensors")).unwrap();
    let header = header_of(&bytes).unwrap();
    let mut tensors: Vec<_> = header
        .entries
        .iter()
        .map(|e| (e.name.clone(), e.dtype, e.shape.clone(), bytes[e.start as usize..e.end as usize].to_vec()))
        .collect();
    edit(&mut tensors);
    let layout: Vec<_> = tensors.iter().map(|(n, d, s, _)| (n.clone(), *d, s.clone())).collect();
    let mut out = write_header(&layout, &Default::default());
    for (_, _, _, data) in &tensors {
        out.extend(data);
    }
    std::fs::write(dir.path().join("model.safetensors"), out).unwrap();
    dir
}

fn convert_fails_with(checkpoint: &tempfile::TempDir, message: &str) {
    let out = tempfile::tempdir().unwrap();
    fails_with(&["convert", s(checkpoint.path()), s(out.path())], message);
}

#[test]
fn malformed_checkpoints_are_rejected() {
    const NORM: &str = "model.final_norm.weight";
    convert_fails_with(
        &edited_checkpoint(&|t| t.retain(|(n, ..)| n != NORM)),
        "missing tensor model.final_norm.weight",
    );
    convert_fails_with(
        &edited_checkpoint(&|t| {
            let entry = t.iter_mut().find(|(n, ..)| n == NORM).unwrap();
            entry.2 = vec![entry.2[0] / 2, 2];
        }),
        "has shape [32, 2], expected [64]",
    );
    convert_fails_with(
        &edited_checkpoint(&|t| t.iter_mut().find(|(n, ..)| n == NORM).unwrap().1 = Dtype::I32),
        "has dtype I32",
    );
    convert_fails_with(
        &edited_checkpoint(&|t| t.push(("model.extra.weight".into(), Dtype::F32, vec![1], vec![0; 4]))),
        "unexpected tensor model.extra.weight",
    );
    convert_fails_with(
        &edited_checkpoint(&|t| {
            let entry = t.iter_mut().find(|(n, ..)| n == NORM).unwrap();
            entry.3[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        }),
        "non-finite",
    );

    let truncated = edited_checkpoint(&|_| {});
    let file = truncated.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 1]).unwrap();
    convert_fails_with(&truncated, "truncated");
    std::fs::write(&file, &bytes[..20]).unwrap();
    convert_fails_with(&truncated, "truncated inside its header");

    let bad_json = edited_checkpoint(&|_| {});
    let file = bad_json.path().join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[8] = b'[';
    std::fs::write(&file, bytes).unwrap();
    convert_fails_with(&bad_json, "bad JSON");

    let wrong_model = edited_checkpoint(&|_| {});
    let config = wrong_model.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap().replace("recurrent_gemma", "gemma2");
    std::fs::write(&config, text).unwrap();
    convert_fails_with(&wrong_model, "expected 'recurrent_gemma'");
}

#[test]
fn sharded_checkpoints_convert_like_single_files() {
    let single = edited_checkpoint(&|_| {});
    let sharded = edited_checkpoint(&|_| {});
    let bytes = std::fs::read(sharded.path().join("model.safetensors")).unwrap();
    let header = header_of(&bytes).unwrap();
    let (first, second) = header.entries.split_at(header.entries.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, entries) in [("model-00001-of-00002.safetensors", first), ("model-00002-of-00002.safetensors", second)] {
        let layout: Vec<_> = entries.iter().map(|e| (e.name.clone(), e.dtype, e.shape.clone())).collect();
        let mut out = write_header(&layout, &Default::default());
        for e in entries {
            out.extend(&bytes[e.start as usize..e.end as usize]);
            weight_map.insert(e.name.clone(), file.into());
        }
        std::fs::write(sharded.path().join(file), out).unwrap();
    }
    std::fs::remove_file(sharded.path().join("model.safetensors")).unwrap();
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(sharded.path().join("model.safetensors.index.json"), index.to_string()).unwrap();

    let tokens = "2,5,7,9,11,13,17,19,23,29,31,37";
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    ok(&["convert", s(single.path()), s(a.path()), "--quant", "f32"]);
    ok(&["convert", s(sharded.path()), s(b.path()), "--quant", "f32"]);
    assert_eq!(logits(a.path(), tokens), logits(b.path(), tokens));
}

#[test]
fn bf16_checkpoints_convert() {
    let dir = tempfile::tempdir().unwrap();
    let (hf, web) = (dir.path().join("hf"), dir.path().join("web"));
    // Same seed as the f32 tiny checkpoint: the bf16 one holds the same weights, rounded.
    ok(&["random", "--preset", "tiny", "--seed", "7", "--dtype", "bf16", s(&hf)]);
    ok(&["convert", s(&hf), s(&web), "--quant", "f32"]);
    let (_, rounded) = logits(&web, TOKENS);
    let (_, exact) = logits(&tiny().f32, TOKENS);
    let peak = exact.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = exact.iter().zip(&rounded).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst > 0.0 && worst / peak < 0.05, "bf16 weights: max |Δ| {worst} of {peak}");
}

/// Records each piece's bytes, checking they arrive in order.
#[derive(Default, PartialEq, Debug)]
struct Recorder(std::collections::BTreeMap<String, Vec<u8>>);

impl rgweb::weights::stream::PieceSink for Recorder {
    fn piece_bytes(&mut self, piece: &rgweb::weights::format::Piece, offset: u64, bytes: &[u8]) -> rgweb::Result<()> {
        let buffer = self.0.entry(piece.name.clone()).or_default();
        assert_eq!(buffer.len() as u64, offset, "{} bytes out of order", piece.name);
        buffer.extend_from_slice(bytes);
        Ok(())
    }
}

#[test]
fn shard_parser_gives_the_same_pieces_for_any_chunking() {
    use rgweb::weights::load::read_manifest;
    use rgweb::weights::stream::ShardParser;
    let dir = &tiny().int8;
    let manifest = read_manifest(dir).unwrap();
    let last = manifest.shards.len() - 1;
    let mut results = Vec::new();
    for shard in [0, last] {
        let bytes = std::fs::read(dir.join(&manifest.shards[shard].file)).unwrap();
        for chunk in [1usize, 7, 8, 4096, 1 << 20, bytes.len()] {
            let mut recorder = Recorder::default();
            let mut parser = ShardParser::new(&manifest, shard);
            // Byte-by-byte through the header only; the data would take too long in a debug build.
            let split = if chunk == 1 { 4096 } else { bytes.len() };
            for piece in bytes[..split].chunks(chunk).chain(bytes[split..].chunks(1 << 16)) {
                parser.push(piece, &mut recorder).unwrap();
            }
            parser.finish().unwrap();
            let expected: u64 = manifest.shard_pieces(shard).map(|p| p.bytes).sum();
            assert_eq!(recorder.0.values().map(|b| b.len() as u64).sum::<u64>(), expected);
            results.push((shard, recorder));
        }
    }
    for pair in results.windows(2).filter(|w| w[0].0 == w[1].0) {
        assert_eq!(pair[0].1, pair[1].1, "chunking changed shard {}", pair[0].0);
    }
}

#[test]
fn chat_keeps_the_state_size_while_the_conversation_grows() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let tokenizer = common::tokenizer_path();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rg"))
        .args(["chat", s(&tiny().int8), "--tokenizer", s(&tokenizer), "--max-tokens", "5", "--backend", "cpu"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Hello there\nTell me more\n/regenerate\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats: Vec<Vec<u64>> = String::from_utf8(out.stderr)
        .unwrap()
        .lines()
        .map(|line| line.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect())
        .collect();
    // [prefilled, replied, fed again as text, conversation, state] per turn. A turn fed again
    // holds its prompt and its reply's text (`fed again` tokens), else its prompt and reply.
    assert_eq!(stats.len(), 3, "{stats:?}");
    let second = if stats[1][2] > 0 { stats[1][2] } else { stats[1][0] + stats[1][1] };
    assert_eq!(stats[1][3], stats[0][3] + second, "the second turn continues the first: {stats:?}");
    assert_eq!(stats[2], stats[1], "regenerate replays the second turn from the same state");
    assert!(stats.iter().all(|turn| turn[4] == 12_288), "the state stays {} bytes", stats[0][4]);
}

#[test]
fn perplexity_of_nothing_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (empty, text) = (dir.path().join("empty.txt"), dir.path().join("text.txt"));
    std::fs::write(&empty, "").unwrap();
    std::fs::write(&text, "In the beginning").unwrap();
    let tokenizer = common::tokenizer_path();
    let base = ["perplexity", s(&tiny().int8), "--tokenizer", s(&tokenizer), "--backend", "cpu", "--file"];
    fails_with(&[&base[..], &[s(&empty)]].concat(), "no token to score after BOS");
    fails_with(&[&base[..], &[s(&text), "--max-tokens", "0"]].concat(), "no token to score after BOS");
    let out = ok(&[&base[..], &[s(&text), "--json"]].concat());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["tokens"].as_u64().unwrap() >= 3 && json["perplexity"].as_f64().unwrap() > 1.0, "{json}");
}
