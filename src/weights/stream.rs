//! Incremental shard parser, shared by the native loader (file reads) and the browser (fetch
//! stream chunks): bytes go in as they arrive, in order; each piece's bytes are handed to a
//! [`PieceSink`] at once, so nothing larger than one chunk is ever buffered. The shard's header
//! is checked against the manifest, every f32 and f16 value (f16: int4 scales) is checked to be
//! finite (a correctly hashed shard may still hold NaN), and the shard's length and sha256 when
//! the stream ends.

use sha2::{Digest, Sha256};

use super::format::{Manifest, Piece};
use super::safetensors::{self, Dtype};
use crate::{Error, Result};

/// Where piece bytes go: a host buffer, a GPU buffer, ...
pub trait PieceSink {
    /// `bytes` belong to `piece` starting `offset` bytes into it; calls for one piece come in order.
    fn piece_bytes(&mut self, piece: &Piece, offset: u64, bytes: &[u8]) -> Result<()>;
}

/// A sink that keeps nothing: a shard only checked (and cached, in the browser) for later.
pub struct Discard;

impl PieceSink for Discard {
    fn piece_bytes(&mut self, _: &Piece, _: u64, _: &[u8]) -> Result<()> {
        Ok(())
    }
}

pub struct ShardParser<'m> {
    manifest: &'m Manifest,
    shard: usize,
    /// This shard's pieces, by offset.
    pieces: Vec<&'m Piece>,
    position: u64,
    /// The header's exact length (prefix included), fixed by where the manifest puts the first piece.
    data_start: u64,
    header: Vec<u8>,
    header_done: bool,
    /// The first bytes of an f32 or f16 value that a chunk boundary split.
    split_value: Vec<u8>,
    /// `None` for bytes whose integrity is proven elsewhere ([`ShardParser::proven`]).
    hasher: Option<Sha256>,
}

impl<'m> ShardParser<'m> {
    pub fn new(manifest: &'m Manifest, shard: usize) -> Self {
        ShardParser { hasher: Some(Sha256::new()), ..Self::proven(manifest, shard) }
    }

    /// A parser that does not hash the shard, for bytes already proven to be the ones the
    /// manifest names: a browser's cached copy whose segments each match the digest recorded when
    /// the whole shard had passed its sha256. Everything else is still checked.
    pub fn proven(manifest: &'m Manifest, shard: usize) -> Self {
        let mut pieces: Vec<&Piece> = manifest.shard_pieces(shard).collect();
        pieces.sort_by_key(|p| p.offset);
        ShardParser {
            manifest,
            shard,
            pieces,
            position: 0,
            data_start: manifest.shard_data_start(shard),
            header: Vec::new(),
            header_done: false,
            split_value: Vec::with_capacity(4),
            hasher: None,
        }
    }

    /// Bytes of the shard fed so far: where a resumed download continues from.
    pub fn position(&self) -> u64 {
        self.position
    }

    fn file(&self) -> &str {
        &self.manifest.shards[self.shard].file
    }

    /// Feeds the next bytes of the shard.
    pub fn push(&mut self, chunk: &[u8], sink: &mut dyn PieceSink) -> Result<()> {
        let expected = self.manifest.shards[self.shard].bytes;
        let end = self.position + chunk.len() as u64;
        if end > expected {
            return Err(Error::Weights(format!("{}: longer than the {expected} bytes the manifest says", self.file())));
        }
        if let Some(hasher) = &mut self.hasher {
            hasher.update(chunk);
        }
        let mut rest = chunk;
        if !self.header_done {
            rest = self.take_header(rest)?;
        }
        let start = end - rest.len() as u64;
        for index in 0..self.pieces.len() {
            let piece = self.pieces[index];
            let (lo, hi) = (piece.offset.max(start), (piece.offset + piece.bytes).min(end));
            if lo < hi {
                let bytes = &rest[(lo - start) as usize..(hi - start) as usize];
                if matches!(piece.dtype, Dtype::F32 | Dtype::F16) {
                    self.check_finite(piece, lo - piece.offset, bytes)?;
                }
                sink.piece_bytes(piece, lo - piece.offset, bytes)?;
            }
        }
        self.position = end;
        Ok(())
    }

