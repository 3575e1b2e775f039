//! Tensor names (Hugging Face's), built in one place: the tensor table, the CPU model's loader,
//! the GPU layout and the GPU forward pass all name tensors through these. A [`Prefix`] grows by
//! one dotted part at a time, like candle's `VarBuilder::pp`:
//! `layer(3).mlp.pp("up_proj").weight()` is `model.layers.3.mlp_block.up_proj.weight`.

use std::fmt::Display;

pub const EMBEDDING: &str = "model.embed_tokens.weight";
pub const FINAL_NORM: &str = "model.final_norm.weight";

/// A dotted prefix of tensor names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefix(String);

impl Prefix {
    /// The prefix one part longer.
    pub fn pp(&self, part: impl Display) -> Prefix {
        Prefix(format!("{}.{part}", self.0))
    }

    /// The tensor `leaf` under this prefix.
    pub fn get(&self, leaf: &str) -> String {
        format!("{}.{leaf}", self.0)
    }

    pub fn weight(&self) -> String {
        self.get("weight")
    }

    pub fn bias(&self) -> String {
        self.get("bias")
    }
}

/// The names of residual block `i`.
pub struct LayerNames {
    pub temporal_pre_norm: String,
    pub channel_pre_norm: String,
    /// The recurrent or attention block.
    pub temporal: Prefix,
    pub mlp: Prefix,
}

pub fn layer(i: usize) -> LayerNames {
    let layer = Prefix("model".into()).pp("layers").pp(i);
    LayerNames {
        temporal_pre_norm: layer.pp("temporal_pre_norm").weight(),
        channel_pre_norm: layer.pp("channel_pre_norm").weight(),
        temporal: layer.pp("temporal_block"),
        mlp: layer.pp("mlp_block"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_hugging_faces() {
        let l = layer(3);
        assert_eq!(l.mlp.pp("up_proj").weight(), "model.layers.3.mlp_block.up_proj.weight");
        assert_eq!(
            l.temporal.pp("rg_lru").get("input_gate_bias"),
            "model.layers.3.temporal_block.rg_lru.input_gate_bias"
        );
        assert_eq!(l.temporal_pre_norm, "model.layers.3.temporal_pre_norm.weight");
    }
}
