//! Weights: the one table of tensor names and shapes, the web format the browser streams, its
//! incremental parser, and (native only) the converter from Hugging Face checkpoints.
//!
//! Tensor names are Hugging Face's. The web layout differs from HF in two places, both so that
//! every matrix row is one output channel: the RG-LRU gates `[H, bw_in, bw_out]` are stored as
//! `[H·bw_out, bw_in]` (each block transposed) and the conv taps `[lru, 1, K]` as `[lru, K]`.

pub mod format;
pub mod host;
pub mod names;
pub mod quant;
pub mod safetensors;
pub mod stream;

#[cfg(not(target_arch = "wasm32"))]
pub mod convert;
#[cfg(not(target_arch = "wasm32"))]
pub mod expand;
#[cfg(not(target_arch = "wasm32"))]
pub mod load;
#[cfg(not(target_arch = "wasm32"))]
pub mod random;

use std::collections::HashMap;

use crate::config::{BlockType, Config};
use crate::model::layers::{Matrix, MatrixValues};
use crate::{Error, Result};

/// How a tensor of the web layout comes out of a Hugging Face checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfLayout {
    /// Same shape and order.
    Same,
    /// HF `[H, bw, bw]` input-major blocks; ours is each block transposed, `[H·bw, bw]`.
    TransposedBlocks { blocks: usize },
    /// HF `[lru, 1, K]`; ours drops the middle axis, `[lru, K]`.
    ConvTaps,
    /// HF `[H, bw]` per-block gate biases; ours is the same values flat, `[H·bw]`.
    BlockBias { blocks: usize },
}

/// One tensor of the model in the web layout.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    /// The web layout's shape; `[rows = out, cols = in]` for matrices.
    pub shape: Vec<usize>,
    /// Matrices are quantized per output row; vectors (norms, biases, conv taps, a_param) stay f32.
    pub is_matrix: bool,
    pub hf_layout: HfLayout,
}

impl TensorSpec {
    pub fn hf_shape(&self) -> Vec<usize> {
        match self.hf_layout {
            HfLayout::Same => self.shape.clone(),
            HfLayout::TransposedBlocks { blocks } => vec![blocks, self.shape[1], self.shape[1]],
            HfLayout::ConvTaps => vec![self.shape[0], 1, self.shape[1]],
            HfLayout::BlockBias { blocks } => vec![blocks, self.shape[0] / blocks],
        }
    }

    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Every tensor of a model with `config`, in a fixed order (the order of the web format).
pub fn tensor_specs(config: &Config) -> Vec<TensorSpec> {
    let (d, f, lru, hd) = (config.hidden_size, config.mlp_width(), config.lru_width(), config.head_dim());
    let heads = config.num_attention_heads;
    let mut specs = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, is_matrix: bool, hf_layout: HfLayout| {
        specs.push(TensorSpec { name, shape, is_matrix, hf_layout })
    };
    let linear = |push: &mut dyn FnMut(String, Vec<usize>, bool, HfLayout), name: names::Prefix, out, inp, bias| {
        push(name.weight(), vec![out, inp], true, HfLayout::Same);
        if bias {
            push(name.bias(), vec![out], false, HfLayout::Same);
        }
    };
    push(names::EMBEDDING.into(), vec![config.vocab_size, d], true, HfLayout::Same);
    push(names::FINAL_NORM.into(), vec![d], false, HfLayout::Same);
    for layer in 0..config.num_hidden_layers {
        let n = names::layer(layer);
        let t = &n.temporal;
        push(n.temporal_pre_norm.clone(), vec![d], false, HfLayout::Same);
        push(n.channel_pre_norm.clone(), vec![d], false, HfLayout::Same);
        match config.block_type(layer) {
            BlockType::Recurrent => {
                linear(&mut push, t.pp("linear_x"), lru, d, true);
                linear(&mut push, t.pp("linear_y"), lru, d, true);
                linear(&mut push, t.pp("linear_out"), d, lru, true);
                let conv = t.pp("conv_1d");
                push(conv.weight(), vec![lru, config.conv1d_width], false, HfLayout::ConvTaps);
                push(conv.bias(), vec![lru], false, HfLayout::Same);
                let rg_lru = t.pp("rg_lru");
                push(rg_lru.get("recurrent_param"), vec![lru], false, HfLayout::Same);
                for gate in ["input_gate", "recurrent_gate"] {
                    let blocks = HfLayout::TransposedBlocks { blocks: heads };
                    push(rg_lru.get(&format!("{gate}_weight")), vec![lru, config.lru_block_width()], true, blocks);
                    let bias = HfLayout::BlockBias { blocks: heads };
                    push(rg_lru.get(&format!("{gate}_bias")), vec![lru], false, bias);
                }
            }
            BlockType::Attention => {
                linear(&mut push, t.pp("q_proj"), heads * hd, d, false);
                linear(&mut push, t.pp("k_proj"), hd, d, false);
                linear(&mut push, t.pp("v_proj"), hd, d, false);
                linear(&mut push, t.pp("o_proj"), d, heads * hd, true);
            }
        }
        linear(&mut push, n.mlp.pp("gate_proj"), f, d, true);
        linear(&mut push, n.mlp.pp("up_proj"), f, d, true);
        linear(&mut push, n.mlp.pp("down_proj"), d, f, true);
    }
    specs
}

/// A tensor held in host memory, in the web layout.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: HostData,
}

