//! Reads a BPE `tokenizer.json` with a low memory peak. The `tokenizers` crate parses the
//! `merges` list through a serde `untagged` enum, which first copies all 580k Gemma merges into a
//! generic value tree and then converts them twice: about 60 MB held at once. In a browser that
//! peak stays in the wasm heap for good. Here the vocabulary and merges are read straight into
//! their final types, and only the small remaining sections go through `serde_json::Value`.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::{
    AddedToken, DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerBuilder, TokenizerImpl,
};

use crate::{Error, Result};

/// The file with its model's vocabulary and merges parsed, everything else as JSON values.
struct TokenizerFile {
    vocab: Vocab,
    merges: Merges,
    /// The model's other fields (`type`, `unk_token`, `byte_fallback`, ...).
    model: Map<String, Value>,
    /// The file's other sections (`normalizer`, `decoder`, `added_tokens`, ...).
    sections: Map<String, Value>,
}

/// One merge, written either `"a b"` or `["a", "b"]`.
struct Merge((String, String));

impl<'de> Deserialize<'de> for Merge {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct MergeVisitor;
        impl<'de> Visitor<'de> for MergeVisitor {
            type Value = Merge;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a merge: \"a b\" or [\"a\", \"b\"]")
            }
            fn visit_str<E: de::Error>(self, merge: &str) -> std::result::Result<Merge, E> {
                let (a, b) = merge.split_once(' ').ok_or_else(|| E::custom(format!("merge '{merge}' has no space")))?;
                Ok(Merge((a.to_string(), b.to_string())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Merge, A::Error> {
                let a = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let b = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(1, &self))?;
                Ok(Merge((a, b)))
            }
        }
        deserializer.deserialize_any(MergeVisitor)
    }
}

struct MergeList(Merges);

impl<'de> Deserialize<'de> for MergeList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = MergeList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of merges")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<MergeList, A::Error> {
                let mut merges = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(Merge(merge)) = seq.next_element()? {
                    merges.push(merge);
                }
                Ok(MergeList(merges))
            }
        }
        deserializer.deserialize_seq(ListVisitor)
    }
}

/// The `model` section: vocab and merges typed, the rest kept as values.
struct ModelSection {
    vocab: Vocab,
    merges: Merges,
    fields: Map<String, Value>,
}

impl<'de> Deserialize<'de> for ModelSection {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct ModelVisitor;
        impl<'de> Visitor<'de> for ModelVisitor {
            type Value = ModelSection;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a tokenizer model")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<ModelSection, A::Error> {
                let (mut vocab, mut merges, mut fields) = (None, None, Map::new());
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "vocab" => vocab = Some(map.next_value::<Vocab>()?),
                        "merges" => merges = Some(map.next_value::<MergeList>()?.0),
                        _ => {
                            fields.insert(key, map.next_value()?);
                        }
                    }
                }
                Ok(ModelSection {
                    vocab: vocab.ok_or_else(|| de::Error::missing_field("vocab"))?,
                    merges: merges.ok_or_else(|| de::Error::missing_field("merges"))?,
                    fields,
                })
            }
        }
        deserializer.deserialize_map(ModelVisitor)
    }
}

impl<'de> Deserialize<'de> for TokenizerFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct FileVisitor;
        impl<'de> Visitor<'de> for FileVisitor {
            type Value = TokenizerFile;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a tokenizer.json object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<TokenizerFile, A::Error> {
                let (mut model, mut sections) = (None, Map::new());
                while let Some(key) = map.next_key::<String>()? {
                    if key == "model" {
                        model = Some(map.next_value::<ModelSection>()?);
                    } else {
                        sections.insert(key, map.next_value()?);
                    }
                }
                let model = model.ok_or_else(|| de::Error::missing_field("model"))?;
                Ok(TokenizerFile { vocab: model.vocab, merges: model.merges, model: model.fields, sections })
            }
        }
        deserializer.deserialize_map(FileVisitor)
    }
}

