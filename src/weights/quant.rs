//! int8 symmetric per-output-channel quantization: each matrix row r gets
//! `scale_r = max_c |w[r][c]| / 127` and `q[r][c] = round(w[r][c] / scale_r)` in [−127, 127],
//! so `|w − q·scale| ≤ scale / 2` for every weight.

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
}
