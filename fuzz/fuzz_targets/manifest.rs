//! `manifest.json` as the page reads it: UTF-8 text, parsed and checked; a manifest that passes
//! must then be safe to plan a load from (sizes, shard parsers).
#![no_main]

use libfuzzer_sys::fuzz_target;
use recurrentgemma_web_fuzz as _;
use rgweb::weights::format::Manifest;
use rgweb::weights::stream::ShardParser;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(manifest) = Manifest::from_json(text) else { return };
    let _ = manifest.total_bytes();
    for shard in 0..manifest.shards.len() {
        let _ = ShardParser::new(&manifest, shard);
    }
});
