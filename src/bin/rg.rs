//! `rg`: the native command line for RecurrentGemma: make random checkpoints, convert Hugging
//! Face checkpoints to the web format, dump logits, generate text.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use rgweb::chat::session::{ChatSession, Generator};
use rgweb::chat::structured::median_and_p99;
use rgweb::chat::{GemmaTokenizer, OutputFormat, SamplingParams, Vocabulary, BOS};
use rgweb::config::{Config, Preset};
use rgweb::gpu::cost::DeviceModel;
use rgweb::gpu::engine::{load_engine, Engine, PROFILE_REPEATS, STEPS_IN_FLIGHT};
use rgweb::gpu::kernels::{CHUNK, GENERATED_RING};
use rgweb::gpu::GpuContext;
use rgweb::model::perplexity::Perplexity;
use rgweb::model::{Model, State};
use rgweb::weights::convert::convert;
use rgweb::weights::expand::expand;
use rgweb::weights::format::Quantization;
use rgweb::weights::load::{load_model, read_tokenizer_json};
use rgweb::weights::random::write_random_checkpoint;
use rgweb::weights::safetensors::Dtype;

#[derive(Parser)]
#[command(name = "rg", version, about = "RecurrentGemma (Griffin): convert, inspect and run models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// The GPU when a hardware adapter exists, else the CPU.
    Auto,
    Cpu,
    Gpu,
}

#[derive(Clone, Copy, ValueEnum)]
enum CheckpointDtype {
    F32,
    Bf16,
}

#[derive(Subcommand)]
enum Command {
    /// Write a Hugging Face style checkpoint of random weights with real shapes.
    Random {
        #[arg(long, value_parser = ["tiny", "2b", "9b"])]
        preset: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value = "f32")]
        dtype: CheckpointDtype,
        out_dir: PathBuf,
    },
    /// Convert a Hugging Face checkpoint into the web format (sharded safetensors + manifest.json).
    Convert {
        hf_dir: PathBuf,
        out_dir: PathBuf,
        /// int8: one f32 scale per row; int4: one f16 scale per group of 32 columns (every
        /// matrix's column count a multiple of 32); f32: exact.
        #[arg(long, default_value = "int8", value_parser = ["int8", "int4", "f32"])]
        quant: String,
    },
    /// Expand a compact checkpoint (the trained demo's: only the used embedding rows are stored)
    /// into a Hugging Face checkpoint that `convert` takes.
    Expand { compact_dir: PathBuf, out_dir: PathBuf },
    /// Score a text: tokens, mean negative log-likelihood (nats) and perplexity. The text is
    /// tokenized after a BOS, as one sequence, and scored in pieces in constant memory.
    Perplexity {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        file: PathBuf,
        /// Score only the first N tokens after BOS.
        #[arg(long)]
        max_tokens: Option<usize>,
        /// Print one JSON object with the keys tokens, nll and perplexity.
        #[arg(long)]
        json: bool,
    },
    /// Write the logits of every position as a float32 .npy of shape [n_tokens, vocab].
    Logits {
        /// A web-format folder (manifest.json) or a Hugging Face checkpoint (config.json).
        model_dir: PathBuf,
        /// Comma-separated token ids, fed from position 0.
        #[arg(long, value_delimiter = ',', required = true)]
        tokens: Vec<u32>,
        #[arg(long, value_enum, default_value = "cpu")]
        backend: Backend,
        #[arg(long)]
        out: PathBuf,
    },
    /// Measure prefill and decode speed on the GPU engine.
    Bench {
        model_dir: PathBuf,
        /// Comma-separated prompt lengths, each prefilled from an empty state.
        #[arg(long, value_delimiter = ',', default_value = "128,512,2048")]
        prompt_tokens: Vec<usize>,
        /// Comma-separated generation lengths, each measured after a prefill of the first prompt
        /// length, streamed (token by token to the caller, as the page and the package run) and
        /// batched (every step in one submission).
        #[arg(long, value_delimiter = ',', default_value = "128,1024")]
        gen_tokens: Vec<usize>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Also time each kernel of a decode step and of a prefill chunk, dispatch by dispatch.
        #[arg(long)]
        profile: bool,
        /// Build the engine and print what its plan costs a GPU, counted from its kernels'
        /// constants, for a greedy decode step, a top-p step and a prefill chunk; run nothing.
        #[arg(long)]
        plan_only: bool,
        /// Also predict the plan's times on this GPU from its counts (`h200`, `h100`, `m2`): the
        /// analytic model of decode-kernels.md, calibrated on the H200's measured step.
        #[arg(long = "model", value_parser = parse_device_model)]
        device_model: Option<DeviceModel>,
        /// How decode picks tokens (greedy unless a temperature is given).
        #[command(flatten)]
        sampling: SamplingArgs,
    },
    /// Write every WGSL module the GPU engine compiles (the shared prefixes and the weight
    /// format's file in front of each kernel), one file per kernel and format, for other WGSL
    /// compilers to check (tests/browser/shaders.mjs compiles them with Chromium's).
    Shaders { out_dir: PathBuf },
    /// Generate text from a prompt, streamed to stdout.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Wrap the prompt in the Gemma chat template and stop at <end_of_turn>.
        #[arg(long)]
        chat: bool,
        /// Also print the generated token ids to stderr, one line.
        #[arg(long)]
        print_ids: bool,
        #[command(flatten)]
        output: OutputArgs,
        /// Print the decode rate to stderr after the reply, and for a constrained one what its
        /// masks cost.
        #[arg(long)]
        timing: bool,
    },
    /// Chat in the terminal: one message per line on stdin; `/reset` starts over, `/regenerate`
    /// answers the last message again. Each turn prefills only its own tokens.
    Chat {
        #[command(flatten)]
        model: ModelArgs,
        /// Longest reply, in tokens.
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        #[command(flatten)]
        sampling: SamplingArgs,
    },
}

