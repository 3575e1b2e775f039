//! The web weight format: a folder with `manifest.json`, `tokenizer.json` and shards
//! `model-NNNNN.safetensors`. Each shard is an ordinary safetensors file; the manifest repeats
//! every piece's shard, absolute byte offset, shape and dtype, and each shard's size and sha256, so
//! a loader can route bytes to their tensors as they arrive and verify every shard.
//!
//! A matrix (embedding and RG-LRU gate blocks included) is stored in one of three ways, named by
//! the manifest's `quantization`; vectors are always f32:
//!
//! - `f32`: the values as they are.
//! - `int8`: I8 values `[rows, cols]` and one f32 scale per row (`{name}.scales`, F32 `[rows]`);
//!   `w[r][c] = q[r][c] · scale[r]`.
//! - `int4`: symmetric 4-bit in groups of [`INT4_GROUP`] consecutive columns of one row, every
//!   matrix's column count a multiple of it. Values are U32 `[rows, cols / 8]`: word `w` of a row
//!   holds columns `8w..8w + 7`, column `8w + k` in bits `4k..4k + 3` (low nibble first), each a
//!   4-bit two's complement integer (the quantizer writes −7..7; a reader sign-extends, so −8 reads
//!   as −8). Scales (`{name}.scales`) are F16 `[rows, S]`: the scale of group `g = c / 32` of row
//!   `r` at `[r][g]`, with `S` = the group count rounded up to even ([`int4_scale_stride`]) so a
//!   row of scales is whole u32 words (two f16 per word, read with `unpack2x16float`); a padding
//!   slot holds 0. `w[r][c] = f32(q[r][c]) · f32(scale[r][c / 32])`, and a row's dot product is
//!   `Σ_g scale_g · (Σ_{c in g} q_c · x_c)` in f32. See [`super::quant`] for how groups are quantized.
//!
//! A tensor whose bytes exceed [`MAX_PIECE_BYTES`] is split by whole rows into pieces
//! `{name}.part{k}` (and `{name}.scales.part{k}`), so every piece fits WebGPU's default 128 MiB
//! storage binding and an int4 group never straddles two pieces.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::safetensors::{self, Dtype};
use super::{tensor_specs, TensorSpec};
use crate::config::Config;
use crate::{Error, Result};

pub const FORMAT_NAME: &str = "recurrentgemma-web";
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Largest piece: half of WebGPU's default `maxStorageBufferBindingSize` (128 MiB).
pub const MAX_PIECE_BYTES: u64 = 64 << 20;
/// Target shard size: small enough to cache, retry and verify one at a time.
pub const MAX_SHARD_BYTES: u64 = 64 << 20;
/// Largest `manifest.json` a loader reads (the 9B's is about 1 MB): a hostile host must not make
/// it buffer without bound.
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;
/// Largest `tokenizer.json` a manifest may name (Gemma's is about 17 MB).
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;
/// Largest shard a manifest may name: a shard holds pieces of at most [`MAX_PIECE_BYTES`] up to
/// about [`MAX_SHARD_BYTES`], plus its header.
const MAX_SHARD_FILE_BYTES: u64 = 4 * MAX_SHARD_BYTES;
/// Largest safetensors header of a shard (a 64 MiB shard of the smallest pieces needs ~1 MB).
const MAX_SHARD_HEADER_BYTES: u64 = 16 << 20;
/// Weights per int4 group: consecutive columns of one row sharing one f16 scale.
pub const INT4_GROUP: usize = 32;
/// int4 weights per packed u32 word.
pub const INT4_PER_WORD: usize = 8;

/// int4 groups in a row of `cols` columns (a multiple of [`INT4_GROUP`]).
pub fn int4_groups(cols: usize) -> usize {
    cols / INT4_GROUP
}

/// f16 scale slots per row of an int4 matrix: its groups rounded up to even, so every row of
/// scales is a whole number of u32 words (the odd group count's last slot is padding, 0).
pub fn int4_scale_stride(cols: usize) -> usize {
    let groups = int4_groups(cols);
    groups + groups % 2
}

/// Packed u32 words per row of an int4 matrix.
pub fn int4_words_per_row(cols: usize) -> usize {
    cols / INT4_PER_WORD
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// Exact: every tensor in f32.
    F32,
    /// Matrices int8 with per-output-row f32 scales; vectors f32.
    Int8,
    /// Matrices int4 in groups of [`INT4_GROUP`] columns with f16 scales; vectors f32.
    Int4,
}

