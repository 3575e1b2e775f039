//! The recurrent temporal block: two linear branches, a causal depthwise Conv1D and the
//! Real-Gated Linear Recurrent Unit (griffin.md §3.4, §3.5).

use super::layers::{gelu_tanh, sigmoid, BlockDiagonal, Linear};

/// `out = linear_out( RG_LRU(Conv1D(linear_x(u))) ⊙ gelu(linear_y(u)) )`
#[derive(Clone, Debug)]
pub struct RecurrentBlock {
    /// `[lru, D]`
    pub linear_x: Linear,
    /// `[lru, D]`
    pub linear_y: Linear,
    /// `[D, lru]`
    pub linear_out: Linear,
    pub conv_1d: Conv1D,
    pub rg_lru: RgLru,
}

/// Causal depthwise convolution: `c_t = b + Σ_k w[k] ⊙ xb_{t−(K−1)+k}`; tap K−1 sees the current
/// input, and inputs before the document start are zero.
#[derive(Clone, Debug)]
pub struct Conv1D {
    /// `[lru, K]`: channel-major, as Hugging Face's `conv_1d.weight[c, 0, k]`.
    pub weight: Vec<f32>,
    /// `[lru]`
    pub bias: Vec<f32>,
    pub width: usize,
}

#[derive(Clone, Debug)]
pub struct RgLru {
    pub input_gate: BlockDiagonal,
    pub recurrent_gate: BlockDiagonal,
    /// `[lru]`: `−8 · softplus(a_param)`, a constant precomputed in f64, so that
    /// `log a_t = gate_a · log_a_scale`.
    pub log_a_scale: Vec<f32>,
}

impl RecurrentBlock {
    /// The block over a chunk of inputs at positions `start..start + xs.len()`, continuing from
    /// (and updating) the conv history and the hidden state `h`.
    pub fn forward(&self, xs: &[Vec<f32>], start: usize, conv_state: &mut [f32], h: &mut [f32]) -> Vec<Vec<f32>> {
        let lru = h.len();
        let history_len = self.conv_1d.width - 1;
        // Conv inputs, oldest first: the saved history (zeros for a new document), then the chunk.
        let mut conv_inputs = if start == 0 { vec![0.0; conv_state.len()] } else { conv_state.to_vec() };
        for x in xs {
            conv_inputs.extend(self.linear_x.forward(x));
        }
        let outputs = xs
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let window = &conv_inputs[i * lru..(i + history_len + 1) * lru];
                let conv_out = self.conv_1d.forward(window);
                let lru_out = self.rg_lru.step(&conv_out, start + i, h);
                let y = self.linear_y.forward(x);
                let gated: Vec<f32> = lru_out.iter().zip(&y).map(|(o, y)| o * gelu_tanh(*y)).collect();
                self.linear_out.forward(&gated)
            })
            .collect();
        conv_state.copy_from_slice(&conv_inputs[conv_inputs.len() - history_len * lru..]);
        outputs
    }
}

impl Conv1D {
    /// `window` is `[K, lru]`, oldest input first.
    fn forward(&self, window: &[f32]) -> Vec<f32> {
        let lru = self.bias.len();
        (0..lru)
            .map(|c| {
                let taps = &self.weight[c * self.width..(c + 1) * self.width];
                self.bias[c] + taps.iter().enumerate().map(|(k, w)| w * window[k * lru + c]).sum::<f32>()
            })
            .collect()
    }
}

impl RgLru {
    /// One step of the recurrence at `position`, updating `h` in place and returning it.
    ///
    /// ```text
    /// gate_x = σ(BlockDiag_x(c)), gate_a = σ(BlockDiag_a(c))
    /// log_a  = gate_a · (−8 · softplus(a_param))
    /// h_t    = a · h_{t−1} + sqrt(1 − a²) · gate_x · c      (t > 0)
    /// h_0    = gate_x · c                                    (the reset at the document start)
    /// ```
    pub fn step(&self, c: &[f32], position: usize, h: &mut [f32]) -> Vec<f32> {
        let gate_x = self.input_gate.forward(c);
        let gate_a = self.recurrent_gate.forward(c);
        for i in 0..h.len() {
            let log_a = sigmoid(gate_a[i]) * self.log_a_scale[i];
            let a = log_a.exp();
            // exp(2·log_a), not a·a, as the reference; the clamp guards 1 − a² against rounding.
            let multiplier = if position == 0 { 1.0 } else { (1.0 - (2.0 * log_a).exp()).max(0.0).sqrt() };
            let normalized_x = c[i] * sigmoid(gate_x[i]) * multiplier;
            h[i] = if position == 0 { normalized_x } else { a * h[i] + normalized_x };
        }
        h.to_vec()
    }
}
