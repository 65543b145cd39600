//! Evaluation of MMCLIP-rs models, without libtorch: the `train` binary
//! computes zero-shot scores and frozen image embeddings on the GPU and
//! hands them here as plain slices for metrics, linear probes and plots.
//!
//! - [`roc::auc`]: ROC AUC from the rank-sum statistic, ties counted 1/2.
//! - [`threshold`]: confusion counts, F1, accuracy, and the F1-optimal
//!   threshold, which is always chosen on validation data.
//! - [`bootstrap::bootstrap_ci`]: seeded percentile 95% intervals.
//! - [`zero_shot::evaluate`]: per-class AUC, F1 and accuracy with intervals,
//!   their means, and a Markdown table ([`zero_shot::Summary::to_markdown`]).
//! - [`probe`]: L2 logistic regression on frozen features, one model per
//!   class, and nested label subsets (1%, 10%, 100%).
//! - [`curves::plot_metrics`]: one PNG per field of a run's `metrics.jsonl`.
//!
//! # Labels
//!
//! A label is an `i8` in the CheXpert convention: [`POSITIVE`] (1),
//! [`NEGATIVE`] (0), [`UNCERTAIN`] (-1), and [`MISSING`] (`i8::MIN`, the
//! class is not mentioned), the values of `schemas::LABEL_POSITIVE` ...
//! `schemas::LABEL_MISSING` under shorter names.
//! For each class only rows labelled 0 or 1 are evaluated or trained on;
//! uncertain and missing rows are left out ([`binary_label`]).
//!
//! # Example
//!
//! ```
//! use evaluation::zero_shot::{evaluate, ClassInput};
//!
//! let class = ClassInput {
//!     name: "Pleural Effusion".into(),
//!     val_scores: vec![0.1, 0.7, 0.3, 0.9],
//!     val_labels: vec![0, 1, 0, 1],
//!     test_scores: vec![0.2, 0.8, 0.6, 0.4, 0.5],
//!     test_labels: vec![0, 1, 1, 0, -1], // the uncertain row is left out
//! };
//! let summary = evaluate(&[class], 200, 7);
//! assert_eq!(summary.classes[0].n_test, 4);
//! assert_eq!(summary.classes[0].auc, Some(1.0));
//! println!("{}", summary.to_markdown());
//! ```

#![deny(missing_docs)]

pub mod bootstrap;
pub mod curves;
pub mod probe;
pub mod roc;
pub mod threshold;
pub mod zero_shot;

/// The class is present.
pub const POSITIVE: i8 = schemas::LABEL_POSITIVE;
/// The class is absent.
pub const NEGATIVE: i8 = schemas::LABEL_NEGATIVE;
/// The report is uncertain about the class; not evaluated.
pub const UNCERTAIN: i8 = schemas::LABEL_UNCERTAIN;
/// The report does not mention the class; not evaluated.
pub const MISSING: i8 = schemas::LABEL_MISSING;

/// `Some(true)` for a positive label, `Some(false)` for a negative one, and
/// `None` for the rows left out of evaluation: uncertain, missing, or any
/// other value.
pub fn binary_label(label: i8) -> Option<bool> {
    match label {
        POSITIVE => Some(true),
        NEGATIVE => Some(false),
        _ => None,
    }
}