#[derive(Args)]
struct ModelArgs {
    model_dir: PathBuf,
    /// tokenizer.json to use instead of the one in MODEL_DIR.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    backend: Backend,
}

#[derive(Args)]
struct SamplingArgs {
    /// 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// 0 means no top-k cut.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Subtracted from a token's logit once per time it was drawn in this reply (-2 to 2).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    frequency_penalty: f32,
    /// Subtracted from a token's logit once if it was drawn in this reply (-2 to 2).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    presence_penalty: f32,
    /// A drawn token's logit is divided by it when positive, multiplied when negative (> 0; 1 is off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Add BIAS (-100 to 100) to token ID's logit; repeatable.
    #[arg(long, value_name = "ID=BIAS", allow_hyphen_values = true)]
    logit_bias: Vec<String>,
}

impl SamplingArgs {
    fn params(&self) -> Result<SamplingParams> {
        let logit_bias = self.logit_bias.iter().map(|entry| parse_logit_bias(entry)).collect::<Result<_>>()?;
        let params = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            repetition_penalty: self.repetition_penalty,
            logit_bias,
        };
        params.validate()?;
        Ok(params)
    }
}

/// `ID=BIAS`, as `--logit-bias` takes it. Parsed here rather than by clap, so a bad entry is one
/// `error:` line like every other bad value.
fn parse_logit_bias(entry: &str) -> Result<(u32, f32)> {
    let parsed =
        entry.split_once('=').and_then(|(id, bias)| Some((id.trim().parse().ok()?, bias.trim().parse().ok()?)));
    parsed.with_context(|| format!("--logit-bias takes ID=BIAS (a token id and a number), got '{entry}'"))
}

