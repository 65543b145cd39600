//! The loader's configuration: one struct, defaults for pre-training.

use crate::augment::{AugmentConfig, Mode};

/// What to do with a row whose image does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadRowPolicy {
    /// Count and report it, and fill its slot with a replacement row of the
    /// same source, chosen deterministically (see [`crate::Batch::skipped`]).
    #[default]
    Skip,
    /// Fail the batch with [`crate::PipelineError::BadRow`].
    Fail,
}

/// Everything that decides the loader's batches and how it makes them.
/// The batches depend only on the fields above `threads`; the fields from
/// `threads` down change speed and memory, never content.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoaderConfig {
    /// Global batch size (over all ranks).
    pub batch_size: usize,
    /// Share of paired rows per batch: `round(batch_size · paired_fraction)`
    /// rows are paired, the rest unpaired, in every batch.
    pub paired_fraction: f64,
    /// Seed of the order and of the augmentation.
    pub seed: u64,
    /// Number of data-parallel ranks.
    pub world_size: usize,
    /// This rank, `0..world_size`.
    pub rank: usize,
    /// Shuffle shards and rows; off gives the stored order.
    pub shuffle: bool,
    /// Rows shuffled together (see the `order` module).
    pub shuffle_window: usize,
    /// Train (augment) or eval (resize + centre crop).
    pub mode: Mode,
    /// Training augmentation.
    pub augment: AugmentConfig,
    /// Bad-row policy.
    pub bad_rows: BadRowPolicy,
    /// Replacement rows tried for one slot before giving up.
    pub max_replacements: usize,
    /// Stop after this many epochs (counted from 0, not from the start
    /// position); `None` runs until dropped.
    pub epochs: Option<u64>,
    /// Decode threads (a rayon pool of this size).
    pub threads: usize,
    /// Batches made ahead of the consumer. 0: no background threads, each
    /// batch is made inside `next()` (for tests and debugging).
    pub prefetch: usize,
    /// Row groups cached per source; `None` sizes it from the shuffle window.
    pub cache_row_groups: Option<usize>,
    /// End each epoch with a short batch of the rows left over, instead of
    /// leaving them for the next epoch's order: every row is seen once per
    /// epoch, as evaluation needs. Only for a batch from one source
    /// (`paired_fraction` 0 or 1) on one rank, where a short batch keeps
    /// its meaning.
    pub keep_last_partial: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 64,
            paired_fraction: 0.75,
            seed: 0,
            world_size: 1,
            rank: 0,
            shuffle: true,
            shuffle_window: 2048,
            mode: Mode::Train,
            augment: AugmentConfig::default(),
            bad_rows: BadRowPolicy::Skip,
            max_replacements: 16,
            epochs: None,
            threads: 2,
            prefetch: 4,
            cache_row_groups: None,
            keep_last_partial: false,
        }
    }
}

impl LoaderConfig {
    /// Evaluation preset: no shuffle, no augmentation, one epoch, and a
    /// row that does not decode fails the batch (a replacement row would
    /// count twice in the metrics and the bad one not at all). Set
    /// `paired_fraction` to 0 or 1 and `keep_last_partial` to see every row.
    pub fn eval() -> Self {
        LoaderConfig {
            shuffle: false,
            mode: Mode::Eval,
            augment: AugmentConfig::none(),
            epochs: Some(1),
            bad_rows: BadRowPolicy::Fail,
            ..Default::default()
        }
    }

    /// Global (paired, unpaired) rows per batch.
    pub fn mix(&self) -> (usize, usize) {
        let paired =
            (self.batch_size as f64 * self.paired_fraction.clamp(0.0, 1.0)).round() as usize;
        (paired, self.batch_size - paired)
    }
}
