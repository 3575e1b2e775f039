//! Writes the shard_stream seeds into fuzz/corpus/shard_stream/: each tiny model's valid shard in
//! one chunk, in chunks of 512 and 0 bytes, and in chunks of 7, 300 and 1 bytes (see the target's
//! input format). Run: `cargo run --manifest-path fuzz/Cargo.toml --example seeds`.

use std::path::Path;

use recurrentgemma_web_fuzz::tiny_model;
use rgweb::weights::format::Quantization;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/shard_stream");
    std::fs::create_dir_all(&dir).expect("the corpus folder");
    for (quantization, flag, suffix) in [(Quantization::Int8, 0u8, ""), (Quantization::Int4, 128, "-int4")] {
        let (_, shards) = tiny_model(quantization);
        for (name, lengths) in
            [("one-chunk", &[][..]), ("chunks-512-0", &[512u16, 0][..]), ("chunks-7-300-1", &[7, 300, 1][..])]
        {
            let mut seed = vec![flag + lengths.len() as u8];
            seed.extend(lengths.iter().flat_map(|l| l.to_le_bytes()));
            seed.extend(&shards[0]);
            std::fs::write(dir.join(format!("{name}{suffix}")), seed).expect("a seed");
        }
    }
}
