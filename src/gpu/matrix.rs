//! The weight-format seam. A [`GpuMatrix`] is one matrix (or a stack of several) on the GPU in
//! one [`MatrixFormat`]; its format picks the matrix kernels' variant (the format's WGSL file,
//! `shaders/format_*.wgsl`, defines the storage and the dequantization that the shared kernels
//! call) and how its buffers are sized and addressed. The forward pass never names a format.

use super::kernels::{matmul_lanes, MatrixRows, TILE_K, TILE_ROWS};
use crate::weights::format::{int4_scale_stride, Quantization, INT4_GROUP};
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatrixFormat {
    /// One int8 per weight, one f32 scale per row.
    Int8,
    /// One 4-bit integer per weight, one f16 scale per group of [`INT4_GROUP`] columns.
    Int4,
}

impl MatrixFormat {
    pub const ALL: [MatrixFormat; 2] = [MatrixFormat::Int8, MatrixFormat::Int4];

    /// The format of a model's matrices: the GPU engine runs quantized models only.
    pub fn of(quantization: Quantization) -> Result<Self> {
        match quantization {
            Quantization::Int8 => Ok(MatrixFormat::Int8),
            Quantization::Int4 => Ok(MatrixFormat::Int4),
            Quantization::F32 => {
                Err(Error::Gpu("the GPU engine runs int8 and int4 models; convert with --quant int8 or int4".into()))
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MatrixFormat::Int8 => "int8",
            MatrixFormat::Int4 => "int4",
        }
    }

    /// The format's WGSL: its `q` and `affine` bindings, `BLOCK`, `block_weights`, `row_scale`
    /// and `row_bias`.
    pub fn source(self) -> &'static str {
        match self {
            MatrixFormat::Int8 => include_str!("../../shaders/format_int8.wgsl"),
            MatrixFormat::Int4 => include_str!("../../shaders/format_int4.wgsl"),
        }
    }

    /// Columns per block (`4 · BLOCK` in the format's WGSL): one thread's share of a row per step.
    pub fn block_columns(self) -> usize {
        4
    }

    /// Columns of one 16-byte chunk of a row (`CHUNK_COLS`: `gemv.wgsl`'s load).
    pub fn chunk_columns(self) -> u32 {
        match self {
            MatrixFormat::Int8 => 16,
            MatrixFormat::Int4 => 32,
        }
    }

    /// Bytes of one block's values: what one weight load of the row kernels brings.
    pub fn block_bytes(self) -> u32 {
        self.value_bytes(1, self.block_columns()) as u32
    }

    /// What a row's length must be a multiple of: a block, or an int4 group.
    pub fn column_multiple(self) -> usize {
        match self {
            MatrixFormat::Int8 => self.block_columns(),
            MatrixFormat::Int4 => INT4_GROUP,
        }
    }

    /// Bytes of `rows` rows of values.
    pub fn value_bytes(self, rows: usize, cols: usize) -> u64 {
        let row = match self {
            MatrixFormat::Int8 => cols as u64,
            MatrixFormat::Int4 => cols as u64 / 2,
        };
        rows as u64 * row
    }

    /// Bytes of one row's scales in the affine buffer (a multiple of 4: every row starts on a
    /// word).
    pub fn scale_row_bytes(self, cols: usize) -> u64 {
        match self {
            MatrixFormat::Int8 => 4,
            MatrixFormat::Int4 => 2 * int4_scale_stride(cols) as u64,
        }
    }
}

/// A buffer of whole rows of a matrix's values.
#[derive(Clone, Debug)]
pub struct MatrixPart {
    pub values: wgpu::Buffer,
    pub row_start: usize,
    pub rows: usize,
}

/// One matrix, or several stacked by rows, as the matrix kernels bind it: the values in one
/// part, or (a lone matrix too large for one binding, such as the embedding) in row pieces; the
/// scales of all rows, then their biases if any, in `affine`.
#[derive(Clone, Debug)]
pub struct GpuMatrix {
    pub format: MatrixFormat,
    pub parts: Vec<MatrixPart>,
    pub affine: wgpu::Buffer,
    pub rows: usize,
    pub cols: usize,
    pub has_bias: bool,
}

