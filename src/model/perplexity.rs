//! Perplexity: how well a model predicts a text, `exp(mean over tokens of −log p(token | before))`
//! under the full softmax of each position's logits. Scoring is fed one position at a time, so a
//! text of any length is scored in constant memory.

use crate::{Error, Result};

/// The running sum of negative log-likelihoods over the tokens scored so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Perplexity {
    pub tokens: usize,
    /// The sum of −log p, in nats; f64 so that a long text loses nothing to rounding.
    pub total_nll: f64,
}

impl Perplexity {
    /// Scores `target` under one position's logits: `logsumexp(logits) − logits[target]`.
    pub fn add(&mut self, logits: &[f32], target: u32) -> Result<()> {
        let Some(&picked) = logits.get(target as usize) else {
            return Err(Error::Input(format!("token {target} is outside the {}-way logits", logits.len())));
        };
        self.total_nll += log_sum_exp(logits) - picked as f64;
        self.tokens += 1;
        Ok(())
    }

    /// The mean negative log-likelihood per token, in nats.
    pub fn nll(&self) -> f64 {
        self.total_nll / self.tokens.max(1) as f64
    }

    pub fn perplexity(&self) -> f64 {
        self.nll().exp()
    }
}

/// `ln Σ exp(logits)`, in f64 and shifted by the largest logit so that none overflows.
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_give_the_vocabulary_size() {
        let mut p = Perplexity::default();
        for target in [0, 3, 7] {
            p.add(&[1.5; 8], target).unwrap();
        }
        assert_eq!(p.tokens, 3);
        assert!((p.perplexity() - 8.0).abs() < 1e-9, "{}", p.perplexity());
    }

    #[test]
    fn matches_the_log_softmax_and_survives_large_logits() {
        let logits = [1000.0f32, 999.0, 990.0];
        let mut p = Perplexity::default();
        p.add(&logits, 1).unwrap();
        let z = (0.0f64.exp() + (-1.0f64).exp() + (-10.0f64).exp()).ln();
        assert!((p.nll() - (z + 1.0)).abs() < 1e-9, "{}", p.nll());
        assert!(p.add(&logits, 3).is_err());
    }
}
