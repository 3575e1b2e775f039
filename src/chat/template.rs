//! The Gemma chat template, as text. BOS is never part of it: the caller puts id
//! [`BOS`](super::tokenizer::BOS) in front of the tokens, so it cannot be doubled by tokenizing a
//! literal `<bos>`.
//!
//! A whole conversation renders as (the Hugging Face Gemma template, `{{ bos_token }}` left out):
//!
//! ```text
//! <start_of_turn>user\n{message}<end_of_turn>\n
//! <start_of_turn>model\n{reply}<end_of_turn>\n
//! ...
//! <start_of_turn>model\n                      (the generation prompt)
//! ```
//!
//! A chat session keeps the model state between turns and feeds only the new tokens:
//! `[BOS] + first_user_turn(m1)`, then the sampled reply, then `next_user_turn(m2)`, and so on. The
//! reply's own `<end_of_turn>` is sampled (it stops generation) but not fed back, so
//! [`next_user_turn`] starts by closing it. Tokenized, the pieces give exactly the ids of
//! `[BOS] + format_conversation(.., true)` for the same messages and replies (tested with the real
//! tokenizer). Each boundary sits next to a special token, which BPE never merges across, or after
//! `model\n`, and no Gemma piece joins a newline to other text. One difference is by design: the
//! template trims every message, but a session's state holds the reply exactly as sampled, so the
//! two agree when a reply has no surrounding whitespace.

use super::tokenizer::{END_OF_TURN, EOS};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    /// The assistant; the template calls it `model`.
    Model,
}

impl Role {
    fn template_name(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Model => "model",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub role: Role,
    pub content: String,
}

impl Turn {
    pub fn user(content: impl Into<String>) -> Self {
        Self { role: Role::User, content: content.into() }
    }

    pub fn model(content: impl Into<String>) -> Self {
        Self { role: Role::Model, content: content.into() }
    }
}

/// Renders `turns` with the Gemma template; `add_generation_prompt` appends the opening of the
/// model's next turn. Each content is trimmed, like the template's `| trim`. The template has no
/// system role, and turns must alternate user, model, user, ... (an [`Error::Input`] otherwise).
pub fn format_conversation(turns: &[Turn], add_generation_prompt: bool) -> Result<String> {
    let mut text = String::new();
    for (index, turn) in turns.iter().enumerate() {
        let expected = if index % 2 == 0 { Role::User } else { Role::Model };
        if turn.role != expected {
            return Err(Error::Input(format!(
                "chat turns must alternate user/model starting with user; turn {index} is {} where {} was expected",
                turn.role.template_name(),
                expected.template_name()
            )));
        }
        push_turn(&mut text, turn.role, &turn.content);
    }
    if add_generation_prompt {
        text.push_str(GENERATION_PROMPT);
    }
    Ok(text)
}

/// The first user message of a session (trimmed, as in the template) plus the generation prompt;
/// BOS goes before it.
pub fn first_user_turn(message: &str) -> String {
    let mut text = String::new();
    push_turn(&mut text, Role::User, message);
    text.push_str(GENERATION_PROMPT);
    text
}

/// A later user message: closes the model's reply (whose `<end_of_turn>` was sampled but not fed
/// back), then the user turn and the generation prompt.
pub fn next_user_turn(message: &str) -> String {
    let mut text = String::from(TURN_END);
    text.push_str(&first_user_turn(message));
    text
}

/// A chat reply stops on `<end_of_turn>` (how an instruction-tuned model ends its reply) or `<eos>`.
pub const CHAT_STOPS: [u32; 2] = [END_OF_TURN, EOS];

const TURN_START: &str = "<start_of_turn>";
const TURN_END: &str = "<end_of_turn>\n";
const GENERATION_PROMPT: &str = "<start_of_turn>model\n";

fn push_turn(text: &mut String, role: Role, content: &str) {
    text.push_str(TURN_START);
    text.push_str(role.template_name());
    text.push('\n');
    text.push_str(content.trim());
    text.push_str(TURN_END);
}
