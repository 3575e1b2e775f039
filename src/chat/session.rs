//! Generation over either backend, and multi-turn chat on top of it. A chat turn prefills only
//! its own new tokens: the state after the previous reply is kept, so the cost of a turn does not
//! grow with the conversation, and neither does memory.

use std::cell::{Cell, RefCell};

use super::figures::TurnFigures;
use super::sampler::{Sampler, SamplingParams};
use super::saved::{BackendKind, StateParts};
use super::stop::{StopStrings, StopText};
use super::structured::{Constraint, OutputFormat, Vocabulary};
use super::template::{first_user_turn, next_user_turn, Role, Turn, CHAT_STOPS};
use super::tokenizer::{GemmaTokenizer, TextStream, BOS};
use crate::gpu::engine::{Engine, Snapshot};
use crate::gpu::kernels::CHUNK;
use crate::model::{Model, State};
use crate::{Error, Result};
use web_time::Instant;

/// Where the forward pass runs.
pub enum Backend {
    /// The CPU reference: samples on the host.
    Cpu { model: Box<Model>, state: State, sampler: Box<Sampler> },
    /// The WebGPU engine: samples on the device; only token ids come back.
    Gpu { engine: Box<Engine> },
}

/// The furthest position a saved state may hold.
const MAX_SAVED_POSITION: usize = i32::MAX as usize;

/// A saved conversation state to return to (e.g. to regenerate a reply).
pub enum Checkpoint {
    Cpu(State),
    Gpu(Snapshot),
}

/// How long the last [`Generator::generate`] took, split at its first sampled token.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timing {
    pub prefill_tokens: usize,
    pub prefill_seconds: f64,
    pub decoded_tokens: usize,
    pub decode_seconds: f64,
}

impl Timing {
    pub fn prefill_tokens_per_second(&self) -> f64 {
        rate(self.prefill_tokens, self.prefill_seconds)
    }

    pub fn decode_tokens_per_second(&self) -> f64 {
        rate(self.decoded_tokens, self.decode_seconds)
    }

    /// From the start of the generation until its first token was known: the prefill, and on
    /// the GPU the first id's way back. What a user waits before the reply starts.
    pub fn time_to_first_token_seconds(&self) -> f64 {
        self.prefill_seconds
    }
}

fn rate(tokens: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        tokens as f64 / seconds
    } else {
        0.0
    }
}

/// Prompts longer than this are fed in pieces of this many tokens (a whole number of the GPU
/// engine's chunks, so the state ends exactly as after one prefill), with a chance to stop between
/// pieces: an abort must not wait for a long prompt to finish.
const PREFILL_PIECE: usize = CHUNK;

/// Where a generation's text goes, and whether it should go on. A closure `FnMut(&str) -> bool`
/// is one: it receives each piece of text and returns false to stop.
pub trait Listener {
    /// A piece of the reply's text as it completes; false stops the generation.
    fn text(&mut self, piece: &str) -> bool;

    /// Asked before the prompt is fed, between its pieces and after every token, whether or not
    /// that token completed any text: true stops the generation there.
    fn stopped(&self) -> bool {
        false
    }

    /// The figures of the reply so far, after every token (for a live speed readout).
    fn live(&mut self, _live: &TurnFigures) {}
}

impl<F: FnMut(&str) -> bool> Listener for F {
    fn text(&mut self, piece: &str) -> bool {
        self(piece)
    }
}

/// A [`Listener`] of two closures: the text goes to `on_text`, and `stopped` is asked whenever
/// the generation may stop (it reads a Stop button's flag, say).
pub struct Stoppable<T, S> {
    pub on_text: T,
    pub stopped: S,
}

impl<T: FnMut(&str) -> bool, S: Fn() -> bool> Listener for Stoppable<T, S> {
    fn text(&mut self, piece: &str) -> bool {
        (self.on_text)(piece)
    }

    fn stopped(&self) -> bool {
        (self.stopped)()
    }
}

/// Buffers of another layout may have the same sizes: restoring them would be garbage.
fn check_layout(parts: &StateParts, layout: u16) -> Result<()> {
    if parts.layout == layout {
        return Ok(());
    }
    Err(Error::Input(format!(
        "saved state: its buffers are in state layout {}, this engine reads layout {layout}: nothing was restored",
        parts.layout
    )))
}

/// The same on both backends: the GPU engine could continue from its pending token, but the state
/// would then hold a token no history records.
fn check_prompt(prompt: &[u32]) -> Result<()> {
    if prompt.is_empty() {
        return Err(Error::Input("nothing to prefill: the prompt is empty".into()));
    }
    Ok(())
}

fn check_max_tokens(max_tokens: usize) -> Result<()> {
    if max_tokens == 0 {
        return Err(Error::Input("max_tokens must be at least 1".into()));
    }
    Ok(())
}

/// Token-level generation: prefill some ids, then one token at a time.
pub struct Generator {
    backend: Backend,
    timing: Timing,
    /// What the next [`Generator::generate`] is held to ([`Generator::constrain_next_reply`]).
    constraint: Option<Constraint>,
    /// How long each mask of the last constrained generation took ([`Constraint::mask_seconds`]).
    mask_seconds: Vec<f64>,
}

