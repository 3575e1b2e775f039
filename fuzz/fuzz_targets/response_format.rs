//! What a caller sends as `response_format` (a JSON schema, OpenAI's or WebLLM's wrapper, a Lark
//! grammar) compiled by the grammar engine as the chat compiles it, then a few steps of a reply
//! held to it: masks computed and tokens committed. The first byte picks how the rest is read.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use recurrentgemma_web_fuzz as _;
use rgweb::chat::structured::{OutputFormat, Vocabulary};
use rgweb::chat::EOS;

/// A small vocabulary of Gemma's shape: `<pad>`, `<eos>` (special), every byte, some words.
fn vocabulary() -> &'static Vocabulary {
    static VOCABULARY: OnceLock<Vocabulary> = OnceLock::new();
    VOCABULARY.get_or_init(|| {
        let mut pieces = vec![b"\xFF<pad>".to_vec(), b"\xFF<eos>".to_vec()];
        pieces.extend((0..=255u8).map(|b| vec![b]));
        for word in ["{\"", "\": ", "\", \"", "true", "false", "null", " ", "ab", "123", "\"}", "]}"] {
            pieces.push(word.as_bytes().to_vec());
        }
        let logits = pieces.len();
        Vocabulary::from_pieces(pieces, logits).expect("the vocabulary builds")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&how, rest)) = data.split_first() else { return };
    let format = match how % 3 {
        0 => match serde_json::from_slice(rest) {
            Ok(request) => OutputFormat::from_response_format(&request, "response_format"),
            Err(_) => return,
        },
        1 => match serde_json::from_slice(rest) {
            Ok(schema) => Ok(OutputFormat::Json { schema: Some(schema) }),
            Err(_) => return,
        },
        _ => Ok(OutputFormat::Grammar(String::from_utf8_lossy(rest).into_owned())),
    };
    let Ok(format) = format else { return };
    let Ok(Some(mut constraint)) = vocabulary().constraint(&format, "response_format") else { return };
    // A reply of up to 24 tokens, each chosen among the allowed ones by the input's bytes.
    for step in 0..24 {
        let Ok(allowed) = constraint.allowed(&[EOS]) else { return };
        let ids: Vec<u32> =
            (0..allowed.len() as u32 * 32).filter(|&i| allowed[i as usize / 32] & (1 << (i % 32)) != 0).collect();
        let id = ids[rest.get(step).copied().unwrap_or(0) as usize % ids.len()];
        if id == EOS || constraint.commit(id).is_err() {
            return;
        }
    }
});
