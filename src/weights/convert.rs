//! Hugging Face checkpoint → web format, tensor by tensor with bounded memory: rows are read
//! with positioned reads (never the whole file, never a whole large tensor), quantized, and written
//! straight into their shard while its sha256 is computed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use sha2::{Digest, Sha256};

use super::format::{
    check_quantization, int4_scale_stride, int4_words_per_row, shard_header, FileDigest, Manifest, Piece, Quantization,
    Role, MANIFEST_FILE, TOKENIZER_FILE,
};
use super::quant::{quantize_row, quantize_row_int4};
use super::safetensors::{self, Dtype, Entry};
use super::stream::hex;
use super::{tensor_specs, HfLayout, HostData, HostTensor, TensorMap, TensorSpec};
use crate::config::Config;
use crate::{Error, Result};

/// Elements read per batch of rows: bounds the converter's working memory (16 MiB of f32).
const ROW_BATCH_ELEMENTS: usize = 4 << 20;

/// An opened Hugging Face checkpoint: `config.json` plus `model.safetensors` or shards listed in
/// `model.safetensors.index.json`; f32, bf16 or f16.
pub struct HfCheckpoint {
    pub config: Config,
    pub dir: PathBuf,
    files: Vec<(PathBuf, File)>,
    /// Name → (index into `files`, entry).
    tensors: HashMap<String, (usize, Entry)>,
}

impl HfCheckpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let config = Config::from_json(&text)?;
        let file_names = safetensors_files(dir)?;
        let mut files = Vec::new();
        let mut tensors = HashMap::new();
        for name in file_names {
            let path = dir.join(&name);
            let mut file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            let header = read_header(&mut file, &path)?;
            for entry in header.entries {
                tensors.insert(entry.name.clone(), (files.len(), entry));
            }
            files.push((path, file));
        }
        let checkpoint = HfCheckpoint { config, dir: dir.to_path_buf(), files, tensors };
        checkpoint.check_tensors()?;
        Ok(checkpoint)
    }

    /// Every tensor the config needs is present with HF's shape; nothing unknown is present
    /// (a stored copy of the tied `lm_head.weight` is allowed and ignored).
    fn check_tensors(&self) -> Result<()> {
        let specs = tensor_specs(&self.config);
        for spec in &specs {
            let (_, entry) =
                self.tensors.get(&spec.name).ok_or_else(|| Error::Weights(format!("missing tensor {}", spec.name)))?;
            if entry.shape != spec.hf_shape() {
                return Err(Error::Weights(format!(
                    "tensor {} has shape {:?}, expected {:?}",
                    spec.name,
                    entry.shape,
                    spec.hf_shape()
                )));
            }
            if !matches!(entry.dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16) {
                return Err(Error::Weights(format!(
                    "tensor {} has dtype {:?}, expected F32, BF16 or F16",
                    spec.name, entry.dtype
                )));
            }
        }
        let known: std::collections::HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        let mut unknown: Vec<&String> =
            self.tensors.keys().filter(|n| !known.contains(n.as_str()) && n.as_str() != "lm_head.weight").collect();
        unknown.sort();
        match unknown.first() {
            Some(name) => Err(Error::Weights(format!("unexpected tensor {name} for this config"))),
            None => Ok(()),
        }
    }

    /// Rows `row_start..row_start + rows` of a tensor in the web layout, as f32.
    pub fn read_rows(&mut self, spec: &TensorSpec, row_start: usize, rows: usize) -> Result<Vec<f32>> {
        let cols: usize = spec.shape[1..].iter().product();
        if spec.hf_layout != HfLayout::Same {
            // Re-laid-out tensors are small (gates, conv taps): read them whole.
            let whole = self.read_web_tensor(spec)?;
            return Ok(whole[row_start * cols..(row_start + rows) * cols].to_vec());
        }
        let (file_index, entry) = self.tensors[&spec.name].clone();
        let size = entry.dtype.size();
        let (path, file) = &mut self.files[file_index];
        let mut bytes = vec![0u8; rows * cols * size];
        file.seek(SeekFrom::Start(entry.start + (row_start * cols * size) as u64))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|e| Error::io(&*path, e))?;
        Ok(to_f32(&bytes, entry.dtype))
    }

    /// A whole tensor in the web layout.
    fn read_web_tensor(&mut self, spec: &TensorSpec) -> Result<Vec<f32>> {
        let plain = TensorSpec { hf_layout: HfLayout::Same, shape: spec.hf_shape(), ..spec.clone() };
        let hf = self.read_rows(&plain, 0, plain.shape[0])?;
        Ok(match spec.hf_layout {
            HfLayout::Same | HfLayout::ConvTaps | HfLayout::BlockBias { .. } => hf,
            HfLayout::TransposedBlocks { blocks } => {
                let bw = spec.shape[1];
                let mut web = vec![0.0; hf.len()];
                for h in 0..blocks {
                    for i in 0..bw {
                        for j in 0..bw {
                            web[(h * bw + j) * bw + i] = hf[(h * bw + i) * bw + j];
                        }
                    }
                }
                web
            }
        })
    }

    /// Every tensor in the web layout as f32, for running the checkpoint directly (small models).
    pub fn tensor_map(&mut self) -> Result<TensorMap> {
        let mut map = TensorMap::default();
        for spec in tensor_specs(&self.config) {
            let values = self.read_web_tensor(&spec)?;
            if let Some(at) = values.iter().position(|v| !v.is_finite()) {
                return Err(Error::Weights(format!("tensor {} has a non-finite value at element {at}", spec.name)));
            }
            let data = HostData::F32(values);
            map.insert(spec.name.clone(), HostTensor { shape: spec.shape.clone(), data });
        }
        Ok(map)
    }
}

