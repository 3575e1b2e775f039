//! Where each piece of a web-format model lives on the GPU.
//!
//! Matrices that one kernel reads together are stacked by rows into one buffer, so that a single
//! dispatch computes them within WebGPU's eight storage buffers per shader stage:
//! `[linear_y; linear_x]`, `[input_gate; recurrent_gate]`, `[q_proj; k_proj; v_proj]` and
//! `[gate_proj; up_proj]`. Every quantized
//! matrix (stacked or not) gets one *affine* buffer holding the scales of all its rows (their
//! size per row is the [`MatrixFormat`]'s), then their f32 biases. The conv taps and the conv bias
//! share one buffer. Everything else has a buffer of its own.

use std::collections::{HashMap, HashSet};

use super::matrix::MatrixFormat;
use crate::config::{BlockType, Config};
use crate::weights::format::{Manifest, Piece, Role};
use crate::weights::{names, tensor_specs};
use crate::{Error, Result};

/// One quantized matrix, or several stacked by rows, as the matrix kernels bind it.
#[derive(Clone, Debug, PartialEq)]
pub struct Stack {
    /// Values buffers as `(buffer, first row, rows)`: one for a stack that fits a storage binding,
    /// else (a lone matrix too large for one binding, such as the embedding) one per row piece.
    pub parts: Vec<(String, usize, usize)>,
    pub affine: String,
    pub rows: usize,
    pub cols: usize,
    /// Whether the affine buffer holds biases after the scales.
    pub has_bias: bool,
}

#[derive(Debug)]
pub struct Layout {
    pub format: MatrixFormat,
    /// Every buffer with its size in bytes, in creation order.
    pub buffers: Vec<(String, u64)>,
    /// Piece name → (buffer, byte offset).
    pub placement: HashMap<String, (String, u64)>,
    /// First tensor of the stack → the stack.
    pub stacks: HashMap<String, Stack>,
}

/// The stacks of more than one matrix, each listed in the order its kernel expects.
pub fn stacked_matrices(config: &Config) -> Vec<Vec<String>> {
    let mut stacks = Vec::new();
    for layer in 0..config.num_hidden_layers {
        let n = names::layer(layer);
        let t = &n.temporal;
        match config.block_type(layer) {
            BlockType::Recurrent => {
                stacks.push(vec![t.pp("linear_y").weight(), t.pp("linear_x").weight()]);
                let lru = t.pp("rg_lru");
                stacks.push(vec![lru.get("input_gate_weight"), lru.get("recurrent_gate_weight")]);
            }
            BlockType::Attention => {
                stacks.push(["q_proj", "k_proj", "v_proj"].iter().map(|m| t.pp(m).weight()).collect());
            }
        }
        stacks.push(vec![n.mlp.pp("gate_proj").weight(), n.mlp.pp("up_proj").weight()]);
    }
    stacks
}

/// The bias vector that goes with a matrix: `….weight` → `….bias`, `…_weight` → `…_bias`.
pub fn bias_of(matrix: &str) -> String {
    format!("{}bias", matrix.strip_suffix("weight").unwrap_or(matrix))
}

/// The buffer holding a recurrent block's conv taps `[lru, K]` and then its bias `[lru]`.
pub fn conv_buffer(temporal_block: &str) -> String {
    format!("{temporal_block}.conv_1d")
}

impl Layout {
    /// Places every piece of `manifest`; a stack of several matrices must fit in one binding of
    /// `binding_limit` bytes.
    pub fn new(manifest: &Manifest, binding_limit: u64) -> Result<Layout> {
        let mut layout = Layout {
            format: MatrixFormat::of(manifest.quantization)?,
            buffers: Vec::new(),
            placement: HashMap::new(),
            stacks: HashMap::new(),
        };
        let stacked = stacked_matrices(&manifest.config);
        let in_stacks: HashSet<&String> = stacked.iter().flatten().collect();
        let mut matrices: Vec<String> = Vec::new();
        for piece in manifest.pieces.iter().filter(|p| p.role == Role::Scales) {
            if !in_stacks.contains(&piece.tensor) && !matrices.contains(&piece.tensor) {
                matrices.push(piece.tensor.clone());
            }
        }
        let columns: HashMap<String, usize> =
            tensor_specs(&manifest.config).into_iter().filter(|s| s.is_matrix).map(|s| (s.name, s.shape[1])).collect();
        for stack in stacked.iter().cloned().chain(matrices.into_iter().map(|m| vec![m])) {
            layout.place_stack(manifest, &columns, &stack, binding_limit)?;
        }
        for piece in manifest.pieces.iter().filter(|p| p.tensor.ends_with("conv_1d.weight")) {
            let block = piece.tensor.trim_end_matches(".conv_1d.weight");
            let bias = pieces_of(manifest, &format!("{block}.conv_1d.bias"), Role::Values);
            let buffer = conv_buffer(block);
            layout.add_buffer(&buffer, piece.bytes + bias.iter().map(|b| b.bytes).sum::<u64>());
            layout.placement.insert(piece.name.clone(), (buffer.clone(), 0));
            for b in bias {
                layout.placement.insert(b.name.clone(), (buffer.clone(), piece.bytes));
            }
        }
        for piece in &manifest.pieces {
            if !layout.placement.contains_key(&piece.name) {
                layout.add_buffer(&piece.name, piece.bytes);
                layout.placement.insert(piece.name.clone(), (piece.name.clone(), 0));
            }
        }
        Ok(layout)
    }

