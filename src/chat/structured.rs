//! Structured output: a reply held to a JSON schema or a Lark grammar, one token at a time.
//!
//! Before each draw, llguidance gives the set of tokens that keep the reply a prefix of some text
//! the grammar accepts; the sampler draws only from that set (on the CPU the other logits become
//! −∞, on the GPU `sample.wgsl` reads the same set as a bit mask). Where the grammar may end, it
//! allows its end-of-text token, which stands here for every stop id of the generation (`<eos>`,
//! and `<end_of_turn>` in a chat): the reply ends the way an unconstrained one does.
//!
//! The grammar sees the Gemma vocabulary as bytes ([`Vocabulary`]): ordinary pieces with `▁` as a
//! space, byte-fallback pieces `<0xHH>` as their byte, and special pieces (`<start_of_turn>`, …)
//! marked so that no grammar text ever matches them.

use std::sync::Arc;

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use web_time::Instant;

use super::tokenizer::{GemmaTokenizer, END_OF_TURN, EOS};
use crate::error::{Error, Result};

/// What a reply must be.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum OutputFormat {
    /// Free text: nothing is constrained.
    #[default]
    Text,
    /// A JSON value valid against `schema` (OpenAI's `json_schema`); `None` asks for any JSON
    /// object (OpenAI's `json_object`).
    Json { schema: Option<Value> },
    /// Text in the language of a grammar in llguidance's Lark syntax.
    Grammar(String),
}

impl OutputFormat {
    pub fn is_text(&self) -> bool {
        matches!(self, OutputFormat::Text)
    }

    /// OpenAI's and WebLLM's `response_format`, whose name in the caller's request is `field`:
    /// - `{type: "text"}`;
    /// - `{type: "json_object"}`, any JSON object; with `schema: "<JSON text>"`, WebLLM's shape,
    ///   one valid against that schema;
    /// - `{type: "json_schema", json_schema: {name, schema, strict}}`, OpenAI's shape;
    /// - `{type: "grammar", grammar: "<Lark text>"}`, llguidance's Lark syntax.
    ///
    /// Each error names the field it is about.
    pub fn from_response_format(format: &Value, field: &str) -> Result<Self> {
        let bad = |name: &str, message: &str| Error::Input(format!("{field}{name} {message}"));
        let Value::Object(format) = format else { return Err(bad("", "must be an object { type, … }")) };
        let text = |name: &str, value: Option<&Value>| match value {
            Some(Value::String(text)) => {
                check_size(&format!("{field}.{name}"), text.len())?;
                Ok(text.clone())
            }
            _ => Err(bad(&format!(".{name}"), "must be a string")),
        };
        match format.get("type").and_then(Value::as_str) {
            Some("text") => Ok(OutputFormat::Text),
            Some("json_object") => match format.get("schema") {
                None | Some(Value::Null) => Ok(OutputFormat::Json { schema: None }),
                Some(schema) => {
                    let schema = serde_json::from_str(&text("schema", Some(schema))?)
                        .map_err(|e| bad(".schema", &format!("is not JSON: {e}")))?;
                    Ok(OutputFormat::Json { schema: Some(schema) })
                }
            },
            Some("json_schema") => {
                let Some(Value::Object(spec)) = format.get("json_schema") else {
                    return Err(bad(".json_schema", "must be an object { name, schema, strict }"));
                };
                match spec.get("schema") {
                    Some(schema @ (Value::Object(_) | Value::Bool(_))) => {
                        Ok(OutputFormat::Json { schema: Some(schema.clone()) })
                    }
                    _ => Err(bad(".json_schema.schema", "must be a JSON schema (an object)")),
                }
            }
            Some("grammar") => Ok(OutputFormat::Grammar(text("grammar", format.get("grammar"))?)),
            _ => Err(bad(".type", "must be \"text\", \"json_object\", \"json_schema\" or \"grammar\"")),
        }
    }
}

/// The longest grammar or schema text accepted, in bytes: what a caller may reasonably send, and
/// a bound on the work before llguidance's own limits apply.
pub const MAX_GRAMMAR_BYTES: usize = 256 * 1024;

/// How JSON is laid out unless the schema says otherwise (`x-guidance`): one space after `,` and
/// `:`, as a model writes it, and no other whitespace, so a reply cannot pad itself out to
/// `max_tokens` with blank lines.
fn json_layout() -> Value {
    json!({"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": false})
}

/// The vocabulary as the grammar engine sees it, built once per tokenizer (256,000 pieces).
pub struct Vocabulary {
    factory: ParserFactory,
    /// The model's logit count: the length of every mask (the tokenizer may have fewer pieces).
    logits: usize,
}

impl Vocabulary {
    /// The token trie of `tokenizer`'s pieces, for a model with `logits` logits per step.
    pub fn new(tokenizer: &GemmaTokenizer, logits: usize) -> Result<Self> {
        Self::from_pieces(tokenizer.piece_bytes(), logits)
    }

