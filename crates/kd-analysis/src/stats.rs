//! The few statistics `kd compare` and `kd report` need: sample mean and standard deviation,
//! Student-t confidence intervals and a paired t-test across seeds.
//!
//! The t distribution's CDF is computed here through the regularized incomplete beta function
//! (continued fraction, modified Lentz) rather than pulling in a statistics crate for one
//! function. Accuracy is ~1e-10, far below what three seeds can resolve.

/// Arithmetic mean; NaN for an empty slice.
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// Sample standard deviation (n − 1 in the denominator); 0 for a single value, NaN for none.
pub fn sample_std(v: &[f64]) -> f64 {
    match v.len() {
        0 => f64::NAN,
        1 => 0.0,
        n => {
            let m = mean(v);
            (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n as f64 - 1.0)).sqrt()
        }
    }
}

/// ln Γ(x) for x > 0 (Lanczos approximation, g = 7, nine terms; relative error < 1e-13).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEF: [f64; 9] = [
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
    if x < 0.5 {
        // Reflection keeps the series in its accurate range.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = COEF[0];
    let t = x + G + 0.5;
    for (i, c) in COEF.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 ≤ x ≤ 1.
pub fn inc_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    // The continued fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry
    // I_x(a, b) = 1 − I_{1−x}(b, a) on the other side.
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_continued_fraction(x, a, b) / a
    } else {
        1.0 - ln_front.exp() * beta_continued_fraction(1.0 - x, b, a) / b
    }
}

/// The continued fraction of I_x(a, b), evaluated with the modified Lentz method.
fn beta_continued_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const EPS: f64 = 1e-15;
    let clamp = |v: f64| if v.abs() < TINY { TINY } else { v };
    let mut c = 1.0;
    let mut d = 1.0 / clamp(1.0 - (a + b) * x / (a + 1.0));
    let mut f = d;
    for m in 1..500 {
        let m = m as f64;
        // Even step: d_{2m} = m (b − m) x / ((a + 2m − 1)(a + 2m)).
        let even = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        d = 1.0 / clamp(1.0 + even * d);
        c = clamp(1.0 + even / c);
        f *= c * d;
        // Odd step: d_{2m+1} = −(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1)).
        let odd = -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0));
        d = 1.0 / clamp(1.0 + odd * d);
        c = clamp(1.0 + odd / c);
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < EPS {
            break;
        }
    }
    f
}

