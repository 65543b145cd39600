//! Evaluation (placeholder; filled in by the evaluation work).