    /// Fails on a NaN or infinite f32 or f16: the hash only proves the host sent what it meant to.
    /// `bytes` start `offset` bytes into `piece`, whose values start at its offset 0.
    fn check_finite(&mut self, piece: &Piece, offset: u64, bytes: &[u8]) -> Result<()> {
        let size = piece.dtype.size();
        let value = |b: &[u8]| match piece.dtype {
            Dtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            _ => f32::from_le_bytes(b.try_into().expect("4 bytes")),
        };
        let head = (size - self.split_value.len()) % size;
        let head = head.min(bytes.len());
        let mut values = Vec::with_capacity(1);
        if !self.split_value.is_empty() {
            self.split_value.extend_from_slice(&bytes[..head]);
            if self.split_value.len() == size {
                values.push((offset / size as u64, value(&self.split_value)));
                self.split_value.clear();
            }
        }
        let body = &bytes[head..];
        let words = body.chunks_exact(size);
        self.split_value.extend_from_slice(words.remainder());
        let first_whole = (offset + head as u64) / size as u64;
        let bad = values
            .into_iter()
            .find(|(_, v)| !v.is_finite())
            .or_else(|| words.zip(first_whole..).map(|(w, i)| (i, value(w))).find(|(_, v)| !v.is_finite()));
        match bad {
            Some((index, value)) => Err(Error::Weights(format!(
                "{}: {} holds a non-finite value ({value}) at element {index}",
                self.file(),
                piece.name
            ))),
            None => Ok(()),
        }
    }

