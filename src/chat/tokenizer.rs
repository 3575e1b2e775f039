//! The Gemma tokenizer (256,000 SentencePiece-style BPE pieces with byte fallback) and a streaming
//! detokenizer for showing generated text as it arrives.
//!
//! The tokenizer is loaded from a Hugging Face `tokenizer.json` (see `scripts/fetch-tokenizer.sh`).
//! Its pipeline is simple and shapes the code below: encoding replaces `' '` with `'▁'` and runs BPE
//! (no pre-tokenizer, no dummy-prefix space); decoding replaces `'▁'` with `' '`, turns runs of
//! byte pieces `<0xHH>` into UTF-8 text, and concatenates. So every piece decodes on its own except
//! runs of byte pieces, which only make sense together.

use std::path::Path;

use crate::error::{Error, Result};

/// `<pad>`.
pub const PAD: u32 = 0;
/// `<eos>`: end of the whole text. Generation stops on it.
pub const EOS: u32 = 1;
/// `<bos>`: the first token of every sequence the model sees (position 0).
pub const BOS: u32 = 2;
/// `<start_of_turn>`, opening a `user` or `model` turn in the chat template.
pub const START_OF_TURN: u32 = 106;
/// `<end_of_turn>`: an instruction-tuned model ends its reply with it. Generation stops on it.
pub const END_OF_TURN: u32 = 107;

/// The special pieces the chat code hard-codes, checked against every loaded file so that a
/// different vocabulary fails at load time instead of producing garbage.
const EXPECTED_SPECIAL_TOKENS: [(&str, u32); 5] = [
    ("<pad>", PAD),
    ("<eos>", EOS),
    ("<bos>", BOS),
    ("<start_of_turn>", START_OF_TURN),
    ("<end_of_turn>", END_OF_TURN),
];

pub struct GemmaTokenizer {
    inner: tokenizers::Tokenizer,
}

impl GemmaTokenizer {
    /// Parses the contents of a `tokenizer.json` through the same guarded reader as the browser
    /// ([`GemmaTokenizer::from_reader`]): `tokenizers`' own parser panics or allocates without
    /// bound on some hostile files.
    pub fn from_bytes(json: &[u8]) -> Result<Self> {
        Self::from_reader(json)
    }

    /// Parses a `tokenizer.json` as it is read: a reader that frees what it has handed over keeps
    /// the file and the parsed vocabulary from both being in memory at once (the browser's wasm
    /// heap never shrinks, so its peak is what counts).
    pub fn from_reader(json: impl std::io::Read) -> Result<Self> {
        Self::checked(super::tokenizer_json::read_bpe_tokenizer(json)?)
    }

    fn checked(inner: tokenizers::Tokenizer) -> Result<Self> {
        for (piece, expected_id) in EXPECTED_SPECIAL_TOKENS {
            let found = inner.token_to_id(piece);
            if found != Some(expected_id) {
                return Err(Error::Tokenizer(format!(
                    "not the Gemma vocabulary: expected {piece} at id {expected_id}, found {found:?}"
                )));
            }
        }
        Ok(Self { inner })
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let json = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&json).map_err(|e| match e {
            Error::Tokenizer(message) => Error::Tokenizer(format!("{}: {message}", path.display())),
            other => other,
        })
    }

    /// Token ids for `text`, with [`BOS`] in front when `add_bos`.
    ///
    /// The file's post-processor would also add BOS; it is bypassed (`add_special_tokens = false`)
    /// so BOS comes from exactly one place and is never doubled. Special pieces written in `text`
    /// (such as `<start_of_turn>`) become their single special ids: that is how the chat template
    /// is tokenized, and it means user text containing them is read as markup, as in Hugging Face.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let encoding = self.inner.encode_fast(text, false).map_err(|e| Error::Tokenizer(format!("encode: {e}")))?;
        let mut ids = Vec::with_capacity(encoding.len() + usize::from(add_bos));
        if add_bos {
            ids.push(BOS);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// The text of `ids`. Special tokens are kept as their markup (`<end_of_turn>`), so nothing the
    /// model produced is hidden. Ids outside the vocabulary are an error, not silently dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&unknown) = ids.iter().find(|&&id| self.inner.id_to_token(id).is_none()) {
            return Err(Error::Tokenizer(format!("decode: id {unknown} is not in the vocabulary")));
        }
        self.inner.decode(ids, false).map_err(|e| Error::Tokenizer(format!("decode: {e}")))
    }

    /// Number of pieces, special ones included (256,000 for Gemma): the model's logit count.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, piece: &str) -> Option<u32> {
        self.inner.token_to_id(piece)
    }

    /// Every piece's bytes as its decoded text spells them, by id: `▁` as a space, `<0xHH>` as its
    /// byte; a special piece (`<end_of_turn>`) as 0xFF then its markup, so that no text a grammar
    /// describes is ever read as one (the convention of llguidance's token trie).
    pub fn piece_bytes(&self) -> Vec<Vec<u8>> {
        let special = self.inner.get_added_tokens_decoder();
        (0..self.vocab_size() as u32)
            .map(|id| {
                let piece = self.inner.id_to_token(id).unwrap_or_default();
                if special.get(&id).is_some_and(|token| token.special) {
                    [&[0xFF], piece.as_bytes()].concat()
                } else if let Ok(Some(byte)) = self.fallback_byte(id) {
                    vec![byte]
                } else {
                    piece.replace('\u{2581}', " ").into_bytes()
                }
            })
            .collect()
    }

    /// The byte a byte-fallback piece `<0xHH>` stands for; `None` for every other piece. Same test
    /// as the `ByteFallback` decoder, so the stream and [`Self::decode`] agree on what a byte is.
    fn fallback_byte(&self, id: u32) -> Result<Option<u8>> {
        let piece = self
            .inner
            .id_to_token(id)
            .ok_or_else(|| Error::Tokenizer(format!("decode: id {id} is not in the vocabulary")))?;
        let byte = piece
            .strip_prefix("<0x")
            .and_then(|rest| rest.strip_suffix('>'))
            .filter(|hex| hex.len() == 2)
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        Ok(byte)
    }
}

