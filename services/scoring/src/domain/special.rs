//! The special functions the models need: ln Γ, ψ (digamma) and Gauss's hypergeometric
//! ₂F₁, in double precision.

use std::f64::consts::PI;

/// Lanczos coefficients (g = 7, n = 9): ln Γ to about 1e-15 relative.
const LANCZOS: [f64; 9] = [
    0.999_999_999_999_809_9,
    676.520_368_121_885_1,
    -1_259.139_216_722_402_8,
    771.323_428_777_653_1,
    -176.615_029_162_140_6,
    12.507_343_278_686_905,
    -0.138_571_095_265_720_12,
    9.984_369_578_019_572e-6,
    1.505_632_735_149_311_6e-7,
];

/// ln Γ(x) for x > 0.
pub fn ln_gamma(x: f64) -> f64 {
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 − x) = π / sin(πx).
        return (PI / (PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = LANCZOS[0];
    for (i, c) in LANCZOS.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + 7.5;
    0.5 * (2.0 * PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// ψ(x) = d/dx ln Γ(x) for x > 0: the recurrence ψ(x) = ψ(x + 1) − 1/x up to x ≥ 10,
/// then the asymptotic series.
pub fn digamma(mut x: f64) -> f64 {
    let mut result = 0.0;
    while x < 10.0 {
        result -= 1.0 / x;
        x += 1.0;
    }
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    result + x.ln()
        - 0.5 * inv
        - inv2 * (1.0 / 12.0 - inv2 * (1.0 / 120.0 - inv2 * (1.0 / 252.0 - inv2 * (1.0 / 240.0 - inv2 / 132.0))))
}

/// ₂F₁(a, b; c; z) for 0 ≤ z < 1 by its series, summed until a term no longer changes
/// the sum. The models call it with z = t / (α + T + t), below 1 for any finite
/// horizon; the series converges as zⁿ.
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> f64 {
    debug_assert!((0.0..1.0).contains(&z));
    let mut term = 1.0;
    let mut sum = 1.0;
    for n in 0..1_000_000 {
        let n = f64::from(n);
        term *= (a + n) * (b + n) / ((c + n) * (n + 1.0)) * z;
        let next = sum + term;
        if next == sum {
            break;
        }
        sum = next;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values from scipy.special (gammaln, digamma, hyp2f1).
    #[test]
    fn the_functions_equal_scipys() {
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-13 * b.abs().max(1.0);
        assert!(
            close(ln_gamma(0.242593), 1.319_815_984_069_629),
            "{}",
            ln_gamma(0.242593)
        );
        assert!(close(ln_gamma(10.5), 13.940_625_219_403_763));
        assert!(close(ln_gamma(1.0), 0.0));
        assert!(
            close(digamma(0.242593), -4.358_489_244_159_736_5),
            "{}",
            digamma(0.242593)
        );
        assert!(close(digamma(1.0), -0.577_215_664_901_532_9));
        assert!(close(digamma(30.0), 3.384_438_132_685_525));
        let h = hyp2f1(2.242593, 4.425752, 4.218638, 0.3);
        assert!(close(h, 2.320_780_751_816_136), "{h}");
    }
}