impl ModelArgs {
    fn open(&self) -> Result<(Runner, GemmaTokenizer)> {
        let tokenizer = match &self.tokenizer {
            Some(path) => GemmaTokenizer::from_file(path)?,
            None => GemmaTokenizer::from_bytes(&read_tokenizer_json(&self.model_dir)?)?,
        };
        Ok((open_backend(&self.model_dir, self.backend)?, tokenizer))
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Random { preset, seed, dtype, out_dir } => {
            let config = Config::preset(Preset::parse(&preset)?);
            let dtype = match dtype {
                CheckpointDtype::F32 => Dtype::F32,
                CheckpointDtype::Bf16 => Dtype::BF16,
            };
            write_random_checkpoint(&config, seed, dtype, &out_dir)?;
            eprintln!("wrote random {preset} checkpoint to {}", out_dir.display());
        }
        Command::Convert { hf_dir, out_dir, quant } => {
            let manifest = convert(&hf_dir, &out_dir, Quantization::parse(&quant)?)?;
            eprintln!(
                "wrote {} shards, {} pieces, {} bytes to {}",
                manifest.shards.len(),
                manifest.pieces.len(),
                manifest.total_bytes(),
                out_dir.display()
            );
        }
        Command::Expand { compact_dir, out_dir } => {
            let rows = expand(&compact_dir, &out_dir)?;
            eprintln!("wrote {} ({rows} embedding rows stored)", out_dir.display());
        }
        Command::Perplexity { model, file, max_tokens, json } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let (runner, tokenizer) = model.open()?;
            let mut ids = tokenizer.encode(&text, true)?;
            if let Some(n) = max_tokens {
                ids.truncate(n + 1);
            }
            if ids.len() < 2 {
                anyhow::bail!("{}: no token to score after BOS", file.display());
            }
            let score = perplexity(runner, &ids)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "tokens": score.tokens, "nll": score.nll(), "perplexity": score.perplexity() })
                );
            } else {
                println!("tokens {}  nll {:.5}  perplexity {:.4}", score.tokens, score.nll(), score.perplexity());
            }
        }
        Command::Logits { model_dir, tokens, backend, out } => {
            let (logits, vocab) = match open_backend(&model_dir, backend)? {
                Runner::Cpu(model) => {
                    (model.forward(&tokens, &mut State::new(&model.config))?, model.config.vocab_size)
                }
                Runner::Gpu(mut engine) => (pollster::block_on(engine.logits(&tokens))?, engine.config.vocab_size),
            };
            write_npy(&out, &logits, [tokens.len(), vocab])?;
        }
        Command::Shaders { out_dir } => {
            std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
            for (name, source) in rgweb::gpu::kernels::all_modules() {
                let path = out_dir.join(format!("{name}.wgsl"));
                std::fs::write(&path, source).with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Command::Bench { model_dir, prompt_tokens, gen_tokens, json, profile, plan_only, device_model, sampling } => {
            let mut engine = load_engine(gpu_context()?, &model_dir)?;
            if plan_only {
                let report = plan_report(&engine, device_model);
                if json {
                    println!("{report}");
                } else {
                    print_plans(&report);
                }
                return Ok(());
            }
            let params = sampling.params()?;
            engine.set_sampling(&params)?;
            if profile {
                profile_kernels(&mut engine)?;
            }
            bench(engine, &prompt_tokens, &gen_tokens, &params, json, device_model)?;
        }
        Command::Generate { model, prompt, max_tokens, sampling, chat, print_ids, output, timing } => {
            let params = sampling.params()?;
            let format = output.format()?;
            let (runner, tokenizer) = model.open()?;
            let ask = Ask { prompt: &prompt, max_tokens, chat, format, timing };
            let ids = generate(runner, tokenizer, params, ask)?;
            if print_ids {
                let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
                eprintln!("ids: {}", ids.join(","));
            }
        }
        Command::Chat { model, max_tokens, sampling } => {
            let params = sampling.params()?;
            let (runner, tokenizer) = model.open()?;
            chat(ChatSession::new(generator(runner, params)?, tokenizer), max_tokens)?;
        }
    }
    Ok(())
}