    /// The token trie of pieces given as bytes by id ([`GemmaTokenizer::piece_bytes`]' form; id
    /// [`EOS`] ends the text).
    pub fn from_pieces(mut words: Vec<Vec<u8>>, logits: usize) -> Result<Self> {
        if words.len() > logits {
            let pieces = words.len();
            return Err(Error::Input(format!("the tokenizer has {pieces} pieces, the model only {logits} logits")));
        }
        // Ids the tokenizer lacks are empty: no text matches them, so they are never allowed.
        words.resize(logits, Vec::new());
        let info = TokRxInfo {
            vocab_size: logits as u32,
            tok_eos: EOS,
            tok_bos: None,
            tok_pad: None,
            tok_unk: None,
            tok_end_of_turn: Some(END_OF_TURN),
        };
        let trie = TokTrie::from(&info, &words);
        // Greedy tokenization is enough: llguidance uses it only to look ahead at forced text,
        // and is told it is not the tokenizer's own (`tokenize_is_canonical` is false).
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        // No "slices" (llguidance's extra tries for common string patterns): they made the
        // masks of long free strings ≈ 15× cheaper at p99 (0.17 against 2.6 ms) but cost 60 MB
        // and 0.4 s to build, and a wasm heap never gives memory back (BENCHMARKS.md).
        let no_slices: &[String] = &[];
        let mut factory = ParserFactory::new(&env, Default::default(), no_slices)
            .map_err(|e| Error::Input(format!("grammar engine: {e}")))?;
        factory.quiet();
        *factory.limits_mut() = ParserLimits::default();
        Ok(Self { factory, logits })
    }

    /// The constraint a reply in `format` follows; None for free text. A schema or grammar that
    /// does not compile, or exceeds the engine's limits, is an error naming `field`.
    pub fn constraint(&self, format: &OutputFormat, field: &str) -> Result<Option<Constraint>> {
        let grammar = match format {
            OutputFormat::Text => return Ok(None),
            OutputFormat::Json { schema } => {
                let mut schema = schema.clone().unwrap_or_else(|| json!({"type": "object"}));
                if let Value::Object(object) = &mut schema {
                    object.entry("x-guidance").or_insert_with(json_layout);
                } else if !schema.is_boolean() {
                    return Err(Error::Input(format!("{field} must be a JSON schema: an object (or true)")));
                }
                check_size(field, serde_json::to_string(&schema).map_or(usize::MAX, |s| s.len()))?;
                TopLevelGrammar::from_json_schema(schema)
            }
            OutputFormat::Grammar(lark) => {
                check_size(field, lark.len())?;
                TopLevelGrammar::from_lark(lark.clone())
            }
        };
        let parser = self.factory.create_parser(grammar).map_err(|e| Error::Input(format!("{field}: {e}")))?;
        let matcher = Matcher::new(Ok(parser));
        let allowed = vec![0; self.logits.div_ceil(32)];
        Ok(Some(Constraint { matcher, allowed, logits: self.logits, mask_seconds: Vec::new() }))
    }
}

fn check_size(field: &str, bytes: usize) -> Result<()> {
    if bytes > MAX_GRAMMAR_BYTES {
        return Err(Error::Input(format!("{field} is {bytes} bytes: at most {MAX_GRAMMAR_BYTES}")));
    }
    Ok(())
}

/// One reply's grammar state: which tokens may come next, advanced by each token drawn.
pub struct Constraint {
    matcher: Matcher,
    /// Bit `i % 32` of word `i / 32`: token `i` may be drawn next.
    allowed: Vec<u32>,
    logits: usize,
    /// How long each [`Constraint::allowed`] took: the grammar's cost per token.
    mask_seconds: Vec<f64>,
}

impl Constraint {
    /// The tokens that may be drawn next, as bits over the model's logits; where the grammar may
    /// end, every id of `stops` is allowed too. Never empty: a grammar with nowhere to go is an
    /// error.
    pub fn allowed(&mut self, stops: &[u32]) -> Result<&[u32]> {
        let start = Instant::now();
        let mask = self.matcher.compute_mask_or_eos().map_err(|e| Error::Input(format!("grammar: {e}")))?;
        let may_end = mask.is_allowed(EOS);
        self.allowed.fill(0);
        let words = mask.as_slice();
        let n = words.len().min(self.allowed.len());
        self.allowed[..n].copy_from_slice(&words[..n]);
        if may_end {
            for &stop in stops.iter().filter(|&&s| (s as usize) < self.logits) {
                self.allowed[stop as usize / 32] |= 1 << (stop % 32);
            }
        }
        if self.allowed.iter().all(|&w| w == 0) {
            return Err(Error::Input("grammar: no token may come next".into()));
        }
        self.mask_seconds.push(start.elapsed().as_secs_f64());
        Ok(&self.allowed)
    }

    /// A copy in the state this one is in, to advance separately (a reply of its own).
    pub fn fresh(&self) -> Constraint {
        Constraint {
            matcher: self.matcher.deep_clone(),
            allowed: self.allowed.clone(),
            logits: self.logits,
            mask_seconds: Vec::new(),
        }
    }

    /// Whether token `id` is in the last [`Constraint::allowed`] set.
    pub fn allows(&self, id: u32) -> bool {
        (id as usize) < self.logits && self.allowed[id as usize / 32] & (1 << (id % 32)) != 0
    }

    /// How long each mask took, in order.
    pub fn mask_seconds(&self) -> &[f64] {
        &self.mask_seconds
    }

    /// Advances the grammar past `id`, a token its last mask allowed that is not a stop.
    pub fn commit(&mut self, id: u32) -> Result<()> {
        self.matcher.consume_token(id).map_err(|e| Error::Input(format!("grammar: token {id} refused: {e}")))
    }
}

/// The median and the 99th percentile (nearest rank) of `seconds`; zeros for none.
pub fn median_and_p99(seconds: &[f64]) -> (f64, f64) {
    if seconds.is_empty() {
        return (0.0, 0.0);
    }
    let mut sorted = seconds.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = |p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
    (rank(0.5), rank(0.99))
}