fn safetensors_files(dir: &Path) -> Result<Vec<String>> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.exists() {
        let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
        let index: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::Weights(format!("{}: {e}", index_path.display())))?;
        let map = index["weight_map"]
            .as_object()
            .ok_or_else(|| Error::Weights(format!("{}: no weight_map", index_path.display())))?;
        let mut files: Vec<String> = map.values().filter_map(|v| v.as_str().map(String::from)).collect();
        files.sort();
        files.dedup();
        Ok(files)
    } else if dir.join("model.safetensors").exists() {
        Ok(vec!["model.safetensors".into()])
    } else {
        Err(Error::Weights(format!("{}: no model.safetensors or model.safetensors.index.json", dir.display())))
    }
}

/// Reads and validates a safetensors header, and that the file holds all the data it promises.
pub fn read_header(file: &mut File, path: &Path) -> Result<safetensors::Header> {
    let in_file = |e: Error| Error::Weights(format!("{}: {e}", path.display()));
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix).map_err(|_| in_file(Error::Weights("truncated before its header".into())))?;
    let len = safetensors::json_len(prefix).map_err(in_file)?;
    let mut json = vec![0u8; len as usize];
    file.read_exact(&mut json).map_err(|_| in_file(Error::Weights("truncated inside its header".into())))?;
    let header = safetensors::parse_header(&json).map_err(in_file)?;
    let actual = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if actual < header.file_size {
        return Err(in_file(Error::Weights(format!(
            "truncated: {actual} bytes, the header needs {}",
            header.file_size
        ))));
    }
    Ok(header)
}

fn to_f32(bytes: &[u8], dtype: Dtype) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4"))).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::I8 | Dtype::I32 | Dtype::U32 => unreachable!("checked: checkpoints hold floats"),
    }
}

/// Counts and hashes what goes into a shard.
struct ShardWriter {
    out: BufWriter<File>,
    hasher: Sha256,
    written: u64,
}

impl ShardWriter {
    fn write(&mut self, bytes: &[u8], path: &Path) -> Result<()> {
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        self.out.write_all(bytes).map_err(|e| Error::io(path, e))
    }
}

