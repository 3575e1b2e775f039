//! The small building blocks every block uses: weights (`Matrix`, `Linear`, `BlockDiagonal`)
//! and the pointwise functions of `shared/spec/griffin.md` §3 with their numerical guards (§6).

use half::f16;

use crate::weights::format::{int4_scale_stride, int4_words_per_row, INT4_GROUP, INT4_PER_WORD};
use crate::weights::quant::int4_value;

/// A weight matrix stored `[rows = out, cols = in]` in a layout of the web format: plain f32,
/// int8 with one f32 scale per output row (`w[r][c] = q[r][c] · scale[r]`), or int4 with one
/// f16 scale per group of 32 columns (`w[r][c] = q[r][c] · scale[r][c / 32]`).
#[derive(Clone, Debug)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub values: MatrixValues,
}

#[derive(Clone, Debug)]
pub enum MatrixValues {
    F32(Vec<f32>),
    Int8 {
        q: Vec<i8>,
        scales: Vec<f32>,
    },
    /// `packed`: `[rows, cols / 8]` words, column `8w + k` in bits `4k..4k + 3` of word `w`
    /// (sign-extended); `scales`: `[rows, int4_scale_stride(cols)]`, see `weights::format`.
    Int4 {
        packed: Vec<u32>,
        scales: Vec<f16>,
    },
}

impl Matrix {
    /// `Σ_c w[r][c] · x[c]`, accumulated in f32; int8 rows are scaled once after the sum, int4
    /// groups once after each group's sum: `Σ_g scale_g · (Σ_{c in g} q_c · x_c)`.
    pub fn row_dot(&self, row: usize, x: &[f32]) -> f32 {
        let range = row * self.cols..(row + 1) * self.cols;
        match &self.values {
            MatrixValues::F32(w) => w[range].iter().zip(x).map(|(w, x)| w * x).sum(),
            MatrixValues::Int8 { q, scales } => {
                let dot: f32 = q[range].iter().zip(x).map(|(&q, x)| q as f32 * x).sum();
                dot * scales[row]
            }
            MatrixValues::Int4 { packed, scales } => {
                let (words, scales) = self.int4_row(packed, scales, row);
                let per_group = INT4_GROUP / INT4_PER_WORD;
                let mut dot = 0.0f32;
                for ((group, scale), x) in words.chunks_exact(per_group).zip(scales).zip(x.chunks_exact(INT4_GROUP)) {
                    let mut sum = 0.0f32;
                    for (&word, x) in group.iter().zip(x.chunks_exact(INT4_PER_WORD)) {
                        for (k, x) in x.iter().enumerate() {
                            sum += int4_value(word, k) as f32 * x;
                        }
                    }
                    dot += scale.to_f32() * sum;
                }
                dot
            }
        }
    }

    /// Row `r` as f32 values (the embedding lookup).
    pub fn row(&self, row: usize) -> Vec<f32> {
        let range = row * self.cols..(row + 1) * self.cols;
        match &self.values {
            MatrixValues::F32(w) => w[range].to_vec(),
            MatrixValues::Int8 { q, scales } => q[range].iter().map(|&q| q as f32 * scales[row]).collect(),
            MatrixValues::Int4 { packed, scales } => {
                let (words, scales) = self.int4_row(packed, scales, row);
                (0..self.cols)
                    .map(|c| {
                        int4_value(words[c / INT4_PER_WORD], c % INT4_PER_WORD) as f32 * scales[c / INT4_GROUP].to_f32()
                    })
                    .collect()
            }
        }
    }

    /// Row `r`'s packed words and its groups' scales (the padding slot left out).
    fn int4_row<'a>(&self, packed: &'a [u32], scales: &'a [f16], row: usize) -> (&'a [u32], &'a [f16]) {
        let (words, stride) = (int4_words_per_row(self.cols), int4_scale_stride(self.cols));
        (&packed[row * words..][..words], &scales[row * stride..][..self.cols / INT4_GROUP])
    }

    /// `y = W · x`.
    pub fn matvec(&self, x: &[f32]) -> Vec<f32> {
        debug_assert_eq!(x.len(), self.cols);
        (0..self.rows).map(|r| self.row_dot(r, x)).collect()
    }
}

