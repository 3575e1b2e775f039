//! The web weight format: a folder with `manifest.json`, `tokenizer.json` and shards
//! `model-NNNNN.safetensors`. Each shard is an ordinary safetensors file; the manifest repeats
//! every piece's shard, absolute byte offset, shape and dtype, and each shard's size and sha256, so
//! a loader can route bytes to their tensors as they arrive and verify every shard.
//!
//! A matrix (embedding included) is stored either as f32 or as int8 with one f32 scale per row
//! (`{name}.scales`); vectors are f32. A tensor whose bytes exceed [`MAX_PIECE_BYTES`] is split by
//! rows into pieces `{name}.part{k}`, so every piece fits WebGPU's default 128 MiB storage binding.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::safetensors::{self, Dtype};
use super::{tensor_specs, TensorSpec};
use crate::config::Config;
use crate::{Error, Result};

pub const FORMAT_NAME: &str = "recurrentgemma-web";
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
/// Largest piece: half of WebGPU's default `maxStorageBufferBindingSize` (128 MiB).
pub const MAX_PIECE_BYTES: u64 = 64 << 20;
/// Target shard size: small enough to cache, retry and verify one at a time.
pub const MAX_SHARD_BYTES: u64 = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// Exact: every tensor in f32.
    F32,
    /// Matrices int8 with per-output-row f32 scales; vectors f32.
    Int8,
}

impl Quantization {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "int8" => Ok(Quantization::Int8),
            "f32" => Ok(Quantization::F32),
            other => Err(Error::Input(format!("unknown quantization '{other}' (expected int8 or f32)"))),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub quantization: Quantization,
    pub config: Config,
    pub shards: Vec<ShardInfo>,
    pub pieces: Vec<Piece>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub file: String,
    pub bytes: u64,
    /// Lower-case hex; empty while a shard is being written.
    pub sha256: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The tensor's values (f32 or int8).
    Values,
    /// The per-row f32 scales of an int8 matrix.
    Scales,
}

/// A run of whole rows of one tensor, stored contiguously in one shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Piece {
    /// Its key in the shard's safetensors header.
    pub name: String,
    /// The logical tensor it belongs to.
    pub tensor: String,
    pub role: Role,
    /// First row of the tensor this piece holds.
    pub row_start: usize,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub shard: usize,
    /// Absolute offset within the shard file.
    pub offset: u64,
    pub bytes: u64,
}

impl Piece {
    pub fn rows(&self) -> usize {
        self.shape[0]
    }
}

/// Row-splits of one stored array: `(name, row_start, rows)`.
fn split_rows(base: &str, rows: usize, row_bytes: u64) -> Vec<(String, usize, usize)> {
    let per_piece = ((MAX_PIECE_BYTES / row_bytes.max(1)) as usize).max(1);
    if rows <= per_piece {
        return vec![(base.to_string(), 0, rows)];
    }
    (0..rows.div_ceil(per_piece))
        .map(|k| (format!("{base}.part{k}"), k * per_piece, per_piece.min(rows - k * per_piece)))
        .collect()
}

/// The pieces one tensor becomes, not yet placed in shards.
pub fn pieces_of(spec: &TensorSpec, quantization: Quantization) -> Vec<Piece> {
    let rows = spec.shape[0];
    let cols: usize = spec.shape[1..].iter().product();
    let quantized = spec.is_matrix && quantization == Quantization::Int8;
    let value_dtype = if quantized { Dtype::I8 } else { Dtype::F32 };
    let mut arrays = vec![(spec.name.clone(), Role::Values, value_dtype, cols)];
    if quantized {
        arrays.push((format!("{}.scales", spec.name), Role::Scales, Dtype::F32, 1));
    }
    let mut pieces = Vec::new();
    for (base, role, dtype, cols) in arrays {
        let row_bytes = (cols * dtype.size()) as u64;
        for (name, row_start, n) in split_rows(&base, rows, row_bytes) {
            let mut shape = vec![n];
            if role == Role::Values {
                shape.extend(&spec.shape[1..]);
            }
            pieces.push(Piece {
                name,
                tensor: spec.name.clone(),
                role,
                row_start,
                dtype,
                shape,
                shard: 0,
                offset: 0,
                bytes: n as u64 * row_bytes,
            });
        }
    }
    pieces
}

impl Manifest {
    /// Lays out every piece of a model into shards (sizes and offsets final, checksums empty).
    pub fn plan(config: &Config, quantization: Quantization) -> Self {
        let pieces: Vec<Piece> = tensor_specs(config).iter().flat_map(|spec| pieces_of(spec, quantization)).collect();
        let mut groups: Vec<Vec<Piece>> = vec![Vec::new()];
        let mut group_bytes = 0;
        for piece in pieces {
            if group_bytes + piece.bytes > MAX_SHARD_BYTES && group_bytes > 0 {
                groups.push(Vec::new());
                group_bytes = 0;
            }
            group_bytes += piece.bytes;
            groups.last_mut().expect("one group").push(piece);
        }
        let mut manifest = Manifest {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            quantization,
            config: config.clone(),
            shards: Vec::new(),
            pieces: Vec::new(),
        };
        for (index, group) in groups.into_iter().enumerate() {
            let mut offset = shard_header(&group).len() as u64;
            for mut piece in group {
                piece.shard = index;
                piece.offset = offset;
                offset += piece.bytes;
                manifest.pieces.push(piece);
            }
            manifest.shards.push(ShardInfo {
                file: format!("model-{index:05}.safetensors"),
                bytes: offset,
                sha256: String::new(),
            });
        }
        manifest
    }