impl Generator {
    pub fn cpu(model: Model, params: SamplingParams) -> Result<Self> {
        let state = State::new(&model.config);
        Ok(Generator {
            backend: Backend::Cpu { model: Box::new(model), state, sampler: Box::new(Sampler::new(params)?) },
            timing: Timing::default(),
            constraint: None,
            mask_seconds: Vec::new(),
        })
    }

    pub fn gpu(mut engine: Engine, params: SamplingParams) -> Result<Self> {
        if let Err(e) = engine.set_sampling(&params) {
            // The engine is consumed here: free its GPU memory now (on the web, dropping it does not).
            engine.destroy();
            return Err(e);
        }
        Ok(Generator {
            backend: Backend::Gpu { engine: Box::new(engine) },
            timing: Timing::default(),
            constraint: None,
            mask_seconds: Vec::new(),
        })
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Timing of the last [`Generator::generate`].
    pub fn timing(&self) -> Timing {
        self.timing
    }

    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::Cpu { model, .. } => model.config.vocab_size,
            Backend::Gpu { engine } => engine.config.vocab_size,
        }
    }

    pub fn eos_token_id(&self) -> u32 {
        match &self.backend {
            Backend::Cpu { model, .. } => model.config.eos_token_id,
            Backend::Gpu { engine } => engine.config.eos_token_id,
        }
    }

    /// Tokens in the state so far.
    pub fn position(&self) -> usize {
        match &self.backend {
            Backend::Cpu { state, .. } => state.position,
            Backend::Gpu { engine } => engine.position(),
        }
    }

    /// Bytes of the conversation state: fixed for a model, however long the conversation.
    pub fn state_bytes(&self) -> u64 {
        match &self.backend {
            Backend::Cpu { state, .. } => state.size_bytes() as u64,
            Backend::Gpu { engine } => engine.state_bytes(),
        }
    }

    /// GPU bytes of the weights and of every buffer the engine made (both 0 on the CPU).
    pub fn gpu_bytes(&self) -> (u64, u64) {
        match &self.backend {
            Backend::Cpu { .. } => (0, 0),
            Backend::Gpu { engine } => (engine.weight_bytes(), engine.memory_bytes()),
        }
    }

    /// Whether the GPU device is gone: the engine has to be made again.
    pub fn device_lost(&self) -> bool {
        match &self.backend {
            Backend::Cpu { .. } => false,
            Backend::Gpu { engine } => engine.context().is_lost(),
        }
    }

    /// Whether the engine met a GPU error it keeps failing with (a lost device is one): only
    /// loading the model again helps.
    pub fn broken(&self) -> bool {
        match &self.backend {
            Backend::Cpu { .. } => false,
            Backend::Gpu { engine } => engine.context().has_failed(),
        }
    }

    /// Frees the engine's GPU memory now instead of when the buffers are dropped.
    pub fn destroy(self) {
        if let Backend::Gpu { engine } = self.backend {
            engine.destroy();
        }
    }

    pub fn set_sampling(&mut self, params: SamplingParams) -> Result<()> {
        match &mut self.backend {
            Backend::Cpu { sampler, .. } => sampler.set_params(params)?,
            Backend::Gpu { engine } => engine.set_sampling(&params)?,
        }
        Ok(())
    }

    /// Holds the next [`Generator::generate`] (only that one) to `constraint`: each token is drawn
    /// among those it allows. On the GPU its steps then run one at a time, each waiting for the
    /// host's mask.
    pub fn constrain_next_reply(&mut self, constraint: Constraint) {
        self.constraint = Some(constraint);
    }

    /// How long each mask of the last generation took (none if it was not constrained).
    pub fn mask_seconds(&self) -> &[f64] {
        &self.mask_seconds
    }

    /// The GPU's draws are free again (a constrained generation ended, however it ended).
    fn unconstrain(&mut self) {
        if let Backend::Gpu { engine } = &mut self.backend {
            engine.unconstrain();
        }
    }

    /// A new reply starts: the counts of tokens drawn in it, which the repetition penalties
    /// read, start from zero. [`Generator::generate`] calls it.
    pub fn start_reply(&mut self) {
        match &mut self.backend {
            Backend::Cpu { sampler, .. } => sampler.start_reply(),
            Backend::Gpu { engine } => engine.start_reply(),
        }
    }

    /// Forgets everything: the next prefill starts a new document.
    pub fn reset(&mut self) {
        match &mut self.backend {
            Backend::Cpu { model, state, .. } => *state = State::new(&model.config),
            Backend::Gpu { engine } => engine.reset(),
        }
    }

    pub fn checkpoint(&self) -> Checkpoint {
        match &self.backend {
            Backend::Cpu { state, .. } => Checkpoint::Cpu(state.clone()),
            Backend::Gpu { engine } => Checkpoint::Gpu(engine.snapshot()),
        }
    }

    pub fn restore(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        match (&mut self.backend, checkpoint) {
            (Backend::Cpu { state, .. }, Checkpoint::Cpu(saved)) => *state = saved.clone(),
            (Backend::Gpu { engine }, Checkpoint::Gpu(snapshot)) => engine.restore(snapshot)?,
            _ => return Err(Error::Input("checkpoint from the other backend".into())),
        }
        Ok(())
    }

    /// A checkpoint's contents as bytes (on the GPU, read back), to keep outside the engine.
    pub async fn checkpoint_parts(&self, checkpoint: &Checkpoint) -> Result<StateParts> {
        match (&self.backend, checkpoint) {
            (Backend::Cpu { .. }, Checkpoint::Cpu(state)) => Ok(StateParts {
                backend: BackendKind::Cpu,
                layout: crate::model::state::STATE_LAYOUT,
                position: state.position as u64,
                generated: 0,
                buffers: state.arrays().map(|a| bytemuck::cast_slice(a).to_vec()).collect(),
            }),
            (Backend::Gpu { engine }, Checkpoint::Gpu(snapshot)) => Ok(StateParts {
                backend: BackendKind::Gpu,
                layout: crate::gpu::engine::STATE_LAYOUT,
                position: snapshot.position() as u64,
                generated: snapshot.generated(),
                buffers: engine.snapshot_bytes(snapshot).await?,
            }),
            _ => Err(Error::Input("checkpoint from the other backend".into())),
        }
    }

    /// A checkpoint of this generator's model from [`Generator::checkpoint_parts`]' bytes; ones
    /// of another backend or shape are refused.
    pub fn checkpoint_from_parts(&self, parts: &StateParts) -> Result<Checkpoint> {
        // Positions feed RoPE and the ring slots as 32-bit values on the GPU.
        let position = usize::try_from(parts.position)
            .ok()
            .filter(|&p| p <= MAX_SAVED_POSITION)
            .ok_or_else(|| Error::Input(format!("saved state: position {} is too large", parts.position)))?;
        match &self.backend {
            Backend::Cpu { model, .. } => {
                if parts.backend != BackendKind::Cpu {
                    return Err(Error::Input("saved state: taken by the GPU engine, not the CPU reference".into()));
                }
                check_layout(parts, crate::model::state::STATE_LAYOUT)?;
                let mut state = State::new(&model.config);
                let arrays = state.arrays().count();
                let fits = parts.buffers.len() == arrays
                    && state.arrays().zip(&parts.buffers).all(|(a, bytes)| 4 * a.len() == bytes.len());
                if !fits {
                    return Err(Error::Input("saved state: its arrays do not fit this model's".into()));
                }
                for (array, bytes) in state.arrays_mut().zip(&parts.buffers) {
                    for (value, word) in array.iter_mut().zip(bytes.chunks_exact(4)) {
                        *value = f32::from_le_bytes(word.try_into().expect("4 bytes"));
                    }
                }
                state.position = position;
                Ok(Checkpoint::Cpu(state))
            }
            Backend::Gpu { engine } => {
                if parts.backend != BackendKind::Gpu {
                    return Err(Error::Input("saved state: taken by the CPU reference, not the GPU engine".into()));
                }
                check_layout(parts, crate::gpu::engine::STATE_LAYOUT)?;
                let snapshot = engine.snapshot_from_bytes(&parts.buffers, position, parts.generated)?;
                Ok(Checkpoint::Gpu(snapshot))
            }
        }
    }

    /// Feeds `ids` without sampling.
    async fn feed(&mut self, ids: &[u32]) -> Result<()> {
        match &mut self.backend {
            Backend::Cpu { model, state, .. } => model.forward(ids, state).map(drop),
            Backend::Gpu { engine } => engine.feed(ids).await,
        }
    }

    /// A prompt is fed only if it is not empty and every id is in the vocabulary: all are checked
    /// before any is fed, so a bad id never leaves a prompt half fed.
    fn check_prompt(&self, prompt: &[u32]) -> Result<()> {
        check_prompt(prompt)?;
        let vocab_size = self.vocab_size();
        if let Some(id) = prompt.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(Error::Input(format!("token id {id} is out of range: vocab size is {vocab_size}")));
        }
        Ok(())
    }

    /// Feeds all of `ids` without sampling, in pieces, asking `stopped` before each and handing
    /// `progress` the tokens fed so far after each. Returns false when it was told to stop: the
    /// state is then as it was before the call.
    pub async fn feed_history(
        &mut self,
        ids: &[u32],
        stopped: impl Fn() -> bool,
        mut progress: impl FnMut(usize),
    ) -> Result<bool> {
        self.check_prompt(ids)?;
        let before = self.checkpoint();
        let mut fed = 0;
        for piece in ids.chunks(PREFILL_PIECE) {
            if stopped() {
                self.restore(&before)?;
                return Ok(false);
            }
            self.feed(piece).await?;
            fed += piece.len();
            progress(fed);
        }
        Ok(true)
    }

    /// Feeds all of `prompt` but its last piece (never empty), piece by piece, asking `stopped`
    /// before each piece; returns that last piece. None when it said stop: the state is then as
    /// it was before the call.
    async fn feed_unless_stopped<'p>(
        &mut self,
        prompt: &'p [u32],
        stopped: &impl Fn() -> bool,
    ) -> Result<Option<&'p [u32]>> {
        if stopped() {
            return Ok(None);
        }
        let last_start = prompt.len().saturating_sub(1) / PREFILL_PIECE * PREFILL_PIECE;
        let (leading, last) = prompt.split_at(last_start);
        if !leading.is_empty() {
            let before = self.checkpoint();
            for piece in leading.chunks(PREFILL_PIECE) {
                self.feed(piece).await?;
                if stopped() {
                    self.restore(&before)?;
                    return Ok(None);
                }
            }
        }
        Ok(Some(last))
    }

    /// Prefills `prompt`, then samples until a stop token or `max_tokens` (at least 1), handing
    /// each generated id to `on_token` (which returns false to stop early). `stopped` is asked
    /// before and during the prefill (a stop there leaves the state as it was) and after every
    /// token. The state ends holding every generated token; a stop token is not fed.
    ///
    /// On the GPU the decode steps run [`crate::gpu::engine::STEPS_IN_FLIGHT`] ahead of `on_token`: after an early
    /// stop, the tokens the steps already queued drew (at most `STEPS_IN_FLIGHT − 1`) are part
    /// of the state, so they are handed to `on_token` too and returned; `max_tokens` and stop
    /// tokens are exact.
    pub async fn generate(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        stops: &[u32],
        stopped: impl Fn() -> bool,
        mut on_token: impl FnMut(u32) -> Result<bool>,
    ) -> Result<Vec<u32>> {
        let mut constraint = self.constraint.take();
        check_max_tokens(max_tokens)?;
        self.check_prompt(prompt)?;
        let mut generated = Vec::new();
        self.timing = Timing::default();
        self.mask_seconds.clear();
        self.start_reply();
        let start = Instant::now();
        let Some(last_piece) = self.feed_unless_stopped(prompt, &stopped).await? else {
            return Ok(generated);
        };
        let mut next = match self.begin(last_piece, max_tokens, stops, constraint.as_mut()).await {
            Ok(next) => next,
            Err(e) => {
                self.unconstrain();
                return Err(e);
            }
        };
        self.timing.prefill_tokens = prompt.len();
        self.timing.prefill_seconds = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let mut stopped_by_token = false;
        // An error from `on_token` or the GPU still ends the generation properly (the GPU's
        // queued steps are waited for), so the next one starts from a consistent state.
        let mut failure = None;
        loop {
            if stops.contains(&next) {
                stopped_by_token = true;
                break;
            }
            generated.push(next);
            let wanted = match on_token(next) {
                Ok(wanted) => wanted && !stopped(),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            if !wanted || generated.len() == max_tokens {
                break;
            }
            if let Some(constraint) = constraint.as_mut() {
                if let Err(e) = constraint.commit(next) {
                    failure = Some(e);
                    break;
                }
            }
            match self.draw_after(next, stops, constraint.as_mut()).await {
                Ok(token) => next = token,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let rest = self.end(generated.last().copied(), stopped_by_token).await;
        self.unconstrain();
        self.mask_seconds = constraint.map(|c| c.mask_seconds().to_vec()).unwrap_or_default();
        if let Some(e) = failure {
            return Err(e);
        }
        for id in rest? {
            generated.push(id);
            on_token(id)?;
        }
        self.timing.decoded_tokens = generated.len();
        self.timing.decode_seconds = start.elapsed().as_secs_f64();
        Ok(generated)
    }

    /// Prefills the prompt's last piece and draws the first token; on the GPU, also queues the
    /// generation's decode steps, which halt on `stops`.
    async fn begin(
        &mut self,
        last_piece: &[u32],
        max_tokens: usize,
        stops: &[u32],
        constraint: Option<&mut Constraint>,
    ) -> Result<u32> {
        let allowed = match constraint {
            Some(constraint) => Some(constraint.allowed(stops)?),
            None => None,
        };
        match &mut self.backend {
            Backend::Cpu { model, state, sampler } => {
                let logits = model.forward(last_piece, state)?;
                sampler.sample_allowed(&logits[logits.len() - model.config.vocab_size..], allowed)
            }
            Backend::Gpu { engine } => {
                engine.set_stops(stops)?;
                if let Some(allowed) = allowed {
                    engine.allow(allowed)?;
                }
                engine.start(last_piece, max_tokens)?;
                engine.next_token().await?.ok_or_else(|| Error::Gpu("the prefill drew no token".into()))
            }
        }
    }

    /// The token drawn after feeding `token`, the last one drawn (among those `constraint`
    /// allows next, if any).
    async fn draw_after(&mut self, token: u32, stops: &[u32], constraint: Option<&mut Constraint>) -> Result<u32> {
        let allowed = match constraint {
            Some(constraint) => Some(constraint.allowed(stops)?),
            None => None,
        };
        match &mut self.backend {
            Backend::Cpu { model, state, sampler } => sampler.sample_allowed(&model.step(token, state)?, allowed),
            Backend::Gpu { engine } => {
                if let Some(allowed) = allowed {
                    engine.allow(allowed)?;
                }
                engine.next_token().await?.ok_or_else(|| Error::Gpu("the generation ended early".into()))
            }
        }
    }

    /// Ends a generation whose last handed-out token is `last`: feeds it unless a stop token
    /// ended the generation (on the GPU the queued step already does), and returns the tokens
    /// the GPU's queued steps drew beyond it, which the state now holds.
    async fn end(&mut self, last: Option<u32>, stopped_by_token: bool) -> Result<Vec<u32>> {
        match &mut self.backend {
            Backend::Cpu { model, state, .. } => {
                if let (Some(last), false) = (last, stopped_by_token) {
                    model.step(last, state)?;
                }
                Ok(Vec::new())
            }
            Backend::Gpu { engine } => engine.finish().await,
        }
    }
}

impl Generator {
    /// [`Generator::generate`] with the ids turned into text as it completes: each piece goes to
    /// `listener`, which can stop the generation. Returns the ids and the whole text.
    pub async fn generate_text(
        &mut self,
        tokenizer: &GemmaTokenizer,
        prompt: &[u32],
        max_tokens: usize,
        stops: &[u32],
        listener: impl Listener,
    ) -> Result<(Vec<u32>, String)> {
        let mut stream = TextStream::new();
        let mut text = String::new();
        // Asked whether to stop between the pieces it is given: never borrowed twice at once.
        let listener = RefCell::new(listener);
        let start = Instant::now();
        let mut live = TurnFigures { prompt_tokens: prompt.len() as u64, ..TurnFigures::default() };
        let ids = self
            .generate(
                prompt,
                max_tokens,
                stops,
                || listener.borrow().stopped(),
                |id| {
                    let seconds = start.elapsed().as_secs_f64();
                    live.generated_tokens += 1;
                    if live.generated_tokens == 1 {
                        live.time_to_first_token_seconds = seconds;
                        live.prefill_tokens_per_second = rate(prompt.len(), seconds);
                    } else {
                        let decoding = seconds - live.time_to_first_token_seconds;
                        live.decode_tokens_per_second = rate(live.generated_tokens as usize - 1, decoding);
                    }
                    listener.borrow_mut().live(&live);
                    Ok(match stream.push(tokenizer, id)? {
                        Some(piece) => {
                            text.push_str(&piece);
                            listener.borrow_mut().text(&piece)
                        }
                        None => true,
                    })
                },
            )
            .await?;
        if let Some(rest) = stream.finish() {
            text.push_str(&rest);
            listener.into_inner().text(&rest);
        }
        Ok((ids, text))
    }
}

/// Why a reply ended (OpenAI's `finish_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The model ended its turn, or a stop string came.
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The caller stopped it (`abort()`, a Stop button).
    Abort,
}

impl Finish {
    pub fn name(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Abort => "abort",
        }
    }
}

