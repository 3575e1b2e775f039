//! A [`PieceSink`] that assembles pieces into whole tensors in host memory (the CPU reference's
//! loader; the GPU engine has its own sink that writes into GPU buffers instead).

use std::collections::HashMap;

use half::f16;

use super::format::{int4_scale_stride, int4_words_per_row, Manifest, Quantization, Role};
use super::stream::PieceSink;
use super::{tensor_specs, HostData, HostTensor, TensorMap};
use crate::weights::format::Piece;
use crate::Result;

pub struct HostSink {
    tensors: HashMap<String, HostTensor>,
}

impl HostSink {
    /// Allocates every tensor the manifest describes (zero-filled until its bytes arrive).
    pub fn new(manifest: &Manifest) -> Self {
        let tensors = tensor_specs(&manifest.config)
            .into_iter()
            .map(|spec| {
                let (rows, cols) = (spec.shape[0], spec.elements() / spec.shape[0]);
                let data = match manifest.quantization {
                    Quantization::Int8 if spec.is_matrix => {
                        HostData::Int8 { q: vec![0; spec.elements()], scales: vec![0.0; rows] }
                    }
                    Quantization::Int4 if spec.is_matrix => HostData::Int4 {
                        packed: vec![0; rows * int4_words_per_row(cols)],
                        scales: vec![f16::ZERO; rows * int4_scale_stride(cols)],
                    },
                    _ => HostData::F32(vec![0.0; spec.elements()]),
                };
                (spec.name, HostTensor { shape: spec.shape, data })
            })
            .collect();
        HostSink { tensors }
    }

    pub fn into_tensor_map(self) -> TensorMap {
        let mut map = TensorMap::default();
        for (name, tensor) in self.tensors {
            map.insert(name, tensor);
        }
        map
    }
}

impl PieceSink for HostSink {
    fn piece_bytes(&mut self, piece: &Piece, offset: u64, bytes: &[u8]) -> Result<()> {
        // The manifest was checked against the tensor table, so the tensor and its role exist.
        let tensor = self.tensors.get_mut(&piece.tensor).expect("checked manifest");
        let target: &mut [u8] = match (&mut tensor.data, piece.role) {
            (HostData::F32(values), Role::Values) => bytemuck::cast_slice_mut(values),
            (HostData::Int8 { q, .. }, Role::Values) => bytemuck::cast_slice_mut(q),
            (HostData::Int8 { scales, .. }, Role::Scales) => bytemuck::cast_slice_mut(scales),
            (HostData::Int4 { packed, .. }, Role::Values) => bytemuck::cast_slice_mut(packed),
            (HostData::Int4 { scales, .. }, Role::Scales) => bytemuck::cast_slice_mut(scales),
            (HostData::F32(_), Role::Scales) => unreachable!("checked manifest: f32 tensors have no scales"),
        };
        let row_bytes = target.len() / tensor.shape[0];
        let start = piece.row_start * row_bytes + offset as usize;
        target[start..start + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }
}
