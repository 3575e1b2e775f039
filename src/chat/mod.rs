//! Everything between the user's text and the model's token ids: the real Gemma tokenizer, the chat
//! template with the incremental pieces a multi-turn session feeds, the streaming detokenizer and
//! the sampler; with the engine (`gpu`), the chat session and structured output over it. All of
//! it builds for `wasm32-unknown-unknown` as well as natively.

pub mod figures;
pub mod markdown;
pub mod sampler;
pub mod saved;
#[cfg(feature = "gpu")]
pub mod session;
pub mod stop;
#[cfg(feature = "structured")]
pub mod structured;
pub mod template;
pub mod tokenizer;
mod tokenizer_json;

pub use sampler::{Sampler, SamplingParams};
#[cfg(feature = "structured")]
pub use structured::{Constraint, OutputFormat, Vocabulary};
pub use template::{first_user_turn, format_conversation, next_user_turn, Role, Turn, CHAT_STOPS};
pub use tokenizer::{GemmaTokenizer, TextStream, BOS, END_OF_TURN, EOS, PAD, START_OF_TURN};