#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    /// Row-major int8 values with one f32 scale per row.
    Int8 {
        q: Vec<i8>,
        scales: Vec<f32>,
    },
    /// Row-major int4 values packed eight per u32 and f16 scales per group of 32 columns, laid
    /// out as the web format stores them (`format::int4_scale_stride` scales per row).
    Int4 {
        packed: Vec<u32>,
        scales: Vec<half::f16>,
    },
}

/// Named tensors on their way into a model; taking one checks its shape.
#[derive(Default)]
pub struct TensorMap {
    tensors: HashMap<String, HostTensor>,
}

impl TensorMap {
    pub fn insert(&mut self, name: String, tensor: HostTensor) {
        self.tensors.insert(name, tensor);
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    fn take(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let tensor = self.tensors.remove(name).ok_or_else(|| Error::Weights(format!("missing tensor {name}")))?;
        if tensor.shape != shape {
            return Err(Error::Weights(format!("tensor {name} has shape {:?}, expected {:?}", tensor.shape, shape)));
        }
        Ok(tensor)
    }

    pub fn take_matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
        let values = match self.take(name, &[rows, cols])?.data {
            HostData::F32(w) => MatrixValues::F32(w),
            HostData::Int8 { q, scales } => MatrixValues::Int8 { q, scales },
            HostData::Int4 { packed, scales } => MatrixValues::Int4 { packed, scales },
        };
        Ok(Matrix { rows, cols, values })
    }

    pub fn take_f32(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        match self.take(name, shape)?.data {
            HostData::F32(v) => Ok(v),
            HostData::Int8 { .. } => Err(Error::Weights(format!("tensor {name} is int8, expected f32"))),
            HostData::Int4 { .. } => Err(Error::Weights(format!("tensor {name} is int4, expected f32"))),
        }
    }

    pub fn take_vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        self.take_f32(name, &[len])
    }

    /// Every tensor must have been taken.
    pub fn finish(&mut self) -> Result<()> {
        let mut unused: Vec<_> = self.tensors.keys().cloned().collect();
        unused.sort();
        match unused.first() {
            Some(name) => Err(Error::Weights(format!("unexpected tensor {name} ({} unused)", unused.len()))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    #[test]
    fn tensor_table_matches_the_published_parameter_counts() {
        for (preset, count, params) in
            [(Preset::RecurrentGemma2b, 484, 2_682_862_080usize), (Preset::RecurrentGemma9b, 704, 8_579_977_216)]
        {
            let specs = tensor_specs(&Config::preset(preset));
            assert_eq!(specs.len(), count);
            assert_eq!(specs.iter().map(TensorSpec::elements).sum::<usize>(), params);
        }
    }
}
