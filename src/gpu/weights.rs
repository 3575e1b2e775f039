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
        WeightSink { weights: self, queue, run: None, a_params: HashMap::new() }
    }
}

/// Bytes gathered for one `writeBuffer`: each call costs about the same whatever its size (in a
/// browser, a message to the GPU process), and a network stream arrives in chunks of a few KiB.
const WRITE_BATCH_BYTES: usize = 1 << 20;

/// Writes each piece's bytes into its place in a GPU buffer (see [`Layout`]) as they arrive.
/// Bytes that follow each other in one buffer are gathered into writes of about
/// [`WRITE_BATCH_BYTES`]; a chunk at least that large goes straight from the input. What is
/// gathered is written when the next bytes go elsewhere and when the sink is dropped (the end of
/// a pass over a shard). `writeBuffer` takes whole words: pieces are whole words, so only a word
/// that a chunk boundary split waits, for the rest of its piece. The RG-LRU `a_param` is turned
/// into `−8·softplus(a_param)` (in f64, as the CPU reference) on its way in.
pub struct WeightSink<'w> {
    weights: &'w GpuWeights,
    queue: &'w wgpu::Queue,
    run: Option<Run<'w>>,
    /// `a_param` pieces gathered whole: piece name → (bytes so far).
    a_params: HashMap<String, Vec<u8>>,
}

/// Bytes that go to `buffer` from byte `at` on.
struct Run<'w> {
    buffer: &'w str,
    at: u64,
    bytes: Vec<u8>,
}

impl WeightSink<'_> {
    /// Writes the run's whole words and keeps the split word's bytes that follow them.
    fn write_run(&mut self) {
        let Some(run) = &mut self.run else { return };
        let words = run.bytes.len() / 4 * 4;
        if words > 0 {
            self.queue.write_buffer(&self.weights.buffers[run.buffer], run.at, &run.bytes[..words]);
            run.bytes.drain(..words);
            run.at += words as u64;
        }
    }
}

impl Drop for WeightSink<'_> {
    fn drop(&mut self) {
        self.write_run();
    }
}

impl PieceSink for WeightSink<'_> {
    fn piece_bytes(&mut self, piece: &Piece, offset: u64, data: &[u8]) -> Result<()> {
        let weights = self.weights;
        let (buffer, base) = &weights.layout.placement[&piece.name];
        let at = base + offset;
        if piece.tensor.ends_with("rg_lru.recurrent_param") {
            let held = self.a_params.entry(piece.name.clone()).or_default();
            held.extend_from_slice(data);
            if offset + data.len() as u64 == piece.bytes {
                let a_param: Vec<f32> = bytemuck::pod_collect_to_vec(held);
                let log_a_scale: Vec<f32> = a_param.iter().map(|&a| (-8.0 * softplus(a)) as f32).collect();
                self.queue.write_buffer(&weights.buffers[buffer], *base, bytemuck::cast_slice(&log_a_scale));
                self.a_params.remove(&piece.name);
            }
            return Ok(());
        }
        let continues =
            self.run.as_ref().is_some_and(|run| run.buffer == buffer && run.at + run.bytes.len() as u64 == at);
        if !continues {
            self.write_run();
            let mut bytes = self.run.take().map(|run| run.bytes).unwrap_or_default();
            bytes.clear();
            self.run = Some(Run { buffer, at, bytes });
        }
        let run = self.run.as_mut().expect("a run was just started");
        if run.bytes.is_empty() && data.len() >= WRITE_BATCH_BYTES {
            let words = data.len() / 4 * 4;
            self.queue.write_buffer(&weights.buffers[buffer], at, &data[..words]);
            run.at = at + words as u64;
            run.bytes.extend_from_slice(&data[words..]);
        } else {
            run.bytes.extend_from_slice(data);
            if run.bytes.len() >= WRITE_BATCH_BYTES {
                self.write_run();
            }
        }
        Ok(())
    }
}
