//! The small building blocks every block uses: weights (`Matrix`, `Linear`, `BlockDiagonal`)
//! and the pointwise functions of `shared/spec/griffin.md` §3 with their numerical guards (§6).

/// A weight matrix stored `[rows = out, cols = in]`, either plain f32 or int8 with one f32
/// scale per output row (`w[r][c] = q[r][c] * scale[r]`), the layout of the web format.
#[derive(Clone, Debug)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub values: MatrixValues,
}

#[derive(Clone, Debug)]
pub enum MatrixValues {
    F32(Vec<f32>),
    Int8 { q: Vec<i8>, scales: Vec<f32> },
}

impl Matrix {
    /// `Σ_c w[r][c] · x[c]`, accumulated in f32; int8 rows are scaled once after the sum.
    pub fn row_dot(&self, row: usize, x: &[f32]) -> f32 {
        let range = row * self.cols..(row + 1) * self.cols;
        match &self.values {
            MatrixValues::F32(w) => w[range].iter().zip(x).map(|(w, x)| w * x).sum(),
            MatrixValues::Int8 { q, scales } => {
                let dot: f32 = q[range].iter().zip(x).map(|(&q, x)| q as f32 * x).sum();
                dot * scales[row]
            }
        }
    }

    /// Row `r` as f32 values (the embedding lookup).
    pub fn row(&self, row: usize) -> Vec<f32> {
        let range = row * self.cols..(row + 1) * self.cols;
        match &self.values {
            MatrixValues::F32(w) => w[range].to_vec(),
            MatrixValues::Int8 { q, scales } => q[range].iter().map(|&q| q as f32 * scales[row]).collect(),
        }
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
