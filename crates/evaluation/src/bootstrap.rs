//! Percentile bootstrap intervals: resample the test rows with replacement,
//! recompute the metric, and take the 2.5th and 97.5th percentiles. Seeded
//! (ChaCha8) so a report can be reproduced to the digit.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Resamples per interval unless the caller asks otherwise.
pub const DEFAULT_RESAMPLES: usize = 1000;

/// A 95% percentile interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// 2.5th percentile of the resampled metric.
    pub low: f64,
    /// 97.5th percentile of the resampled metric.
    pub high: f64,
    /// Resamples where the metric was defined; the others were skipped.
    pub valid_resamples: usize,
}

/// The 95% interval of `metric` over `resamples` bootstrap resamples of
/// `n` rows. `metric` gets the row indices of one resample (length `n`,
/// with repeats) and returns `None` where the metric is undefined, such as
/// AUC on a resample holding one label value; those resamples are skipped.
///
/// `None` when `n` or `resamples` is 0 or fewer than half the resamples are
/// valid: an interval over the few lucky resamples would be misleading.
/// The same `(n, resamples, seed)` always draws the same resamples, so the
/// metrics of one class computed with one seed are paired.
pub fn bootstrap_ci(
    n: usize,
    resamples: usize,
    seed: u64,
    mut metric: impl FnMut(&[usize]) -> Option<f64>,
) -> Option<Interval> {
    if n == 0 || resamples == 0 {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut idx = vec![0; n];
    let mut values = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        idx.iter_mut().for_each(|i| *i = rng.random_range(0..n));
        if let Some(v) = metric(&idx) {
            debug_assert!(v.is_finite(), "metric must be finite or None");
            values.push(v);
        }
    }
    if values.len() * 2 < resamples {
        return None;
    }
    values.sort_unstable_by(f64::total_cmp);
    Some(Interval {
        low: percentile(&values, 0.025),
        high: percentile(&values, 0.975),
        valid_resamples: values.len(),
    })
}

/// Linear interpolation between the closest ranks (NumPy's default).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roc::auc;

    fn mean_of(values: &[f64]) -> impl FnMut(&[usize]) -> Option<f64> + '_ {
        |idx| Some(idx.iter().map(|&i| values[i]).sum::<f64>() / idx.len() as f64)
    }

    #[test]
    fn percentile_interpolates() {
        let v = [0.0, 10.0, 20.0, 30.0, 40.0];
        assert_eq!(percentile(&v, 0.5), 20.0);
        assert_eq!(percentile(&v, 0.125), 5.0);
        assert_eq!(percentile(&[3.0], 0.975), 3.0);
    }

    #[test]
    fn same_seed_same_interval_other_seed_differs() {
        let values: Vec<f64> = (0..40).map(|i| ((i * 37) % 11) as f64).collect();
        let a = bootstrap_ci(values.len(), 300, 1, mean_of(&values)).unwrap();
        let b = bootstrap_ci(values.len(), 300, 1, mean_of(&values)).unwrap();
        let c = bootstrap_ci(values.len(), 300, 2, mean_of(&values)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.valid_resamples, 300);
    }

    #[test]
    fn interval_contains_the_estimate() {
        let values: Vec<f64> = (0..60).map(|i| ((i * 7) % 13) as f64).collect();
        let mean = values.iter().sum::<f64>() / 60.0;
        let ci = bootstrap_ci(values.len(), 500, 3, mean_of(&values)).unwrap();
        assert!(ci.low < mean && mean < ci.high, "{ci:?} vs {mean}");
    }

    #[test]
    fn one_label_value_gives_no_interval() {
        let scores = [0.1f32, 0.5, 0.9, 0.3];
        let positive = [false; 4];
        let ci = bootstrap_ci(4, 100, 0, |idx| {
            let s: Vec<f32> = idx.iter().map(|&i| scores[i]).collect();
            let p: Vec<bool> = idx.iter().map(|&i| positive[i]).collect();
            auc(&s, &p)
        });
        assert_eq!(ci, None);
    }

    #[test]
    fn mostly_undefined_resamples_give_no_interval() {
        // One positive in 20 rows: about 36% of resamples miss it (0.95^20),
        // so the interval exists but counts fewer valid resamples.
        let n = 20;
        let metric = |idx: &[usize]| idx.contains(&0).then_some(1.0);
        let ci = bootstrap_ci(n, 400, 5, metric).unwrap();
        assert!(
            ci.valid_resamples < 400 && ci.valid_resamples >= 200,
            "{ci:?}"
        );
        // Defined on about one resample in five: below half, so no interval.
        let rare = |idx: &[usize]| idx[0].is_multiple_of(5).then_some(1.0);
        assert_eq!(bootstrap_ci(n, 400, 5, rare), None);
    }

    #[test]
    fn empty_input_gives_no_interval() {
        assert_eq!(bootstrap_ci(0, 100, 0, |_| Some(1.0)), None);
        assert_eq!(bootstrap_ci(5, 0, 0, |_| Some(1.0)), None);
    }
}