impl Quantization {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "int8" => Ok(Quantization::Int8),
            "int4" => Ok(Quantization::Int4),
            "f32" => Ok(Quantization::F32),
            other => Err(Error::Input(format!("unknown quantization '{other}' (expected int8, int4 or f32)"))),
        }
    }

    /// The name in `manifest.json` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Quantization::F32 => "f32",
            Quantization::Int8 => "int8",
            Quantization::Int4 => "int4",
        }
    }
}

/// Every tensor of `config` can be stored as `quantization`: for int4, every matrix's column
/// count is a multiple of [`INT4_GROUP`] (a group never spans two rows).
pub fn check_quantization(config: &Config, quantization: Quantization) -> Result<()> {
    quantization_problem(config, quantization).map_or(Ok(()), |msg| Err(Error::Weights(msg)))
}

fn quantization_problem(config: &Config, quantization: Quantization) -> Option<String> {
    if quantization != Quantization::Int4 {
        return None;
    }
    tensor_specs(config).iter().filter(|s| s.is_matrix).find_map(|spec| {
        let cols: usize = spec.shape[1..].iter().product();
        (!cols.is_multiple_of(INT4_GROUP))
            .then(|| format!("{}: {cols} columns is not a multiple of the int4 group ({INT4_GROUP})", spec.name))
    })
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub quantization: Quantization,
    pub config: Config,
    pub shards: Vec<ShardInfo>,
    pub pieces: Vec<Piece>,
    /// Size and sha256 of the folder's `tokenizer.json`, verified like a shard before it is parsed
    /// or cached. Absent when the converted checkpoint had no tokenizer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<FileDigest>,
}

/// A file's exact size and sha256 (lower-case hex).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileDigest {
    pub bytes: u64,
    pub sha256: String,
}