/// P(T ≤ t) for Student's t with `df` degrees of freedom.
pub fn t_cdf(t: f64, df: f64) -> f64 {
    if t.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    if t.is_infinite() {
        return if t > 0.0 { 1.0 } else { 0.0 };
    }
    // P(|T| > |t|) = I_{df/(df+t²)}(df/2, 1/2).
    let tail = 0.5 * inc_beta(df / (df + t * t), df / 2.0, 0.5);
    if t > 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// The `p`-quantile of Student's t with `df` degrees of freedom (bisection on the CDF).
pub fn t_quantile(p: f64, df: f64) -> f64 {
    if !(0.0..=1.0).contains(&p) || df <= 0.0 {
        return f64::NAN;
    }
    if p == 0.5 {
        return 0.0;
    }
    if p < 0.5 {
        return -t_quantile(1.0 - p, df);
    }
    // The 0.9995 quantile at df = 1 is ~636; widen until bracketed.
    let mut hi = 10.0;
    while t_cdf(hi, df) < p && hi < 1e12 {
        hi *= 10.0;
    }
    let mut lo = 0.0;
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-12 * hi.max(1.0) {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// Mean and spread of one group of per-seed values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub std: f64,
    /// Half-width of the two-sided 95% Student-t interval (NaN for n < 2).
    pub ci95: f64,
}

impl Summary {
    pub fn of(v: &[f64]) -> Self {
        let n = v.len();
        let std = sample_std(v);
        let ci95 =
            if n >= 2 { t_quantile(0.975, n as f64 - 1.0) * std / (n as f64).sqrt() } else { f64::NAN };
        Summary { n, mean: mean(v), std, ci95 }
    }
}

/// A paired t-test of `a − b` (same seeds, in the same order).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairedTest {
    pub n: usize,
    /// Mean of the differences a − b.
    pub mean_diff: f64,
    pub t: f64,
    pub df: f64,
    /// Two-sided p-value; NaN when fewer than two pairs. When every difference is the same
    /// (zero spread) it is 0 for a non-zero difference and 1 for none.
    pub p: f64,
}

pub fn paired_t_test(a: &[f64], b: &[f64]) -> PairedTest {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let n = d.len();
    let mean_diff = mean(&d);
    if n < 2 {
        return PairedTest { n, mean_diff, t: f64::NAN, df: f64::NAN, p: f64::NAN };
    }
    let df = n as f64 - 1.0;
    let se = sample_std(&d) / (n as f64).sqrt();
    if se == 0.0 {
        let p = if mean_diff == 0.0 { 1.0 } else { 0.0 };
        let t = if mean_diff == 0.0 { 0.0 } else { mean_diff.signum() * f64::INFINITY };
        return PairedTest { n, mean_diff, t, df, p };
    }
    let t = mean_diff / se;
    let p = (2.0 * t_cdf(-t.abs(), df)).min(1.0);
    PairedTest { n, mean_diff, t, df, p }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn gamma_matches_factorials() {
        assert!(close(ln_gamma(5.0), 24f64.ln(), 1e-12));
        assert!(close(ln_gamma(0.5), std::f64::consts::PI.sqrt().ln(), 1e-12));
        assert!(close(ln_gamma(0.25), 3.625_609_908_221_908f64.ln(), 1e-12));
    }

    #[test]
    fn t_distribution_closed_forms() {
        // df = 1 is Cauchy: F(t) = 1/2 + atan(t)/π.
        for t in [-3.0f64, -0.5, 0.0, 0.7, 12.7] {
            let want = 0.5 + f64::atan(t) / std::f64::consts::PI;
            assert!(close(t_cdf(t, 1.0), want, 1e-10), "t={t}");
        }
        // df = 2: F(t) = 1/2 + t / (2 sqrt(2 + t²)).
        for t in [-4.0f64, -1.0, 0.3, 2.0, 9.0] {
            let want = 0.5 + t / (2.0 * (2.0 + t * t).sqrt());
            assert!(close(t_cdf(t, 2.0), want, 1e-10), "t={t}");
        }
        // Tabulated 97.5% quantiles.
        assert!(close(t_quantile(0.975, 1.0), 12.706_204_736, 1e-6));
        assert!(close(t_quantile(0.975, 2.0), 4.302_652_730, 1e-6));
        assert!(close(t_quantile(0.975, 4.0), 2.776_445_105, 1e-6));
        assert!(close(t_quantile(0.975, 30.0), 2.042_272_456, 1e-6));
        assert!(close(t_quantile(0.025, 2.0), -4.302_652_730, 1e-6));
    }

    #[test]
    fn paired_test_by_hand() {
        // d = (1, 2, 3): mean 2, sd 1, t = 2 / (1/√3) = 2√3, df 2,
        // p = 1 − t / sqrt(2 + t²) = 1 − 2√3/√14.
        let t = paired_t_test(&[11.0, 12.0, 13.0], &[10.0, 10.0, 10.0]);
        assert!(close(t.t, 2.0 * 3f64.sqrt(), 1e-12));
        let want = 1.0 - 2.0 * 3f64.sqrt() / 14f64.sqrt();
        assert!(close(t.p, want, 1e-10), "{} vs {want}", t.p);
        assert!(close(want, 0.074_180, 1e-6));
        let same = paired_t_test(&[1.0, 2.0], &[1.0, 2.0]);
        assert_eq!(same.p, 1.0);
        assert!(paired_t_test(&[1.0], &[0.0]).p.is_nan());
    }

    #[test]
    fn summary_ci() {
        let s = Summary::of(&[1.0, 2.0, 3.0]);
        assert_eq!(s.n, 3);
        assert!(close(s.mean, 2.0, 1e-12) && close(s.std, 1.0, 1e-12));
        assert!(close(s.ci95, 4.302_652_730 / 3f64.sqrt(), 1e-6));
        assert!(Summary::of(&[5.0]).ci95.is_nan());
    }
}