/// `y = W · x + b`; the bias is optional (attention q/k/v have none).
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Matrix,
    pub bias: Option<Vec<f32>>,
}

impl Linear {
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let mut y = self.weight.matvec(x);
        if let Some(bias) = &self.bias {
            add_assign(&mut y, bias);
        }
        y
    }
}

/// The RG-LRU gates: `H` independent blocks of width `bw`,
/// `out[h·bw + j] = b[h·bw + j] + Σ_i x[h·bw + i] · W[h][i][j]`.
/// `weight` holds each block transposed, row `h·bw + j` = `W[h][·][j]`, so a row is one output.
#[derive(Clone, Debug)]
pub struct BlockDiagonal {
    /// `[H·bw, bw]`
    pub weight: Matrix,
    /// `[H·bw]`
    pub bias: Vec<f32>,
}

impl BlockDiagonal {
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let block_width = self.weight.cols;
        (0..self.weight.rows)
            .map(|out| {
                let block = out / block_width;
                let input = &x[block * block_width..(block + 1) * block_width];
                self.weight.row_dot(out, input) + self.bias[out]
            })
            .collect()
    }
}

/// `y = x · rsqrt(mean(x²) + eps) · (1 + w)`: the scale is stored zero-centred.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let mean_square = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv_rms = 1.0 / (mean_square + eps).sqrt();
    x.iter().zip(weight).map(|(x, w)| x * inv_rms * (1.0 + w)).collect()
}

/// tanh with its argument clamped to ±10: f32 tanh is already exactly ±1 beyond ~9.01, and
/// the clamp keeps GPU implementations built on exp from overflowing into NaN.
pub fn tanh_clamped(x: f32) -> f32 {
    x.clamp(-10.0, 10.0).tanh()
}

/// GELU, tanh approximation (both the MLP gate and the recurrent y-branch use it).
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + tanh_clamped(SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)))
}

/// `1 / (1 + e^-x)`, with x clamped so the exponential cannot overflow.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x.clamp(-80.0, 80.0)).exp())
}

