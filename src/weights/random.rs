//! Random-weight checkpoints with real shapes, written in the Hugging Face layout
//! (`config.json` and `model.safetensors`), for tests, demos and benchmarks. Tensors are generated
//! and written one batch of rows at a time, so even the 9B needs only a few MiB of memory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::safetensors::{write_header, Dtype};
use super::{tensor_specs, HfLayout, TensorSpec};
use crate::config::Config;
use crate::{Error, Result};

const BATCH_ELEMENTS: usize = 1 << 20;

/// The distribution of one tensor: a scale that keeps activations and logits O(1).
fn distribution(spec: &TensorSpec) -> Box<dyn Fn(&mut ChaCha8Rng) -> f32> {
    let name = spec.name.as_str();
    let normal = |std: f32| {
        let normal = Normal::new(0.0f32, std).expect("positive std");
        Box::new(move |rng: &mut ChaCha8Rng| normal.sample(rng)) as Box<dyn Fn(&mut ChaCha8Rng) -> f32>
    };
    if name.ends_with("recurrent_param") {
        // softplus(a_param) in [0.0009, 0.13]: decay rates a between ~0.6 and ~0.996.
        Box::new(|rng: &mut ChaCha8Rng| rng.random_range(-7.0f32..-2.0))
    } else if name.ends_with("norm.weight") {
        normal(0.1)
    } else if name.ends_with("bias") {
        normal(0.02)
    } else {
        // Matrices and conv taps: 1/sqrt(fan-in). The embedding gets 1/sqrt(D) too, which the
        // √D input scale turns into unit-RMS activations.
        let fan_in = match spec.hf_layout {
            HfLayout::ConvTaps => spec.shape[1],
            _ => *spec.shape.last().expect("non-empty shape"),
        };
        normal(1.0 / (fan_in as f32).sqrt())
    }
}

/// Writes a random checkpoint of `config` to `out_dir` in `dtype` (F32 or BF16).
pub fn write_random_checkpoint(config: &Config, seed: u64, dtype: Dtype, out_dir: &Path) -> Result<()> {
    if !matches!(dtype, Dtype::F32 | Dtype::BF16) {
        return Err(Error::Input(format!("random checkpoints are F32 or BF16, not {dtype:?}")));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let mut hf_config = serde_json::to_value(config).expect("config serializes");
    hf_config["architectures"] = serde_json::json!(["RecurrentGemmaForCausalLM"]);
    hf_config["torch_dtype"] = serde_json::json!(if dtype == Dtype::F32 { "float32" } else { "bfloat16" });
    hf_config["tie_word_embeddings"] = serde_json::json!(true);
    hf_config["hidden_activation"] = serde_json::json!("gelu_pytorch_tanh");
    let config_path = out_dir.join("config.json");
    let text = serde_json::to_string_pretty(&hf_config).expect("json");
    std::fs::write(&config_path, text).map_err(|e| Error::io(&config_path, e))?;

    let specs = tensor_specs(config);
    let header: Vec<_> = specs.iter().map(|s| (s.name.clone(), dtype, s.hf_shape())).collect();
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let path = out_dir.join("model.safetensors");
    let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let io = |e| Error::io(&path, e);
    out.write_all(&write_header(&header, &metadata)).map_err(io)?;
    for (index, spec) in specs.iter().enumerate() {
        // One stream per tensor: its values do not depend on the other tensors.
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let sample = distribution(spec);
        let mut remaining = spec.elements();
        while remaining > 0 {
            let n = remaining.min(BATCH_ELEMENTS);
            let values: Vec<f32> = (0..n).map(|_| sample(&mut rng)).collect();
            if dtype == Dtype::F32 {
                out.write_all(bytemuck::cast_slice(&values)).map_err(io)?;
            } else {
                let halves: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
                out.write_all(bytemuck::cast_slice(&halves)).map_err(io)?;
            }
            remaining -= n;
        }
    }
    out.flush().map_err(io)
}
