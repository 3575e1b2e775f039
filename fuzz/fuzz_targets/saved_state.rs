//! A conversation's state as bytes (`chat::saved`), as the page reads it back from IndexedDB or a
//! user's file. The input is the body: the target appends its sha256, so that the fuzzer reaches
//! the parser behind the checksum; the bytes as given are parsed too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recurrentgemma_web_fuzz as _;
use rgweb::chat::saved::{SavedConversation, FORMAT_VERSION};
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    let _ = SavedConversation::from_bytes(data);
    let mut bytes = data.to_vec();
    bytes.extend_from_slice(&Sha256::digest(data));
    if let Ok(saved) = SavedConversation::from_bytes(&bytes) {
        // What a caller relies on: the history, when known, is as long as the state's position;
        // the bytes are the ones this build writes, and an older version's come back the same in
        // this one's.
        if let Some(history) = &saved.history {
            assert_eq!(history.len() as u64, saved.state.position);
        }
        if u32::from_le_bytes(data[8..12].try_into().expect("a header")) == FORMAT_VERSION {
            assert_eq!(saved.to_bytes(), bytes);
        } else {
            assert_eq!(SavedConversation::from_bytes(&saved.to_bytes()).expect("its own bytes"), saved);
        }
    }
});