/// Logits `[piece.len(), V]` for the next piece of one sequence.
type NextLogits = Box<dyn FnMut(&[u32]) -> Result<Vec<f32>>>;

/// Scores `ids[1..]`, each under the logits of the position before it, feeding the model a
/// piece at a time.
fn perplexity(runner: Runner, ids: &[u32]) -> Result<Perplexity> {
    let (vocab, mut next): (usize, NextLogits) = match runner {
        Runner::Cpu(model) => {
            let mut state = State::new(&model.config);
            (model.config.vocab_size, Box::new(move |piece| Ok(model.forward(piece, &mut state)?)))
        }
        Runner::Gpu(mut engine) => {
            (engine.config.vocab_size, Box::new(move |piece| Ok(pollster::block_on(engine.logits(piece))?)))
        }
    };
    let mut score = Perplexity::default();
    let inputs = &ids[..ids.len().saturating_sub(1)];
    for (index, piece) in inputs.chunks(CHUNK).enumerate() {
        let targets = &ids[index * CHUNK + 1..][..piece.len()];
        for (row, &target) in next(piece)?.chunks_exact(vocab).zip(targets) {
            score.add(row, target)?;
        }
    }
    Ok(score)
}

enum Runner {
    Cpu(Box<Model>),
    Gpu(Box<Engine>),
}

fn gpu_context() -> Result<GpuContext> {
    Ok(pollster::block_on(GpuContext::new())?)
}

/// Loads the model for the chosen backend; `auto` takes a hardware GPU when there is one.
fn open_backend(model_dir: &Path, backend: Backend) -> Result<Runner> {
    let context = match backend {
        Backend::Cpu => None,
        Backend::Gpu => Some(gpu_context()?),
        Backend::Auto => gpu_context().ok().filter(|c| c.adapter_info.device_type != wgpu::DeviceType::Cpu),
    };
    Ok(match context {
        Some(context) => Runner::Gpu(Box::new(load_engine(context, model_dir)?)),
        None => Runner::Cpu(Box::new(load_model(model_dir)?)),
    })
}

fn generator(runner: Runner, params: SamplingParams) -> Result<Generator> {
    // Checked here for both backends, before any prompt is fed.
    params.validate_ids(match &runner {
        Runner::Cpu(model) => model.config.vocab_size,
        Runner::Gpu(engine) => engine.config.vocab_size,
    })?;
    Ok(match runner {
        Runner::Cpu(model) => Generator::cpu(*model, params)?,
        Runner::Gpu(engine) => Generator::gpu(*engine, params)?,
    })
}

/// What a generated reply must be (free text unless one of these is given).
#[derive(clap::Args)]
struct OutputArgs {
    /// Hold the reply to this JSON schema (a file).
    #[arg(long, conflicts_with_all = ["json", "grammar"])]
    json_schema: Option<PathBuf>,
    /// Hold the reply to any JSON object.
    #[arg(long, conflicts_with = "grammar")]
    json: bool,
    /// Hold the reply to this grammar (a file in llguidance's Lark syntax).
    #[arg(long)]
    grammar: Option<PathBuf>,
}

impl OutputArgs {
    fn format(&self) -> Result<OutputFormat> {
        let read =
            |path: &PathBuf| std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()));
        Ok(if let Some(path) = &self.json_schema {
            let schema =
                serde_json::from_str(&read(path)?).with_context(|| format!("{} is not JSON", path.display()))?;
            OutputFormat::Json { schema: Some(schema) }
        } else if self.json {
            OutputFormat::Json { schema: None }
        } else if let Some(path) = &self.grammar {
            OutputFormat::Grammar(read(path)?)
        } else {
            OutputFormat::Text
        })
    }
}

