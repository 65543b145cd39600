//! Linear probes on frozen image embeddings: one L2-regularised logistic
//! regression per class, on features standardised with the training rows'
//! mean and standard deviation, and the nested label subsets (1%, 10%,
//! 100% of the training rows) that the data-efficiency table compares.
//!
//! The optimiser is full-batch accelerated gradient descent (FISTA) with a
//! backtracking step size and momentum restart. It is deterministic, needs
//! O(n·d) work per step (Newton would need O(n·d²), too slow for 768-d
//! embeddings of a few hundred thousand images), never overshoots (the
//! step halves until the loss falls), and the L2 term keeps the optimum
//! finite on separable data.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::binary_label;

/// How a probe is fitted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProbeConfig {
    /// λ in mean log-loss + λ/2·‖w‖² (the bias is not penalised). 1e-3: a
    /// mild penalty on standardised features that keeps separable data
    /// finite; tune it on the validation split for a sweep.
    pub weight_decay: f64,
    /// Most gradient steps. 2000.
    pub max_iter: usize,
    /// Stop once every gradient component is below this. 1e-5.
    pub tolerance: f64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            weight_decay: 1e-3,
            max_iter: 2000,
            tolerance: 1e-5,
        }
    }
}

/// Why a probe could not be fitted.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProbeError {
    /// The feature matrix is not `labels.len()` rows of `dim` values.
    #[error("{features} feature values are not {labels} rows of dimension {dim}")]
    Shape {
        /// Length of the feature slice.
        features: usize,
        /// Claimed row dimension.
        dim: usize,
        /// Number of labels (rows).
        labels: usize,
    },
    /// No row is labelled 0 or 1 for this class.
    #[error("no row is labelled positive or negative")]
    NoLabelledRows,
}

/// A fitted probe for one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogisticModel {
    /// Per-feature mean of the training rows.
    pub mean: Vec<f64>,
    /// Per-feature standard deviation of the training rows (1 for a
    /// constant feature).
    pub std: Vec<f64>,
    /// Weights on the standardised features.
    pub weights: Vec<f64>,
    /// Bias.
    pub bias: f64,
    /// Gradient steps taken.
    pub iterations: usize,
    /// Whether the gradient fell below the tolerance within `max_iter`.
    pub converged: bool,
}

impl LogisticModel {
    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.weights.len()
    }

    /// The probability of the positive class for each row of `features`
    /// (row-major, [`dim`](Self::dim) values per row).
    ///
    /// # Panics
    ///
    /// When `features.len()` is not a multiple of the dimension.
    pub fn predict(&self, features: &[f32]) -> Vec<f32> {
        let dim = self.dim();
        assert!(
            dim > 0 && features.len().is_multiple_of(dim),
            "rows of {dim} features expected"
        );
        let (a, c) = raw_coefficients(&self.weights, self.bias, &self.mean, &self.std);
        features
            .chunks_exact(dim)
            .map(|x| sigmoid(dot(&a, x) + c) as f32)
            .collect()
    }
}

/// Fits a probe for one class on `features` (row-major, `dim` values per
/// row) and `labels` (one per row). Only rows labelled 0 or 1 are used; the
/// mean and standard deviation come from those rows.
pub fn fit_logistic(
    features: &[f32],
    dim: usize,
    labels: &[i8],
    cfg: &ProbeConfig,
) -> Result<LogisticModel, ProbeError> {
    if dim == 0 || features.len() != labels.len() * dim {
        return Err(ProbeError::Shape {
            features: features.len(),
            dim,
            labels: labels.len(),
        });
    }
    let (rows, y): (Vec<usize>, Vec<f64>) = labels
        .iter()
        .enumerate()
        .filter_map(|(i, &l)| binary_label(l).map(|p| (i, if p { 1.0 } else { 0.0 })))
        .unzip();
    if rows.is_empty() {
        return Err(ProbeError::NoLabelledRows);
    }
    let (mean, std) = standardisation(features, dim, &rows);
    let problem = Problem {
        features,
        dim,
        rows: &rows,
        y: &y,
        mean: &mean,
        std: &std,
        cfg,
    };
    let (theta, iterations, converged) = problem.minimise();
    Ok(LogisticModel {
        weights: theta[..dim].to_vec(),
        bias: theta[dim],
        mean,
        std,
        iterations,
        converged,
    })
}

/// `max(1, round(fraction · n))` row indices out of `n`, sorted. The rows
/// are a prefix of one seeded shuffle, so the same seed gives the same
/// subset and a smaller fraction's subset lies inside a larger one's (1% ⊂
/// 10% ⊂ 100%). Empty when `n` is 0.
///
/// # Panics
///
/// When `fraction` is not within [0, 1].
pub fn subsample(n: usize, fraction: f64, seed: u64) -> Vec<usize> {
    assert!(
        (0.0..=1.0).contains(&fraction),
        "fraction {fraction} is not within [0, 1]"
    );
    if n == 0 {
        return Vec::new();
    }
    let k = ((fraction * n as f64).round() as usize).clamp(1, n);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut subset = order[..k].to_vec();
    subset.sort_unstable();
    subset
}

