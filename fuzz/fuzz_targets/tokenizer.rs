//! `tokenizer.json` as the page reads it (`GemmaTokenizer::from_reader`), then used the way the
//! chat uses it: encode the chat template, decode, stream the text out token by token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recurrentgemma_web_fuzz as _;
use rgweb::chat::{GemmaTokenizer, TextStream};

const TEXT: &str = "<start_of_turn>user\nHi there, wörld 🙂 <0x41>\t\n<end_of_turn>\n<start_of_turn>model\n";

fuzz_target!(|data: &[u8]| {
    let Ok(tokenizer) = GemmaTokenizer::from_reader(data) else { return };
    let _ = tokenizer.vocab_size();
    let Ok(ids) = tokenizer.encode(TEXT, true) else { return };
    let _ = tokenizer.decode(&ids);
    let mut stream = TextStream::new();
    for &id in &ids {
        let _ = stream.push(&tokenizer, id);
    }
    let _ = stream.finish();
});
