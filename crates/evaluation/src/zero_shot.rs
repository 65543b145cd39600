//! The zero-shot classification report: per class, AUC on the test split,
//! and F1 and accuracy at the threshold that maximises F1 on the validation
//! split, each with a bootstrap interval; then the means over classes.

use serde::{Deserialize, Serialize};

use crate::binary_label;
use crate::bootstrap::{Interval, bootstrap_ci};
use crate::roc;
use crate::threshold::{Confusion, best_f1_threshold};

/// One class's scores and labels on the validation and test splits.
/// Labels follow the crate's convention; only rows labelled 0 or 1 count.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassInput {
    /// Class name, as shown in the report.
    pub name: String,
    /// Validation scores, one per row.
    pub val_scores: Vec<f32>,
    /// Validation labels, one per row.
    pub val_labels: Vec<i8>,
    /// Test scores, one per row.
    pub test_scores: Vec<f32>,
    /// Test labels, one per row.
    pub test_labels: Vec<i8>,
}

/// One class's results on the test split. A metric is `None` where it is
/// undefined: AUC with one label value in the test rows, F1 and accuracy
/// without a threshold (no validation positives) or without test rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    /// Class name.
    pub name: String,
    /// Test rows evaluated (labelled 0 or 1).
    pub n_test: usize,
    /// Of those, the positives.
    pub positives_test: usize,
    /// ROC AUC.
    pub auc: Option<f64>,
    /// Bootstrap 95% interval of the AUC.
    pub auc_ci: Option<Interval>,
    /// F1 at [`threshold`](Self::threshold); 0 where nothing is predicted
    /// and nothing is positive (see [`crate::threshold`]).
    pub f1: Option<f64>,
    /// Bootstrap 95% interval of the F1.
    pub f1_ci: Option<Interval>,
    /// Accuracy at [`threshold`](Self::threshold).
    pub accuracy: Option<f64>,
    /// Bootstrap 95% interval of the accuracy.
    pub accuracy_ci: Option<Interval>,
    /// The F1-optimal threshold on the validation split (score `>=` it is
    /// positive).
    pub threshold: Option<f32>,
}

/// A mean over the classes where a metric is defined.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Mean {
    /// The mean; `None` when no class has the metric.
    pub value: Option<f64>,
    /// Classes that entered the mean.
    pub classes: usize,
    /// Bootstrap 95% interval of the mean: the test rows are resampled
    /// once for all classes (they are the same images), and each resample's
    /// mean is over the same classes as `value`. `None` where the classes
    /// were not scored on the same rows or too few resamples had the
    /// metric for every one of them.
    #[serde(default)]
    pub ci: Option<Interval>,
}

impl Mean {
    fn of(values: impl Iterator<Item = Option<f64>>) -> Self {
        let (sum, classes) = values.flatten().fold((0.0, 0), |(s, n), v| (s + v, n + 1));
        Mean {
            value: (classes > 0).then(|| sum / classes as f64),
            classes,
            ci: None,
        }
    }
}

/// Every class's results and their means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Per class, in input order.
    pub classes: Vec<ClassScores>,
    /// Mean AUC.
    pub mean_auc: Mean,
    /// Mean F1.
    pub mean_f1: Mean,
    /// Mean accuracy.
    pub mean_accuracy: Mean,
}

/// Evaluates every class: thresholds are chosen on validation rows only and
/// applied to test rows; intervals use `resamples` bootstrap resamples of
/// the test rows ([`crate::bootstrap::DEFAULT_RESAMPLES`] is the usual
/// choice). Every metric and class uses `seed`, so a class's three intervals
/// come from the same resamples.
///
/// # Panics
///
/// When a class has a different number of scores and labels in a split.
pub fn evaluate(classes: &[ClassInput], resamples: usize, seed: u64) -> Summary {
    let scores: Vec<ClassScores> = classes
        .iter()
        .map(|c| evaluate_class(c, resamples, seed))
        .collect();
    let mut summary = Summary {
        mean_auc: Mean::of(scores.iter().map(|c| c.auc)),
        mean_f1: Mean::of(scores.iter().map(|c| c.f1)),
        mean_accuracy: Mean::of(scores.iter().map(|c| c.accuracy)),
        classes: scores,
    };
    mean_intervals(classes, &mut summary, resamples, seed);
    summary
}