/// One reply of a chat.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Every id the reply generated (past a stop string too).
    pub ids: Vec<u32>,
    /// The reply's text, cut before the first stop string.
    pub text: String,
    /// Tokens fed for this turn, the only prefill the turn needed; 0 when it was stopped before
    /// its prefill ended (the state is then as it was before the turn).
    pub prefilled: usize,
    /// Tokens fed again after the reply, so that the state holds it as its text tokenizes (see
    /// `ChatSession::hold_reply_as_text`): 0 when it was sampled that way.
    pub refed: usize,
    /// The whole prompt's tokens: the conversation so far plus the new turn (OpenAI's
    /// `prompt_tokens`); more than `prefilled` when the state already held a prefix of it.
    pub prompt_tokens: usize,
    pub finish: Finish,
    pub timing: Timing,
}

/// A copy of the conversation's state, with the ids it holds when they are known.
pub struct SavedTurn {
    pub checkpoint: Checkpoint,
    pub history: Option<Vec<u32>>,
}

/// Checkpoints a session keeps of its conversation's earlier turns, newest last: a request that
/// branches from an earlier turn (an edited message, a regenerated reply) restores the longest
/// one its messages extend instead of prefilling the whole conversation. Each costs one state
/// (33 MiB for the 2B), so only the last few are kept.
pub const SAVED_TURNS: usize = 3;

