//! Picks the next token from the model's logits: greedy, or temperature sampling narrowed by top-k
//! and top-p (nucleus), drawn from a seeded ChaCha8 generator so a seed replays the same text on
//! every platform, the browser included.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 picks the most likely token (greedy); higher values flatten the distribution.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps them all.
    pub top_k: usize,
    /// Keep the fewest most likely tokens whose probability adds up to at least `top_p`;
    /// 1.0 keeps them all.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    /// Greedy decoding: deterministic, and what the model's reference outputs use.
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Input(format!("temperature must be a finite number >= 0, got {}", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Input(format!("top_p must be in (0, 1], got {}", self.top_p)));
        }
        Ok(())
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Scratch space for the tokens still in the running, kept between calls so that sampling from
    /// 256,000 logits does not allocate every token.
    candidates: Vec<Candidate>,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    id: u32,
    logit: f32,
    /// exp((logit - max logit) / temperature): the probability up to a common factor.
    weight: f32,
}

/// The nucleus search sorts candidates into bins by how far below the best token they are, in
/// units of the softmax's exponent ((max logit - logit) / temperature, in nats): 16 bins per nat,
/// so weights within a bin differ by less than 7%, and everything 64 nats or more below the best
/// (weight under 1.7e-28) shares the last bin.
const NUCLEUS_BINS_PER_NAT: f32 = 16.0;
const NUCLEUS_BINS: usize = 64 * 16 + 1;

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Self { params, rng: ChaCha8Rng::seed_from_u64(params.seed), candidates: Vec::new() })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token id. NaN logits count as -inf (never chosen). A +inf logit is chosen outright
    /// (the lowest such id), as the limit of the softmax would. Greedy decoding draws no random
    /// number; every other call draws exactly one.
    ///
    /// Logits that are all NaN or -inf (or none at all) are an error rather than a made-up token:
    /// they mean the model's output is broken, and the caller should say so.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        let (best_id, best_logit) = argmax(logits)
            .ok_or_else(|| Error::Input(format!("cannot sample: all {} logits are NaN or -inf", logits.len())))?;
        if self.params.temperature == 0.0 || best_logit == f32::INFINITY {
            return Ok(best_id);
        }

        let candidates = &mut self.candidates;
        candidates.clear();
        candidates.extend(
            logits.iter().zip(0u32..).filter(|(logit, _)| is_usable(**logit)).map(|(&logit, id)| Candidate {
                id,
                logit,
                weight: 0.0,
            }),
        );

        let top_k = self.params.top_k;
        if top_k > 0 && top_k < candidates.len() {
            candidates.select_nth_unstable_by(top_k - 1, higher_logit_first);
            candidates.truncate(top_k);
            // The draw walks the candidates in order: make that order canonical rather than
            // whatever arrangement the selection algorithm leaves, so a seed always replays.
            candidates.sort_unstable_by(higher_logit_first);
        }

        // Softmax numerator with the maximum subtracted: the best token weighs exactly 1, so the
        // total is at least 1 and nothing overflows.
        let temperature = self.params.temperature;
        for candidate in candidates.iter_mut() {
            candidate.weight = ((candidate.logit - best_logit) / temperature).exp();
        }

        if self.params.top_p < 1.0 {
            keep_nucleus(candidates, self.params.top_p, |c| {
                let nats_below_best = (best_logit - c.logit) / temperature;
                // `as` saturates: an infinite distance lands in the last bin too.
                ((nats_below_best * NUCLEUS_BINS_PER_NAT) as usize).min(NUCLEUS_BINS - 1)
            });
        }

        // Renormalise over what is left and invert its cumulative distribution at one uniform draw.
        let total: f32 = candidates.iter().map(|c| c.weight).sum();
        let target = self.rng.random::<f32>() * total;
        let mut cumulative = 0.0;
        for candidate in candidates.iter() {
            cumulative += candidate.weight;
            if target < cumulative {
                return Ok(candidate.id);
            }
        }
        // Rounding can leave `target` at or above the summed weights: take the last token with any.
        Ok(candidates.iter().rev().find(|c| c.weight > 0.0).map_or(best_id, |c| c.id))
    }
}

