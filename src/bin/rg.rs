//! `rg`: the native command line for RecurrentGemma: make random checkpoints, convert Hugging
//! Face checkpoints to the web format, dump logits, generate text.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use rgweb::chat::{first_user_turn, is_stop_token, GemmaTokenizer, Sampler, SamplingParams, TextStream, BOS};
use rgweb::config::{Config, Preset};
use rgweb::model::{Model, State};
use rgweb::weights::convert::convert;
use rgweb::weights::format::Quantization;
use rgweb::weights::load::load_model;
use rgweb::weights::random::write_random_checkpoint;
use rgweb::weights::safetensors::Dtype;

#[derive(Parser)]
#[command(name = "rg", version, about = "RecurrentGemma (Griffin): convert, inspect and run models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
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
        #[arg(long, default_value = "int8", value_parser = ["int8", "f32"])]
        quant: String,
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
    /// Generate text from a prompt, streamed to stdout.
    Generate {
        model_dir: PathBuf,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
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
        /// Wrap the prompt in the Gemma chat template and stop at <end_of_turn>.
        #[arg(long)]
        chat: bool,
        /// tokenizer.json to use instead of the one in MODEL_DIR.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "cpu")]
        backend: Backend,
        /// Also print the generated token ids to stderr, one line.
        #[arg(long)]
        print_ids: bool,
    },
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
        Command::Logits { model_dir, tokens, backend, out } => {
            require_cpu(backend)?;
            let model = load_model(&model_dir)?;
            let logits = model.forward(&tokens, &mut State::new(&model.config))?;
            write_npy(&out, &logits, [tokens.len(), model.config.vocab_size])?;
        }
        Command::Generate {
            model_dir,
            prompt,
            max_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            chat,
            tokenizer,
            backend,
            print_ids,
        } => {
            require_cpu(backend)?;
            let tokenizer_path = tokenizer.unwrap_or_else(|| model_dir.join("tokenizer.json"));
            let tokenizer = GemmaTokenizer::from_file(&tokenizer_path)?;
            let model = load_model(&model_dir)?;
            let sampler = Sampler::new(SamplingParams { temperature, top_k, top_p, seed })?;
            let text = if chat { first_user_turn(&prompt) } else { prompt };
            let mut prompt_ids = vec![BOS];
            prompt_ids.extend(tokenizer.encode(&text, false)?);
            let ids = generate(&model, &tokenizer, sampler, &prompt_ids, max_tokens, chat)?;
            if print_ids {
                let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
                eprintln!("ids: {}", ids.join(","));
            }
        }
    }
    Ok(())
}

fn require_cpu(backend: Backend) -> Result<()> {
    match backend {
        Backend::Cpu => Ok(()),
        Backend::Gpu => bail!("--backend gpu is not available yet: the WebGPU engine is not built; use --backend cpu"),
    }
}

/// Prefills the prompt, then samples up to `max_tokens`, streaming text to stdout. Returns the
/// generated ids. Stops at <eos>, and at <end_of_turn> in chat mode.
fn generate(
    model: &Model,
    tokenizer: &GemmaTokenizer,
    mut sampler: Sampler,
    prompt: &[u32],
    max_tokens: usize,
    chat: bool,
) -> Result<Vec<u32>> {
    let vocab = model.config.vocab_size;
    let mut state = State::new(&model.config);
    let logits = model.forward(prompt, &mut state)?;
    let mut next = sampler.sample(&logits[logits.len() - vocab..])?;
    let mut generated = Vec::new();
    let mut stream = TextStream::new();
    let mut stdout = std::io::stdout().lock();
    while generated.len() < max_tokens {
        if next == model.config.eos_token_id || (chat && is_stop_token(next)) {
            break;
        }
        generated.push(next);
        if let Some(text) = stream.push(tokenizer, next)? {
            stdout.write_all(text.as_bytes()).and_then(|_| stdout.flush()).context("writing to stdout")?;
        }
        if generated.len() == max_tokens {
            break;
        }
        next = sampler.sample(&model.step(next, &mut state)?)?;
    }
    if let Some(text) = stream.finish() {
        stdout.write_all(text.as_bytes()).context("writing to stdout")?;
    }
    writeln!(stdout).context("writing to stdout")?;
    Ok(generated)
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