/// The terminal chat loop. Replies go to stdout; after each, a line of stats goes to stderr,
/// showing the state's size staying put while the conversation grows.
fn chat(mut session: ChatSession, max_tokens: usize) -> Result<()> {
    let mut stdout = std::io::stdout();
    let mut print = |text: &str| stdout.write_all(text.as_bytes()).and_then(|_| stdout.flush()).is_ok();
    for line in std::io::stdin().lines() {
        let line = line.context("reading stdin")?;
        let reply = match line.trim() {
            "" => continue,
            "/reset" => {
                session.reset();
                eprintln!("[new conversation]");
                continue;
            }
            "/regenerate" => pollster::block_on(session.regenerate(max_tokens, &mut print))?,
            message => pollster::block_on(session.send(message, max_tokens, &mut print))?,
        };
        print("\n");
        let generator = session.generator();
        eprintln!(
            "[prefilled {} tokens, replied {}, fed again as text {}; conversation {} tokens; state {} bytes]",
            reply.prefilled,
            reply.ids.len(),
            reply.refed,
            generator.position(),
            generator.state_bytes()
        );
    }
    Ok(())
}

/// What `rg generate` is asked for.
struct Ask<'a> {
    prompt: &'a str,
    max_tokens: usize,
    /// One chat turn rather than a raw prompt.
    chat: bool,
    format: OutputFormat,
    /// Print the decode rate (and the masks' cost) after the reply.
    timing: bool,
}

/// Generates from a raw prompt, or answers it as one chat turn, streaming text to stdout.
/// Returns the generated ids.
fn generate(runner: Runner, tokenizer: GemmaTokenizer, params: SamplingParams, ask: Ask) -> Result<Vec<u32>> {
    let Ask { prompt, max_tokens, chat, format, timing } = ask;
    let mut generator = generator(runner, params)?;
    let mut vocabulary_seconds = 0.0;
    if !format.is_text() {
        let start = std::time::Instant::now();
        let vocabulary = Vocabulary::new(&tokenizer, generator.vocab_size())?;
        vocabulary_seconds = start.elapsed().as_secs_f64();
        if let Some(constraint) = vocabulary.constraint(&format, "the output format")? {
            generator.constrain_next_reply(constraint);
        }
    }
    let mut stdout = std::io::stdout().lock();
    let mut write_error = None;
    let mut print = |text: &str| match stdout.write_all(text.as_bytes()).and_then(|_| stdout.flush()) {
        Ok(()) => true,
        Err(e) => {
            write_error = Some(e);
            false
        }
    };
    let (ids, generator) = if chat {
        let mut session = ChatSession::new(generator, tokenizer);
        let ids = pollster::block_on(session.send(prompt, max_tokens, &mut print))?.ids;
        (ids, session.into_generator())
    } else {
        let mut prompt_ids = vec![BOS];
        prompt_ids.extend(tokenizer.encode(prompt, false)?);
        let stops = [generator.eos_token_id()];
        let generated = generator.generate_text(&tokenizer, &prompt_ids, max_tokens, &stops, &mut print);
        (pollster::block_on(generated)?.0, generator)
    };
    print("\n");
    if timing {
        let decode = generator.timing();
        eprint!("[decoded {} tokens at {:.1} tok/s", decode.decoded_tokens, decode.decode_tokens_per_second());
        if !format.is_text() {
            let (median, p99) = median_and_p99(generator.mask_seconds());
            let masks = generator.mask_seconds().len();
            let (trie, median, p99) = (vocabulary_seconds * 1e3, median * 1e3, p99 * 1e3);
            eprint!("; token trie {trie:.0} ms; {masks} masks: median {median:.3} ms, p99 {p99:.3} ms");
        }
        eprintln!("]");
    }
    match write_error {
        Some(e) => Err(e).context("writing to stdout"),
        None => Ok(ids),
    }
}