fn is_usable(logit: f32) -> bool {
    !logit.is_nan() && logit != f32::NEG_INFINITY
}

/// The lowest id with the highest usable logit, and that logit.
fn argmax(logits: &[f32]) -> Option<(u32, f32)> {
    let mut best: Option<(u32, f32)> = None;
    for (&logit, id) in logits.iter().zip(0u32..) {
        if is_usable(logit) && best.is_none_or(|(_, best_logit)| logit > best_logit) {
            best = Some((id, logit));
        }
    }
    best
}

/// Orders by logit, highest first, ties by lower id: a total order, so which tokens survive
/// top-k never depends on how the selection algorithm breaks ties.
fn higher_logit_first(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

fn heavier_first(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.weight.total_cmp(&a.weight).then(a.id.cmp(&b.id))
}

/// Keeps the smallest set of most likely candidates whose weight reaches `top_p` of the total (at
/// least one). Sorting all 256,000 candidates would cost O(V log V); instead one pass sums the
/// weight per bin (`bin_of`, heaviest bin first), which finds the bin where the running total
/// crosses `top_p`. Every candidate in a heavier bin is kept; only the crossing bin is sorted, and
/// its heaviest members kept until the target is reached.
fn keep_nucleus(candidates: &mut Vec<Candidate>, top_p: f32, bin_of: impl Fn(&Candidate) -> usize) {
    let mut bin_weights = [0.0f32; NUCLEUS_BINS];
    for candidate in candidates.iter() {
        bin_weights[bin_of(candidate)] += candidate.weight;
    }
    let target = top_p * bin_weights.iter().sum::<f32>();

    let mut heavier_bins_weight = 0.0;
    // If rounding keeps the running total below `target`, every bin is in the nucleus.
    let mut crossing_bin = NUCLEUS_BINS - 1;
    for (bin, &weight) in bin_weights.iter().enumerate() {
        if heavier_bins_weight + weight >= target {
            crossing_bin = bin;
            break;
        }
        heavier_bins_weight += weight;
    }

    candidates.retain(|c| bin_of(c) <= crossing_bin);
    let mut crossing: Vec<Candidate> = candidates.extract_if(.., |c| bin_of(c) == crossing_bin).collect();
    crossing.sort_unstable_by(heavier_first);
    let mut cumulative: f32 = candidates.iter().map(|c| c.weight).sum();
    for candidate in crossing {
        candidates.push(candidate);
        cumulative += candidate.weight;
        if cumulative >= target {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> Sampler {
        Sampler::new(SamplingParams { temperature, top_k, top_p, seed }).unwrap()
    }

    fn draws(sampler: &mut Sampler, logits: &[f32], count: usize) -> Vec<u32> {
        (0..count).map(|_| sampler.sample(logits).unwrap()).collect()
    }

    /// Reproducible pseudo-random logits, spread like a language model's (a few standard
    /// deviations wide).
    fn random_logits(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..len).map(|_| rng.random::<f32>() * 12.0 - 6.0).collect()
    }

    fn softmax(logits: &[f32]) -> Vec<f64> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let weights: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        weights.iter().map(|w| w / total).collect()
    }

    fn frequencies(ids: &[u32], vocab: usize) -> Vec<f64> {
        let mut counts = vec![0usize; vocab];
        for &id in ids {
            counts[id as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / ids.len() as f64).collect()
    }

    #[test]
    fn greedy_is_argmax_with_lowest_index_on_ties() {
        let mut greedy = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(greedy.sample(&[0.1, 2.0, -1.0, 2.0]).unwrap(), 1);
        assert_eq!(greedy.sample(&[-3.0]).unwrap(), 0);
        let logits = random_logits(256_000, 7);
        let expected = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0))).unwrap().0;
        assert_eq!(greedy.sample(&logits).unwrap(), expected as u32);
    }

    #[test]
    fn top_k_of_one_is_greedy_at_any_temperature() {
        for (round, temperature) in [0.01, 0.7, 1.0, 3.0, 1000.0].into_iter().enumerate() {
            let logits = random_logits(5_000, round as u64);
            let greedy = Sampler::new(SamplingParams::default()).unwrap().sample(&logits).unwrap();
            let mut top1 = sampler(temperature, 1, 1.0, 42);
            assert!(draws(&mut top1, &logits, 20).iter().all(|&id| id == greedy), "temperature {temperature}");
        }
        // Ties keep the lowest id, as greedy does.
        assert_eq!(sampler(1.0, 1, 1.0, 3).sample(&[5.0, 9.0, 9.0]).unwrap(), 1);
    }

    #[test]
    fn same_seed_replays_the_same_tokens() {
        let logits = random_logits(1_000, 1);
        let first = draws(&mut sampler(1.0, 50, 0.95, 1234), &logits, 200);
        let second = draws(&mut sampler(1.0, 50, 0.95, 1234), &logits, 200);
        assert_eq!(first, second);
    }

    #[test]
    fn different_seeds_give_different_tokens() {
        let logits = vec![0.0; 100];
        let first = draws(&mut sampler(1.0, 0, 1.0, 1), &logits, 50);
        let second = draws(&mut sampler(1.0, 0, 1.0, 2), &logits, 50);
        assert_ne!(first, second);
    }

    #[test]
    fn tiny_top_p_is_greedy() {
        let logits = random_logits(50_000, 9);
        let greedy = Sampler::new(SamplingParams::default()).unwrap().sample(&logits).unwrap();
        for seed in 0..20 {
            assert_eq!(sampler(1.0, 0, 1e-6, seed).sample(&logits).unwrap(), greedy);
        }
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        let logits = [0.0, 1.0, 2.0];
        let samples = draws(&mut sampler(1.0, 0, 1.0, 2024), &logits, 20_000);
        let observed = frequencies(&samples, 3);
        // Expected ≈ [0.090, 0.245, 0.665]; one standard error is at most 0.0034 here, so 0.02 is
        // a wide margin for this fixed seed, not a flaky threshold.
        for (observed, expected) in observed.iter().zip(softmax(&logits)) {
            assert!((observed - expected).abs() < 0.02, "{observed} vs {expected}");
        }
    }

    #[test]
    fn temperature_scales_logits_before_the_softmax() {
        let logits = [0.0, 1.0, 2.0];
        let samples = draws(&mut sampler(2.0, 0, 1.0, 5), &logits, 20_000);
        let observed = frequencies(&samples, 3);
        for (observed, expected) in observed.iter().zip(softmax(&[0.0, 0.5, 1.0])) {
            assert!((observed - expected).abs() < 0.02, "{observed} vs {expected}");
        }
    }

    #[test]
    fn top_k_renormalises_over_the_k_best() {
        let logits = [2.0, 0.0, 1.0];
        let samples = draws(&mut sampler(1.0, 2, 1.0, 11), &logits, 20_000);
        let observed = frequencies(&samples, 3);
        assert_eq!(observed[1], 0.0);
        let expected = softmax(&[2.0, 1.0]);
        assert!((observed[0] - expected[0]).abs() < 0.02 && (observed[2] - expected[1]).abs() < 0.02, "{observed:?}");
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities 0.5, 0.3, 0.2 (in shuffled positions).
        let logits = [0.2f32.ln(), 0.5f32.ln(), 0.3f32.ln()];
        let kept = |top_p: f32| {
            let samples = draws(&mut sampler(1.0, 0, top_p, 8), &logits, 2_000);
            let mut ids: Vec<u32> = samples.into_iter().collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        assert_eq!(kept(0.4), [1]);
        assert_eq!(kept(0.7), [1, 2]);
        assert_eq!(kept(0.9), [0, 1, 2]);
    }

    #[test]
    fn top_p_over_many_equal_tokens_keeps_the_lowest_ids() {
        // 1,000 equally likely tokens, all in one bin: the nucleus for 0.5 is 500 of them, the
        // lowest ids, as ties go to them.
        let logits = vec![0.0; 1_000];
        let samples = draws(&mut sampler(1.0, 0, 0.5, 3), &logits, 5_000);
        assert!(samples.iter().all(|&id| id < 500));
        assert!(samples.iter().any(|&id| id >= 400), "the whole nucleus is sampled");
    }

    #[test]
    fn nucleus_matches_sorting_everything() {
        for (seed, temperature, top_p) in
            [(1, 1.0, 0.9), (2, 0.5, 0.5), (3, 2.0, 0.95), (4, 0.05, 0.99), (5, 1.0, 0.01)]
        {
            let case = format!("seed {seed}, T {temperature}, top_p {top_p}");
            let logits = random_logits(256_000, seed);
            let best = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut nucleus: Vec<Candidate> = logits
                .iter()
                .zip(0u32..)
                .map(|(&logit, id)| Candidate { id, logit, weight: ((logit - best) / temperature).exp() })
                .collect();
            let mut by_rank = nucleus.clone();
            by_rank.sort_by(heavier_first);

            keep_nucleus(&mut nucleus, top_p, |c| {
                (((best - c.logit) / temperature * NUCLEUS_BINS_PER_NAT) as usize).min(NUCLEUS_BINS - 1)
            });

            // The kept tokens are exactly the most likely ones...
            let mut kept: Vec<u32> = nucleus.iter().map(|c| c.id).collect();
            kept.sort_unstable();
            let mut top: Vec<u32> = by_rank[..kept.len()].iter().map(|c| c.id).collect();
            top.sort_unstable();
            assert!(kept == top, "{case}: not the {} most likely tokens", kept.len());

            // ...and as few as reach `top_p`: in exact arithmetic the set without its lightest token
            // falls short. Both sides are f32 sums of up to 256,000 terms, hence the tolerance.
            let mass = |tokens: &[Candidate]| tokens.iter().map(|c| c.weight as f64).sum::<f64>();
            let total = mass(&by_rank);
            let target = top_p as f64 * total;
            let tolerance = 1e-4 * total;
            let kept_mass = mass(&by_rank[..kept.len()]);
            let without_lightest = mass(&by_rank[..kept.len() - 1]);
            assert!(kept_mass >= target - tolerance, "{case}: {kept_mass} < {target}");
            assert!(without_lightest < target + tolerance, "{case}: {without_lightest} >= {target}");
        }
    }

    #[test]
    fn nan_and_negative_infinity_are_never_chosen() {
        let logits = [f32::NAN, 1.0, f32::NAN, 3.0, f32::NEG_INFINITY, 2.0];
        assert_eq!(Sampler::new(SamplingParams::default()).unwrap().sample(&logits).unwrap(), 3);
        let samples = draws(&mut sampler(5.0, 0, 1.0, 1), &logits, 2_000);
        assert!(samples.iter().all(|id| [1, 3, 5].contains(id)));
        let samples = draws(&mut sampler(5.0, 4, 0.99, 1), &logits, 2_000);
        assert!(samples.iter().all(|id| [1, 3, 5].contains(id)));
    }

    #[test]
    fn positive_infinity_wins_outright() {
        let logits = [1.0, f32::INFINITY, 2.0, f32::INFINITY];
        assert_eq!(sampler(1.0, 0, 0.9, 1).sample(&logits).unwrap(), 1);
    }

    #[test]
    fn unusable_logits_are_an_error_not_a_panic() {
        for logits in [vec![], vec![f32::NAN; 4], vec![f32::NEG_INFINITY, f32::NAN]] {
            assert!(matches!(Sampler::new(SamplingParams::default()).unwrap().sample(&logits), Err(Error::Input(_))));
            assert!(matches!(sampler(1.0, 3, 0.9, 0).sample(&logits), Err(Error::Input(_))));
        }
    }

    #[test]
    fn invalid_params_are_rejected() {
        let base = SamplingParams::default();
        for params in [
            SamplingParams { temperature: -0.5, ..base },
            SamplingParams { temperature: f32::NAN, ..base },
            SamplingParams { temperature: f32::INFINITY, ..base },
            SamplingParams { top_p: 0.0, ..base },
            SamplingParams { top_p: 1.5, ..base },
            SamplingParams { top_p: f32::NAN, ..base },
        ] {
            assert!(matches!(params.validate(), Err(Error::Input(_))), "{params:?}");
            assert!(Sampler::new(params).is_err());
        }
        assert!(SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, seed: 1 }.validate().is_ok());
    }
}
