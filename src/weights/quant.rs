//! Weight quantization for the web format (`super::format` describes the layouts).
//!
//! **int8**, symmetric per output channel: each matrix row r gets
//! `scale_r = max_c |w[r][c]| / 127` and `q[r][c] = round(w[r][c] / scale_r)` in [−127, 127],
//! so `|w − q·scale| ≤ scale / 2` for every weight.
//!
//! **int4**, symmetric per group of [`INT4_GROUP`] consecutive columns of a row: with
//! `m = max |w|` over the group, the scale is `f16(m / 7)` (round to nearest; 0 when `m = 0`) and
//! `q = clamp(round(w / s), −7, 7)` with `s` that f16 scale read back as f32 (`q = 0` where
//! `s = 0`), so `|w − q·s| ≤ s / 2` wherever `s` is a normal f16 (≥ 6.1·10⁻⁵). Values are packed
//! eight to a u32, column `8w + k` of a row in bits `4k..4k + 3` of its word `w`.

use half::f16;

use super::format::{int4_groups, int4_scale_stride, int4_words_per_row, INT4_GROUP, INT4_PER_WORD};
use crate::{Error, Result};

/// Quantizes one row into `q`, returning its scale (0 for an all-zero row).
pub fn quantize_row(row: &[f32], q: &mut [i8]) -> f32 {
    let max = row.iter().fold(0.0f32, |m, w| m.max(w.abs()));
    if max == 0.0 {
        q.fill(0);
        return 0.0;
    }
    let scale = max / 127.0;
    for (q, w) in q.iter_mut().zip(row) {
        *q = (w / scale).round().clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// Quantizes one row of `tensor` (its length a multiple of [`INT4_GROUP`]) into
/// [`int4_words_per_row`] packed words and [`int4_scale_stride`] f16 scales, the padding slot 0.
/// A group whose scale overflows f16 (|w| above about 458,000) is an error naming the tensor.
pub fn quantize_row_int4(tensor: &str, row: &[f32], packed: &mut [u32], scales: &mut [f16]) -> Result<()> {
    let cols = row.len();
    assert!(cols.is_multiple_of(INT4_GROUP), "{tensor}: {cols} columns is not a multiple of {INT4_GROUP}");
    assert_eq!(packed.len(), int4_words_per_row(cols));
    assert_eq!(scales.len(), int4_scale_stride(cols));
    scales.fill(f16::ZERO);
    const WORDS_PER_GROUP: usize = INT4_GROUP / INT4_PER_WORD;
    for g in 0..int4_groups(cols) {
        let group = &row[g * INT4_GROUP..(g + 1) * INT4_GROUP];
        let max = group.iter().fold(0.0f32, |m, w| m.max(w.abs()));
        let scale = if max == 0.0 { f16::ZERO } else { f16::from_f32(max / 7.0) };
        if !scale.is_finite() {
            return Err(Error::Weights(format!("tensor {tensor}: weights too large for int4's f16 scales")));
        }
        scales[g] = scale;
        let s = scale.to_f32();
        for (word, values) in
            packed[g * WORDS_PER_GROUP..(g + 1) * WORDS_PER_GROUP].iter_mut().zip(group.chunks_exact(INT4_PER_WORD))
        {
            *word = 0;
            for (k, w) in values.iter().enumerate() {
                let q = if s == 0.0 { 0 } else { (w / s).round().clamp(-7.0, 7.0) as i32 };
                *word |= ((q as u32) & 0xF) << (4 * k);
            }
        }
    }
    Ok(())
}

/// The `k`-th 4-bit value (0..8) of a packed word, sign-extended: 0x8 reads as −8, as WGSL's
/// `extractBits` on an i32 does.
pub fn int4_value(word: u32, k: usize) -> i32 {
    ((word << (28 - 4 * k)) as i32) >> 28
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_at_most_half_a_step() {
        let row: Vec<f32> = (0..1001).map(|i| ((i * 7919) % 2003) as f32 / 1000.0 - 1.0).collect();
        let mut q = vec![0i8; row.len()];
        let scale = quantize_row(&row, &mut q);
        assert!(q.iter().any(|&v| v.abs() == 127));
        for (w, q) in row.iter().zip(&q) {
            assert!((w - *q as f32 * scale).abs() <= scale * 0.5 + 1e-7);
        }
        let mut zeros = [1i8; 3];
        assert_eq!(quantize_row(&[0.0; 3], &mut zeros), 0.0);
        assert_eq!(zeros, [0; 3]);
    }

    /// The row a packed int4 row and its scales stand for.
    fn dequantize(packed: &[u32], scales: &[f16]) -> Vec<f32> {
        (0..packed.len() * INT4_PER_WORD)
            .map(|c| int4_value(packed[c / INT4_PER_WORD], c % INT4_PER_WORD) as f32 * scales[c / INT4_GROUP].to_f32())
            .collect()
    }

    fn quantize(row: &[f32]) -> (Vec<u32>, Vec<f16>) {
        let mut packed = vec![0xdead_beef; int4_words_per_row(row.len())];
        let mut scales = vec![f16::ONE; int4_scale_stride(row.len())];
        quantize_row_int4("t", row, &mut packed, &mut scales).unwrap();
        (packed, scales)
    }

    #[test]
    fn int4_error_is_at_most_half_a_step_per_group() {
        // 7 groups (odd: a padding slot), each with its own range, from 1e-3 to 1e3.
        let row: Vec<f32> =
            (0..7 * 32i32).map(|i| (((i * 7919) % 2003) as f32 / 1000.0 - 1.0) * 10f32.powi(i / 32 - 3)).collect();
        let (packed, scales) = quantize(&row);
        assert_eq!(scales.len(), 8);
        assert_eq!(scales[7], f16::ZERO, "the padding slot holds 0");
        let restored = dequantize(&packed, &scales);
        for (g, group) in row.chunks(32).enumerate() {
            let max = group.iter().fold(0.0f32, |m, w| m.max(w.abs()));
            let s = scales[g].to_f32();
            assert_eq!(scales[g], f16::from_f32(max / 7.0), "group {g}");
            for (c, w) in group.iter().enumerate() {
                let q = int4_value(packed[(g * 32 + c) / 8], c % 8);
                assert!((-7..=7).contains(&q));
                let error = (w - restored[g * 32 + c]).abs();
                assert!(error <= s * 0.5 * (1.0 + 1e-6), "group {g} column {c}: |{w} − {q}·{s}| = {error}");
            }
            assert!(
                group.iter().enumerate().any(|(c, _)| int4_value(packed[(g * 32 + c) / 8], c % 8).abs() == 7),
                "the largest weight of group {g} uses the full range"
            );
        }
    }

    #[test]
    fn int4_packing_is_low_nibble_first() {
        // Scale 1 exactly: max |w| = 7. Column c holds q = (c % 15) − 7, i.e. −7..7.
        let row: Vec<f32> = (0..64i32).map(|c| (c % 15 - 7) as f32).collect();
        let (packed, scales) = quantize(&row);
        assert_eq!(scales, [f16::ONE, f16::ONE]);
        let nibble = |q: i32| (q as u32) & 0xF;
        for (w, word) in packed.iter().enumerate() {
            let expected = (0..8).fold(0u32, |acc, k| acc | nibble((((8 * w + k) % 15) as i32) - 7) << (4 * k));
            assert_eq!(*word, expected, "word {w}");
        }
        // Columns 0..8 are −7..0: nibbles 9, a, b, c, d, e, f, 0 from the low end.
        assert_eq!(packed[0], 0x0fed_cba9);
        assert_eq!(packed[0].to_le_bytes(), [0xa9, 0xcb, 0xed, 0x0f], "byte-wise: low nibble first");
        assert_eq!(dequantize(&packed, &scales), row);
    }

    #[test]
    fn int4_values_sign_extend() {
        let word = 0x8765_4321u32;
        assert_eq!((0..8).map(|k| int4_value(word, k)).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6, 7, -8]);
        assert_eq!(int4_value(0xffff_ffff, 3), -1);
        assert_eq!(int4_value(0x9000_0000, 7), -7);
    }

    #[test]
    fn int4_zero_groups_and_overflow() {
        let mut row = vec![0.0f32; 96];
        row[40] = -0.5;
        let (packed, scales) = quantize(&row);
        assert_eq!(scales, [f16::ZERO, f16::from_f32(0.5 / 7.0), f16::ZERO, f16::ZERO]);
        assert!(packed[..4].iter().chain(&packed[8..]).all(|&w| w == 0), "all-zero groups are zero words");
        assert_eq!(int4_value(packed[5], 0), -7);
        // Below f16's smallest subnormal the scale rounds to 0, and so does every q.
        let (packed, scales) = quantize(&[1e-9f32; 32]);
        assert_eq!((packed, scales), (vec![0; 4], vec![f16::ZERO; 2]));
        let mut huge = vec![1.0f32; 32];
        huge[3] = 1e6;
        let err = quantize_row_int4("model.x.weight", &huge, &mut [0; 4], &mut [f16::ZERO; 2]).unwrap_err();
        assert_eq!(err.to_string(), "weights: tensor model.x.weight: weights too large for int4's f16 scales");
    }
}