/// A Gemma chat: user turns in, model replies out, the state carried from turn to turn.
pub struct ChatSession {
    generator: Generator,
    tokenizer: GemmaTokenizer,
    /// The ids the state held before the last message `send` sent, and that message: what
    /// `regenerate` replays, from the saved turn holding those ids.
    regenerable: Option<(Vec<u32>, String)>,
    /// The ids the state holds, in order (its `position` of them); None after a failure left
    /// them unknown, when no later request can reuse the state.
    history: Option<Vec<u32>>,
    /// The one list of states to return to, each with the ids it holds, newest last: at most
    /// [`SAVED_TURNS`] for `answer`'s branches, the one before the last message for `send`.
    saved: Vec<(Vec<u32>, Checkpoint)>,
    /// Strings that end a reply where they appear (OpenAI's `stop`), cut from its text.
    stop_strings: StopStrings,
    /// The vocabulary as the grammar engine reads it: built for the first constrained reply.
    vocabulary: Option<Vocabulary>,
    /// What the replies to come are held to, compiled and not yet advanced; None: free text.
    output: Option<Constraint>,
}

impl ChatSession {
    pub fn new(generator: Generator, tokenizer: GemmaTokenizer) -> Self {
        ChatSession {
            generator,
            tokenizer,
            regenerable: None,
            history: Some(Vec::new()),
            saved: Vec::new(),
            stop_strings: StopStrings::default(),
            vocabulary: None,
            output: None,
        }
    }