    fn add_buffer(&mut self, name: &str, bytes: u64) {
        self.buffers.push((name.to_string(), bytes));
    }

    fn place_stack(
        &mut self,
        manifest: &Manifest,
        columns: &HashMap<String, usize>,
        stack: &[String],
        binding_limit: u64,
    ) -> Result<()> {
        let first = &stack[0];
        let values: Vec<Vec<&Piece>> = stack.iter().map(|t| pieces_of(manifest, t, Role::Values)).collect();
        if let Some(missing) = stack.iter().zip(&values).find(|(_, pieces)| pieces.is_empty()) {
            return Err(Error::Weights(format!("{}: the model has no such matrix", missing.0)));
        }
        let cols_of = |tensor: &String| columns.get(tensor).copied().unwrap_or(0);
        let cols = cols_of(first);
        if let Some(other) = stack.iter().find(|t| cols_of(t) != cols) {
            return Err(Error::Weights(format!("{other}: {} columns, but {first} has {cols}", cols_of(other))));
        }
        let format = self.format;
        let scale_row_bytes = format.scale_row_bytes(cols);
        let rows_of: Vec<usize> = values.iter().map(|pieces| pieces.iter().map(|p| p.rows()).sum()).collect();
        let starts: Vec<usize> = rows_of.iter().scan(0, |row, &n| Some(std::mem::replace(row, *row + n))).collect();
        let rows: usize = rows_of.iter().sum();
        let biases: Vec<Vec<&Piece>> = stack.iter().map(|t| pieces_of(manifest, &bias_of(t), Role::Values)).collect();
        let has_bias = biases.iter().any(|b| !b.is_empty());

        // u64 before multiplying: wasm32's usize is 32 bits.
        let affine = format!("{first}.affine");
        let scale_bytes = rows as u64 * scale_row_bytes;
        self.add_buffer(&affine, scale_bytes + if has_bias { rows as u64 * 4 } else { 0 });
        for (tensor, start) in stack.iter().zip(&starts) {
            for scales in pieces_of(manifest, tensor, Role::Scales) {
                let offset = (start + scales.row_start) as u64 * scale_row_bytes;
                self.placement.insert(scales.name.clone(), (affine.clone(), offset));
            }
        }
        for (pieces, start) in biases.iter().zip(&starts) {
            for bias in pieces {
                let offset = scale_bytes + (start + bias.row_start) as u64 * 4;
                self.placement.insert(bias.name.clone(), (affine.clone(), offset));
            }
        }

        let bytes = format.value_bytes(rows, cols);
        let parts = if bytes <= binding_limit {
            let buffer = format!("{first}.values");
            self.add_buffer(&buffer, bytes);
            for (pieces, start) in values.iter().zip(&starts) {
                for piece in pieces {
                    let offset = format.value_bytes(start + piece.row_start, cols);
                    self.placement.insert(piece.name.clone(), (buffer.clone(), offset));
                }
            }
            vec![(buffer, 0, rows)]
        } else if stack.len() == 1 {
            values[0]
                .iter()
                .map(|piece| {
                    self.add_buffer(&piece.name, piece.bytes);
                    self.placement.insert(piece.name.clone(), (piece.name.clone(), 0));
                    (piece.name.clone(), piece.row_start, piece.rows())
                })
                .collect()
        } else {
            return Err(Error::Gpu(format!("{bytes} bytes in one binding for {}", stack.join(" + "))));
        };
        self.stacks.insert(first.clone(), Stack { parts, affine, rows, cols, has_bias });
        Ok(())
    }
}

