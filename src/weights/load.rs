//! Loading a model from disk: the web format (streamed through the same [`ShardParser`] the
//! browser uses, with every shard's size and sha256 verified) or a Hugging Face checkpoint.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::convert::HfCheckpoint;
use super::format::{Manifest, MANIFEST_FILE, MAX_MANIFEST_BYTES, MAX_TOKENIZER_BYTES, TOKENIZER_FILE};
use super::host::HostSink;
use super::stream::{PieceSink, ShardParser};
use crate::model::Model;
use crate::{Error, Result};

const READ_CHUNK: usize = 1 << 20;

pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
    let mut text = String::new();
    // One byte past the limit tells an over-long file from one exactly at it.
    file.take(MAX_MANIFEST_BYTES + 1).read_to_string(&mut text).map_err(|e| Error::io(&path, e))?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(Error::Weights(format!("{MANIFEST_FILE} is larger than {MAX_MANIFEST_BYTES} bytes")));
    }
    Manifest::from_json(&text)
}

/// The bytes of a model folder's `tokenizer.json`, verified against the manifest's size and
/// sha256 where the folder is in the web format and its manifest names them.
pub fn read_tokenizer_json(dir: &Path) -> Result<Vec<u8>> {
    let path = dir.join(TOKENIZER_FILE);
    let digest = if dir.join(MANIFEST_FILE).exists() { read_manifest(dir)?.tokenizer } else { None };
    let limit = digest.as_ref().map_or(MAX_TOKENIZER_BYTES, |d| d.bytes);
    let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| Error::io(&path, e))?;
    match digest {
        Some(digest) => digest.verify(TOKENIZER_FILE, &bytes)?,
        None if bytes.len() as u64 > limit => {
            return Err(Error::Tokenizer(format!("{TOKENIZER_FILE} is larger than {limit} bytes")))
        }
        None => {}
    }
    Ok(bytes)
}

/// Streams every shard of a web-format folder into `sink`.
pub fn stream_shards(dir: &Path, manifest: &Manifest, sink: &mut dyn PieceSink) -> Result<()> {
    let mut buffer = vec![0u8; READ_CHUNK];
    for (index, shard) in manifest.shards.iter().enumerate() {
        let path = dir.join(&shard.file);
        let mut file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mut parser = ShardParser::new(manifest, index);
        loop {
            let n = file.read(&mut buffer).map_err(|e| Error::io(&path, e))?;
            if n == 0 {
                break;
            }
            parser.push(&buffer[..n], sink)?;
        }
        parser.finish()?;
    }
    Ok(())
}

/// Loads a model folder for the CPU reference: a web-format folder (`manifest.json`) or a
/// Hugging Face checkpoint (`config.json` + safetensors).
pub fn load_model(dir: &Path) -> Result<Model> {
    if dir.join(MANIFEST_FILE).exists() {
        let manifest = read_manifest(dir)?;
        let mut sink = HostSink::new(&manifest);
        stream_shards(dir, &manifest, &mut sink)?;
        Model::from_tensors(manifest.config, &mut sink.into_tensor_map())
    } else if dir.join("config.json").exists() {
        let mut checkpoint = HfCheckpoint::open(dir)?;
        let mut tensors = checkpoint.tensor_map()?;
        Model::from_tensors(checkpoint.config, &mut tensors)
    } else {
        Err(Error::Weights(format!("{}: neither {MANIFEST_FILE} nor config.json found", dir.display())))
    }
}