impl FileDigest {
    /// `contents` of `file` must be exactly what this digest names.
    pub fn verify(&self, file: &str, contents: &[u8]) -> Result<()> {
        if contents.len() as u64 != self.bytes {
            return Err(Error::Weights(format!(
                "{file} is {} bytes, the manifest says {}",
                contents.len(),
                self.bytes
            )));
        }
        let digest = super::stream::hex(&sha2::Sha256::digest(contents));
        if digest != self.sha256 {
            return Err(Error::Weights(format!("{file}: sha256 mismatch (expected {}, got {digest})", self.sha256)));
        }
        Ok(())
    }
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
    /// The tensor's values (f32, int8, or int4 packed in u32 words).
    Values,
    /// The scales of a quantized matrix: one f32 per row (int8), or one f16 per group of
    /// [`INT4_GROUP`] columns, [`int4_scale_stride`] per row (int4).
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

/// The pieces one tensor becomes, not yet placed in shards. (For int4 the matrix's columns must
/// be a multiple of [`INT4_GROUP`]; [`check_quantization`] says so.)
pub fn pieces_of(spec: &TensorSpec, quantization: Quantization) -> Vec<Piece> {
    let rows = spec.shape[0];
    let cols: usize = spec.shape[1..].iter().product();
    // (array name, role, dtype, shape after the row axis)
    let mut arrays = Vec::with_capacity(2);
    let scales = format!("{}.scales", spec.name);
    match quantization {
        Quantization::Int8 if spec.is_matrix => {
            arrays.push((spec.name.clone(), Role::Values, Dtype::I8, spec.shape[1..].to_vec()));
            arrays.push((scales, Role::Scales, Dtype::F32, vec![]));
        }
        Quantization::Int4 if spec.is_matrix => {
            arrays.push((spec.name.clone(), Role::Values, Dtype::U32, vec![int4_words_per_row(cols)]));
            arrays.push((scales, Role::Scales, Dtype::F16, vec![int4_scale_stride(cols)]));
        }
        _ => arrays.push((spec.name.clone(), Role::Values, Dtype::F32, spec.shape[1..].to_vec())),
    }
    let mut pieces = Vec::new();
    for (base, role, dtype, row_shape) in arrays {
        let row_bytes = (row_shape.iter().product::<usize>() * dtype.size()) as u64;
        for (name, row_start, n) in split_rows(&base, rows, row_bytes) {
            let mut shape = vec![n];
            shape.extend(&row_shape);
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

/// Why a piece differs from the plan, in the terms of its format.
fn piece_mismatch(have: &Piece, want: &Piece, quantization: Quantization) -> String {
    let mut message = format!(
        "piece {} is {:?} {:?} at row {}, expected {:?} {:?} at row {}",
        want.name, have.dtype, have.shape, have.row_start, want.dtype, want.shape, want.row_start
    );
    if quantization == Quantization::Int4 && have.shape.get(1) != want.shape.get(1) {
        let width = *want.shape.get(1).unwrap_or(&0);
        match want.role {
            Role::Scales => message.push_str(&format!(
                " (int4 scales: one f16 per group of {INT4_GROUP} columns, {width} per row padded to even)"
            )),
            Role::Values if want.dtype == Dtype::U32 => message.push_str(&format!(
                " (int4 values: {INT4_PER_WORD} weights per u32, {width} words per row of {} columns)",
                width * INT4_PER_WORD
            )),
            Role::Values => {}
        }
    }
    message
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
            tokenizer: None,
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
    /// config and quantization (up to shard placement), tiling shards of the stated size from
    /// the end of their header, with file names that stay inside the model's folder and
    /// well-formed checksums. Everything a loader later sizes, opens or fetches is checked here,
    /// the config's bounds first, before anything is sized from it.
    pub fn check(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Weights(format!("{MANIFEST_FILE}: {msg}")));
        if self.format != FORMAT_NAME || self.version != FORMAT_VERSION {
            return bad(format!("format {} v{} is not {FORMAT_NAME} v{FORMAT_VERSION}", self.format, self.version));
        }
        self.config.validate()?;
        if let Some(problem) = quantization_problem(&self.config, self.quantization) {
            return bad(problem);
        }
        let expected =
            tensor_specs(&self.config).iter().flat_map(|s| pieces_of(s, self.quantization)).collect::<Vec<_>>();
        if self.shards.is_empty() || self.shards.len() > expected.len() {
            return bad(format!("{} shards for {} pieces", self.shards.len(), expected.len()));
        }
        let mut files = BTreeMap::new();
        for shard in &self.shards {
            check_file_name(&shard.file)?;
            if files.insert(shard.file.as_str(), ()).is_some() {
                return bad(format!("shard {} appears twice", shard.file));
            }
            check_sha256(&shard.file, &shard.sha256)?;
            if shard.bytes > MAX_SHARD_FILE_BYTES {
                return bad(format!("shard {} is {} bytes, above {MAX_SHARD_FILE_BYTES}", shard.file, shard.bytes));
            }
        }
        if let Some(tokenizer) = &self.tokenizer {
            check_sha256(TOKENIZER_FILE, &tokenizer.sha256)?;
            if tokenizer.bytes == 0 || tokenizer.bytes > MAX_TOKENIZER_BYTES {
                return bad(format!("{TOKENIZER_FILE} is {} bytes, not in 1..={MAX_TOKENIZER_BYTES}", tokenizer.bytes));
            }
        }
        let mut by_name: BTreeMap<&str, &Piece> = BTreeMap::new();
        for piece in &self.pieces {
            if piece.shard >= self.shards.len() {
                return bad(format!("piece {} names shard {} of {}", piece.name, piece.shard, self.shards.len()));
            }
            if by_name.insert(&piece.name, piece).is_some() {
                return bad(format!("piece {} appears twice", piece.name));
            }
        }
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
                return bad(piece_mismatch(have, want, self.quantization));
            }
        }
        if let Some(extra) = by_name.keys().next() {
            return bad(format!("unexpected piece {extra}"));
        }
        for (index, shard) in self.shards.iter().enumerate() {
            self.check_tiling(index, shard)?;
        }
        Ok(())
    }

    /// A shard is its header, then its pieces back to back up to its last byte: no byte of it is
    /// left unverified by the header check, and the header's length is fixed by the first piece.
    fn check_tiling(&self, index: usize, shard: &ShardInfo) -> Result<()> {
        let bad = |msg: String| Err(Error::Weights(format!("{MANIFEST_FILE}: {}: {msg}", shard.file)));
        let mut pieces: Vec<&Piece> = self.shard_pieces(index).collect();
        pieces.sort_by_key(|p| p.offset);
        let Some(first) = pieces.first() else {
            return bad("holds no piece".into());
        };
        if first.offset < 8 + 2 || first.offset - 8 > MAX_SHARD_HEADER_BYTES {
            return bad(format!("its first piece starts at byte {}, leaving no room for a header", first.offset));
        }
        let mut cursor = first.offset;
        for piece in pieces {
            if piece.offset != cursor {
                return bad(format!(
                    "piece {} starts at {} but the previous data ends at {cursor}",
                    piece.name, piece.offset
                ));
            }
            cursor = match cursor.checked_add(piece.bytes) {
                Some(end) => end,
                None => return bad(format!("piece {} ends past 2^64", piece.name)),
            };
        }
        if cursor != shard.bytes {
            return bad(format!("its pieces end at byte {cursor}, but the shard is {} bytes", shard.bytes));
        }
        Ok(())
    }

    /// Where the data of shard `index` begins: the safetensors header is exactly this long.
    pub fn shard_data_start(&self, index: usize) -> u64 {
        self.shard_pieces(index).map(|p| p.offset).min().unwrap_or(0)
    }
}

/// A shard's file name must name a file inside the model's folder, natively and as a URL
/// relative to the model's address: no path separators, no `..`, no query, fragment or scheme.
fn check_file_name(name: &str) -> Result<()> {
    let safe = name.len() <= 128
        && name.ends_with(".safetensors")
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !safe {
        return Err(Error::Weights(format!(
            "{MANIFEST_FILE}: shard file name {name:?} is not a plain file name (letters, digits, '.', '_', '-', \
             ending in .safetensors)"
        )));
    }
    Ok(())
}

fn check_sha256(file: &str, digest: &str) -> Result<()> {
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(Error::Weights(format!(
            "{MANIFEST_FILE}: the sha256 of {file} is {digest:?}, not 64 lower-case hex digits"
        )));
    }
    Ok(())
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