/// Turns generated ids into text as they arrive, without ever showing half a character.
///
/// Ordinary pieces come out at once, with their leading space (`▁world` → `" world"`), exactly as
/// in a full decode. Byte-fallback pieces are buffered until they complete a UTF-8 character:
/// `<0xE2>`, `<0x82>`, `<0xAC>` give nothing, nothing, then `"€"`.
///
/// Concatenating every `push` and the final `finish` equals [`GemmaTokenizer::decode`] of the same
/// ids whenever each run of consecutive byte pieces spells valid UTF-8, which is always the case for
/// ids from [`GemmaTokenizer::encode`]. A model can sample any other run; then `decode` replaces the
/// *whole* run with one U+FFFD per byte, while a stream cannot take back characters it already
/// showed, so it keeps them and writes one U+FFFD per byte that is not part of a complete character.
/// (The two agree again when no byte of the run belongs to a complete character.)
#[derive(Debug, Default)]
pub struct TextStream {
    /// Bytes of a character whose byte pieces have not all arrived yet (at most 3).
    pending: Vec<u8>,
}

impl TextStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one generated id; returns the text it completes, if any.
    pub fn push(&mut self, tokenizer: &GemmaTokenizer, id: u32) -> Result<Option<String>> {
        let mut text = String::new();
        match tokenizer.fallback_byte(id)? {
            Some(byte) => {
                self.pending.push(byte);
                self.take_complete_characters(&mut text);
            }
            None => {
                // A whole piece ends any run of byte pieces: a character still incomplete here
                // never will be, exactly as the decoder treats it.
                self.flush_incomplete(&mut text);
                text.push_str(&tokenizer.decode(&[id])?);
            }
        }
        Ok(non_empty(text))
    }

    /// Ends the stream: bytes of a character that never completed come out as U+FFFD, one per byte.
    /// The stream is empty again afterwards and can be reused.
    pub fn finish(&mut self) -> Option<String> {
        let mut text = String::new();
        self.flush_incomplete(&mut text);
        non_empty(text)
    }

    /// Moves every complete character out of `pending`, writing U+FFFD for each byte that cannot be
    /// part of a character, and leaves only the start of an unfinished character behind.
    fn take_complete_characters(&mut self, text: &mut String) {
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(valid) => {
                    text.push_str(valid);
                    self.pending.clear();
                    return;
                }
                Err(error) => {
                    let valid_len = error.valid_up_to();
                    text.push_str(&String::from_utf8_lossy(&self.pending[..valid_len]));
                    match error.error_len() {
                        Some(invalid_len) => {
                            push_replacements(text, invalid_len);
                            self.pending.drain(..valid_len + invalid_len);
                        }
                        None => {
                            self.pending.drain(..valid_len);
                            return;
                        }
                    }
                }
            }
        }
    }

    fn flush_incomplete(&mut self, text: &mut String) {
        push_replacements(text, self.pending.len());
        self.pending.clear();
    }
}

fn push_replacements(text: &mut String, count: usize) {
    text.extend(std::iter::repeat_n(char::REPLACEMENT_CHARACTER, count));
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}
