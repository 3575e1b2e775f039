//! Picks the next token from the model's logits: greedy, or temperature sampling narrowed by top-k
//! and top-p (nucleus), drawn from a seeded ChaCha8 generator so a seed replays the same text on
//! every platform, the browser included. Before that, the logits may be adjusted: a bias per token
//! (OpenAI's `logit_bias`), and penalties on the tokens already drawn in this reply (OpenAI's
//! frequency and presence penalties, CTRL's repetition penalty); see [`SamplingParams::adjust`].

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// The most `logit_bias` entries (OpenAI's limit is lower; this bounds the check and the upload).
pub const MAX_LOGIT_BIAS: usize = 1024;

/// How the next token is picked. The counts the penalties use are of the tokens sampled so far in
/// the current reply: every id the sampler returned since the generation started
/// ([`Sampler::start_reply`], called by [`crate::chat::session::Generator::generate`]); prompt
/// tokens never count. Each logit `l` of token `i`, drawn `c` times so far, becomes
///
/// ```text
/// l' = l + logit_bias[i]
/// if c > 0:  l' = l' / repetition_penalty  if l' > 0,  else l' · repetition_penalty
///            l' = l' − (frequency_penalty · c + presence_penalty)
/// ```
///
/// and greedy, temperature, top-k and top-p then work on `l'` as they would on `l`. With every
/// knob off (0, 0, 1, no bias) the logits are used as they come.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 picks the most likely token (greedy); higher values flatten the distribution.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps them all.
    pub top_k: usize,
    /// Keep the fewest most likely tokens whose probability adds up to at least `top_p`;
    /// 1.0 keeps them all.
    pub top_p: f32,
    pub seed: u64,
    /// OpenAI's: subtracted once per earlier occurrence in this reply (−2..=2; 0 = off).
    pub frequency_penalty: f32,
    /// OpenAI's: subtracted once if the token occurred in this reply (−2..=2; 0 = off).
    pub presence_penalty: f32,
    /// CTRL/Hugging Face's: a logit of a token that occurred in this reply is divided by it when positive, multiplied when negative (> 0; 1 = off).
    pub repetition_penalty: f32,
    /// Added to the token's logit before anything else (OpenAI's logit_bias: −100..=100 each; ids < vocab checked where the vocab is known).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    /// Greedy decoding: deterministic, and what the model's reference outputs use.
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Checks every value's range (not the bias ids against a vocabulary: [`Self::validate_ids`]).
    /// Each error names the field.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Input(format!("temperature must be a finite number >= 0, got {}", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Input(format!("top_p must be in (0, 1], got {}", self.top_p)));
        }
        for (name, value) in
            [("frequency_penalty", self.frequency_penalty), ("presence_penalty", self.presence_penalty)]
        {
            if !(-2.0..=2.0).contains(&value) {
                return Err(Error::Input(format!("{name} must be in [-2, 2], got {value}")));
            }
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            let value = self.repetition_penalty;
            return Err(Error::Input(format!("repetition_penalty must be a finite number > 0, got {value}")));
        }
        if self.logit_bias.len() > MAX_LOGIT_BIAS {
            let count = self.logit_bias.len();
            return Err(Error::Input(format!("logit_bias has {count} entries: at most {MAX_LOGIT_BIAS}")));
        }
        let mut seen = std::collections::HashSet::with_capacity(self.logit_bias.len());
        for &(id, bias) in &self.logit_bias {
            if !(-100.0..=100.0).contains(&bias) {
                return Err(Error::Input(format!("logit_bias of token {id} must be in [-100, 100], got {bias}")));
            }
            if !seen.insert(id) {
                return Err(Error::Input(format!("logit_bias names token {id} twice")));
            }
        }
        Ok(())
    }

    /// Every `logit_bias` id is a token of a vocabulary of `vocab_size`.
    pub fn validate_ids(&self, vocab_size: usize) -> Result<()> {
        match self.logit_bias.iter().find(|(id, _)| *id as usize >= vocab_size) {
            Some((id, _)) => {
                Err(Error::Input(format!("logit_bias token id {id} is out of range: vocab size is {vocab_size}")))
            }
            None => Ok(()),
        }
    }

    /// Whether the repetition counts change any logit (a penalty is on).
    pub fn penalizes_repeats(&self) -> bool {
        self.frequency_penalty != 0.0 || self.presence_penalty != 0.0 || self.repetition_penalty != 1.0
    }

    /// Whether any logit is adjusted before sampling: a penalty or a bias is on.
    pub fn adjusts_logits(&self) -> bool {
        self.penalizes_repeats() || !self.logit_bias.is_empty()
    }

    /// The rule in the type's documentation, for one logit whose token has bias `bias` and was
    /// drawn `count` times in this reply. The GPU sampler (`shaders/sample.wgsl`) applies the same.
    pub fn adjust(&self, logit: f32, bias: f32, count: u32) -> f32 {
        let mut l = logit + bias;
        if count > 0 {
            let r = self.repetition_penalty;
            l = if l > 0.0 { l / r } else { l * r };
            l -= self.frequency_penalty * count as f32 + self.presence_penalty;
        }
        l
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Scratch space for the tokens still in the running, kept between calls so that sampling from
    /// 256,000 logits does not allocate every token.
    candidates: Vec<Candidate>,
    /// How often each id was returned since [`Sampler::start_reply`]: what the penalties read.
    counts: HashMap<u32, u32>,
    /// Scratch space for the adjusted logits, used only when [`SamplingParams::adjusts_logits`].
    adjusted: Vec<f32>,
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
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Ok(Self { params, rng, candidates: Vec::new(), counts: HashMap::new(), adjusted: Vec::new() })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// New settings, and the random generator seeded anew from their seed, as [`Sampler::new`]
    /// would; the counts of this reply are kept (what has been drawn does not change).
    pub fn set_params(&mut self, params: SamplingParams) -> Result<()> {
        params.validate()?;
        self.rng = ChaCha8Rng::seed_from_u64(params.seed);
        self.params = params;
        Ok(())
    }

    /// A new reply starts: no token has been drawn in it yet, so none is penalised, and its
    /// draws start again from the seed (a reply depends on its seed, not on the replies before
    /// it, as on the GPU).
    pub fn start_reply(&mut self) {
        self.counts.clear();
        self.rng = ChaCha8Rng::seed_from_u64(self.params.seed);
    }

    /// How often `id` was drawn in this reply.
    pub fn count(&self, id: u32) -> u32 {
        self.counts.get(&id).copied().unwrap_or(0)
    }

    /// The next token id, from the logits adjusted as [`SamplingParams`] says, counted for the
    /// penalties of the tokens after it. NaN logits count as -inf (never chosen). A +inf logit is
    /// chosen outright (the lowest such id), as the limit of the softmax would. Greedy decoding
    /// draws no random number; every other call draws exactly one.
    ///
    /// Logits that are all NaN or -inf (or none at all) are an error rather than a made-up token:
    /// they mean the model's output is broken, and the caller should say so; so is a `logit_bias`
    /// id beyond the logits.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        self.sample_allowed(logits, None)
    }

    /// [`Sampler::sample`] among the ids `allowed` only (bit `i % 32` of word `i / 32`; a
    /// constrained reply's mask): the others count as −∞, after the bias and penalties.
    pub fn sample_allowed(&mut self, logits: &[f32], allowed: Option<&[u32]>) -> Result<u32> {
        let id = if self.needs_adjusting() || allowed.is_some() {
            self.params.validate_ids(logits.len())?;
            // Taken out of `self` while `draw` borrows it, then put back: no allocation per token.
            let mut adjusted = std::mem::take(&mut self.adjusted);
            adjusted.clear();
            adjusted.extend_from_slice(logits);
            self.adjust(&mut adjusted);
            if let Some(allowed) = allowed {
                apply_mask(&mut adjusted, allowed);
            }
            let id = self.draw(&adjusted);
            self.adjusted = adjusted;
            id?
        } else {
            self.draw(logits)?
        };
        *self.counts.entry(id).or_insert(0) += 1;
        Ok(id)
    }

    /// Whether any logit changes this time: a bias, or a penalty with something drawn already.
    fn needs_adjusting(&self) -> bool {
        !self.params.logit_bias.is_empty() || (self.params.penalizes_repeats() && !self.counts.is_empty())
    }

    /// Applies [`SamplingParams::adjust`] to the tokens it changes: those with a bias, then those
    /// drawn in this reply (a bias of 0 leaves a logit exactly as it was).
    fn adjust(&self, logits: &mut [f32]) {
        for &(id, bias) in &self.params.logit_bias {
            logits[id as usize] = self.params.adjust(logits[id as usize], bias, 0);
        }
        if self.params.penalizes_repeats() {
            for (&id, &count) in &self.counts {
                if let Some(logit) = logits.get_mut(id as usize) {
                    *logit = self.params.adjust(*logit, 0.0, count);
                }
            }
        }
    }

    /// Greedy, or a draw narrowed by top-k and top-p, from `logits` as they are.
    fn draw(&mut self, logits: &[f32]) -> Result<u32> {
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

/// Sets every logit the mask does not allow to −∞.
fn apply_mask(logits: &mut [f32], allowed: &[u32]) {
    for (i, logit) in logits.iter_mut().enumerate() {
        if allowed.get(i / 32).is_none_or(|w| w & (1 << (i % 32)) == 0) {
            *logit = f32::NEG_INFINITY;
        }
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
        Sampler::new(SamplingParams { temperature, top_k, top_p, seed, ..Default::default() }).unwrap()
    }

    /// The same cases as `sample.wgsl`'s (tests/kernels.rs `sample_draws_only_what_the_mask_allows`).
    #[test]
    fn a_mask_keeps_every_draw_among_its_ids() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32) / 10.0).collect();
        let allowed_ids = [3u32, 64, 65, 500, 999];
        let mut mask = vec![0u32; 1000usize.div_ceil(32)];
        for id in allowed_ids {
            mask[id as usize / 32] |= 1 << (id % 32);
        }
        let best = *allowed_ids.iter().max_by(|a, b| logits[**a as usize].total_cmp(&logits[**b as usize])).unwrap();
        assert_eq!(sampler(0.0, 0, 1.0, 0).sample_allowed(&logits, Some(&mask)).unwrap(), best);
        assert!(!allowed_ids.contains(&sampler(0.0, 0, 1.0, 0).sample(&logits).unwrap()));
        for (temperature, top_k, top_p) in [(1.0, 0, 1.0), (0.8, 2, 0.9), (5.0, 0, 1.0)] {
            let mut s = sampler(temperature, top_k, top_p, 7);
            for _ in 0..50 {
                assert!(allowed_ids.contains(&s.sample_allowed(&logits, Some(&mask)).unwrap()));
            }
        }
        let error = sampler(1.0, 0, 1.0, 0).sample_allowed(&logits, Some(&vec![0; mask.len()])).unwrap_err();
        assert!(error.to_string().contains("cannot sample"), "{error}");
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
            SamplingParams { temperature: -0.5, ..base.clone() },
            SamplingParams { temperature: f32::NAN, ..base.clone() },
            SamplingParams { temperature: f32::INFINITY, ..base.clone() },
            SamplingParams { top_p: 0.0, ..base.clone() },
            SamplingParams { top_p: 1.5, ..base.clone() },
            SamplingParams { top_p: f32::NAN, ..base.clone() },
        ] {
            assert!(matches!(params.validate(), Err(Error::Input(_))), "{params:?}");
            assert!(Sampler::new(params).is_err());
        }
        let good = SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, seed: 1, ..base };
        assert!(good.validate().is_ok());
    }

    /// Penalties and biases in f64, written out again from the rule in `SamplingParams`' docs.
    fn reference_adjust(params: &SamplingParams, logit: f32, id: u32, count: u32) -> f64 {
        let bias = params.logit_bias.iter().find(|(i, _)| *i == id).map_or(0.0, |&(_, b)| b as f64);
        let mut l = logit as f64 + bias;
        if count > 0 {
            let r = params.repetition_penalty as f64;
            l = if l > 0.0 { l / r } else { l * r };
            l -= params.frequency_penalty as f64 * count as f64 + params.presence_penalty as f64;
        }
        l
    }

    fn with(params: SamplingParams) -> Sampler {
        Sampler::new(params).unwrap()
    }

    #[test]
    fn frequency_penalty_is_subtracted_per_occurrence() {
        let params = SamplingParams { frequency_penalty: 0.5, ..Default::default() };
        let mut sampler = with(params.clone());
        sampler.counts.insert(1, 2);
        let mut logits = vec![1.0, 3.0, 2.25, -4.0];
        let before = logits.clone();
        sampler.adjust(&mut logits);
        assert_eq!(logits[1], before[1] - 1.0, "count 2 × 0.5 is exactly 1.0");
        assert_eq!((logits[0], logits[2], logits[3]), (before[0], before[2], before[3]), "undrawn tokens keep theirs");
        for (id, &logit) in before.iter().enumerate() {
            let count = sampler.count(id as u32);
            assert_eq!(logits[id] as f64, reference_adjust(&params, logit, id as u32, count));
        }
    }

    #[test]
    fn presence_penalty_is_subtracted_once_however_many_occurrences() {
        let params = SamplingParams { presence_penalty: 1.5, frequency_penalty: -0.25, ..Default::default() };
        let mut sampler = with(params);
        sampler.counts.insert(0, 1);
        sampler.counts.insert(2, 4);
        let mut logits = vec![2.0, 2.0, 2.0];
        sampler.adjust(&mut logits);
        assert_eq!(logits, [2.0 - (1.5 - 0.25), 2.0, 2.0 - (1.5 - 4.0 * 0.25)]);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let params = SamplingParams { repetition_penalty: 2.0, ..Default::default() };
        let mut sampler = with(params.clone());
        for id in [0, 1, 2] {
            sampler.counts.insert(id, 3);
        }
        let mut logits = vec![3.0, -3.0, 0.0, 5.0];
        sampler.adjust(&mut logits);
        assert_eq!(logits, [1.5, -6.0, 0.0, 5.0], "either way the token gets less likely; an undrawn one is kept");
        // Below 1 the penalty favours repeats instead.
        let mut sampler = with(SamplingParams { repetition_penalty: 0.5, ..params });
        sampler.counts.insert(0, 1);
        sampler.counts.insert(1, 1);
        let mut logits = vec![3.0, -3.0];
        sampler.adjust(&mut logits);
        assert_eq!(logits, [6.0, -1.5]);
    }

    #[test]
    fn bias_comes_before_the_repetition_rule() {
        // 1.0 + bias −3.0 = −2.0: negative, so multiplied, although the raw logit is positive.
        let params = SamplingParams { repetition_penalty: 1.5, logit_bias: vec![(0, -3.0)], ..Default::default() };
        let mut sampler = with(params.clone());
        sampler.counts.insert(0, 1);
        let mut logits = vec![1.0];
        sampler.adjust(&mut logits);
        assert_eq!(logits[0], -3.0);
        assert_eq!(logits[0] as f64, reference_adjust(&params, 1.0, 0, 1));
    }

    #[test]
    fn adjustments_match_the_reference_on_random_logits() {
        let params = SamplingParams {
            frequency_penalty: 0.3,
            presence_penalty: -0.7,
            repetition_penalty: 1.3,
            logit_bias: vec![(5, 2.5), (17, -100.0), (999, 0.75)],
            ..Default::default()
        };
        let mut sampler = with(params.clone());
        let logits = random_logits(1_000, 21);
        for (id, count) in [(5, 1), (17, 2), (40, 7), (41, 1)] {
            sampler.counts.insert(id, count);
        }
        let mut adjusted = logits.clone();
        sampler.adjust(&mut adjusted);
        for (id, (&raw, &got)) in logits.iter().zip(&adjusted).enumerate() {
            let want = reference_adjust(&params, raw, id as u32, sampler.count(id as u32));
            assert!((got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0), "token {id}: {got} vs {want}");
        }
    }

    #[test]
    fn a_bias_of_minus_100_bans_the_greedy_token_and_plus_100_forces_one() {
        let logits = random_logits(5_000, 3);
        let greedy = with(SamplingParams::default()).sample(&logits).unwrap();
        let banned = with(SamplingParams { logit_bias: vec![(greedy, -100.0)], ..Default::default() });
        let second = logits
            .iter()
            .zip(0u32..)
            .filter(|&(_, id)| id != greedy)
            .fold((f32::NEG_INFINITY, 0), |best, (&l, id)| if l > best.0 { (l, id) } else { best })
            .1;
        let mut banned = banned;
        assert_eq!(banned.sample(&logits).unwrap(), second);
        let weakest =
            logits.iter().zip(0u32..).fold((f32::INFINITY, 0), |w, (&l, id)| if l < w.0 { (l, id) } else { w });
        let forced = SamplingParams { temperature: 1.0, logit_bias: vec![(weakest.1, 100.0)], ..Default::default() };
        let mut forced = with(forced);
        assert!(draws(&mut forced, &logits, 20).iter().all(|&id| id == weakest.1), "+100 outweighs 5,000 others");
    }

    #[test]
    fn the_sampler_counts_what_it_returns_and_start_reply_forgets() {
        // Greedy with a frequency penalty of 1 over logits 0, 0.5, 2.2: token 2 until it has lost
        // 2 (count 2: 0.2 < 0.5), then token 1, then token 2 again (−0.8 vs −0.5)...
        let logits = [0.0, 0.5, 2.2];
        let params = SamplingParams { frequency_penalty: 1.0, ..Default::default() };
        let mut sampler = with(params.clone());
        let got = draws(&mut sampler, &logits, 6);
        // The reference: greedy over the adjusted logits, counting each pick.
        let mut counts = [0u32; 3];
        let mut want = Vec::new();
        for _ in 0..6 {
            let adjusted: Vec<f64> =
                (0..3).map(|i| reference_adjust(&params, logits[i], i as u32, counts[i])).collect();
            let pick = (0..3).fold(0, |best, i| if adjusted[i] > adjusted[best] { i } else { best });
            counts[pick] += 1;
            want.push(pick as u32);
        }
        assert_eq!(got, want);
        assert_ne!(got, [2; 6], "the penalty changed the picks");
        assert_eq!((0..3).map(|id| sampler.count(id)).collect::<Vec<_>>(), counts);
        sampler.start_reply();
        assert_eq!(sampler.count(2), 0);
        assert_eq!(sampler.sample(&logits).unwrap(), 2, "a new reply starts unpenalised");
    }

    #[test]
    fn set_params_keeps_the_counts_and_reseeds() {
        let logits = random_logits(100, 4);
        let hot = SamplingParams { temperature: 1.0, seed: 9, ..Default::default() };
        let mut sampler = with(hot.clone());
        let first = draws(&mut sampler, &logits, 5);
        let drawn: u32 = (0..100).map(|id| sampler.count(id)).sum();
        sampler.set_params(hot.clone()).unwrap();
        assert_eq!(draws(&mut sampler, &logits, 5), first, "the same seed replays");
        assert_eq!((0..100).map(|id| sampler.count(id)).sum::<u32>(), drawn + 5);
        assert!(sampler.set_params(SamplingParams { presence_penalty: 9.0, ..hot }).is_err());
    }

    #[test]
    fn with_every_knob_off_nothing_is_copied_or_changed() {
        let logits = random_logits(256_000, 8);
        let mut plain = with(SamplingParams { temperature: 0.9, top_k: 40, seed: 3, ..Default::default() });
        let mut zeroed = with(SamplingParams {
            temperature: 0.9,
            top_k: 40,
            seed: 3,
            frequency_penalty: 0.0,
            presence_penalty: -0.0,
            repetition_penalty: 1.0,
            ..Default::default()
        });
        assert!(!zeroed.params().adjusts_logits());
        assert_eq!(draws(&mut plain, &logits, 30), draws(&mut zeroed, &logits, 30));
        assert!(plain.adjusted.capacity() == 0, "no copy of the logits was made");
    }

    #[test]
    fn penalty_and_bias_errors_name_the_field() {
        let base = SamplingParams::default();
        let cases = [
            (SamplingParams { frequency_penalty: 3.0, ..base.clone() }, "frequency_penalty must be in [-2, 2], got 3"),
            (SamplingParams { frequency_penalty: f32::NAN, ..base.clone() }, "frequency_penalty"),
            (
                SamplingParams { presence_penalty: -2.5, ..base.clone() },
                "presence_penalty must be in [-2, 2], got -2.5",
            ),
            (SamplingParams { presence_penalty: f32::INFINITY, ..base.clone() }, "presence_penalty"),
            (
                SamplingParams { repetition_penalty: 0.0, ..base.clone() },
                "repetition_penalty must be a finite number > 0",
            ),
            (SamplingParams { repetition_penalty: -1.0, ..base.clone() }, "repetition_penalty"),
            (SamplingParams { repetition_penalty: f32::NAN, ..base.clone() }, "repetition_penalty"),
            (SamplingParams { repetition_penalty: f32::INFINITY, ..base.clone() }, "repetition_penalty"),
            (
                SamplingParams { logit_bias: vec![(3, 100.5)], ..base.clone() },
                "logit_bias of token 3 must be in [-100, 100]",
            ),
            (SamplingParams { logit_bias: vec![(3, f32::NAN)], ..base.clone() }, "logit_bias of token 3"),
            (SamplingParams { logit_bias: vec![(4, 1.0), (4, 2.0)], ..base.clone() }, "logit_bias names token 4 twice"),
            (
                SamplingParams {
                    logit_bias: (0..MAX_LOGIT_BIAS as u32 + 1).map(|i| (i, 1.0)).collect(),
                    ..base.clone()
                },
                "logit_bias has 1025 entries: at most 1024",
            ),
        ];
        for (params, message) in cases {
            let error = params.validate().unwrap_err().to_string();
            assert!(error.contains(message), "{params:?}: {error}");
            assert!(Sampler::new(params).is_err());
        }
        let edges = SamplingParams {
            frequency_penalty: -2.0,
            presence_penalty: 2.0,
            repetition_penalty: 1e-3,
            logit_bias: (0..MAX_LOGIT_BIAS as u32).map(|i| (i, if i % 2 == 0 { -100.0 } else { 100.0 })).collect(),
            ..base
        };
        assert!(edges.validate().is_ok());
        let error = edges.validate_ids(1000).unwrap_err().to_string();
        assert!(error.contains("logit_bias token id 1000 is out of range: vocab size is 1000"), "{error}");
        assert!(edges.validate_ids(1024).is_ok());
        // Where the vocabulary is only known from the logits, the sampler checks them there.
        let error = Sampler::new(edges).unwrap().sample(&[0.0; 10]).unwrap_err().to_string();
        assert!(error.contains("logit_bias token id 10 is out of range"), "{error}");
    }
}
