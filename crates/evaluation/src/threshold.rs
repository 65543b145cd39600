//! Metrics at a decision threshold, and the choice of that threshold.
//!
//! A row is predicted positive when its score is `>= t`. Ratios with a zero
//! denominator are 0, as scikit-learn's `zero_division=0`: precision with no
//! predicted positives, recall with no actual positives, and F1 with
//! neither are all 0.0, so a class is never rewarded for predicting nothing.

/// Confusion counts of a binary prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Confusion {
    /// Predicted positive, actually positive.
    pub true_pos: usize,
    /// Predicted positive, actually negative.
    pub false_pos: usize,
    /// Predicted negative, actually negative.
    pub true_neg: usize,
    /// Predicted negative, actually positive.
    pub false_neg: usize,
}

impl Confusion {
    /// Counts one row.
    pub fn record(&mut self, predicted: bool, actual: bool) {
        match (predicted, actual) {
            (true, true) => self.true_pos += 1,
            (true, false) => self.false_pos += 1,
            (false, false) => self.true_neg += 1,
            (false, true) => self.false_neg += 1,
        }
    }

    /// Rows counted.
    pub fn total(&self) -> usize {
        self.true_pos + self.false_pos + self.true_neg + self.false_neg
    }

    /// TP / (TP + FP); 0 with no predicted positives.
    pub fn precision(&self) -> f64 {
        ratio(self.true_pos, self.true_pos + self.false_pos)
    }

    /// TP / (TP + FN); 0 with no actual positives.
    pub fn recall(&self) -> f64 {
        ratio(self.true_pos, self.true_pos + self.false_neg)
    }

    /// 2·TP / (2·TP + FP + FN), the harmonic mean of precision and recall;
    /// 0 with no predicted and no actual positives.
    pub fn f1(&self) -> f64 {
        ratio(
            2 * self.true_pos,
            2 * self.true_pos + self.false_pos + self.false_neg,
        )
    }

    /// (TP + TN) / rows; 0 with no rows.
    pub fn accuracy(&self) -> f64 {
        ratio(self.true_pos + self.true_neg, self.total())
    }
}

fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Confusion counts when rows scoring `>= t` are predicted positive.
///
/// # Panics
///
/// When `scores` and `positive` differ in length.
pub fn at_threshold(scores: &[f32], positive: &[bool], t: f32) -> Confusion {
    assert_eq!(scores.len(), positive.len(), "one label per score");
    let mut c = Confusion::default();
    for (&s, &p) in scores.iter().zip(positive) {
        c.record(s >= t, p);
    }
    c
}

/// The threshold, among the distinct scores, that maximises F1; on ties the
/// highest one (the most conservative). `None` without positives, where
/// every threshold gives F1 = 0.
///
/// Choose it on validation data and apply it to test data: choosing it on
/// the test set inflates the test F1.
///
/// # Panics
///
/// When `scores` and `positive` differ in length.
pub fn best_f1_threshold(scores: &[f32], positive: &[bool]) -> Option<f32> {
    assert_eq!(scores.len(), positive.len(), "one label per score");
    let n_pos = positive.iter().filter(|&&p| p).count();
    if n_pos == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    // Lowering the threshold one distinct score at a time adds that score's
    // rows to the predicted positives. F1 = 2·TP / (TP + FP + P) is compared
    // as exact fractions, so equal F1s tie exactly and the first (highest)
    // threshold stays.
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut best: Option<(f32, usize, usize)> = None; // (threshold, 2·TP, TP + FP + P)
    let mut start = 0;
    while start < order.len() {
        let t = scores[order[start]];
        let end = start
            + order[start..]
                .iter()
                .take_while(|&&i| scores[i] == t)
                .count();
        for &i in &order[start..end] {
            if positive[i] { tp += 1 } else { fp += 1 }
        }
        let (num, den) = (2 * tp, tp + fp + n_pos);
        if best.is_none_or(|(_, b_num, b_den)| num * b_den > b_num * den) {
            best = Some((t, num, den));
        }
        start = end;
    }
    best.map(|(t, _, _)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCORES: [f32; 6] = [0.9, 0.8, 0.7, 0.6, 0.5, 0.2];
    const LABELS: [bool; 6] = [true, false, true, true, false, false];

    #[test]
    fn counts_and_ratios_at_threshold() {
        // >= 0.6 predicts the first four: TP 3, FP 1, TN 2, FN 0.
        let c = at_threshold(&SCORES, &LABELS, 0.6);
        assert_eq!(
            c,
            Confusion {
                true_pos: 3,
                false_pos: 1,
                true_neg: 2,
                false_neg: 0
            }
        );
        assert_eq!(c.precision(), 0.75);
        assert_eq!(c.recall(), 1.0);
        assert_eq!(c.f1(), 6.0 / 7.0);
        assert_eq!(c.accuracy(), 5.0 / 6.0);
        // The threshold itself is included: >= 0.7 gives TP 2, FP 1, FN 1.
        let c = at_threshold(&SCORES, &LABELS, 0.7);
        assert_eq!(c.f1(), 4.0 / 6.0);
        assert_eq!(c.accuracy(), 4.0 / 6.0);
    }

    #[test]
    fn zero_division_gives_zero() {
        let nothing = at_threshold(&[0.1, 0.2], &[false, false], 0.5);
        assert_eq!(nothing.true_neg, 2);
        assert_eq!(
            (nothing.precision(), nothing.recall(), nothing.f1()),
            (0.0, 0.0, 0.0)
        );
        assert_eq!(nothing.accuracy(), 1.0);
        assert_eq!(Confusion::default().accuracy(), 0.0);
    }

    #[test]
    fn best_threshold_maximises_f1() {
        // F1 by threshold: 0.9 → 2/4, 0.8 → 2/5, 0.7 → 4/6, 0.6 → 6/7,
        // 0.5 → 6/8, 0.2 → 6/9.
        assert_eq!(best_f1_threshold(&SCORES, &LABELS), Some(0.6));
    }

    #[test]
    fn best_threshold_ties_pick_the_highest() {
        // F1: 0.8 → 2/3, 0.6 → 2/4, 0.5 → 2/5, 0.4 → 4/6; 0.8 and 0.4 tie
        // and the higher one wins.
        let s = [0.8, 0.6, 0.5, 0.4];
        let y = [true, false, false, true];
        assert_eq!(best_f1_threshold(&s, &y), Some(0.8));
    }

    #[test]
    fn best_threshold_treats_tied_scores_as_one_cut() {
        // 0.5 is shared by a positive and a negative: both enter together.
        let s = [0.5, 0.5, 0.1];
        let y = [true, false, false];
        assert_eq!(best_f1_threshold(&s, &y), Some(0.5));
    }

    #[test]
    fn no_threshold_without_positives() {
        assert_eq!(best_f1_threshold(&[0.3, 0.4], &[false, false]), None);
        assert_eq!(best_f1_threshold(&[], &[]), None);
    }
}