/// Mean and population standard deviation of each feature over `rows`.
fn standardisation(features: &[f32], dim: usize, rows: &[usize]) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len() as f64;
    let mut mean = vec![0.0; dim];
    for &r in rows {
        add_scaled(&mut mean, 1.0 / n, &features[r * dim..(r + 1) * dim]);
    }
    let mut var = vec![0.0; dim];
    for &r in rows {
        for ((v, &x), m) in var
            .iter_mut()
            .zip(&features[r * dim..(r + 1) * dim])
            .zip(&mean)
        {
            *v += (f64::from(x) - m).powi(2) / n;
        }
    }
    // A constant feature standardises to 0 whatever its scale; 1 avoids 0/0.
    let std = var
        .into_iter()
        .map(|v| if v > 1e-24 { v.sqrt() } else { 1.0 })
        .collect();
    (mean, std)
}

/// The probe's objective. Parameters `theta` are the weights on the
/// standardised features followed by the bias; standardisation is folded
/// into the coefficients so the features are never copied.
struct Problem<'a> {
    features: &'a [f32],
    dim: usize,
    rows: &'a [usize],
    y: &'a [f64],
    mean: &'a [f64],
    std: &'a [f64],
    cfg: &'a ProbeConfig,
}

impl Problem<'_> {
    /// The objective at `theta`, and its gradient into `grad` if given.
    fn loss(&self, theta: &[f64], grad: Option<&mut [f64]>) -> f64 {
        let d = self.dim;
        let (w, b) = (&theta[..d], theta[d]);
        let (a, c) = raw_coefficients(w, b, self.mean, self.std);
        let n = self.rows.len() as f64;
        // Σ_i residual_i · x_i and Σ_i residual_i, on the raw features.
        let mut rx = vec![0.0; if grad.is_some() { d } else { 0 }];
        let (mut r_sum, mut total) = (0.0, 0.0);
        for (&row, &y) in self.rows.iter().zip(self.y) {
            let x = &self.features[row * d..(row + 1) * d];
            let s = dot(&a, x) + c;
            total += softplus(s) - y * s;
            if grad.is_some() {
                let r = sigmoid(s) - y;
                add_scaled(&mut rx, r, x);
                r_sum += r;
            }
        }
        let lambda = self.cfg.weight_decay;
        if let Some(g) = grad {
            // ∂/∂w_j of the mean loss, by the chain rule through
            // z_j = (x_j − μ_j) / σ_j.
            for j in 0..d {
                g[j] = (rx[j] - self.mean[j] * r_sum) / (n * self.std[j]) + lambda * w[j];
            }
            g[d] = r_sum / n;
        }
        total / n + 0.5 * lambda * dot(w, w)
    }

    /// FISTA with backtracking and restart; returns (theta, steps, converged).
    fn minimise(&self) -> (Vec<f64>, usize, bool) {
        let p = self.dim + 1;
        let mut x = vec![0.0; p];
        let mut y = x.clone();
        let mut grad = vec![0.0; p];
        let mut next = vec![0.0; p];
        let mut f_x = self.loss(&x, None);
        // Step 1/L. The loss's curvature is at most ¼·λ_max(ZᵀZ/n) + λ, and
        // λ_max ≥ 1 for standardised features, so start there and double on
        // failure; L only grows, so a step never overshoots twice.
        let mut lip = 0.25 + self.cfg.weight_decay;
        let mut t: f64 = 1.0;
        for iter in 0..self.cfg.max_iter {
            let f_y = self.loss(&y, Some(&mut grad));
            if grad.iter().all(|g| g.abs() < self.cfg.tolerance) {
                return (y, iter, true);
            }
            let g2 = dot(&grad, &grad);
            let f_next = loop {
                for ((n, &yi), &gi) in next.iter_mut().zip(&y).zip(&grad) {
                    *n = yi - gi / lip;
                }
                let f = self.loss(&next, None);
                // Sufficient decrease, with slack for rounding near the optimum.
                if f <= f_y - g2 / (2.0 * lip) + 4.0 * f64::EPSILON * f_y.abs() {
                    break f;
                }
                lip *= 2.0;
            };
            if f_next > f_x {
                // Momentum carried us uphill: restart it (O'Donoghue & Candès).
                t = 1.0;
                y.copy_from_slice(&next);
            } else {
                let t_next = (1.0 + (1.0 + 4.0 * t * t).sqrt()) / 2.0;
                let beta = (t - 1.0) / t_next;
                for ((yi, &ni), &xi) in y.iter_mut().zip(&next).zip(&x) {
                    *yi = ni + beta * (ni - xi);
                }
                t = t_next;
            }
            std::mem::swap(&mut x, &mut next);
            f_x = f_next;
        }
        (x, self.cfg.max_iter, false)
    }
}

/// Coefficients on the raw features equal to `w`, `b` on the standardised
/// ones: Σ w_j (x_j − μ_j)/σ_j + b = Σ a_j x_j + c.
fn raw_coefficients(w: &[f64], b: f64, mean: &[f64], std: &[f64]) -> (Vec<f64>, f64) {
    let a: Vec<f64> = w.iter().zip(std).map(|(w, s)| w / s).collect();
    let c = b - dot(&a, mean);
    (a, c)
}