fn invalid(message: impl fmt::Display) -> Error {
    Error::Tokenizer(format!("invalid tokenizer.json: {message}"))
}

/// An optional section, `null` or absent meaning none.
fn section<T: serde::de::DeserializeOwned>(sections: &mut Map<String, Value>, name: &str) -> Result<Option<T>> {
    match sections.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value).map(Some).map_err(|e| invalid(format!("{name}: {e}"))),
    }
}

/// The pipeline parts a Gemma `tokenizer.json` is made of, per section (with the key that lists
/// a `Sequence`'s parts). tokenizers builds every other kind too, but a hostile file reaches code
/// there that panics or allocates what the file says (fuzzing found a `Precompiled` charsmap
/// parsed with `expect` and a length that asks for 8 GB, `BPEDecoder` subtracting past zero, the
/// `Strip` decoder indexing past a token, a `Replace` normalizer whose regex matches the empty
/// string indexing past the text), and
/// on wasm32 a panic aborts the module: only these kinds are handed to it.
const PARTS: [(&str, &str, &[&str]); 4] = [
    ("normalizer", "normalizers", &["Replace", "Prepend", "Strip", "NFC", "NFKC"]),
    ("pre_tokenizer", "pretokenizers", &["Split", "Metaspace"]),
    ("post_processor", "processors", &["TemplateProcessing"]),
    ("decoder", "decoders", &["Replace", "ByteFallback", "Fuse", "Strip"]),
];

/// Fails unless every part of every section is a typed entry of a kind [`PARTS`] allows (one
/// level of `Sequence`; legacy untagged entries would be matched against every kind).
fn check_parts(sections: &Map<String, Value>) -> Result<()> {
    for (name, list, allowed) in PARTS {
        let Some(section) = sections.get(name).filter(|v| !v.is_null()) else { continue };
        let parts = match section.get("type").and_then(Value::as_str) {
            Some("Sequence") => {
                section.get(list).and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default()
            }
            _ => vec![section],
        };
        for part in parts {
            match part.get("type").and_then(Value::as_str) {
                // Its `stop` loop indexes before a token's first character (a panic) when the token
                // is shorter; Gemma's strips the start only.
                Some("Strip") if name == "decoder" && part.get("stop").and_then(Value::as_u64) != Some(0) => {
                    return Err(invalid("decoder: Strip must have stop 0"));
                }
                // A regex that matches the empty string makes the normalizer's replace index past
                // the text (a panic); Gemma's replace plain strings.
                Some("Replace") if !replaces_a_plain_string(part) => {
                    return Err(invalid(format!("{name}: Replace must replace a non-empty string, not a regex")));
                }
                // Encoding one text, the template indexes the encodings by sequence: B is past the
                // end (a panic); Gemma's single template is <bos> then A.
                Some("TemplateProcessing") if single_template_refers_to_b(part) => {
                    return Err(invalid("post_processor: the single-text template may use sequence A only"));
                }
                Some(kind) if allowed.contains(&kind) => {}
                kind => {
                    return Err(invalid(format!(
                        "{name}: {} is not supported (a Gemma tokenizer uses {})",
                        kind.unwrap_or("an entry without a type"),
                        allowed.join(", ")
                    )))
                }
            }
        }
    }
    Ok(())
}

fn single_template_refers_to_b(part: &Value) -> bool {
    let pieces = part.get("single").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    pieces.iter().filter_map(|piece| piece.get("Sequence")).any(|sequence| sequence.get("id") != Some(&"A".into()))
}

fn replaces_a_plain_string(part: &Value) -> bool {
    let pattern = part.get("pattern").and_then(|p| p.get("String")).and_then(Value::as_str);
    pattern.is_some_and(|p| !p.is_empty())
}

fn model_field<T: serde::de::DeserializeOwned>(model: &Map<String, Value>, name: &str) -> Result<Option<T>> {
    match model.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => {
            serde_json::from_value(value.clone()).map(Some).map_err(|e| invalid(format!("model.{name}: {e}")))
        }
    }
}

