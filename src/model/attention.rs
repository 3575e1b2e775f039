//! Local multi-query attention with partial RoPE over a sliding window (griffin.md §3.6).
//!
//! The window follows Google DeepMind's semantics: key p is visible to query t iff
//! `t − W ≤ p ≤ t`, i.e. the current token plus up to W earlier ones. Keys of earlier chunks live
//! in a fixed ring of W slots (position p in slot p mod W), so a whole-sequence prefill, a chunked
//! prefill and a single decode step all run through the same code.

use super::layers::{apply_rope, Linear};

#[derive(Clone, Debug)]
pub struct LocalAttentionBlock {
    /// `[H·hd, D]`, no bias.
    pub q_proj: Linear,
    /// `[hd, D]`: one key head shared by all query heads, no bias.
    pub k_proj: Linear,
    /// `[hd, D]`, no bias.
    pub v_proj: Linear,
    /// `[D, H·hd]`, with bias.
    pub o_proj: Linear,
    pub num_heads: usize,
    pub head_dim: usize,
    pub rotary_dims: usize,
    pub rope_theta: f32,
    pub window: usize,
}

impl LocalAttentionBlock {
    /// Attention for inputs at positions `start..start + xs.len()`; reads keys/values of earlier
    /// positions from the rings and stores this chunk's last W into them.
    pub fn forward(
        &self,
        xs: &[Vec<f32>],
        start: usize,
        key_ring: &mut [f32],
        value_ring: &mut [f32],
    ) -> Vec<Vec<f32>> {
        let hd = self.head_dim;
        let mut queries = Vec::with_capacity(xs.len());
        let mut keys = Vec::with_capacity(xs.len());
        let mut values = Vec::with_capacity(xs.len());
        for (i, x) in xs.iter().enumerate() {
            let position = start + i;
            let mut q = self.q_proj.forward(x);
            for head in q.chunks_mut(hd) {
                apply_rope(head, position, self.rotary_dims, self.rope_theta);
            }
            let mut k = self.k_proj.forward(x);
            apply_rope(&mut k, position, self.rotary_dims, self.rope_theta);
            queries.push(q);
            keys.push(k);
            values.push(self.v_proj.forward(x));
        }

        let key_at = |p: usize| -> &[f32] {
            if p < start {
                &key_ring[(p % self.window) * hd..][..hd]
            } else {
                &keys[p - start]
            }
        };
        let value_at = |p: usize| -> &[f32] {
            if p < start {
                &value_ring[(p % self.window) * hd..][..hd]
            } else {
                &values[p - start]
            }
        };

        let scale = (hd as f32).powf(-0.5);
        let outputs: Vec<Vec<f32>> = queries
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let t = start + i;
                let visible = t.saturating_sub(self.window)..=t;
                let mut mixed = vec![0.0f32; self.num_heads * hd];
                for (head, q_head) in q.chunks(hd).enumerate() {
                    let scores: Vec<f32> = visible
                        .clone()
                        .map(|p| q_head.iter().zip(key_at(p)).map(|(q, k)| q * k).sum::<f32>() * scale)
                        .collect();
                    let probabilities = softmax(&scores);
                    let out = &mut mixed[head * hd..(head + 1) * hd];
                    for (p, prob) in visible.clone().zip(probabilities) {
                        for (o, v) in out.iter_mut().zip(value_at(p)) {
                            *o += prob * v;
                        }
                    }
                }
                self.o_proj.forward(&mixed)
            })
            .collect();

        let end = start + xs.len();
        for p in start.max(end.saturating_sub(self.window))..end {
            let slot = (p % self.window) * hd;
            key_ring[slot..slot + hd].copy_from_slice(&keys[p - start]);
            value_ring[slot..slot + hd].copy_from_slice(&values[p - start]);
        }
        outputs
    }
}

/// Softmax in f32 with the maximum subtracted first.
fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / total).collect()
}