/// A metric of one class (by index) on resampled (score, positive) rows.
type ClassMetric<'a> = &'a dyn Fn(usize, &[f32], &[bool]) -> Option<f64>;

/// Fills the means' intervals (see [`Mean::ci`]).
fn mean_intervals(inputs: &[ClassInput], summary: &mut Summary, resamples: usize, seed: u64) {
    let Some(n) = inputs.first().map(|c| c.test_scores.len()) else {
        return;
    };
    if inputs.iter().any(|c| c.test_scores.len() != n) {
        return;
    }
    // Per class: its test rows' (score, positive), `None` where unlabelled.
    let rows: Vec<Vec<Option<(f32, bool)>>> = inputs
        .iter()
        .map(|c| {
            c.test_scores
                .iter()
                .zip(&c.test_labels)
                .map(|(&s, &l)| binary_label(l).map(|p| (s, p)))
                .collect()
        })
        .collect();
    let resampled = |k: usize, idx: &[usize]| -> (Vec<f32>, Vec<bool>) {
        idx.iter().filter_map(|&i| rows[k][i]).unzip()
    };
    // The mean over the classes where the full-data metric was defined.
    let mean_ci = |defined: &dyn Fn(&ClassScores) -> bool, metric: ClassMetric| {
        let classes: Vec<usize> = (0..inputs.len())
            .filter(|&k| defined(&summary.classes[k]))
            .collect();
        if classes.is_empty() {
            return None;
        }
        bootstrap_ci(n, resamples, seed, |idx| {
            let mut sum = 0.0;
            for &k in &classes {
                let (s, p) = resampled(k, idx);
                sum += metric(k, &s, &p)?;
            }
            Some(sum / classes.len() as f64)
        })
    };
    let thresholds: Vec<Option<f32>> = summary.classes.iter().map(|c| c.threshold).collect();
    let at = |k: usize, s: &[f32], p: &[bool]| -> Option<Confusion> {
        let t = thresholds[k]?;
        let mut c = Confusion::default();
        s.iter().zip(p).for_each(|(&s, &p)| c.record(s >= t, p));
        (c.total() > 0).then_some(c)
    };
    let auc_ci = mean_ci(&|c| c.auc.is_some(), &|_, s, p| roc::auc(s, p));
    let f1_ci = mean_ci(&|c| c.f1.is_some(), &|k, s, p| at(k, s, p).map(|c| c.f1()));
    let accuracy_ci = mean_ci(&|c| c.accuracy.is_some(), &|k, s, p| {
        at(k, s, p).map(|c| c.accuracy())
    });
    summary.mean_auc.ci = auc_ci;
    summary.mean_f1.ci = f1_ci;
    summary.mean_accuracy.ci = accuracy_ci;
}

