//! The CPU float32 reference forward pass of RecurrentGemma, block by block as in
//! `shared/spec/griffin.md` §3 and Google DeepMind's `recurrentgemma` (the numerical reference).
//!
//! ```text
//! x = E[token] · bf16(√D)
//! for each residual block:  x = x + Temporal(RMSNorm(x));  x = x + MLP(RMSNorm(x))
//! logits = soft_cap(E · RMSNorm(x), 30)
//! ```
//! Weights may be f32 or int8 with per-row scales; activations and accumulations are f32.

pub mod attention;
pub mod layers;
pub mod perplexity;
pub mod recurrent;
pub mod state;

use crate::config::{BlockType, Config};
use crate::weights::names::{self, Prefix};
use crate::weights::TensorMap;
use crate::{Error, Result};
use attention::LocalAttentionBlock;
use layers::{add_assign, gelu_tanh, rms_norm, soft_cap, softplus, BlockDiagonal, Linear, Matrix};
use recurrent::{Conv1D, RecurrentBlock, RgLru};
pub use state::{LayerState, State};

pub struct Model {
    pub config: Config,
    /// `[V, D]`: the input embedding and, tied, the output head.
    pub embed_tokens: Matrix,
    pub layers: Vec<ResidualBlock>,
    /// `[D]`
    pub final_norm: Vec<f32>,
}

/// Pre-norm residual block: `x += temporal(norm(x)); x += mlp(norm(x))`.
pub struct ResidualBlock {
    /// `[D]`
    pub temporal_pre_norm: Vec<f32>,
    pub temporal_block: TemporalBlock,
    /// `[D]`
    pub channel_pre_norm: Vec<f32>,
    pub mlp_block: MlpBlock,
}

pub enum TemporalBlock {
    Recurrent(RecurrentBlock),
    Attention(LocalAttentionBlock),
}

/// GeGLU: `down( gelu(gate(u)) ⊙ up(u) )`.
pub struct MlpBlock {
    /// `[F, D]`
    pub gate_proj: Linear,
    /// `[F, D]`
    pub up_proj: Linear,
    /// `[D, F]`
    pub down_proj: Linear,
}

impl Model {
    /// Logits `[tokens.len(), V]` (row-major) for tokens at positions `state.position..`,
    /// advancing `state`. From a fresh state this is the whole-sequence forward (prefill); from a
    /// used state it continues the sequence (chunked prefill, or one decode step).
    pub fn forward(&self, tokens: &[u32], state: &mut State) -> Result<Vec<f32>> {
        self.check_tokens(tokens)?;
        let config = &self.config;
        let eps = config.rms_norm_eps;
        let start = state.position;
        let mut xs: Vec<Vec<f32>> = tokens
            .iter()
            .map(|&t| self.embed_tokens.row(t as usize).into_iter().map(|v| v * config.embedding_scale()).collect())
            .collect();

        for (block, layer_state) in self.layers.iter().zip(&mut state.layers) {
            let normed: Vec<Vec<f32>> = xs.iter().map(|x| rms_norm(x, &block.temporal_pre_norm, eps)).collect();
            let mixed = match (&block.temporal_block, layer_state) {
                (TemporalBlock::Recurrent(b), LayerState::Recurrent { conv, h }) => b.forward(&normed, start, conv, h),
                (TemporalBlock::Attention(b), LayerState::Attention { keys, values }) => {
                    b.forward(&normed, start, keys, values)
                }
                _ => return Err(Error::Input("state does not match the model's layer pattern".into())),
            };
            for (x, m) in xs.iter_mut().zip(&mixed) {
                add_assign(x, m);
                let mlp_out = block.mlp_block.forward(&rms_norm(x, &block.channel_pre_norm, eps));
                add_assign(x, &mlp_out);
            }
        }
        state.position += tokens.len();

        let mut logits = Vec::with_capacity(tokens.len() * config.vocab_size);
        for x in &xs {
            let mut row = self.embed_tokens.matvec(&rms_norm(x, &self.final_norm, eps));
            soft_cap(&mut row, config.logits_soft_cap);
            logits.extend(row);
        }
        Ok(logits)
    }