/// Prints where a decode step's and a prefill chunk's time goes, kernel by kernel, with the
/// bytes each reads and the rate that makes: timed on the GPU where it has timestamps, else
/// each dispatch alone from the host (so fixed costs per dispatch show).
fn profile_kernels(engine: &mut Engine) -> Result<()> {
    let vocab = engine.config.vocab_size as u32;
    for (what, n) in [("decode step", 1), ("prefill chunk", CHUNK)] {
        engine.reset();
        let prompt = bench_prompt(n, vocab);
        engine.profile(&prompt)?;
        engine.reset();
        let profile = engine.profile(&prompt)?;
        let total: f64 = profile.kernels.iter().map(|k| k.seconds).sum();
        let dispatches: usize = profile.kernels.iter().map(|k| k.dispatches).sum();
        let timing = if profile.timestamps {
            format!("GPU timestamps, each op {PROFILE_REPEATS}× back to back")
        } else {
            "each dispatch submitted alone and waited for".into()
        };
        eprintln!("{what} of {n} tokens: {:.1} µs in {dispatches} dispatches ({timing})", 1e6 * total);
        eprintln!(
            "  {:<18} {:>4}   {:>10} {:>11}   {:>12} {:>12}",
            "kernel", "n", "µs each", "µs", "weights", "activations"
        );
        for k in profile.kernels {
            let rate = |bytes: u64| if k.seconds > 0.0 { bytes as f64 / k.seconds / 1e9 } else { 0.0 };
            eprintln!(
                "  {:<18} {:>4} × {:>10.2} = {:>10.1}   {:>7.2} GB/s {:>7.2} GB/s",
                k.kernel,
                k.dispatches,
                1e6 * k.seconds / k.dispatches as f64,
                1e6 * k.seconds,
                rate(k.weight_bytes),
                rate(k.activation_bytes),
            );
        }
    }
    engine.reset();
    Ok(())
}

/// A benchmark prompt of `n` tokens: BOS, then ids spread over the vocabulary.
fn bench_prompt(n: usize, vocab: u32) -> Vec<u32> {
    std::iter::once(BOS).chain((1..n.max(1) as u32).map(|i| (i * 7919 + 13) % vocab)).collect()
}

/// A streamed generation of up to `n` tokens after `prompt`, as the page runs it: the prefill,
/// then the steps queued behind it, each id read back as its step completes. Returns the
/// seconds to the first token and the seconds from it to the last, and the tokens drawn.
fn streamed(engine: &mut Engine, prompt: &[u32], n: usize) -> Result<(f64, f64, usize)> {
    let start = std::time::Instant::now();
    engine.start(prompt, n.saturating_sub(1))?;
    pollster::block_on(engine.next_token())?;
    let first = start.elapsed().as_secs_f64();
    let mut drawn = 1;
    while pollster::block_on(engine.next_token())?.is_some() {
        drawn += 1;
    }
    pollster::block_on(engine.finish())?;
    Ok((first, start.elapsed().as_secs_f64() - first, drawn))
}

