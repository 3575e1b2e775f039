//! The model's shape: a Hugging Face `config.json` of `model_type: recurrent_gemma`, plus the
//! built-in presets of the published checkpoints (`shared/spec/griffin.md` §1).

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

// Upper bounds on a config's sizes, far above every published checkpoint (the 9B: vocabulary
// 256,000, width 4,096, MLP 12,288, 38 layers, 16 heads, window 2,048) and low enough that every
// tensor size fits in 64 bits and a hostile manifest cannot ask for terabytes.
const MAX_VOCAB: usize = 1 << 20;
const MAX_WIDTH: usize = 1 << 15;
const MAX_MLP_WIDTH: usize = 1 << 17;
const MAX_LAYERS: usize = 1 << 10;
const MAX_HEADS: usize = 1 << 10;
const MAX_WINDOW: usize = 1 << 16;
const MAX_CONV_WIDTH: usize = 64;
/// Four times the 9B.
const MAX_PARAMETERS: u64 = 40_000_000_000;

/// What a residual block's temporal-mixing part is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockType {
    /// Conv1D + RG-LRU, the recurrent block.
    Recurrent,
    /// Local multi-query attention over a sliding window.
    Attention,
}

/// The subset of the Hugging Face config the forward pass needs, in HF's field names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub model_type: String,
    pub vocab_size: usize,
    /// Width D of the residual stream.
    pub hidden_size: usize,
    /// HF stores **twice** the MLP width here: each of gate/up projects to `intermediate_size / 2`.
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    /// Query heads of the attention blocks, also the number of RG-LRU gate blocks.
    pub num_attention_heads: usize,
    #[serde(default = "one")]
    pub num_key_value_heads: usize,
    /// Width of the recurrent branch; may differ from `hidden_size`.
    pub lru_width: Option<usize>,
    /// W: key p is visible to query t iff p ≤ t ≤ p + W (DeepMind semantics).
    pub attention_window_size: usize,
    #[serde(default = "four")]
    pub conv1d_width: usize,
    #[serde(default = "thirty")]
    pub logits_soft_cap: f32,
    #[serde(default = "eps")]
    pub rms_norm_eps: f32,
    #[serde(default = "ten_thousand")]
    pub rope_theta: f32,
    #[serde(default = "half")]
    pub partial_rotary_factor: f32,
    /// The repeating layer pattern; layer i uses `block_types[i % len]`.
    #[serde(alias = "_block_types")]
    pub block_types: Vec<BlockType>,
    #[serde(default = "yes")]
    pub embeddings_scale_by_sqrt_dim: bool,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default = "one_u32")]
    pub eos_token_id: u32,
    #[serde(default = "two_u32")]
    pub bos_token_id: u32,
}

fn one() -> usize {
    1
}
fn four() -> usize {
    4
}
fn thirty() -> f32 {
    30.0
}
fn eps() -> f32 {
    1e-6
}
fn ten_thousand() -> f32 {
    10_000.0
}
fn half() -> f32 {
    0.5
}
fn yes() -> bool {
    true
}
fn one_u32() -> u32 {
    1
}
fn two_u32() -> u32 {
    2
}

/// The published shapes, and a tiny one for tests and demos.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    Tiny,
    RecurrentGemma2b,
    RecurrentGemma9b,
}

impl Preset {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "tiny" => Ok(Preset::Tiny),
            "2b" => Ok(Preset::RecurrentGemma2b),
            "9b" => Ok(Preset::RecurrentGemma9b),
            other => Err(Error::Config(format!("unknown preset '{other}' (expected tiny, 2b or 9b)"))),
        }
    }
}