    /// One decode step: the logits `[V]` of `token` at position `state.position`.
    pub fn step(&self, token: u32, state: &mut State) -> Result<Vec<f32>> {
        self.forward(&[token], state)
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        match tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            Some(t) => {
                Err(Error::Input(format!("token id {t} is out of range: vocab size is {}", self.config.vocab_size)))
            }
            None => Ok(()),
        }
    }

    /// Builds the model from tensors in the web layout (see [`crate::weights`]), checking every
    /// name and shape. Tensors left over are an error, so a wrong file never half-loads.
    pub fn from_tensors(config: Config, tensors: &mut TensorMap) -> Result<Self> {
        config.validate()?;
        let (d, v) = (config.hidden_size, config.vocab_size);
        let embed_tokens = tensors.take_matrix(names::EMBEDDING, v, d)?;
        let final_norm = tensors.take_vector(names::FINAL_NORM, d)?;
        let layers = (0..config.num_hidden_layers)
            .map(|layer| ResidualBlock::load(&config, layer, tensors))
            .collect::<Result<Vec<_>>>()?;
        tensors.finish()?;
        Ok(Model { config, embed_tokens, layers, final_norm })
    }
}

impl MlpBlock {
    fn forward(&self, u: &[f32]) -> Vec<f32> {
        let gate = self.gate_proj.forward(u);
        let up = self.up_proj.forward(u);
        let hidden: Vec<f32> = gate.iter().zip(&up).map(|(g, u)| gelu_tanh(*g) * u).collect();
        self.down_proj.forward(&hidden)
    }
}

impl ResidualBlock {
    fn load(config: &Config, layer: usize, tensors: &mut TensorMap) -> Result<Self> {
        let n = names::layer(layer);
        let (t, m) = (&n.temporal, &n.mlp);
        let (d, f, lru) = (config.hidden_size, config.mlp_width(), config.lru_width());
        let mut linear = |name: Prefix, rows: usize, cols: usize, bias: bool| -> Result<Linear> {
            Ok(Linear {
                weight: tensors.take_matrix(&name.weight(), rows, cols)?,
                bias: if bias { Some(tensors.take_vector(&name.bias(), rows)?) } else { None },
            })
        };
        let mlp_block = MlpBlock {
            gate_proj: linear(m.pp("gate_proj"), f, d, true)?,
            up_proj: linear(m.pp("up_proj"), f, d, true)?,
            down_proj: linear(m.pp("down_proj"), d, f, true)?,
        };
        let temporal_block = match config.block_type(layer) {
            BlockType::Recurrent => {
                let linear_x = linear(t.pp("linear_x"), lru, d, true)?;
                let linear_y = linear(t.pp("linear_y"), lru, d, true)?;
                let linear_out = linear(t.pp("linear_out"), d, lru, true)?;
                TemporalBlock::Recurrent(RecurrentBlock {
                    linear_x,
                    linear_y,
                    linear_out,
                    conv_1d: Conv1D {
                        weight: tensors.take_f32(&t.pp("conv_1d").weight(), &[lru, config.conv1d_width])?,
                        bias: tensors.take_vector(&t.pp("conv_1d").bias(), lru)?,
                        width: config.conv1d_width,
                    },
                    rg_lru: RgLru::load(config, &t.pp("rg_lru"), tensors)?,
                })
            }
            BlockType::Attention => {
                let hd = config.head_dim();
                let heads = config.num_attention_heads;
                TemporalBlock::Attention(LocalAttentionBlock {
                    q_proj: linear(t.pp("q_proj"), heads * hd, d, false)?,
                    k_proj: linear(t.pp("k_proj"), hd, d, false)?,
                    v_proj: linear(t.pp("v_proj"), hd, d, false)?,
                    o_proj: linear(t.pp("o_proj"), d, heads * hd, true)?,
                    num_heads: heads,
                    head_dim: hd,
                    rotary_dims: config.rotary_dims(),
                    rope_theta: config.rope_theta,
                    window: config.attention_window_size,
                })
            }
        };
        Ok(ResidualBlock {
            temporal_pre_norm: tensors.take_vector(&n.temporal_pre_norm, d)?,
            temporal_block,
            channel_pre_norm: tensors.take_vector(&n.channel_pre_norm, d)?,
            mlp_block,
        })
    }
}

impl RgLru {
    fn load(config: &Config, prefix: &Prefix, tensors: &mut TensorMap) -> Result<Self> {
        let (lru, bw) = (config.lru_width(), config.lru_block_width());
        let mut gate = |name: &str| -> Result<BlockDiagonal> {
            Ok(BlockDiagonal {
                weight: tensors.take_matrix(&prefix.get(&format!("{name}_weight")), lru, bw)?,
                bias: tensors.take_vector(&prefix.get(&format!("{name}_bias")), lru)?,
            })
        };
        let input_gate = gate("input_gate")?;
        let recurrent_gate = gate("recurrent_gate")?;
        let a_param = tensors.take_vector(&prefix.get("recurrent_param"), lru)?;
        let log_a_scale = a_param.iter().map(|&a| (-8.0 * softplus(a)) as f32).collect();
        Ok(RgLru { input_gate, recurrent_gate, log_a_scale })
    }
}