    /// A planned manifest with placeholder checksums, as the converter fills them in.
    fn hashed_plan(preset: Preset) -> Manifest {
        hashed_plan_of(&Config::preset(preset), Quantization::Int8)
    }

    fn hashed_plan_of(config: &Config, quantization: Quantization) -> Manifest {
        let mut manifest = Manifest::plan(config, quantization);
        for shard in &mut manifest.shards {
            shard.sha256 = "0123456789abcdef".repeat(4);
        }
        manifest
    }

    #[test]
    fn the_2b_int8_layout_is_about_2_69_gb_in_small_pieces() {
        let manifest = hashed_plan(Preset::RecurrentGemma2b);
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
        let good = hashed_plan(Preset::Tiny);
        good.check().unwrap();
        let mut missing = good.clone();
        missing.pieces.pop();
        assert!(missing.check().unwrap_err().to_string().contains("missing piece"));
        let mut reshaped = good.clone();
        reshaped.pieces[0].shape[1] += 1;
        assert!(reshaped.check().unwrap_err().to_string().contains("expected"));
        let mut outside = good.clone();
        outside.pieces[1].offset = outside.shards[0].bytes;
        let err = outside.check().unwrap_err().to_string();
        assert!(err.contains("starts at"), "{err}");
        let mut past_the_end = good.clone();
        past_the_end.shards[0].bytes += 1;
        assert!(past_the_end.check().unwrap_err().to_string().contains("its pieces end at byte"));
        let mut no_header = good.clone();
        let first = no_header.pieces.iter_mut().min_by_key(|p| p.offset).unwrap();
        first.offset = 8;
        assert!(no_header.check().unwrap_err().to_string().contains("no room for a header"));
        let mut twice = good.clone();
        twice.shards.push(twice.shards[0].clone());
        assert!(twice.check().unwrap_err().to_string().contains("appears twice"));
        let mut tokenizer = good.clone();
        tokenizer.tokenizer = Some(FileDigest { bytes: MAX_TOKENIZER_BYTES + 1, sha256: "0".repeat(64) });
        assert!(tokenizer.check().unwrap_err().to_string().contains("tokenizer.json is"));
        let mut version = good;
        version.version = 99;
        assert!(version.check().unwrap_err().to_string().contains("v99"));
    }