/// Parses a BPE `tokenizer.json` from `reader` into the same tokenizer `Tokenizer::from_bytes` builds.
pub fn read_bpe_tokenizer(reader: impl std::io::Read) -> Result<tokenizers::Tokenizer> {
    let file: TokenizerFile = serde_json::from_reader(reader).map_err(invalid)?;
    let TokenizerFile { vocab, merges, model, mut sections } = file;
    match model.get("type").and_then(Value::as_str) {
        Some("BPE") | None => {}
        Some(other) => return Err(invalid(format!("model type {other} is not BPE"))),
    }
    let prefix = model_field::<String>(&model, "continuing_subword_prefix")?;
    // tokenizers joins every merge, its second part's continuing_subword_prefix cut off, in a
    // buffer as long as the longest vocabulary entry, unchecked: a merge whose result is no entry
    // (longer than any), or whose second part lacks the prefix, panics while the model is built
    // (or is cut inside a character). It would refuse such a merge anyway: refuse it first.
    let mut joined = String::new();
    for (a, b) in &merges {
        let rest = b.strip_prefix(prefix.as_deref().unwrap_or(""));
        joined.clear();
        joined.push_str(a);
        joined.push_str(rest.unwrap_or(b));
        if rest.is_none() || !vocab.contains_key(&joined) {
            return Err(invalid(format!("merge '{a} {b}' does not join into a vocabulary entry")));
        }
    }
    let mut bpe = BPE::builder().vocab_and_merges(vocab, merges);
    if let Some(dropout) = model_field::<f32>(&model, "dropout")? {
        bpe = bpe.dropout(dropout);
    }
    if let Some(unk) = model_field::<String>(&model, "unk_token")? {
        bpe = bpe.unk_token(unk);
    }
    if let Some(prefix) = prefix {
        bpe = bpe.continuing_subword_prefix(prefix);
    }
    if let Some(suffix) = model_field::<String>(&model, "end_of_word_suffix")? {
        bpe = bpe.end_of_word_suffix(suffix);
    }
    if let Some(fuse) = model_field::<bool>(&model, "fuse_unk")? {
        bpe = bpe.fuse_unk(fuse);
    }
    if let Some(byte_fallback) = model_field::<bool>(&model, "byte_fallback")? {
        bpe = bpe.byte_fallback(byte_fallback);
    }
    if let Some(ignore) = model_field::<bool>(&model, "ignore_merges")? {
        bpe = bpe.ignore_merges(ignore);
    }
    let bpe = bpe.build().map_err(invalid)?;

    let added: Vec<AddedToken> = section(&mut sections, "added_tokens")?.unwrap_or_default();
    check_parts(&sections)?;
    let mut tokenizer: TokenizerImpl<
        ModelWrapper,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    > = TokenizerBuilder::new()
        .with_model(ModelWrapper::BPE(bpe))
        .with_normalizer(section(&mut sections, "normalizer")?)
        .with_pre_tokenizer(section(&mut sections, "pre_tokenizer")?)
        .with_post_processor(section(&mut sections, "post_processor")?)
        .with_decoder(section(&mut sections, "decoder")?)
        // The file's `truncation` and `padding` are not applied: the chat encodes every turn whole
        // and never pads (Gemma's file has neither), and a fixed padding length would be an
        // allocation of the host's choosing at every encode (found by fuzzing: 400 GB, an abort).
        .build()
        .map_err(invalid)?;
    // As tokenizers does: the added tokens take their ids from the vocabulary.
    tokenizer.add_tokens(added).map_err(invalid)?;
    Ok(tokenizer.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BPE file with Gemma's special ids, `▁`, `a` and `▁a`, a `' '` → `▁` normalizer, then `extra`.
    fn file(extra: &str) -> String {
        let vocab = r#""<pad>": 0, "<eos>": 1, "<bos>": 2, "▁": 3, "a": 4, "▁a": 5, "<start_of_turn>": 106, "<end_of_turn>": 107"#;
        format!(
            r#"{{"model": {{"type": "BPE", "vocab": {{{vocab}}}, "merges": ["▁ a"]}},
                "normalizer": {{"type": "Replace", "pattern": {{"String": " "}}, "content": "▁"}}{extra}}}"#
        )
    }

    #[test]
    fn parts_gemma_does_not_use_are_refused_before_tokenizers_builds_them() {
        // Each made tokenizers panic: a charsmap claiming 8 bytes it does not hold, none at all,
        // a legacy untagged entry in a sequence, a BPEDecoder handed no tokens by the CTC before it.
        for (section, part, message) in [
            ("normalizer", r#"{"type": "Precompiled", "precompiled_charsmap": "CAAAAAEBAQEBAQEB"}"#, "Precompiled"),
            ("normalizer", r#"{"type": "Precompiled"}"#, "Precompiled"),
            (
                "normalizer",
                r#"{"type": "Sequence", "normalizers": [{"type": "NFC"}, {"precompiled_charsmap": "CAAAAAEBAQEBAQEB"}]}"#,
                "without a type",
            ),
            (
                "decoder",
                r#"{"type": "Sequence", "decoders": [{"type": "CTC", "pad_token": "<pad>", "word_delimiter_token": "|",
                    "cleanup": true}, {"type": "BPEDecoder", "suffix": "</w>"}]}"#,
                "CTC",
            ),
            ("decoder", r#"{"type": "Strip", "content": " ", "start": 1, "stop": 5}"#, "stop 0"),
            // Fuzzing: `\s*` matches the empty string, and the replace indexed past the text.
            ("normalizer", r#"{"type": "Replace", "pattern": {"Regex": "\\s*"}, "content": " "}"#, "not a regex"),
            ("decoder", r#"{"type": "Replace", "pattern": {"String": ""}, "content": " "}"#, "non-empty string"),
            // Fuzzing: sequence B in the single-text template indexed past the one encoding.
            (
                "post_processor",
                r#"{"type": "TemplateProcessing", "single": [{"Sequence": {"id": "B", "type_id": 0}}],
                    "pair": [{"Sequence": {"id": "A", "type_id": 0}}], "special_tokens": {}}"#,
                "sequence A only",
            ),
        ] {
            let json = file(&format!(r#", "{section}": {part}"#));
            let err = read_bpe_tokenizer(json.as_bytes()).expect_err("refused").to_string();
            assert!(err.contains(message), "{err}");
        }
        // Merges tokenizers would join past its buffer: the second part without the prefix it cuts
        // off, and a result longer than any vocabulary entry.
        let prefixed = file("").replace(r#""merges""#, r###""continuing_subword_prefix": "##", "merges""###);
        let too_long = file("").replace(r#""▁ a""#, r#""▁a ▁a""#);
        for json in [prefixed, too_long] {
            let err = read_bpe_tokenizer(json.as_bytes()).expect_err("refused").to_string();
            assert!(err.contains("does not join into a vocabulary entry"), "{err}");
        }
    }

    #[test]
    fn padding_and_truncation_in_the_file_are_not_applied() {
        // A host's fixed padding length would be allocated at every encode (fuzzing found one of
        // 10^11 ids); truncation would cut the conversation short.
        let json = file(
            r#", "padding": {"strategy": {"Fixed": 8}, "direction": "Right", "pad_to_multiple_of": null,
                             "pad_id": 0, "pad_type_id": 0, "pad_token": "<pad>"},
                 "truncation": {"direction": "Right", "max_length": 1, "strategy": "LongestFirst", "stride": 0}"#,
        );
        let tokenizer = read_bpe_tokenizer(json.as_bytes()).unwrap();
        assert_eq!(tokenizer.encode_fast("a a a", false).unwrap().get_ids(), [4, 5, 5]);
    }
}