impl GpuMatrix {
    /// Where the biases start in `affine`, in 4-byte words; 0 without biases.
    fn bias_offset(&self) -> u32 {
        if self.has_bias {
            (self.rows as u64 * self.format.scale_row_bytes(self.cols) / 4) as u32
        } else {
            0
        }
    }

    /// The rows of `part` over an input of rows `cols` long: no norm, no pair.
    pub fn part_rows(&self, part: &MatrixPart) -> MatrixRows {
        MatrixRows {
            rows: part.rows as u32,
            cols: self.cols as u32,
            // One block: every row reads the same input.
            block_rows: u32::MAX,
            x_stride: self.cols as u32,
            x_offset: 0,
            row_offset: part.row_start as u32,
            pair_offset: 0,
            bias_offset: self.bias_offset(),
            lanes: matmul_lanes(self.cols),
            has_norm: 0,
            eps: 0.0,
            halves: 1,
        }
    }

    /// A stack of two matrices of equal height read as pairs: rows r and r + rows/2 computed in
    /// one workgroup. The stack is one part.
    pub fn pair_rows(&self) -> MatrixRows {
        debug_assert_eq!(self.parts.len(), 1, "a pair is one values buffer");
        let half = self.rows as u32 / 2;
        MatrixRows { rows: half, pair_offset: half, halves: 2, ..self.part_rows(&self.parts[0]) }
    }

    /// Bytes of one row: its values, its scales and its bias.
    pub fn row_bytes(&self) -> u64 {
        let bias = if self.has_bias { 4 } else { 0 };
        self.format.value_bytes(1, self.cols) + self.format.scale_row_bytes(self.cols) + bias
    }

    /// Bytes of the whole matrix.
    pub fn bytes(&self) -> u64 {
        self.row_bytes() * self.rows as u64
    }

    /// The values buffer of a one-part matrix (pairs).
    pub fn values(&self) -> &wgpu::Buffer {
        &self.parts[0].values
    }

    /// Whether the tiled matrix kernel (`Ops::matmul_tiled`, `Ops::geglu_tiled`) takes this
    /// matrix: rows of whole [`TILE_K`]-column steps, each step whole blocks of the format. Any
    /// row and token count and any row pieces (a pair, as for `Ops::geglu`, is one part); the
    /// row kernels take the rest.
    pub fn fits_tiles(&self) -> bool {
        self.cols.is_multiple_of(TILE_K as usize)
            && self.cols.is_multiple_of(self.format.column_multiple())
            && (TILE_K as usize).is_multiple_of(self.format.block_columns())
    }

    /// Whether `Ops::gates_tiled` takes this stack of two block-diagonal matrices with square
    /// blocks `cols` wide (the RG-LRU gates): one part, of whole blocks, each block [`TILE_ROWS`]
    /// / 2 rows or a multiple of it, so that a workgroup's rows of each half read one slice of x.
    pub fn gates_fit_tiles(&self) -> bool {
        let per_half = TILE_ROWS as usize / 2;
        self.fits_tiles()
            && self.parts.len() == 1
            && self.rows.is_multiple_of(2 * self.cols)
            && self.cols.is_multiple_of(per_half)
    }
}

impl MatrixRows {
    /// RMSNorm (zero-centred weight) of each input row in front of the matrix.
    pub fn with_norm(self, eps: f32) -> Self {
        MatrixRows { has_norm: 1, eps, ..self }
    }

    /// A block-diagonal matrix: rows `block_rows` at a time read their own `cols`-long slice of
    /// an input row `x_stride` long, starting at column `x_offset`.
    pub fn block_diagonal(self, block_rows: usize, x_stride: usize, x_offset: usize) -> Self {
        MatrixRows { block_rows: block_rows as u32, x_stride: x_stride as u32, x_offset: x_offset as u32, ..self }
    }
}