    pub fn shard_pieces(&self, shard: usize) -> impl Iterator<Item = &Piece> {
        self.pieces.iter().filter(move |p| p.shard == shard)
    }

    /// Total bytes of all shards.
    pub fn total_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.bytes).sum()
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let manifest: Manifest =
            serde_json::from_str(text).map_err(|e| Error::Weights(format!("{MANIFEST_FILE}: {e}")))?;
        manifest.check()?;
        Ok(manifest)
    }

    /// The manifest must describe exactly the pieces [`Manifest::plan`] would lay out for its
    /// config and quantization (up to shard placement), inside shards of the stated size.
    pub fn check(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Weights(format!("{MANIFEST_FILE}: {msg}")));
        if self.format != FORMAT_NAME || self.version != FORMAT_VERSION {
            return bad(format!("format {} v{} is not {FORMAT_NAME} v{FORMAT_VERSION}", self.format, self.version));
        }
        self.config.validate()?;
        let mut by_name: BTreeMap<&str, &Piece> = BTreeMap::new();
        for piece in &self.pieces {
            let Some(shard) = self.shards.get(piece.shard) else {
                return bad(format!("piece {} names shard {} of {}", piece.name, piece.shard, self.shards.len()));
            };
            if piece.offset.checked_add(piece.bytes).is_none_or(|end| end > shard.bytes) {
                return bad(format!("piece {} lies outside {}", piece.name, shard.file));
            }
            if by_name.insert(&piece.name, piece).is_some() {
                return bad(format!("piece {} appears twice", piece.name));
            }
        }
        let expected =
            tensor_specs(&self.config).iter().flat_map(|s| pieces_of(s, self.quantization)).collect::<Vec<_>>();
        for want in &expected {
            let Some(have) = by_name.remove(want.name.as_str()) else {
                return bad(format!("missing piece {}", want.name));
            };
            let same = have.tensor == want.tensor
                && have.role == want.role
                && have.row_start == want.row_start
                && have.dtype == want.dtype
                && have.shape == want.shape
                && have.bytes == want.bytes;
            if !same {
                return bad(format!(
                    "piece {} is {:?} {:?} at row {}, expected {:?} {:?} at row {}",
                    want.name, have.dtype, have.shape, have.row_start, want.dtype, want.shape, want.row_start
                ));
            }
        }
        match by_name.keys().next() {
            Some(extra) => bad(format!("unexpected piece {extra}")),
            None => Ok(()),
        }
    }
}

/// The safetensors header of a shard holding `pieces` in order.
pub fn shard_header(pieces: &[Piece]) -> Vec<u8> {
    let tensors: Vec<_> = pieces.iter().map(|p| (p.name.clone(), p.dtype, p.shape.clone())).collect();
    let metadata = BTreeMap::from([("format".to_string(), FORMAT_NAME.to_string())]);
    safetensors::write_header(&tensors, &metadata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    #[test]
    fn the_2b_int8_layout_is_about_2_69_gb_in_small_pieces() {
        let manifest = Manifest::plan(&Config::preset(Preset::RecurrentGemma2b), Quantization::Int8);
        manifest.check().unwrap();
        let payload: u64 = manifest.pieces.iter().map(|p| p.bytes).sum();
        // griffin.md §5: 2,690,238,464 B of int8 weights, f32 scales and f32 vectors.
        assert_eq!(payload, 2_690_238_464);
        assert!(manifest.total_bytes() - payload < 1 << 20, "headers stay small");
        assert!(manifest.pieces.iter().all(|p| p.bytes <= MAX_PIECE_BYTES));
        assert!(manifest.shards.iter().all(|s| s.bytes <= MAX_SHARD_BYTES + (1 << 20)));
        let embedding: Vec<_> = manifest.pieces.iter().filter(|p| p.tensor == "model.embed_tokens.weight").collect();
        assert_eq!(embedding.iter().filter(|p| p.role == Role::Values).map(|p| p.rows()).sum::<usize>(), 256_000);
        assert!(embedding.len() > 2, "the 655 MB embedding is split by rows");
    }

    #[test]
    fn f32_layout_keeps_every_value() {
        let config = Config::preset(Preset::RecurrentGemma2b);
        let manifest = Manifest::plan(&config, Quantization::F32);
        let payload: u64 = manifest.pieces.iter().map(|p| p.bytes).sum();
        assert_eq!(payload, 2_682_862_080 * 4);
        assert!(manifest.pieces.iter().all(|p| p.dtype == Dtype::F32 && p.bytes <= MAX_PIECE_BYTES));
    }

    #[test]
    fn check_rejects_tampered_manifests() {
        let good = Manifest::plan(&Config::preset(Preset::Tiny), Quantization::Int8);
        let mut missing = good.clone();
        missing.pieces.pop();
        assert!(missing.check().unwrap_err().to_string().contains("missing piece"));
        let mut reshaped = good.clone();
        reshaped.pieces[0].shape[1] += 1;
        assert!(reshaped.check().unwrap_err().to_string().contains("expected"));
        let mut outside = good.clone();
        outside.pieces[0].offset = outside.shards[0].bytes;
        assert!(outside.check().unwrap_err().to_string().contains("outside"));
        let mut version = good;
        version.version = 99;
        assert!(version.check().unwrap_err().to_string().contains("v99"));
    }
}