/// Prefill, time to first token and decode throughput, with what the engine's plan reads and
/// dispatches. Each measurement starts from an empty state; stop tokens are off, so every
/// generation runs its full length.
fn bench(
    mut engine: Engine,
    prompt_tokens: &[usize],
    gen_tokens: &[usize],
    sampling: &SamplingParams,
    json: bool,
    device: Option<DeviceModel>,
) -> Result<()> {
    let vocab = engine.config.vocab_size as u32;
    engine.set_stops(&[])?;
    // Warm-up: pipelines, first-use allocations and clocks, on the paths measured (at most 300
    // prompt tokens and 8 steps).
    let longest = prompt_tokens.iter().copied().max().unwrap_or(1).min(300);
    let steps = gen_tokens.iter().copied().max().unwrap_or(1).min(8);
    streamed(&mut engine, &bench_prompt(longest, vocab), steps)?;

    let mut prefill = Vec::new();
    for &n in prompt_tokens {
        let prompt = bench_prompt(n, vocab);
        engine.reset();
        let (first_token, _, _) = streamed(&mut engine, &prompt, 1)?;
        prefill.push(serde_json::json!({
            "prompt_tokens": prompt.len(),
            "tokens_per_s": prompt.len() as f64 / first_token,
            "time_to_first_token_s": first_token,
            "weight_bytes_per_prompt_token": engine.weight_bytes_read(prompt.len(), 1) as f64 / prompt.len() as f64,
            "submissions": prompt.len().div_ceil(CHUNK),
        }));
    }

    let per_decoded_token = engine.weight_bytes_read(1, 1);
    let prompt = bench_prompt(prompt_tokens.first().copied().unwrap_or(128), vocab);
    let mut decode = Vec::new();
    for &n in gen_tokens {
        engine.reset();
        let (_, seconds, drawn) = streamed(&mut engine, &prompt, n + 1)?;
        let streamed_tps = drawn.saturating_sub(1) as f64 / seconds;
        engine.reset();
        pollster::block_on(engine.prefill(&prompt))?;
        let start = std::time::Instant::now();
        pollster::block_on(engine.decode(n))?;
        let batched_tps = n as f64 / start.elapsed().as_secs_f64();
        decode.push(serde_json::json!({
            "gen_tokens": n,
            "streamed_tokens_per_s": streamed_tps,
            "batched_tokens_per_s": batched_tps,
            "effective_gb_per_s": per_decoded_token as f64 * streamed_tps / 1e9,
            // Streamed: one submission and one wait per token, with STEPS_IN_FLIGHT queued;
            // batched: up to GENERATED_RING steps per submission.
            "streamed_host_waits_per_token": 1.0,
            "steps_in_flight": STEPS_IN_FLIGHT,
            "batched_host_waits_per_token": n.div_ceil(GENERATED_RING as usize) as f64 / n as f64,
        }));
    }
    let info = &engine.context().adapter_info;
    let report = serde_json::json!({
        "adapter": format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type),
        "sampling": serde_json::json!({
            "temperature": sampling.temperature,
            "top_k": sampling.top_k,
            "top_p": sampling.top_p,
            "frequency_penalty": sampling.frequency_penalty,
            "presence_penalty": sampling.presence_penalty,
            "repetition_penalty": sampling.repetition_penalty,
            "logit_bias_entries": sampling.logit_bias.len(),
        }),
        "prefill": prefill,
        "decode": decode,
        "quantization": engine.quantization().name(),
        "weight_bytes": engine.weight_bytes(),
        "weight_bytes_per_decoded_token": per_decoded_token,
        "state_bytes": engine.state_bytes(),
        "gpu_memory_bytes": engine.memory_bytes(),
        "dispatches_per_token": engine.dispatches(1),
        "dispatches_per_prefill_chunk": engine.dispatches(CHUNK),
        "plan": plan_report(&engine, device),
        "prefill_chunk_tokens": CHUNK,
    });
    if json {
        println!("{report}");
        return Ok(());
    }
    println!("adapter            {}", report["adapter"].as_str().unwrap_or_default());
    let p = sampling;
    println!("sampling           temperature {}, top-k {}, top-p {}", p.temperature, p.top_k, p.top_p);
    if p.adjusts_logits() {
        println!(
            "                   frequency penalty {}, presence penalty {}, repetition penalty {}, {} logit biases",
            p.frequency_penalty,
            p.presence_penalty,
            p.repetition_penalty,
            p.logit_bias.len()
        );
    }
    for entry in &prefill {
        println!(
            "prefill {:>6} tok  {:.1} tok/s, first token after {:.3} s, {:.0} B of weights read per token",
            entry["prompt_tokens"],
            entry["tokens_per_s"].as_f64().unwrap_or_default(),
            entry["time_to_first_token_s"].as_f64().unwrap_or_default(),
            entry["weight_bytes_per_prompt_token"].as_f64().unwrap_or_default(),
        );
    }
    for entry in &decode {
        println!(
            "decode {:>6} tok   {:.1} tok/s streamed, {:.1} tok/s batched",
            entry["gen_tokens"],
            entry["streamed_tokens_per_s"].as_f64().unwrap_or_default(),
            entry["batched_tokens_per_s"].as_f64().unwrap_or_default(),
        );
    }
    println!("weights            {} B, {}", engine.weight_bytes(), engine.quantization().name());
    println!("weights read       {per_decoded_token} B per decoded token");
    println!("state              {} B", engine.state_bytes());
    println!("GPU memory         {} B", engine.memory_bytes());
    println!(
        "dispatches         {} per decoded token, {} per prefill chunk of {CHUNK}",
        engine.dispatches(1),
        engine.dispatches(CHUNK)
    );
    print_plans(&report["plan"]);
    Ok(())
}