    /// The stop strings of the replies to come (none: only the model's own end of turn).
    pub fn set_stop_strings(&mut self, stops: StopStrings) {
        self.stop_strings = stops;
    }

    /// What the replies to come must be: free text, JSON (against a schema) or a grammar's
    /// language. The schema or grammar is compiled here, so one that does not compile is an
    /// error naming `field`, and the output is then as it was.
    pub fn set_output(&mut self, format: &OutputFormat, field: &str) -> Result<()> {
        if format.is_text() {
            self.output = None;
            return Ok(());
        }
        let vocabulary = match &mut self.vocabulary {
            Some(vocabulary) => vocabulary,
            empty => empty.insert(Vocabulary::new(&self.tokenizer, self.generator.vocab_size())?),
        };
        self.output = vocabulary.constraint(format, field)?;
        Ok(())
    }

    pub fn generator(&mut self) -> &mut Generator {
        &mut self.generator
    }

    pub fn into_generator(self) -> Generator {
        self.generator
    }

    pub fn generator_ref(&self) -> &Generator {
        &self.generator
    }

    /// The ids the state holds, when known.
    pub fn history(&self) -> Option<&[u32]> {
        self.history.as_deref()
    }

    /// Continues the conversation's token stream with `text` as it is (no chat template), then
    /// generates until `<eos>`, `max_tokens` or a stop string: plain completion, for base models.
    pub async fn complete(&mut self, text: &str, max_tokens: usize, listener: impl Listener) -> Result<Reply> {
        check_max_tokens(max_tokens)?;
        let prompt = self.tokenizer.encode(text, self.generator.position() == 0)?;
        self.regenerable = None;
        self.reply(&prompt, max_tokens, false, listener).await
    }

