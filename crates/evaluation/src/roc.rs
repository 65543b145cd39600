//! ROC AUC, computed as the Mann–Whitney rank-sum statistic: the chance
//! that a random positive scores above a random negative. It needs one sort
//! and no curve, and tied scores get the average of their ranks, so a tied
//! positive–negative pair counts 1/2 (as scikit-learn's `roc_auc_score`).

/// ROC AUC of `scores` against `positive`; `None` when either class is
/// absent, where the AUC is undefined.
///
/// Callers pass finite scores (debug builds assert it): a NaN has no rank.
///
/// # Panics
///
/// When `scores` and `positive` differ in length.
pub fn auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), positive.len(), "one label per score");
    debug_assert!(
        scores.iter().all(|s| s.is_finite()),
        "scores must be finite"
    );
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut pos_rank_sum = 0.0;
    let mut start = 0;
    while start < order.len() {
        let score = scores[order[start]];
        let end = start
            + order[start..]
                .iter()
                .take_while(|&&i| scores[i] == score)
                .count();
        // Ranks start + 1 ..= end are tied; each gets their mean.
        let mean_rank = (start + 1 + end) as f64 / 2.0;
        let tied_pos = order[start..end].iter().filter(|&&i| positive[i]).count();
        pos_rank_sum += mean_rank * tied_pos as f64;
        start = end;
    }
    let u = pos_rank_sum - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos as f64 * n_neg as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(v: &[u8]) -> Vec<bool> {
        v.iter().map(|&l| l == 1).collect()
    }

    #[test]
    fn counts_ordered_pairs() {
        // Pairs (pos, neg): (0.35, 0.1) yes, (0.35, 0.4) no, (0.8, *) yes: 3/4.
        assert_eq!(
            auc(&[0.1, 0.4, 0.35, 0.8], &labels(&[0, 0, 1, 1])),
            Some(0.75)
        );
    }

    #[test]
    fn tied_pair_counts_half() {
        // Positives 0.5, 0.9; negatives 0.5, 0.2: 0.5 + 1 + 1 + 1 = 3.5 of 4.
        assert_eq!(
            auc(&[0.5, 0.5, 0.2, 0.9], &labels(&[1, 0, 0, 1])),
            Some(0.875)
        );
        // All scores equal: every pair is a tie.
        assert_eq!(auc(&[0.3; 5], &labels(&[1, 0, 1, 0, 0])), Some(0.5));
    }

    #[test]
    fn perfect_and_inverted() {
        let y = labels(&[0, 0, 1, 1, 1]);
        assert_eq!(auc(&[0.1, 0.2, 0.3, 0.4, 0.5], &y), Some(1.0));
        assert_eq!(auc(&[0.5, 0.4, 0.3, 0.2, 0.1], &y), Some(0.0));
    }

    #[test]
    fn undefined_with_one_class() {
        assert_eq!(auc(&[0.1, 0.2], &[true, true]), None);
        assert_eq!(auc(&[0.1, 0.2], &[false, false]), None);
        assert_eq!(auc(&[], &[]), None);
    }
}