    /// Collects header bytes; once complete, checks them and returns the data bytes after them.
    fn take_header<'c>(&mut self, mut chunk: &'c [u8]) -> Result<&'c [u8]> {
        loop {
            let target = if self.header.len() < 8 {
                8
            } else {
                let prefix = self.header[..8].try_into().expect("8 bytes");
                let len = safetensors::json_len(prefix).map_err(|e| Error::Weights(format!("{}: {e}", self.file())))?;
                if 8 + len != self.data_start {
                    return Err(Error::Weights(format!(
                        "{}: its header claims {len} bytes, but the manifest puts the data at byte {}",
                        self.file(),
                        self.data_start
                    )));
                }
                self.data_start as usize
            };
            let take = (target - self.header.len()).min(chunk.len());
            self.header.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.header.len() < target {
                return Ok(chunk);
            }
            if target > 8 {
                self.check_header()?;
                self.header_done = true;
                return Ok(chunk);
            }
        }
    }

    fn check_header(&self) -> Result<()> {
        let header = safetensors::parse_header(&self.header[8..])
            .map_err(|e| Error::Weights(format!("{}: {e}", self.file())))?;
        let matches = header.entries.len() == self.pieces.len()
            && header
                .entries
                .iter()
                .zip(&self.pieces)
                .all(|(e, p)| e.name == p.name && e.dtype == p.dtype && e.shape == p.shape && e.start == p.offset);
        if !matches {
            return Err(Error::Weights(format!("{}: its header does not match the manifest", self.file())));
        }
        Ok(())
    }

    /// Ends the stream: the shard must be complete and (unless [`ShardParser::proven`]) its sha256
    /// must match.
    pub fn finish(self) -> Result<()> {
        let info = &self.manifest.shards[self.shard];
        if self.position != info.bytes || !self.header_done {
            return Err(Error::Weights(format!(
                "{}: truncated, got {} of {} bytes",
                info.file, self.position, info.bytes
            )));
        }
        let Some(hasher) = self.hasher else { return Ok(()) };
        let digest = hex(&hasher.finalize());
        if digest != info.sha256 {
            return Err(Error::Weights(format!(
                "{}: sha256 mismatch (expected {}, got {digest})",
                info.file, info.sha256
            )));
        }
        Ok(())
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Preset};
    use crate::weights::format::{shard_header, Quantization, Role};

    /// A small int4 model's manifest and its first shard: f32 values 0.5, f16 scales 1.0, and
    /// `edit` applied before the shard is hashed.
    fn int4_shard(edit: impl Fn(&Manifest, &mut Vec<u8>)) -> (Manifest, Vec<u8>) {
        let mut config = Config::preset(Preset::Tiny);
        config.vocab_size = 512;
        let mut manifest = Manifest::plan(&config, Quantization::Int4);
        let pieces: Vec<Piece> = manifest.shard_pieces(0).cloned().collect();
        let mut bytes = shard_header(&pieces);
        for piece in &pieces {
            let value: &[u8] = match piece.dtype {
                Dtype::F32 => &0.5f32.to_le_bytes(),
                Dtype::F16 => &half::f16::ONE.to_le_bytes(),
                _ => &[0x97],
            };
            bytes.extend(value.iter().cycle().take(piece.bytes as usize));
        }
        edit(&manifest, &mut bytes);
        manifest.shards[0].sha256 = hex(&Sha256::digest(&bytes));
        (manifest, bytes)
    }

    fn parse(manifest: &Manifest, bytes: &[u8], chunk: usize) -> Result<()> {
        let mut parser = ShardParser::new(manifest, 0);
        for piece in bytes.chunks(chunk) {
            parser.push(piece, &mut Discard)?;
        }
        parser.finish()
    }

    #[test]
    fn non_finite_f16_scales_are_found_wherever_chunks_split_them() {
        let (manifest, bytes) = int4_shard(|_, _| {});
        for chunk in [1, 3, 4096, bytes.len()] {
            parse(&manifest, &bytes, chunk).unwrap();
        }
        let scales = |m: &Manifest| m.shard_pieces(0).find(|p| p.role == Role::Scales).unwrap().clone();
        let name = scales(&manifest).name;
        for (bits, shown) in [(0x7e00u16, "NaN"), (0x7c00, "inf"), (0xfc00, "-inf")] {
            let (manifest, bytes) = int4_shard(|m, b| {
                let at = scales(m).offset as usize + 2 * 37;
                b[at..at + 2].copy_from_slice(&bits.to_le_bytes());
            });
            // One-byte chunks split every value across two pushes; the others take most whole.
            for chunk in [1, 3, 4096, bytes.len()] {
                let err = parse(&manifest, &bytes, chunk).unwrap_err().to_string();
                let expected =
                    format!("model-00000.safetensors: {name} holds a non-finite value ({shown}) at element 37");
                assert!(err.ends_with(&expected), "chunk {chunk}: {err}");
            }
        }
    }

    #[test]
    fn a_proven_parser_skips_only_the_sha256() {
        let (mut manifest, bytes) = int4_shard(|_, _| {});
        manifest.shards[0].sha256 = "0".repeat(64);
        let err = parse(&manifest, &bytes, 4096).unwrap_err().to_string();
        assert!(err.contains("sha256 mismatch"), "{err}");

        let proven = |bytes: &[u8]| {
            let mut parser = ShardParser::proven(&manifest, 0);
            bytes.chunks(4096).try_for_each(|chunk| parser.push(chunk, &mut Discard))?;
            parser.finish()
        };
        proven(&bytes).unwrap();
        let err = proven(&bytes[..bytes.len() - 1]).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        let mut nan = bytes.clone();
        let scales = manifest.shard_pieces(0).find(|p| p.role == Role::Scales).unwrap();
        let at = scales.offset as usize;
        nan[at..at + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
        let err = proven(&nan).unwrap_err().to_string();
        assert!(err.contains("non-finite"), "{err}");
    }
}
