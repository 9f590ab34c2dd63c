//! Per-round ratios (agent / `ssh -L`, same round) and a distribution-free
//! 95% interval of their median: on this shared 2-core machine one run's
//! medians move by as much as the gaps issue 12 asks about, so a verdict
//! ("at or below 1.0", "above 1.0", "not distinguishable") needs the
//! interval, not the median alone.

use std::fmt;

/// Median of per-round ratios with its sign-test interval and the range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ratios {
    pub median: f64,
    /// Lower and upper ends of a >= 95% confidence interval of the median.
    pub low: f64,
    pub high: f64,
    pub min: f64,
    pub max: f64,
}

impl Ratios {
    /// `a[k] / b[k]` for each round `k`; `None` without a single round.
    pub fn of(a: impl IntoIterator<Item = f64>, b: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut r: Vec<f64> = a.into_iter().zip(b).map(|(a, b)| a / b).collect();
        if r.is_empty() {
            return None;
        }
        r.sort_by(f64::total_cmp);
        let (lo, hi) = median_interval(r.len());
        Some(Ratios {
            median: r[r.len() / 2],
            low: r[lo],
            high: r[hi],
            min: r[0],
            max: r[r.len() - 1],
        })
    }

    /// Where 1.0 (parity) lies against the interval.
    pub fn verdict(&self) -> &'static str {
        if self.high < 1.0 {
            "below 1"
        } else if self.low > 1.0 {
            "above 1"
        } else {
            "includes 1"
        }
    }
}

impl fmt::Display for Ratios {
    /// `0.982x [0.934-1.041] (0.88-1.10)`: median [95% interval] (range).
    /// Three decimals, so that an interval just off 1.0 ("above 1" at
    /// 1.002) does not print as 1.00.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.3}x [{:.3}-{:.3}] ({:.2}-{:.2})",
            self.median, self.low, self.high, self.min, self.max
        )
    }
}

/// Indices (0-based, into `n` sorted samples) of a distribution-free
/// confidence interval of at least 95% for the median: the k-th smallest
/// and k-th largest, k the largest with P(Binomial(n, 1/2) < k) <= 2.5%
/// (the sign-test interval; e.g. n = 20: the 6th and 15th). With fewer
/// than 6 samples no such k exists, and the interval is the whole range.
pub fn median_interval(n: usize) -> (usize, usize) {
    let mut below = 0.0; // P(X < k), X ~ Binomial(n, 1/2)
    let mut k = 0;
    let mut term = 0.5f64.powi(n as i32); // P(X = k)
    while k < n / 2 && below + term <= 0.025 {
        below += term;
        term *= (n - k) as f64 / (k + 1) as f64;
        k += 1;
    }
    // k samples lie below the interval; with k = 0 it is the whole range.
    let lo = k.saturating_sub(1).min(n.saturating_sub(1));
    (lo, n.saturating_sub(1) - lo)
}

#[cfg(test)]
mod tests {
    use super::{Ratios, median_interval};

    #[test]
    fn sign_test_intervals_match_the_tables() {
        // Order statistics (1-based) from the binomial table for 95%:
        // n = 20 -> 6th..15th, n = 10 -> 2nd..9th, n = 6 -> 1st..6th.
        assert_eq!(median_interval(20), (5, 14));
        assert_eq!(median_interval(10), (1, 8));
        assert_eq!(median_interval(6), (0, 5));
        assert_eq!(median_interval(3), (0, 2));
    }

    #[test]
    fn ratios_are_per_round_and_the_verdict_reads_the_interval() {
        // Ten rounds; round k: a = 0.9 + k/100 (slower rounds for b later).
        let a: Vec<f64> = (0..10).map(|k| 0.90 + k as f64 / 100.0).collect();
        let b = vec![1.0; 10];
        let r = Ratios::of(a.clone(), b.clone()).unwrap();
        // Sorted ratios 0.90..0.99: median the 6th, interval 2nd..9th.
        assert!((r.median - 0.95).abs() < 1e-9, "{r}");
        assert!(
            (r.low - 0.91).abs() < 1e-9 && (r.high - 0.98).abs() < 1e-9,
            "{r}"
        );
        assert_eq!(r.verdict(), "below 1");
        let flipped = Ratios::of(b.clone(), a).unwrap();
        assert_eq!(flipped.verdict(), "above 1");
        let mixed = Ratios::of([0.9, 1.1, 0.95, 1.05, 1.0, 1.02], vec![1.0; 6]).unwrap();
        assert_eq!(mixed.verdict(), "includes 1");
        assert_eq!(Ratios::of(Vec::<f64>::new(), b), None);
    }
}