fn dot<T: Copy + Into<f64>>(a: &[f64], x: &[T]) -> f64 {
    a.iter().zip(x).map(|(&a, &x)| a * x.into()).sum()
}

fn add_scaled(acc: &mut [f64], k: f64, x: &[f32]) {
    for (a, &x) in acc.iter_mut().zip(x) {
        *a += k * f64::from(x);
    }
}

/// ln(1 + eˢ), without overflow.
fn softplus(s: f64) -> f64 {
    s.max(0.0) + (-s.abs()).exp().ln_1p()
}

/// 1 / (1 + e⁻ˢ), without overflow.
fn sigmoid(s: f64) -> f64 {
    if s >= 0.0 {
        1.0 / (1.0 + (-s).exp())
    } else {
        let e = s.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roc::auc;
    use crate::threshold::at_threshold;
    use crate::{MISSING, UNCERTAIN};
    use rand::Rng;

    /// Points in [-1, 1]², labelled by x + 2y > 0.3, with a margin of 0.1
    /// around the boundary, shifted and scaled so standardisation matters.
    fn separable(n: usize, seed: u64) -> (Vec<f32>, Vec<i8>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        while ys.len() < n {
            let (a, b): (f32, f32) = (rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0));
            let margin = a + 2.0 * b - 0.3;
            if margin.abs() < 0.1 {
                continue;
            }
            xs.extend([100.0 + 50.0 * a, 0.01 * b]);
            ys.push(i8::from(margin > 0.0));
        }
        (xs, ys)
    }

    #[test]
    fn separates_a_separable_toy() {
        let (train_x, train_y) = separable(200, 1);
        let model = fit_logistic(&train_x, 2, &train_y, &ProbeConfig::default()).unwrap();
        assert!(model.converged, "{} steps", model.iterations);
        let positive = |y: &[i8]| y.iter().map(|&l| l == 1).collect::<Vec<_>>();
        let train_p = model.predict(&train_x);
        assert_eq!(
            at_threshold(&train_p, &positive(&train_y), 0.5).accuracy(),
            1.0
        );
        let (test_x, test_y) = separable(200, 2);
        assert_eq!(auc(&model.predict(&test_x), &positive(&test_y)), Some(1.0));
    }

    #[test]
    fn ignores_uncertain_and_missing_rows() {
        // Feature 1 alone separates the labelled rows; the uncertain and
        // missing rows would contradict it (and shift the mean) if used.
        let x = [0.0, 1.0, 2.0, 3.0, 10.0, -10.0];
        let y = [0, 0, 1, 1, UNCERTAIN, MISSING];
        let model = fit_logistic(&x, 1, &y, &ProbeConfig::default()).unwrap();
        assert_eq!(model.mean, vec![1.5]);
        let p = model.predict(&[0.0, 3.0]);
        assert!(p[0] < 0.5 && p[1] > 0.5, "{p:?}");
    }

    #[test]
    fn l2_keeps_one_class_data_finite() {
        let model = fit_logistic(&[1.0, 2.0, 3.0], 1, &[1, 1, 1], &ProbeConfig::default());
        let model = model.unwrap();
        assert!(model.bias.is_finite() && model.predict(&[2.0])[0] > 0.99);
    }

    #[test]
    fn rejects_bad_shapes_and_unlabelled_data() {
        let cfg = ProbeConfig::default();
        assert_eq!(
            fit_logistic(&[1.0, 2.0, 3.0], 2, &[0, 1], &cfg),
            Err(ProbeError::Shape {
                features: 3,
                dim: 2,
                labels: 2
            })
        );
        assert_eq!(
            fit_logistic(&[1.0, 2.0], 1, &[UNCERTAIN, MISSING], &cfg),
            Err(ProbeError::NoLabelledRows)
        );
    }

    #[test]
    fn subsample_sizes() {
        assert_eq!(subsample(1000, 0.01, 3).len(), 10);
        assert_eq!(subsample(1000, 0.1, 3).len(), 100);
        assert_eq!(subsample(1000, 1.0, 3), (0..1000).collect::<Vec<_>>());
        assert_eq!(subsample(50, 0.01, 3).len(), 1); // round(0.5) = 1
        assert_eq!(subsample(40, 0.01, 3).len(), 1); // at least one row
        assert_eq!(subsample(1001, 0.1, 3).len(), 100); // round(100.1)
        assert!(subsample(0, 0.5, 3).is_empty());
    }

    #[test]
    fn subsample_is_seeded_and_nested() {
        let small = subsample(1000, 0.01, 9);
        let medium = subsample(1000, 0.1, 9);
        assert_eq!(small, subsample(1000, 0.01, 9));
        assert_ne!(medium, subsample(1000, 0.1, 10));
        assert!(small.iter().all(|i| medium.contains(i)));
        assert!(medium.windows(2).all(|w| w[0] < w[1]) && medium[99] < 1000);
    }
}
