//! The streaming shard parser, given a valid tiny manifest and (possibly mutated) shard bytes in
//! any chunking. Input: a byte `n`, then `n` little-endian u16 chunk lengths (0 allowed, used
//! cyclically, at most 64 chunks), then the shard bytes. `n` < 128 streams into the int8 model;
//! `n` ≥ 128 means `n − 128` lengths and the int4 model (U32 values, F16 scales). The seeds hold
//! the valid shards (`fuzz/examples/seeds.rs` writes them).
//!
//! Beyond "no panic": every piece's bytes must reach the sink in order, each exactly once, never
//! past the piece's end, and be the bytes at the piece's place in the shard; a stream that finishes cleanly must have delivered every piece
//! whole; the valid shard must finish cleanly in every chunking.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use recurrentgemma_web_fuzz::tiny_model;
use rgweb::weights::format::{Manifest, Piece, Quantization};
use rgweb::weights::stream::{PieceSink, ShardParser};

/// Chunk boundaries can fall anywhere with this many; more only slow each run down.
const MAX_CHUNKS: usize = 64;

type Model = (Manifest, Vec<Vec<u8>>);
static MODELS: LazyLock<[Model; 2]> =
    LazyLock::new(|| [tiny_model(Quantization::Int8), tiny_model(Quantization::Int4)]);

/// Checks each delivery against the shard fed in, and counts bytes received per piece.
struct Received<'a> {
    shard: &'a [u8],
    /// (piece name, bytes received, piece size)
    pieces: Vec<(String, u64, u64)>,
}

impl PieceSink for Received<'_> {
    fn piece_bytes(&mut self, piece: &Piece, offset: u64, bytes: &[u8]) -> rgweb::Result<()> {
        let entry = match self.pieces.iter_mut().find(|(name, ..)| *name == piece.name) {
            Some(entry) => entry,
            None => {
                self.pieces.push((piece.name.clone(), 0, piece.bytes));
                self.pieces.last_mut().expect("just pushed")
            }
        };
        assert_eq!(offset, entry.1, "{}: bytes out of order", piece.name);
        entry.1 += bytes.len() as u64;
        assert!(entry.1 <= piece.bytes, "{}: more bytes than the piece holds", piece.name);
        let at = (piece.offset + offset) as usize;
        assert!(self.shard.get(at..at + bytes.len()) == Some(bytes), "{}: not the bytes at {at}", piece.name);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let (model, count) = if first >= 128 { (1, first - 128) } else { (0, first) };
    let (manifest, shards) = &MODELS[model];
    let Some((lengths, shard)) = rest.split_at_checked(2 * count as usize) else { return };
    let lengths: Vec<usize> = lengths.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize).collect();

    let mut parser = ShardParser::new(manifest, 0);
    let mut sink = Received { shard, pieces: Vec::new() };
    let mut outcome = Ok(());
    let mut at = 0;
    for index in 0..MAX_CHUNKS {
        // Zero-length chunks are legal (a fetch stream may yield one); the last chunk takes the rest.
        let end = match lengths.get(index % lengths.len().max(1)) {
            Some(length) if index + 1 < MAX_CHUNKS => (at + length).min(shard.len()),
            _ => shard.len(),
        };
        outcome = parser.push(&shard[at..end], &mut sink);
        at = end;
        if outcome.is_err() || at == shard.len() {
            break;
        }
    }
    let outcome = outcome.and_then(|()| parser.finish());
    if shard == shards[0].as_slice() {
        assert!(outcome.is_ok(), "the valid shard failed: {outcome:?}");
    }
    if outcome.is_ok() {
        assert_eq!(sink.pieces.len(), manifest.shard_pieces(0).count(), "every piece reached the sink");
        for (name, got, want) in &sink.pieces {
            assert_eq!(got, want, "{name} delivered whole");
        }
    }
});