/// The engine's plan counted for a greedy decode step (`decode_plan`), a top-p step at
/// temperature 1 and top-p 0.9 (`decode_plan_top_p`) and a prefill chunk of [`CHUNK`] tokens
/// (`prefill_plan`), under key names other tools read.
fn plan_report(engine: &Engine, device: Option<DeviceModel>) -> serde_json::Value {
    let greedy = SamplingParams::default();
    let top_p = SamplingParams { temperature: 1.0, top_p: 0.9, ..SamplingParams::default() };
    let mut report = serde_json::json!({
        "quantization": engine.quantization().name(),
        "decode_plan": engine.plan_cost(1, &greedy),
        "decode_plan_top_p": engine.plan_cost(1, &top_p),
        "prefill_plan": engine.plan_cost(CHUNK, &greedy),
        "prefill_chunk_tokens": CHUNK,
    });
    if let Some(device) = device {
        // Decode only: no GPU has run today's prefill kernels to calibrate them on.
        let decode = engine.predict(1, &greedy, &device);
        report["prediction"] = serde_json::json!({
            "device": device.name,
            "decode_ms": 1e3 * decode,
            "decode_tokens_per_s": 1.0 / decode,
            "decode_top_p_ms": 1e3 * engine.predict(1, &top_p, &device),
        });
    }
    report
}

fn parse_device_model(name: &str) -> std::result::Result<DeviceModel, String> {
    DeviceModel::named(name).ok_or_else(|| {
        let names: Vec<&str> = DeviceModel::ALL.iter().map(|d| d.name).collect();
        format!("one of {}", names.join(", "))
    })
}

fn print_plans(report: &serde_json::Value) {
    println!("weights {}", report["quantization"].as_str().unwrap_or_default());
    if let Some(p) = report.get("prediction") {
        let number = |key: &str| p[key].as_f64().unwrap_or_default();
        println!(
            "predicted on {} (analytic model): decode {:.2} ms ({:.0} tok/s), a top-p step {:.2} ms",
            p["device"].as_str().unwrap_or_default(),
            number("decode_ms"),
            number("decode_tokens_per_s"),
            number("decode_top_p_ms"),
        );
    }
    for (name, what) in [
        ("decode_plan", "decode step, greedy"),
        ("decode_plan_top_p", "decode step, top-p 0.9"),
        ("prefill_plan", "prefill chunk"),
    ] {
        let plan = &report[name];
        println!("{what}:");
        if let Some(fields) = plan.as_object() {
            for (key, value) in fields {
                println!("  {key:<30} {value}");
            }
        }
    }
}

/// NumPy .npy v1.0, little-endian float32, C order.
fn write_npy(path: &Path, values: &[f32], shape: [usize; 2]) -> Result<()> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}", shape[0], shape[1]);
    // Magic (6) + version (2) + length (2) + header + '\n' must be a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(bytemuck::cast_slice::<f32, u8>(values));
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
