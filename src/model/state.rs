//! The decode-time state: fixed in size however long the sequence gets (griffin.md §4).
//! It lives apart from the weights so a conversation can be snapshotted, restored or reset.

use crate::config::{BlockType, Config};

/// The version of [`State::arrays`]' order and contents as saved bytes (`chat::saved`): raise it
/// whenever they change, so that older saved states are refused instead of restored as garbage.
pub const STATE_LAYOUT: u16 = 1;

#[derive(Clone, Debug, PartialEq)]
pub struct State {
    /// Tokens seen so far; the next token sits at this position.
    pub position: usize,
    pub layers: Vec<LayerState>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum LayerState {
    Recurrent {
        /// `[conv1d_width − 1, lru]`: the last conv inputs (linear_x outputs), oldest first.
        conv: Vec<f32>,
        /// `[lru]`: the RG-LRU hidden state, always f32.
        h: Vec<f32>,
    },
    Attention {
        /// `[W, head_dim]`: post-RoPE keys, position p in slot p mod W.
        keys: Vec<f32>,
        /// `[W, head_dim]`: values, same slots.
        values: Vec<f32>,
    },
}

impl State {
    pub fn new(config: &Config) -> Self {
        let layers = (0..config.num_hidden_layers)
            .map(|layer| match config.block_type(layer) {
                BlockType::Recurrent => LayerState::Recurrent {
                    conv: vec![0.0; (config.conv1d_width - 1) * config.lru_width()],
                    h: vec![0.0; config.lru_width()],
                },
                BlockType::Attention => {
                    let ring = config.attention_window_size * config.head_dim();
                    LayerState::Attention { keys: vec![0.0; ring], values: vec![0.0; ring] }
                }
            })
            .collect();
        State { position: 0, layers }
    }

    /// The state's arrays in a fixed order (per layer: conv then h, or keys then values).
    pub fn arrays(&self) -> impl Iterator<Item = &Vec<f32>> {
        self.layers.iter().flat_map(|layer| match layer {
            LayerState::Recurrent { conv, h } => [conv, h],
            LayerState::Attention { keys, values } => [keys, values],
        })
    }

    pub fn arrays_mut(&mut self) -> impl Iterator<Item = &mut Vec<f32>> {
        self.layers.iter_mut().flat_map(|layer| match layer {
            LayerState::Recurrent { conv, h } => [conv, h],
            LayerState::Attention { keys, values } => [keys, values],
        })
    }

    /// Bytes of f32 state, constant for a given config (2B: 34,291,712 B).
    pub fn size_bytes(&self) -> usize {
        let floats: usize = self
            .layers
            .iter()
            .map(|layer| match layer {
                LayerState::Recurrent { conv, h } => conv.len() + h.len(),
                LayerState::Attention { keys, values } => keys.len() + values.len(),
            })
            .sum();
        floats * std::mem::size_of::<f32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    #[test]
    fn state_sizes_match_the_spec() {
        let two_b = State::new(&Config::preset(Preset::RecurrentGemma2b));
        assert_eq!(two_b.size_bytes(), 34_291_712);
        let nine_b = State::new(&Config::preset(Preset::RecurrentGemma9b));
        assert_eq!(nine_b.size_bytes(), 52_035_584);
    }
}