/// Converts the checkpoint in `hf_dir` into the web format in `out_dir`, returning the manifest.
/// A checkpoint the quantization cannot store (int4: columns not in whole groups) is refused
/// before anything is written.
pub fn convert(hf_dir: &Path, out_dir: &Path, quantization: Quantization) -> Result<Manifest> {
    let mut checkpoint = HfCheckpoint::open(hf_dir)?;
    check_quantization(&checkpoint.config, quantization)?;
    let mut manifest = Manifest::plan(&checkpoint.config, quantization);
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let specs: HashMap<String, TensorSpec> =
        tensor_specs(&checkpoint.config).into_iter().map(|s| (s.name.clone(), s)).collect();
    // Scales are computed with the values and written when their own pieces come up (after all
    // the tensor's value pieces): each tensor's, row-major as they are stored, until its last
    // scales piece is written.
    let mut scales: HashMap<String, Scales> = HashMap::new();

    for shard in 0..manifest.shards.len() {
        let path = out_dir.join(&manifest.shards[shard].file);
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut writer =
            ShardWriter { out: BufWriter::with_capacity(1 << 20, file), hasher: Sha256::new(), written: 0 };
        let pieces: Vec<Piece> = manifest.shard_pieces(shard).cloned().collect();
        writer.write(&shard_header(&pieces), &path)?;
        for piece in &pieces {
            let spec = &specs[&piece.tensor];
            match piece.role {
                Role::Values => {
                    write_values(&mut checkpoint, spec, piece, quantization, &mut scales, &mut writer, &path)?
                }
                Role::Scales => {
                    let all = scales[&piece.tensor].bytes();
                    let row_bytes = piece.bytes as usize / piece.rows();
                    writer.write(&all[piece.row_start * row_bytes..][..piece.bytes as usize], &path)?;
                    if piece.row_start + piece.rows() == spec.shape[0] {
                        scales.remove(&piece.tensor);
                    }
                }
            }
        }
        writer.out.flush().map_err(|e| Error::io(&path, e))?;
        let info = &mut manifest.shards[shard];
        if writer.written != info.bytes {
            return Err(Error::Weights(format!(
                "{}: wrote {} bytes, planned {}",
                info.file, writer.written, info.bytes
            )));
        }
        info.sha256 = hex(&writer.hasher.finalize());
    }

    let tokenizer = hf_dir.join(TOKENIZER_FILE);
    if tokenizer.exists() {
        let bytes = std::fs::read(&tokenizer).map_err(|e| Error::io(&tokenizer, e))?;
        let target = out_dir.join(TOKENIZER_FILE);
        std::fs::write(&target, &bytes).map_err(|e| Error::io(&target, e))?;
        manifest.tokenizer = Some(FileDigest { bytes: bytes.len() as u64, sha256: hex(&Sha256::digest(&bytes)) });
    }
    let manifest_path = out_dir.join(MANIFEST_FILE);
    let json = serde_json::to_string_pretty(&manifest).expect("manifest serializes");
    std::fs::write(&manifest_path, json).map_err(|e| Error::io(&manifest_path, e))?;
    Ok(manifest)
}

/// One tensor's scales, row-major as stored: f32 per row (int8) or f16 per group (int4).
enum Scales {
    Int8(Vec<f32>),
    Int4(Vec<f16>),
}

impl Scales {
    fn bytes(&self) -> &[u8] {
        match self {
            Scales::Int8(scales) => bytemuck::cast_slice(scales),
            Scales::Int4(scales) => bytemuck::cast_slice(scales),
        }
    }
}

fn write_values(
    checkpoint: &mut HfCheckpoint,
    spec: &TensorSpec,
    piece: &Piece,
    quantization: Quantization,
    scales: &mut HashMap<String, Scales>,
    writer: &mut ShardWriter,
    path: &Path,
) -> Result<()> {
    let rows = spec.shape[0];
    let cols: usize = spec.shape[1..].iter().product();
    let quantization = if spec.is_matrix { quantization } else { Quantization::F32 };
    let batch_rows = (ROW_BATCH_ELEMENTS / cols).max(1);
    let mut row = piece.row_start;
    let end = piece.row_start + piece.rows();
    while row < end {
        let n = batch_rows.min(end - row);
        let values = checkpoint.read_rows(spec, row, n)?;
        if !values.iter().all(|v| v.is_finite()) {
            return Err(Error::Weights(format!("tensor {} has non-finite values near row {row}", spec.name)));
        }
        match quantization {
            Quantization::F32 => writer.write(bytemuck::cast_slice(&values), path)?,
            Quantization::Int8 => {
                let entry = scales.entry(spec.name.clone()).or_insert_with(|| Scales::Int8(vec![0.0; rows]));
                let Scales::Int8(tensor_scales) = entry else { unreachable!("one quantization per tensor") };
                let mut q = vec![0i8; values.len()];
                for (r, (row_values, row_q)) in values.chunks(cols).zip(q.chunks_mut(cols)).enumerate() {
                    tensor_scales[row + r] = quantize_row(row_values, row_q);
                }
                writer.write(bytemuck::cast_slice(&q), path)?;
            }
            Quantization::Int4 => {
                let (words, stride) = (int4_words_per_row(cols), int4_scale_stride(cols));
                let entry =
                    scales.entry(spec.name.clone()).or_insert_with(|| Scales::Int4(vec![f16::ZERO; rows * stride]));
                let Scales::Int4(tensor_scales) = entry else { unreachable!("one quantization per tensor") };
                let mut packed = vec![0u32; n * words];
                for (r, (row_values, row_packed)) in values.chunks(cols).zip(packed.chunks_mut(words)).enumerate() {
                    let row_scales = &mut tensor_scales[(row + r) * stride..][..stride];
                    quantize_row_int4(&spec.name, row_values, row_packed, row_scales)?;
                }
                writer.write(bytemuck::cast_slice(&packed), path)?;
            }
        }
        row += n;
    }
    Ok(())
}