fn evaluate_class(class: &ClassInput, resamples: usize, seed: u64) -> ClassScores {
    let (val_scores, val_pos) = labelled_rows(&class.val_scores, &class.val_labels);
    let (scores, pos) = labelled_rows(&class.test_scores, &class.test_labels);
    let n = scores.len();
    let threshold = best_f1_threshold(&val_scores, &val_pos);

    let auc = roc::auc(&scores, &pos);
    let auc_ci = auc.and_then(|_| {
        let (mut s, mut p) = (Vec::with_capacity(n), Vec::with_capacity(n));
        bootstrap_ci(n, resamples, seed, |idx| {
            s.clear();
            p.clear();
            s.extend(idx.iter().map(|&i| scores[i]));
            p.extend(idx.iter().map(|&i| pos[i]));
            roc::auc(&s, &p)
        })
    });

    // Confusion counts of the rows `idx` at the validation threshold.
    let at = |t: f32, idx: &[usize]| {
        let mut c = Confusion::default();
        idx.iter().for_each(|&i| c.record(scores[i] >= t, pos[i]));
        c
    };
    let all_rows: Vec<usize> = (0..n).collect();
    let thresholded = |metric: fn(&Confusion) -> f64| match threshold {
        Some(t) if n > 0 => (
            Some(metric(&at(t, &all_rows))),
            bootstrap_ci(n, resamples, seed, |idx| Some(metric(&at(t, idx)))),
        ),
        _ => (None, None),
    };
    let (f1, f1_ci) = thresholded(Confusion::f1);
    let (accuracy, accuracy_ci) = thresholded(Confusion::accuracy);

    ClassScores {
        name: class.name.clone(),
        n_test: n,
        positives_test: pos.iter().filter(|&&p| p).count(),
        auc,
        auc_ci,
        f1,
        f1_ci,
        accuracy,
        accuracy_ci,
        threshold,
    }
}

/// The scores of rows labelled 0 or 1, and whether each is positive.
fn labelled_rows(scores: &[f32], labels: &[i8]) -> (Vec<f32>, Vec<bool>) {
    assert_eq!(scores.len(), labels.len(), "one label per score");
    scores
        .iter()
        .zip(labels)
        .filter_map(|(&s, &l)| binary_label(l).map(|p| (s, p)))
        .unzip()
}

/// Element-wise mean of several checkpoints' scores for the same rows: a
/// cheap ensemble. Empty input gives an empty vector.
///
/// # Panics
///
/// When the score vectors differ in length.
pub fn ensemble(scores: &[Vec<f32>]) -> Vec<f32> {
    let Some(first) = scores.first() else {
        return Vec::new();
    };
    assert!(
        scores.iter().all(|s| s.len() == first.len()),
        "every checkpoint must score the same rows"
    );
    (0..first.len())
        .map(|i| scores.iter().map(|s| s[i]).sum::<f32>() / scores.len() as f32)
        .collect()
}

impl Summary {
    /// A Markdown table: one row per class and a row of means, numbers to
    /// three decimals, intervals as `[low, high]`, "—" where undefined; a
    /// closing line says how many classes entered each mean.
    pub fn to_markdown(&self) -> String {
        let mut out = String::from(
            "| Class | Test rows | Positives | Threshold | AUC | AUC 95% CI | F1 | F1 95% CI \
             | Accuracy | Accuracy 95% CI |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for c in &self.classes {
            out += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                c.name,
                c.n_test,
                c.positives_test,
                number(c.threshold.map(f64::from)),
                number(c.auc),
                interval(c.auc_ci),
                number(c.f1),
                interval(c.f1_ci),
                number(c.accuracy),
                interval(c.accuracy_ci),
            );
        }
        out += &format!(
            "| **Mean** | | | | {} | {} | {} | {} | {} | {} |\n\n\
             Means are over the classes where the metric is defined: \
             AUC {}, F1 {}, accuracy {} of {} classes.\n",
            number(self.mean_auc.value),
            interval(self.mean_auc.ci),
            number(self.mean_f1.value),
            interval(self.mean_f1.ci),
            number(self.mean_accuracy.value),
            interval(self.mean_accuracy.ci),
            self.mean_auc.classes,
            self.mean_f1.classes,
            self.mean_accuracy.classes,
            self.classes.len(),
        );
        out
    }
}

fn number(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.3}"))
}

