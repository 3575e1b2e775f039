//! The compact checkpoint the trained demo ships in (`models/demo-kjv/`): a Hugging Face
//! checkpoint whose embedding table is stored as only the rows of the ids its training text used,
//! `model.embed_tokens.rows` `[n, D]`, and those ids, `model.embed_tokens.ids` `[n]` (I32,
//! ascending). Every other row of the 256,000-row table is zero: trained that way, its logit is
//! exactly 0. [`expand`] writes the full checkpoint that [`convert`](super::convert::convert)
//! takes, with the table rebuilt row by row in bounded memory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::names::EMBEDDING;
use super::safetensors::{header_of, write_header, Dtype, Entry};
use crate::config::Config;
use crate::{Error, Result};

/// The compact file's name inside its folder, beside `config.json`.
pub const COMPACT_FILE: &str = "weights.safetensors";
pub const EMBEDDING_ROWS: &str = "model.embed_tokens.rows";
pub const EMBEDDING_IDS: &str = "model.embed_tokens.ids";

/// Reads `compact_dir/{config.json, weights.safetensors}` and writes `out_dir/{config.json,
/// model.safetensors}` with the full embedding table. Returns the number of rows stored.
pub fn expand(compact_dir: &Path, out_dir: &Path) -> Result<usize> {
    let config_path = compact_dir.join("config.json");
    let config_text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let config = Config::from_json(&config_text)?;
    let path = compact_dir.join(COMPACT_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let header = header_of(&bytes)?;
    if header.file_size != bytes.len() as u64 {
        return Err(Error::Weights(format!(
            "{}: {} bytes, the header describes {}",
            path.display(),
            bytes.len(),
            header.file_size
        )));
    }
    let data = |e: &Entry| &bytes[e.start as usize..e.end as usize];
    let find = |name: &str| {
        header.entries.iter().find(|e| e.name == name).ok_or_else(|| Error::Weights(format!("missing tensor {name}")))
    };
    let rows = find(EMBEDDING_ROWS)?;
    let ids = find(EMBEDDING_IDS)?;
    let width = config.hidden_size;
    let [count, rows_width] = rows.shape[..] else {
        return Err(Error::Weights(format!("{EMBEDDING_ROWS} has shape {:?}, expected [n, {width}]", rows.shape)));
    };
    if rows_width != width || !matches!(rows.dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16) {
        return Err(Error::Weights(format!(
            "{EMBEDDING_ROWS} is {:?} {:?}, expected a float [n, {width}]",
            rows.dtype, rows.shape
        )));
    }
    if ids.dtype != Dtype::I32 || ids.shape != [count] {
        return Err(Error::Weights(format!(
            "{EMBEDDING_IDS} is {:?} {:?}, expected I32 [{count}]",
            ids.dtype, ids.shape
        )));
    }
    let ids: Vec<i32> = data(ids).chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
    let vocab = config.vocab_size as i64;
    if ids.iter().any(|&id| !(0..vocab).contains(&i64::from(id))) || ids.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::Weights(format!("{EMBEDDING_IDS} must be ascending ids below the vocabulary, {vocab}")));
    }

    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let out_config = out_dir.join("config.json");
    std::fs::write(&out_config, &config_text).map_err(|e| Error::io(&out_config, e))?;

    let body: Vec<&Entry> =
        header.entries.iter().filter(|e| e.name != EMBEDDING_ROWS && e.name != EMBEDDING_IDS).collect();
    let mut layout: Vec<(String, Dtype, Vec<usize>)> =
        body.iter().map(|e| (e.name.clone(), e.dtype, e.shape.clone())).collect();
    layout.push((EMBEDDING.to_string(), rows.dtype, vec![config.vocab_size, width]));
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);

    let out_path = out_dir.join("model.safetensors");
    let file = File::create(&out_path).map_err(|e| Error::io(&out_path, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let io = |e| Error::io(&out_path, e);
    out.write_all(&write_header(&layout, &metadata)).map_err(io)?;
    for entry in body {
        out.write_all(data(entry)).map_err(io)?;
    }
    let row_bytes = width * rows.dtype.size();
    let zero_row = vec![0u8; row_bytes];
    let stored = data(rows);
    let mut next = ids.iter().zip(stored.chunks_exact(row_bytes)).peekable();
    for id in 0..config.vocab_size {
        match next.peek() {
            Some(&(&stored_id, row)) if stored_id as usize == id => {
                out.write_all(row).map_err(io)?;
                next.next();
            }
            _ => out.write_all(&zero_row).map_err(io)?,
        }
    }
    out.flush().map_err(io)?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    /// A compact checkpoint of the tiny preset whose body is one norm vector (enough for expand,
    /// which copies the body as it is): `rows` f32 rows of `width` for `ids`.
    fn compact(ids: &[i32], width: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::preset(Preset::Tiny);
        std::fs::write(dir.path().join("config.json"), serde_json::to_string(&config).unwrap()).unwrap();
        let layout = vec![
            ("model.final_norm.weight".to_string(), Dtype::F32, vec![config.hidden_size]),
            (EMBEDDING_IDS.to_string(), Dtype::I32, vec![ids.len()]),
            (EMBEDDING_ROWS.to_string(), Dtype::F32, vec![ids.len(), width]),
        ];
        let mut bytes = write_header(&layout, &BTreeMap::new());
        bytes.extend(std::iter::repeat_n(0u8, 4 * config.hidden_size));
        bytes.extend(ids.iter().flat_map(|id| id.to_le_bytes()));
        bytes.extend((0..ids.len() * width).flat_map(|i| (i as f32 + 1.0).to_le_bytes()));
        std::fs::write(dir.path().join(COMPACT_FILE), bytes).unwrap();
        dir
    }

    #[test]
    fn rows_land_at_their_ids_and_the_rest_is_zero() {
        let config = Config::preset(Preset::Tiny);
        let d = config.hidden_size;
        let dir = compact(&[0, 5, 17], d);
        let out = tempfile::tempdir().unwrap();
        assert_eq!(expand(dir.path(), out.path()).unwrap(), 3);
        let bytes = std::fs::read(out.path().join("model.safetensors")).unwrap();
        let header = header_of(&bytes).unwrap();
        let table = header.entries.iter().find(|e| e.name == EMBEDDING).unwrap();
        assert_eq!(table.shape, [config.vocab_size, d]);
        let values: Vec<f32> = bytes[table.start as usize..table.end as usize]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        for (id, row) in values.chunks_exact(d).enumerate() {
            let stored = [0, 5, 17].iter().position(|&s| s == id);
            let expected = |c: usize| stored.map_or(0.0, |k| (k * d + c) as f32 + 1.0);
            assert!(row.iter().enumerate().all(|(c, &v)| v == expected(c)), "row {id}");
        }
    }

    #[test]
    fn bad_ids_and_shapes_are_one_clear_error() {
        let d = Config::preset(Preset::Tiny).hidden_size;
        for (ids, width, message) in [
            (vec![3, 3], d, "ascending"),
            (vec![5, 2], d, "ascending"),
            (vec![-1], d, "below the vocabulary"),
            (vec![256_000], d, "below the vocabulary"),
            (vec![1], d + 1, "expected a float"),
        ] {
            let dir = compact(&ids, width);
            let out = tempfile::tempdir().unwrap();
            let error = expand(dir.path(), out.path()).unwrap_err().to_string();
            assert!(error.contains(message), "{ids:?}: {error}");
        }
    }
}