/// `log(1 + e^x)` in f64, as torch's (threshold 20) and JAX's `logaddexp` agree in f32.
pub fn softplus(x: f32) -> f64 {
    let x = x as f64;
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// `cap · tanh(logit / cap)`: division first, to match the reference to the ulp.
pub fn soft_cap(logits: &mut [f32], cap: f32) {
    if cap > 0.0 {
        for l in logits {
            *l = tanh_clamped(*l / cap) * cap;
        }
    }
}

/// Rotary embedding on the first `rotary_dims` of one head, halves layout:
/// for i < n = rotary_dims/2, θ_i = t · base^(-2i/rotary_dims),
/// `r[i] = x[i]·cos θ − x[i+n]·sin θ`, `r[i+n] = x[i+n]·cos θ + x[i]·sin θ`.
pub fn apply_rope(head: &mut [f32], position: usize, rotary_dims: usize, base: f32) {
    let half = rotary_dims / 2;
    for i in 0..half {
        let exponent = (2 * i) as f32 / rotary_dims as f32;
        let inv_frequency = 1.0 / base.powf(exponent);
        let angle = position as f32 * inv_frequency;
        let (sin, cos) = angle.sin_cos();
        let (a, b) = (head[i], head[i + half]);
        head[i] = a * cos - b * sin;
        head[i + half] = b * cos + a * sin;
    }
}

pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (x, y) in x.iter_mut().zip(y) {
        *x += y;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_matrix_applies_row_scales() {
        let m = Matrix {
            rows: 2,
            cols: 3,
            values: MatrixValues::Int8 { q: vec![1, -2, 3, 127, 0, -127], scales: vec![0.5, 0.01] },
        };
        let y = m.matvec(&[1.0, 2.0, 3.0]);
        assert_eq!(y, vec![(1.0 - 4.0 + 9.0) * 0.5, (127.0 - 381.0) * 0.01]);
        assert_eq!(m.row(1), vec![1.27, 0.0, -1.27]);
    }

    #[test]
    fn int4_matrix_applies_group_scales() {
        use crate::weights::quant::quantize_row_int4;
        // Two rows of 96 columns: 3 groups, so 4 scale slots per row, the last one padding.
        let weights: Vec<f32> = (0..192).map(|i| ((i * 37 % 101) as f32 - 50.0) / 10.0 * (1 + i / 32) as f32).collect();
        let (mut packed, mut scales) = (vec![0u32; 24], vec![f16::ZERO; 8]);
        for r in 0..2 {
            let row = &weights[r * 96..][..96];
            quantize_row_int4("w", row, &mut packed[r * 12..][..12], &mut scales[r * 4..][..4]).unwrap();
        }
        // A padding slot never reaches a value.
        scales[3] = f16::from_f32(1e4);
        let m =
            Matrix { rows: 2, cols: 96, values: MatrixValues::Int4 { packed: packed.clone(), scales: scales.clone() } };
        let x: Vec<f32> = (0..96).map(|i| (i as f32 * 0.37).sin()).collect();
        for r in 0..2 {
            // The format's formula, written out: w = q · scale[c / 32], summed per group.
            let q = |c: usize| int4_value(packed[r * 12 + c / 8], c % 8) as f32;
            let scale = |g: usize| scales[r * 4 + g].to_f32();
            let expected: f32 =
                (0..3).map(|g| scale(g) * (0..32).map(|i| q(32 * g + i) * x[32 * g + i]).sum::<f32>()).sum();
            assert_eq!(m.row_dot(r, &x), expected, "row {r}");
            let row = m.row(r);
            assert_eq!(row, (0..96).map(|c| q(c) * scale(c / 32)).collect::<Vec<_>>());
            for (c, (w, original)) in row.iter().zip(&weights[r * 96..]).enumerate() {
                assert!((w - original).abs() <= scale(c / 32) / 2.0 * (1.0 + 1e-6), "row {r} column {c}");
            }
        }
    }

    #[test]
    fn block_diagonal_is_input_major_per_block() {
        // Two blocks of width 2; block 1 maps x[2..4] with W[1] = [[1, 2], [3, 4]] (input-major),
        // so out[2] = x2·1 + x3·3 and out[3] = x2·2 + x3·4. Rows hold W transposed.
        let weight =
            Matrix { rows: 4, cols: 2, values: MatrixValues::F32(vec![1.0, 0.0, 0.0, 1.0, 1.0, 3.0, 2.0, 4.0]) };
        let gates = BlockDiagonal { weight, bias: vec![0.0, 0.0, 0.5, 0.0] };
        assert_eq!(gates.forward(&[5.0, 6.0, 1.0, 10.0]), vec![5.0, 6.0, 31.5, 42.0]);
    }

    #[test]
    fn pointwise_functions_are_finite_at_extremes() {
        for x in [-1e30f32, -100.0, -1.0, 0.0, 1.0, 100.0, 1e30] {
            assert!(gelu_tanh(x).is_finite() || x.abs() > 1e20, "gelu({x})");
            assert!(sigmoid(x).is_finite(), "sigmoid({x})");
            assert!(tanh_clamped(x).abs() <= 1.0);
        }
        assert_eq!(sigmoid(0.0), 0.5);
        assert!((softplus(0.0) - std::f64::consts::LN_2).abs() < 1e-15);
        let mut logits = [1e9f32, -1e9, 0.0];
        soft_cap(&mut logits, 30.0);
        assert_eq!(logits, [30.0, -30.0, 0.0]);
    }

    #[test]
    fn rope_rotates_pairs_by_position_and_leaves_the_tail() {
        let mut head = [1.0f32, 0.0, 0.0, 1.0, 7.0, 8.0];
        apply_rope(&mut head, 1, 4, 10_000.0);
        // Pair (0, 2) has θ = 1; pair (1, 3) has θ = 1/100.
        assert!((head[0] - 1f32.cos()).abs() < 1e-6 && (head[2] - 1f32.sin()).abs() < 1e-6);
        assert!((head[1] + 0.01f32.sin()).abs() < 1e-6 && (head[3] - 0.01f32.cos()).abs() < 1e-6);
        assert_eq!(&head[4..], &[7.0, 8.0]);
    }
}