    #[test]
    fn the_2b_int4_layout_is_4_5_bits_per_weight_in_small_pieces() {
        let config = Config::preset(Preset::RecurrentGemma2b);
        let manifest = hashed_plan_of(&config, Quantization::Int4);
        manifest.check().unwrap();
        assert_eq!(serde_json::to_value(&manifest).unwrap()["quantization"], "int4");
        let mut expected = 0;
        for spec in tensor_specs(&config) {
            let (rows, cols) = (spec.shape[0], spec.elements() / spec.shape[0]);
            let pieces: Vec<_> = manifest.pieces.iter().filter(|p| p.tensor == spec.name).collect();
            if spec.is_matrix {
                expected += rows * cols / 2 + rows * int4_scale_stride(cols) * 2;
                for p in &pieces {
                    let (dtype, width) = match p.role {
                        Role::Values => (Dtype::U32, cols / 8),
                        Role::Scales => (Dtype::F16, int4_scale_stride(cols)),
                    };
                    assert_eq!((p.dtype, p.shape[1]), (dtype, width), "{}", p.name);
                    assert_eq!(p.bytes % 4, 0, "{}: whole u32 words", p.name);
                }
                for role in [Role::Values, Role::Scales] {
                    assert_eq!(pieces.iter().filter(|p| p.role == role).map(|p| p.rows()).sum::<usize>(), rows);
                }
            } else {
                expected += spec.elements() * 4;
                assert!(pieces.iter().all(|p| p.dtype == Dtype::F32));
            }
        }
        let payload: u64 = manifest.pieces.iter().map(|p| p.bytes).sum();
        assert_eq!(payload, expected as u64);
        // 2,682,862,080 weights at 4.5 bits (plus f32 vectors): the issue's ≤ 1.55 GB.
        assert_eq!(payload, 1_512_990_720);
        assert!(manifest.total_bytes() < 1_550_000_000);
        assert!(manifest.pieces.iter().all(|p| p.bytes <= MAX_PIECE_BYTES));
        let table =
            |role| manifest.pieces.iter().filter(move |p| p.tensor == "model.embed_tokens.weight" && p.role == role);
        assert_eq!(table(Role::Values).count(), 5, "the 328 MB int4 embedding is split by rows");
        assert_eq!(table(Role::Scales).next().unwrap().shape, [256_000, 80]);
        // The gate blocks of the 2B are 256 wide: 8 groups, no padding; an odd group count pads.
        assert_eq!((int4_scale_stride(256), int4_scale_stride(96), int4_scale_stride(32)), (8, 4, 2));
        assert_eq!(int4_words_per_row(96), 12);
    }

    #[test]
    fn int4_needs_columns_in_whole_groups() {
        let mut config = Config::preset(Preset::Tiny);
        config.hidden_size = 48;
        config.intermediate_size = 6 * 48;
        config.validate().unwrap();
        let err = check_quantization(&config, Quantization::Int4).unwrap_err().to_string();
        assert_eq!(err, "weights: model.embed_tokens.weight: 48 columns is not a multiple of the int4 group (32)");
        check_quantization(&config, Quantization::Int8).unwrap();
        let mut manifest = hashed_plan_of(&Config::preset(Preset::Tiny), Quantization::Int4);
        manifest.check().unwrap();
        manifest.config = config;
        let err = manifest.check().unwrap_err().to_string();
        assert!(
            err.ends_with(
                "manifest.json: model.embed_tokens.weight: 48 columns is not a multiple of the int4 group (32)"
            ),
            "{err}"
        );
    }

    #[test]
    fn int4_pieces_that_differ_from_the_plan_say_how() {
        let good = hashed_plan_of(&Config::preset(Preset::Tiny), Quantization::Int4);
        good.check().unwrap();
        let gate = "model.layers.0.temporal_block.rg_lru.input_gate_weight";
        let edit = |name: String, f: &dyn Fn(&mut Piece)| {
            let mut manifest = good.clone();
            f(manifest.pieces.iter_mut().find(|p| p.name == name).unwrap());
            manifest.check().unwrap_err().to_string()
        };
        // The tiny gates are 32 wide: one group, one scale and one padding slot per row.
        let err = edit(format!("{gate}.scales"), &|p| {
            p.shape[1] = 1;
            p.bytes /= 2;
        });
        assert!(
            err.ends_with(&format!(
                "piece {gate}.scales is F16 [64, 1] at row 0, expected F16 [64, 2] at row 0 (int4 scales: one f16 \
                 per group of 32 columns, 2 per row padded to even)"
            )),
            "{err}"
        );
        let err = edit(format!("{gate}.scales"), &|p| p.dtype = Dtype::F32);
        assert!(err.contains("is F32 [64, 2] at row 0, expected F16 [64, 2]"), "{err}");
        let err = edit(gate.to_string(), &|p| p.shape[1] = 8);
        assert!(
            err.ends_with(&format!(
                "piece {gate} is U32 [64, 8] at row 0, expected U32 [64, 4] at row 0 (int4 values: 8 weights per \
                 u32, 4 words per row of 32 columns)"
            )),
            "{err}"
        );
        let err = edit(gate.to_string(), &|p| p.dtype = Dtype::I8);
        assert!(err.contains("is I8 [64, 4] at row 0, expected U32 [64, 4]"), "{err}");
        let mut int8 = good.clone();
        int8.quantization = Quantization::Int8;
        assert!(int8.check().unwrap_err().to_string().contains("expected I8"));
    }
}