fn interval(ci: Option<Interval>) -> String {
    ci.map_or_else(
        || "—".into(),
        |ci| format!("[{:.3}, {:.3}]", ci.low, ci.high),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MISSING, UNCERTAIN};

    fn class(val: (&[f32], &[i8]), test: (&[f32], &[i8])) -> ClassInput {
        ClassInput {
            name: "Edema".into(),
            val_scores: val.0.to_vec(),
            val_labels: val.1.to_vec(),
            test_scores: test.0.to_vec(),
            test_labels: test.1.to_vec(),
        }
    }

    #[test]
    fn applies_the_validation_threshold_to_test() {
        // Validation: F1 at 0.7 is 1 (both positives, no negatives).
        let val = ([0.9, 0.7, 0.5, 0.2].as_slice(), [1, 1, 0, 0].as_slice());
        // Test: at 0.7 only 0.8 is predicted, TP 1, FP 0, FN 1 → F1 2/3,
        // accuracy 3/4. The test-optimal threshold would be 0.4 (F1 1).
        let test = ([0.8, 0.4, 0.3, 0.1].as_slice(), [1, 1, 0, 0].as_slice());
        let s = evaluate(&[class(val, test)], 200, 1);
        let c = &s.classes[0];
        assert_eq!(c.threshold, Some(0.7));
        assert_eq!(c.f1, Some(2.0 / 3.0));
        assert_eq!(c.accuracy, Some(0.75));
        assert_eq!(c.auc, Some(1.0));
        assert!(c.f1_ci.is_some() && c.accuracy_ci.is_some());
    }

    #[test]
    fn leaves_out_uncertain_and_missing_rows() {
        // Validation without the left-out rows: 0.9 → F1 2/3, 0.3 → F1 1.
        // Were they negatives, 0.3 would fall to 2/3 and tie with 0.9.
        let val = (
            [0.9, 0.3, 0.1, 0.5, 0.6].as_slice(),
            [1, 1, 0, UNCERTAIN, MISSING].as_slice(),
        );
        // Without the left-out rows the test AUC is 1; were they negatives
        // it would drop (0.95 and 0.99 outscore both positives).
        let test = (
            [0.9, 0.6, 0.2, 0.95, 0.99].as_slice(),
            [1, 1, 0, UNCERTAIN, MISSING].as_slice(),
        );
        let s = evaluate(&[class(val, test)], 100, 1);
        let c = &s.classes[0];
        assert_eq!((c.n_test, c.positives_test), (3, 2));
        assert_eq!(c.auc, Some(1.0));
        assert_eq!(c.threshold, Some(0.3));
    }

    #[test]
    fn one_label_value_gives_undefined_auc_without_panic() {
        let val = ([0.9, 0.1].as_slice(), [1, 0].as_slice());
        let test = ([0.8, 0.4, 0.3].as_slice(), [0, 0, 0].as_slice());
        let s = evaluate(&[class(val, test)], 100, 1);
        let c = &s.classes[0];
        assert_eq!((c.auc, c.auc_ci), (None, None));
        // Threshold 0.9 predicts nothing: F1 0 (zero division), accuracy 1.
        assert_eq!((c.f1, c.accuracy), (Some(0.0), Some(1.0)));
        assert_eq!(
            s.mean_auc,
            Mean {
                value: None,
                classes: 0,
                ci: None
            }
        );
        assert!(s.to_markdown().contains("| — | — |"));
    }

    #[test]
    fn no_validation_positives_means_no_threshold() {
        let val = ([0.9, 0.1].as_slice(), [0, 0].as_slice());
        let test = ([0.8, 0.3].as_slice(), [1, 0].as_slice());
        let c = &evaluate(&[class(val, test)], 100, 1).classes[0];
        assert_eq!((c.threshold, c.f1, c.accuracy), (None, None, None));
        assert_eq!(c.auc, Some(1.0));
    }

    #[test]
    fn means_count_only_defined_classes() {
        let val = ([0.9, 0.1].as_slice(), [1, 0].as_slice());
        let good = class(val, ([0.8, 0.3].as_slice(), [1, 0].as_slice()));
        let inverted = class(val, ([0.3, 0.8].as_slice(), [1, 0].as_slice()));
        let one_value = class(val, ([0.3, 0.8].as_slice(), [0, 0].as_slice()));
        let s = evaluate(&[good, inverted, one_value], 50, 1);
        assert_eq!((s.mean_auc.value, s.mean_auc.classes), (Some(0.5), 2));
        assert_eq!(s.mean_accuracy.classes, 3);
        let md = s.to_markdown();
        assert!(md.contains("| **Mean** | | | | 0.500 |"), "{md}");
        assert!(md.contains("AUC 2, F1 3, accuracy 3 of 3 classes"), "{md}");
    }

    #[test]
    fn markdown_formats_numbers_and_intervals() {
        let val = ([0.9, 0.7, 0.5, 0.2].as_slice(), [1, 1, 0, 0].as_slice());
        let test = ([0.8, 0.4, 0.3, 0.1].as_slice(), [1, 1, 0, 0].as_slice());
        let mut s = evaluate(&[class(val, test)], 100, 1);
        s.classes[0].auc_ci = Some(Interval {
            low: 0.61234,
            high: 0.9,
            valid_resamples: 90,
        });
        let md = s.to_markdown();
        assert!(
            md.contains("| Edema | 4 | 2 | 0.700 | 1.000 | [0.612, 0.900] | 0.667 |"),
            "{md}"
        );
    }

    #[test]
    fn mean_intervals_resample_the_rows_once_for_all_classes() {
        // 40 rows, two classes on the same images: one separable (AUC 1
        // on every resample), one at chance-ish with some noise.
        let n = 40;
        let labels: Vec<i8> = (0..n).map(|i| i8::from(i % 2 == 0)).collect();
        let perfect: Vec<f32> = (0..n).map(|i| if i % 2 == 0 { 0.9 } else { 0.1 }).collect();
        let noisy: Vec<f32> = (0..n).map(|i| ((i * 7919) % 97) as f32 / 97.0).collect();
        let input = |scores: &[f32]| ClassInput {
            name: "c".into(),
            val_scores: scores.to_vec(),
            val_labels: labels.clone(),
            test_scores: scores.to_vec(),
            test_labels: labels.clone(),
        };
        let s = evaluate(&[input(&perfect), input(&noisy)], 200, 3);
        let mean = s.mean_auc.value.unwrap();
        let ci = s.mean_auc.ci.expect("an interval over 200 resamples");
        assert!(ci.low <= mean && mean <= ci.high, "{ci:?} around {mean}");
        // The separable class contributes 1 on every resample, so the mean
        // never falls below half.
        assert!(
            ci.low >= 0.5 && ci.high <= 1.0 && ci.high > ci.low,
            "{ci:?}"
        );
        assert!(s.mean_f1.ci.is_some() && s.mean_accuracy.ci.is_some());
        assert!(
            s.to_markdown()
                .contains(&format!("[{:.3}, {:.3}]", ci.low, ci.high))
        );

        // Classes scored on different rows have no joint resample.
        let mut short = input(&noisy);
        short.test_scores.pop();
        short.test_labels.pop();
        assert_eq!(
            evaluate(&[input(&perfect), short], 200, 3).mean_auc.ci,
            None
        );
    }

    #[test]
    fn summary_round_trips_through_json() {
        let val = ([0.9, 0.1].as_slice(), [1, 0].as_slice());
        let s = evaluate(
            &[class(val, ([0.8, 0.3].as_slice(), [1, 0].as_slice()))],
            50,
            1,
        );
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Summary>(&json).unwrap(), s);
    }

    #[test]
    fn ensemble_averages_element_wise() {
        assert_eq!(ensemble(&[vec![0.0, 1.0], vec![0.5, 0.0]]), vec![0.25, 0.5]);
        assert!(ensemble(&[]).is_empty());
    }
}