    /// Feeds `prompt` and generates until `<eos>` (and, in a chat, `<end_of_turn>`), `max_tokens`
    /// or a stop string; the history follows what the state holds.
    async fn reply(&mut self, prompt: &[u32], max_tokens: usize, chat: bool, listener: impl Listener) -> Result<Reply> {
        // Refused before the generation, which would leave the history unknown on any error.
        check_prompt(prompt)?;
        let eos = self.generator.eos_token_id();
        let mut stops = vec![eos];
        if chat {
            stops.extend(CHAT_STOPS);
        }
        let listener = RefCell::new(listener);
        let stop = RefCell::new(StopText::new(&self.stop_strings));
        let aborted = Cell::new(false);
        let cut = CutAtStopText { listener: &listener, stop: &stop, aborted: &aborted };
        if let Some(output) = &self.output {
            self.generator.constrain_next_reply(output.fresh());
        }
        let generated = self.generator.generate_text(&self.tokenizer, prompt, max_tokens, &stops, cut).await;
        let ids = match generated {
            Ok((ids, _)) => ids,
            Err(e) => {
                // Some of the reply may be in the state: which ids it holds is not known.
                self.history = None;
                return Err(e);
            }
        };
        let timing = self.generator.timing();
        // A stop during the prefill took it back: nothing of this turn is in the state.
        if timing.prefill_tokens > 0 {
            if let Some(history) = &mut self.history {
                history.extend_from_slice(prompt);
                history.extend_from_slice(&ids);
            }
        }
        let mut stop = stop.into_inner();
        let rest = stop.finish();
        let mut listener = listener.into_inner();
        if !rest.is_empty() {
            listener.text(&rest);
        }
        let finish = if aborted.get() {
            Finish::Abort
        } else if stop.hit() || ids.len() < max_tokens {
            Finish::Stop
        } else {
            Finish::Length
        };
        let text = stop.text().to_string();
        let refed =
            if chat && timing.prefill_tokens > 0 { self.hold_reply_as_text(prompt, &ids, &text).await? } else { 0 };
        Ok(Reply { ids, text, prefilled: timing.prefill_tokens, refed, prompt_tokens: prompt.len(), finish, timing })
    }

    /// Leaves the state holding the reply as its text tokenizes (`ids` were fed after `prompt`),
    /// feeding the turn again from the state before it when the sampled ids differ: a reply
    /// comes back in the next request as text, which need not tokenize to the ids it was
    /// sampled as (nor does a reply cut by a stop string or trimmed by the template). So the
    /// state after every turn is what one prefill of the visible conversation leaves, whichever
    /// engine holds it: a warm one, one restored from saved bytes, or a new one. Returns the
    /// tokens fed again (0 when the reply was sampled as its text tokenizes, as usual).
    async fn hold_reply_as_text(&mut self, prompt: &[u32], ids: &[u32], text: &str) -> Result<usize> {
        let as_text = self.tokenizer.encode(text.trim(), false)?;
        let Some(history) = self.history.as_ref().filter(|_| as_text != ids) else {
            return Ok(0);
        };
        let before = history[..history.len() - prompt.len() - ids.len()].to_vec();
        // Every chat turn keeps the state it started from as a saved turn (or started afresh).
        if !self.return_to(&before)? {
            return Ok(0);
        }
        let turn: Vec<u32> = prompt.iter().chain(&as_text).copied().collect();
        for piece in turn.chunks(PREFILL_PIECE) {
            if let Err(e) = self.generator.feed(piece).await {
                self.history = None;
                return Err(e);
            }
        }
        self.history = Some([before, turn.clone()].concat());
        Ok(turn.len())
    }