impl Config {
    pub fn preset(preset: Preset) -> Self {
        let (vocab, width, layers, heads, window) = match preset {
            // Small enough for debug-build tests, with the real Gemma vocabulary so the real
            // tokenizer drives it, two attention layers and a window shorter than test sequences.
            Preset::Tiny => (256_000, 64, 6, 2, 16),
            Preset::RecurrentGemma2b => (256_000, 2560, 26, 10, 2048),
            Preset::RecurrentGemma9b => (256_000, 4096, 38, 16, 2048),
        };
        Config {
            model_type: "recurrent_gemma".into(),
            vocab_size: vocab,
            hidden_size: width,
            intermediate_size: 2 * 3 * width,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: 1,
            lru_width: Some(width),
            attention_window_size: window,
            conv1d_width: 4,
            logits_soft_cap: 30.0,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            partial_rotary_factor: 0.5,
            block_types: vec![BlockType::Recurrent, BlockType::Recurrent, BlockType::Attention],
            embeddings_scale_by_sqrt_dim: true,
            pad_token_id: 0,
            eos_token_id: 1,
            bos_token_id: 2,
        }
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let config: Config = serde_json::from_str(text).map_err(|e| Error::Config(format!("config.json: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects shapes the forward pass cannot run, so later code may index without checks. A
    /// config may come from an attacker-chosen manifest: every size is bounded before anything
    /// is sized from it, so no field can make a loader allocate without limit or overflow.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::Config(msg));
        if self.model_type != "recurrent_gemma" {
            return fail(format!("model_type is '{}', expected 'recurrent_gemma'", self.model_type));
        }
        let sizes = [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("intermediate_size", self.intermediate_size, 2 * MAX_MLP_WIDTH),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_HEADS),
            ("attention_window_size", self.attention_window_size, MAX_WINDOW),
            ("conv1d_width", self.conv1d_width, MAX_CONV_WIDTH),
            ("lru_width", self.lru_width(), MAX_WIDTH),
            ("block_types", self.block_types.len(), MAX_LAYERS),
        ];
        for (name, value, max) in sizes {
            if value == 0 {
                return fail(format!("{name} must be positive"));
            }
            if value > max {
                return fail(format!("{name} is {value}, above the largest this engine accepts ({max})"));
            }
        }
        if self.num_key_value_heads != 1 {
            return fail(format!(
                "num_key_value_heads is {}; RecurrentGemma uses multi-query attention (1)",
                self.num_key_value_heads
            ));
        }
        if !self.intermediate_size.is_multiple_of(2) {
            return fail("intermediate_size must be even (it is twice the MLP width)".into());
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return fail("hidden_size must be divisible by num_attention_heads".into());
        }
        if !self.lru_width().is_multiple_of(self.num_attention_heads) {
            return fail("lru_width must be divisible by num_attention_heads".into());
        }
        if !(0.0..=1.0).contains(&self.partial_rotary_factor)
            || !self.rotary_dims().is_multiple_of(2)
            || self.rotary_dims() > self.head_dim()
        {
            return fail(format!(
                "partial_rotary_factor {} does not give an even number of rotated dims",
                self.partial_rotary_factor
            ));
        }
        // The GPU divides by the cap and the CPU would read 0 as "no cap": only a positive cap
        // means the same thing on both backends.
        let positive = [
            ("logits_soft_cap", self.logits_soft_cap),
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_theta),
        ];
        if let Some((name, value)) = positive.iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
            return fail(format!("{name} is {value}, it must be a finite number > 0"));
        }
        let ids = [
            ("pad_token_id", self.pad_token_id),
            ("eos_token_id", self.eos_token_id),
            ("bos_token_id", self.bos_token_id),
        ];
        if let Some((name, id)) = ids.iter().find(|(_, id)| *id as usize >= self.vocab_size) {
            return fail(format!("{name} {id} is not below vocab_size {}", self.vocab_size));
        }
        let parameters = self.parameter_count();
        if parameters > MAX_PARAMETERS {
            return fail(format!("the config describes {parameters} parameters, above the {MAX_PARAMETERS} accepted"));
        }
        Ok(())
    }

    /// The number of weights, in u64 so that it cannot overflow on wasm32 (for a config whose
    /// fields are within the bounds [`Config::validate`] checks first).
    pub fn parameter_count(&self) -> u64 {
        crate::weights::tensor_specs(self)
            .iter()
            .map(|spec| spec.shape.iter().map(|&n| n as u64).product::<u64>())
            .sum()
    }

    pub fn block_type(&self, layer: usize) -> BlockType {
        self.block_types[layer % self.block_types.len()]
    }

    pub fn lru_width(&self) -> usize {
        self.lru_width.unwrap_or(self.hidden_size)
    }

    /// F, the width of each MLP branch.
    pub fn mlp_width(&self) -> usize {
        self.intermediate_size / 2
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Width of each RG-LRU gate block.
    pub fn lru_block_width(&self) -> usize {
        self.lru_width() / self.num_attention_heads
    }

    /// The first `rotary_dims` of every head get RoPE; the rest pass through.
    pub fn rotary_dims(&self) -> usize {
        (self.head_dim() as f32 * self.partial_rotary_factor).round() as usize
    }

    /// `sqrt(D)` rounded to bfloat16, as the official code multiplies by a bf16 scalar
    /// (2B: 50.5, not 50.596).
    pub fn embedding_scale(&self) -> f32 {
        if self.embeddings_scale_by_sqrt_dim {
            half::bf16::from_f32((self.hidden_size as f32).sqrt()).to_f32()
        } else {
            1.0
        }
    }

    pub fn num_layers_of(&self, kind: BlockType) -> usize {
        (0..self.num_hidden_layers).filter(|&l| self.block_type(l) == kind).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_published_shapes() {
        let c = Config::preset(Preset::RecurrentGemma2b);
        c.validate().unwrap();
        assert_eq!(c.embedding_scale(), 50.5);
        assert_eq!(c.head_dim(), 256);
        assert_eq!(c.mlp_width(), 7680);
        assert_eq!(c.rotary_dims(), 128);
        assert_eq!(c.num_layers_of(BlockType::Attention), 8);
        let attention: Vec<usize> = (0..26).filter(|&l| c.block_type(l) == BlockType::Attention).collect();
        assert_eq!(attention, [2, 5, 8, 11, 14, 17, 20, 23]);
        let nine = Config::preset(Preset::RecurrentGemma9b);
        assert_eq!(nine.embedding_scale(), 64.0);
        assert_eq!(nine.num_layers_of(BlockType::Attention), 12);
    }

    #[test]
    fn parses_hf_config_and_rejects_other_models() {
        let text = r#"{"model_type":"recurrent_gemma","vocab_size":256000,"hidden_size":2560,
            "intermediate_size":15360,"num_hidden_layers":26,"num_attention_heads":10,
            "num_key_value_heads":1,"lru_width":2560,"attention_window_size":2048,
            "_block_types":["recurrent","recurrent","attention"],"conv1d_width":4}"#;
        let c = Config::from_json(text).unwrap();
        assert_eq!(c, Config::preset(Preset::RecurrentGemma2b));
        let llama = text.replace("recurrent_gemma", "llama");
        let err = Config::from_json(&llama).unwrap_err().to_string();
        assert!(err.contains("expected 'recurrent_gemma'"), "{err}");
        let broken = Config::from_json("{\"model_type\": ").unwrap_err().to_string();
        assert!(broken.contains("config.json"), "{broken}");
    }
}
