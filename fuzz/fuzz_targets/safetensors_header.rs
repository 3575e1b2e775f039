//! A safetensors file's length prefix and JSON header, whole or as its JSON alone.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recurrentgemma_web_fuzz as _;
use rgweb::weights::safetensors;

fuzz_target!(|data: &[u8]| {
    if let Some(prefix) = data.get(..8) {
        let _ = safetensors::json_len(prefix.try_into().expect("8 bytes"));
        let _ = safetensors::parse_header(&data[8..]);
    }
    if let Ok(header) = safetensors::header_of(data) {
        // What a caller relies on: entries in order, tiling the data from its start to file_size.
        let mut cursor = header.data_start;
        for entry in &header.entries {
            assert_eq!(entry.start, cursor, "{entry:?}");
            assert!(entry.end >= entry.start, "{entry:?}");
            cursor = entry.end;
        }
        assert_eq!(cursor, header.file_size);
    }
});