    /// Starts a new conversation, remembering nothing of the old one, not even its saved turns
    /// (a state each), so that the session answers the next request as a new one would.
    pub fn reset(&mut self) {
        self.generator.reset();
        self.regenerable = None;
        self.history = Some(Vec::new());
        self.saved.clear();
    }

    /// A copy of the conversation's state and the ids it holds.
    pub fn save(&self) -> SavedTurn {
        SavedTurn { checkpoint: self.generator.checkpoint(), history: self.history.clone() }
    }

    /// Returns to a saved state: the conversation continues from there.
    pub fn restore(&mut self, saved: &SavedTurn) -> Result<()> {
        self.generator.restore(&saved.checkpoint)?;
        self.history = saved.history.clone();
        self.regenerable = None;
        Ok(())
    }

    /// Answers the last message again from the state before it (a new seed, set with
    /// [`Generator::set_sampling`], gives a different reply).
    pub async fn regenerate(&mut self, max_tokens: usize, listener: impl Listener) -> Result<Reply> {
        check_max_tokens(max_tokens)?;
        let (history, message) =
            self.regenerable.take().ok_or_else(|| Error::Input("there is no reply to regenerate".into()))?;
        if !self.return_to(&history)? {
            return Err(Error::Input("the state before the last message is no longer kept".into()));
        }
        self.history = Some(history);
        self.send(&message, max_tokens, listener).await
    }

    /// The ids this message adds to the conversation: the whole first turn with <bos>, or the
    /// close of the previous reply and the new turn.
    pub fn turn_ids(&self, message: &str) -> Result<Vec<u32>> {
        if self.generator.position() == 0 {
            let mut ids = vec![BOS];
            ids.extend(self.tokenizer.encode(&first_user_turn(message), false)?);
            Ok(ids)
        } else {
            self.tokenizer.encode(&next_user_turn(message), false)
        }
    }

    /// Sends `message` and streams the reply's text to `listener` as it completes (which can
    /// stop it, as a Stop button does).
    pub async fn send(&mut self, message: &str, max_tokens: usize, listener: impl Listener) -> Result<Reply> {
        check_max_tokens(max_tokens)?;
        let prompt = self.turn_ids(message)?;
        // A chat through `send` only ever returns to the turn before its last message.
        self.keep_turn(1);
        self.regenerable = self.history.clone().map(|history| (history, message.to_string()));
        self.reply(&prompt, max_tokens, true, listener).await
    }

    /// Answers a whole conversation (the OpenAI way: every request carries all the messages),
    /// prefilling only what the state does not hold yet. The state is reused when it holds a
    /// prefix of the conversation's ids (the previous request and its reply, extended); else
    /// the longest saved turn the conversation extends is restored; else it starts afresh. Every
    /// reply is read as its (trimmed) text, and the state after a reply holds it that way too,
    /// so the state ends as one prefill of [`ChatSession::conversation_ids`] would leave it, and
    /// a warm session, a restored one and a new one answer the same messages alike.
    pub async fn answer(&mut self, turns: &[Turn], max_tokens: usize, listener: impl Listener) -> Result<Reply> {
        check_max_tokens(max_tokens)?;
        let ids = self.conversation_ids(turns)?;
        self.resume_longest_prefix(&ids)?;
        let reused = self.history.as_ref().map_or(0, Vec::len);
        self.regenerable = None;
        let mut reply = self.reply(&ids[reused..], max_tokens, true, listener).await?;
        reply.prompt_tokens = ids.len();
        Ok(reply)
    }