fn pieces_of<'m>(manifest: &'m Manifest, tensor: &str, role: Role) -> Vec<&'m Piece> {
    manifest.pieces.iter().filter(|p| p.tensor == tensor && p.role == role).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;
    use crate::weights::format::Quantization;

    fn plan_2b() -> Manifest {
        Manifest::plan(&Config::preset(Preset::RecurrentGemma2b), Quantization::Int8)
    }

    #[test]
    fn stacks_share_one_buffer_and_one_affine_buffer() {
        let manifest = plan_2b();
        let layout = Layout::new(&manifest, 128 << 20).unwrap();
        let t = "model.layers.0.temporal_block";
        let (lru, d) = (2560, 2560);
        let stack = &layout.stacks[&format!("{t}.linear_y.weight")];
        assert_eq!(stack.parts, [(format!("{t}.linear_y.weight.values"), 0, 2 * lru)]);
        assert_eq!((stack.rows, stack.cols, stack.has_bias), (2 * lru, d, true));
        let values = format!("{t}.linear_y.weight.values");
        let affine = format!("{t}.linear_y.weight.affine");
        // linear_x's rows follow linear_y's; scales then biases in the affine buffer.
        assert_eq!(layout.placement[&format!("{t}.linear_x.weight")], (values, (lru * d) as u64));
        assert_eq!(layout.placement[&format!("{t}.linear_x.weight.scales")], (affine.clone(), lru as u64 * 4));
        assert_eq!(layout.placement[&format!("{t}.linear_y.bias")], (affine.clone(), 2 * lru as u64 * 4));
        assert_eq!(layout.placement[&format!("{t}.linear_x.bias")], (affine, 3 * lru as u64 * 4));
        // q/k/v have no bias: the affine buffer holds only scales.
        let qkv = &layout.stacks["model.layers.2.temporal_block.q_proj.weight"];
        assert_eq!((qkv.rows, qkv.has_bias), (10 * 256 + 2 * 256, false));
        // The conv taps and bias share a buffer.
        let conv = conv_buffer(t);
        assert_eq!(layout.placement[&format!("{t}.conv_1d.bias")], (conv, (lru * 4 * 4) as u64));
        // Every piece has a place, every place a buffer, and no bytes are lost.
        let buffers: HashMap<&String, u64> = layout.buffers.iter().map(|(n, b)| (n, *b)).collect();
        for piece in &manifest.pieces {
            let (buffer, offset) = &layout.placement[&piece.name];
            assert!(offset + piece.bytes <= buffers[buffer], "{} overflows {buffer}", piece.name);
        }
        let bytes: u64 = manifest.pieces.iter().map(|p| p.bytes).sum();
        assert!(buffers.values().sum::<u64>() >= bytes);
    }

    #[test]
    fn the_table_is_one_buffer_only_where_the_binding_limit_allows() {
        let manifest = plan_2b();
        let table = "model.embed_tokens.weight";
        let default_limits = Layout::new(&manifest, 128 << 20).unwrap();
        let parts = &default_limits.stacks[table].parts;
        assert_eq!(parts.len(), 10);
        assert_eq!(parts.iter().map(|p| p.2).sum::<usize>(), 256_000);
        let large_limits = Layout::new(&manifest, 2 << 30).unwrap();
        assert_eq!(large_limits.stacks[table].parts, [(format!("{table}.values"), 0, 256_000)]);
    }

    #[test]
    fn a_model_above_the_binding_limit_is_refused_in_one_line() {
        use crate::gpu::weights::GpuWeights;
        let manifest = plan_2b();
        let limits = |binding: u64| wgpu::Limits {
            max_storage_buffer_binding_size: binding,
            max_buffer_size: 1 << 40,
            ..wgpu::Limits::default()
        };
        let allows = |binding: u64| {
            format!(
                "this GPU allows {binding} bytes per buffer binding (maxStorageBufferBindingSize {binding}, \
                 maxBufferSize 1099511627776)"
            )
        };
        // A stack of matrices is one binding.
        let error = GpuWeights::layout(&manifest, &limits(16 << 20)).unwrap_err().to_string();
        assert!(error.starts_with("gpu: this model needs ") && error.contains("gate_proj.weight + "), "{error}");
        assert!(error.ends_with(&allows(16 << 20)), "{error}");
        // One matrix is split at its pieces, no further.
        let table = "model.embed_tokens.weight";
        let piece =
            manifest.pieces.iter().filter(|p| p.tensor == table && p.role == Role::Values).map(|p| p.bytes).max();
        let piece = piece.unwrap();
        let error = GpuWeights::layout(&manifest, &limits(piece - 1)).unwrap_err().to_string();
        assert!(error.starts_with(&format!("gpu: this model needs a {piece}-byte buffer binding ({table}")), "{error}");
        assert!(error.ends_with(&allows(piece - 1)), "{error}");
        assert!(GpuWeights::layout(&manifest, &limits(piece)).is_ok());
    }
}
