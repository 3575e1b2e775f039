//! The model's weights on the GPU: one buffer per [`Layout`] entry, filled piece by piece as the
//! loader streams them in ([`WeightSink`]), and handed to the forward pass as [`GpuMatrix`]es and
//! vectors by tensor name.

use std::collections::HashMap;

use super::layout::Layout;
use super::matrix::{GpuMatrix, MatrixPart};
use super::GpuContext;
use crate::model::layers::softplus;
use crate::weights::format::{Manifest, Piece};
use crate::weights::stream::PieceSink;
use crate::{Error, Result};

pub struct GpuWeights {
    layout: Layout,
    /// Buffer name (see [`Layout`]) → the buffer.
    buffers: HashMap<String, wgpu::Buffer>,
}

impl GpuWeights {
    /// Allocates (zeroed) every weight buffer of `manifest`'s model.
    pub fn new(ctx: &GpuContext, manifest: &Manifest) -> Result<Self> {
        let layout = Self::layout(manifest, &ctx.device.limits())?;
        // Padded to 16 bytes: the matrix kernels read weights as 16-byte vectors.
        let buffers = layout
            .buffers
            .iter()
            .map(|(name, bytes)| (name.clone(), ctx.storage(name, bytes.next_multiple_of(16))))
            .collect();
        Ok(GpuWeights { layout, buffers })
    }

    /// Where `manifest`'s weights go under `limits`, or one line saying what the model needs that
    /// the device does not allow: known from the manifest alone, before a byte of weights is fetched.
    pub fn layout(manifest: &Manifest, limits: &wgpu::Limits) -> Result<Layout> {
        let allowed = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        let allows = format!(
            "this GPU allows {allowed} bytes per buffer binding (maxStorageBufferBindingSize {}, maxBufferSize {})",
            limits.max_storage_buffer_binding_size, limits.max_buffer_size
        );
        let layout = Layout::new(manifest, allowed).map_err(|e| match e {
            Error::Gpu(needs) => Error::Gpu(format!("this model needs {needs}; {allows}")),
            other => other,
        })?;
        match layout.buffers.iter().filter(|(_, bytes)| *bytes > allowed).max_by_key(|(_, bytes)| *bytes) {
            Some((name, bytes)) => {
                Err(Error::Gpu(format!("this model needs a {bytes}-byte buffer binding ({name}); {allows}")))
            }
            None => Ok(layout),
        }
    }

    /// The matrix, or the stack of matrices, whose first tensor is `tensor`.
    pub fn matrix(&self, tensor: &str) -> GpuMatrix {
        let stack = &self.layout.stacks[tensor];
        GpuMatrix {
            format: self.layout.format,
            parts: stack
                .parts
                .iter()
                .map(|(buffer, row_start, rows)| MatrixPart {
                    values: self.buffers[buffer].clone(),
                    row_start: *row_start,
                    rows: *rows,
                })
                .collect(),
            affine: self.buffers[&stack.affine].clone(),
            rows: stack.rows,
            cols: stack.cols,
            has_bias: stack.has_bias,
        }
    }

    /// The buffer of a vector such as a norm weight (for the conv taps: the taps, then the bias).
    pub fn vector(&self, tensor: &str) -> &wgpu::Buffer {
        &self.buffers[&self.layout.placement[tensor].0]
    }

    /// Where the loader sends each piece's bytes as they arrive.
    pub fn sink<'w>(&'w self, queue: &'w wgpu::Queue) -> WeightSink<'w> {
        WeightSink { weights: self, queue, pending: HashMap::new() }
    }
}

/// Writes each piece's bytes into its place in a GPU buffer (see [`Layout`]) as they arrive.
/// `queue.write_buffer` needs 4-byte multiples, so up to 3 bytes per piece wait for the next
/// chunk. The RG-LRU `a_param` is turned into `−8·softplus(a_param)` (in f64, as the CPU
/// reference) on its way in.
pub struct WeightSink<'w> {
    weights: &'w GpuWeights,
    queue: &'w wgpu::Queue,
    pending: HashMap<String, (u64, Vec<u8>)>,
}

impl PieceSink for WeightSink<'_> {
    fn piece_bytes(&mut self, piece: &Piece, offset: u64, data: &[u8]) -> Result<()> {
        let (buffer, base) = &self.weights.layout.placement[&piece.name];
        let (buffer, base) = (&self.weights.buffers[buffer], *base);
        if piece.tensor.ends_with("rg_lru.recurrent_param") {
            let (start, held) = self.pending.entry(piece.name.clone()).or_insert((offset, Vec::new()));
            held.extend_from_slice(data);
            if *start + held.len() as u64 == piece.bytes {
                let a_param: Vec<f32> = bytemuck::pod_collect_to_vec(held);
                let log_a_scale: Vec<f32> = a_param.iter().map(|&a| (-8.0 * softplus(a)) as f32).collect();
                self.queue.write_buffer(buffer, base, bytemuck::cast_slice(&log_a_scale));
                self.pending.remove(&piece.name);
            }
            return Ok(());
        }
        // The bytes go straight from the chunk to the queue; only a split word's bytes are copied.
        let mut data = data;
        let mut at = offset;
        if let Some((start, held)) = self.pending.get_mut(&piece.name) {
            let take = (4 - held.len()).min(data.len());
            held.extend_from_slice(&data[..take]);
            data = &data[take..];
            at += take as u64;
            if held.len() < 4 {
                return Ok(());
            }
            self.queue.write_buffer(buffer, base + *start, held);
            self.pending.remove(&piece.name);
        }
        let aligned = data.len() / 4 * 4;
        if aligned > 0 {
            self.queue.write_buffer(buffer, base + at, &data[..aligned]);
        }
        if aligned < data.len() {
            self.pending.insert(piece.name.clone(), (at + aligned as u64, data[aligned..].to_vec()));
        }
        Ok(())
    }
}