    /// Brings the state to a conversation that ends with a reply, generating nothing: what a
    /// saved conversation needs when its state is lost or refused, before its next message.
    /// Starts afresh and feeds [`ChatSession::history_ids`], asking `stopped` between pieces (a
    /// stop leaves the state as it was) and handing `progress(fed, total)` the tokens fed so far.
    /// Returns the tokens fed, or None when stopped.
    pub async fn prefill_history(
        &mut self,
        turns: &[Turn],
        stopped: impl Fn() -> bool,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Option<usize>> {
        let ids = self.history_ids(turns)?;
        let saved = self.save();
        self.generator.reset();
        match self.generator.feed_history(&ids, stopped, |fed| progress(fed, ids.len())).await {
            Ok(true) => {
                self.history = Some(ids.clone());
                self.regenerable = None;
                Ok(Some(ids.len()))
            }
            Ok(false) => {
                self.restore(&saved)?;
                Ok(None)
            }
            Err(e) => {
                self.history = None;
                Err(e)
            }
        }
    }

    /// The ids the state holds after the reply that ends `turns`, as [`ChatSession::answer`]
    /// would have left them: the conversation's ids up to that reply, its `<end_of_turn>` not
    /// fed (the next message's ids start with it).
    pub fn history_ids(&self, turns: &[Turn]) -> Result<Vec<u32>> {
        if turns.is_empty() {
            return Err(Error::Input("messages: at least one user message and its reply are needed".into()));
        }
        let ids = self.ids_of_turns(turns)?;
        if !turns.len().is_multiple_of(2) {
            return Err(Error::Input("messages: the last message must be the assistant's reply".into()));
        }
        Ok(ids)
    }

    /// The ids of `turns` as one prefill would feed them: `<bos>`, each user turn with the
    /// template around it, each reply as its trimmed text, and the opening of the model's turn.
    pub fn conversation_ids(&self, turns: &[Turn]) -> Result<Vec<u32>> {
        if turns.is_empty() {
            return Err(Error::Input("messages: at least one user message is needed".into()));
        }
        let ids = self.ids_of_turns(turns)?;
        if turns.len().is_multiple_of(2) {
            return Err(Error::Input("messages: the last message must be from the user".into()));
        }
        Ok(ids)
    }

    /// `<bos>` and `turns` (alternating, starting with the user's) as the template lays them out.
    fn ids_of_turns(&self, turns: &[Turn]) -> Result<Vec<u32>> {
        let mut ids = vec![BOS];
        for (index, turn) in turns.iter().enumerate() {
            let expected = if index % 2 == 0 { Role::User } else { Role::Model };
            if turn.role != expected {
                return Err(Error::Input(format!(
                    "messages: user and assistant messages must alternate, starting with user (after an optional \
                     system message); message {index} of those is from the {}",
                    if turn.role == Role::User { "user" } else { "assistant" }
                )));
            }
            let text = match (turn.role, index) {
                (Role::User, 0) => first_user_turn(&turn.content),
                (Role::User, _) => next_user_turn(&turn.content),
                (Role::Model, _) => turn.content.trim().to_string(),
            };
            ids.extend(self.tokenizer.encode(&text, false)?);
        }
        Ok(ids)
    }

    /// Keeps the state as a saved turn to come back to (a branch, a regenerated reply, a reply
    /// fed again as its text), unless its ids are unknown or none, or it is the one last kept;
    /// then keeps no more than the `keep` newest.
    fn keep_turn(&mut self, keep: usize) {
        if let Some(history) = self.history.as_ref().filter(|h| !h.is_empty()) {
            if self.saved.last().is_none_or(|(saved, _)| saved != history) {
                let history = history.clone();
                self.saved.push((history, self.generator.checkpoint()));
            }
        }
        let excess = self.saved.len().saturating_sub(keep);
        self.saved.drain(..excess);
    }

    /// Brings the state back to holding `history`: afresh when it is empty, else from the saved
    /// turn that holds it. False when no saved turn does (nothing changes then).
    fn return_to(&mut self, history: &[u32]) -> Result<bool> {
        if history.is_empty() {
            self.generator.reset();
            return Ok(true);
        }
        match self.saved.iter().rev().find(|(held, _)| held == history) {
            Some((_, checkpoint)) => self.generator.restore(checkpoint)?,
            None => return Ok(false),
        }
        Ok(true)
    }

    /// Brings the state to the longest prefix of `ids` it can reach without feeding anything
    /// (always short of all of `ids`: the last one is what the reply starts from).
    fn resume_longest_prefix(&mut self, ids: &[u32]) -> Result<()> {
        let extends = |held: &[u32]| held.len() < ids.len() && ids.starts_with(held);
        if self.history.as_deref().is_some_and(extends) {
            self.keep_turn(SAVED_TURNS);
            return Ok(());
        }
        let best = (0..self.saved.len()).filter(|&i| extends(&self.saved[i].0)).max_by_key(|&i| self.saved[i].0.len());
        match best {
            Some(i) => {
                let (history, checkpoint) = self.saved.remove(i);
                self.generator.restore(&checkpoint)?;
                self.history = Some(history.clone());
                // The most recently used last: the first to be kept.
                self.saved.push((history, checkpoint));
            }
            None => {
                self.generator.reset();
                self.history = Some(Vec::new());
            }
        }
        Ok(())
    }
}

/// The caller's listener behind a stop-string filter: it gets the reply's text cut before the
/// first stop string, and the generation stops there.
struct CutAtStopText<'a, L> {
    listener: &'a RefCell<L>,
    stop: &'a RefCell<StopText>,
    /// Set once the listener asked to stop: the reply was aborted.
    aborted: &'a Cell<bool>,
}

impl<L: Listener> Listener for CutAtStopText<'_, L> {
    fn text(&mut self, piece: &str) -> bool {
        let out = self.stop.borrow_mut().push(piece);
        let wanted = out.is_empty() || self.listener.borrow_mut().text(&out);
        if !wanted {
            self.aborted.set(true);
        }
        wanted && !self.stop.borrow().hit()
    }

    fn stopped(&self) -> bool {
        let stopped = self.listener.borrow().stopped();
        if stopped {
            self.aborted.set(true);
        }
        stopped
    }

    fn live(&mut self, live: &TurnFigures) {
        self.listener.borrow_mut().live(live);
    }
}
