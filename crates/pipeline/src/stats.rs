//! What the loader did: stage times, queue depths, consumer waiting.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters shared by the stages (relaxed atomics: they are statistics, not
/// synchronisation).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub batches: AtomicU64,
    pub samples: AtomicU64,
    pub read_nanos: AtomicU64,
    pub decode_nanos: AtomicU64,
    pub wait_nanos: AtomicU64,
    pub bad_rows: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, nanos: u128) {
        counter.fetch_add(nanos as u64, Relaxed);
    }
}

/// A snapshot for the trainer's log.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LoaderStats {
    /// Batches handed to the consumer.
    pub batches: u64,
    /// Samples decoded (this rank).
    pub samples: u64,
    /// Read stage (order + Parquet) wall time per sample, microseconds.
    pub read_us_per_sample: f64,
    /// Decode + augment stage wall time per sample, microseconds (the stage
    /// runs on `threads` threads, so this is wall, not CPU, time).
    pub decode_us_per_sample: f64,
    /// Time the consumer spent waiting in `next()`, seconds.
    pub consumer_wait_s: f64,
    /// `consumer_wait_s` over the time since the first `next()`.
    pub consumer_wait_share: f64,
    /// Raw batches waiting between the read and the decode stage.
    pub read_queue: usize,
    /// Ready batches waiting for the consumer.
    pub ready_queue: usize,
    /// Rows skipped because their image did not decode.
    pub bad_rows: u64,
}

impl LoaderStats {
    pub(crate) fn from_counters(
        c: &Counters,
        elapsed_s: f64,
        read_queue: usize,
        ready_queue: usize,
    ) -> Self {
        let samples = c.samples.load(Relaxed);
        let per = |n: &AtomicU64| {
            if samples == 0 {
                0.0
            } else {
                n.load(Relaxed) as f64 / 1e3 / samples as f64
            }
        };
        let wait = c.wait_nanos.load(Relaxed) as f64 / 1e9;
        LoaderStats {
            batches: c.batches.load(Relaxed),
            samples,
            read_us_per_sample: per(&c.read_nanos),
            decode_us_per_sample: per(&c.decode_nanos),
            consumer_wait_s: wait,
            consumer_wait_share: if elapsed_s > 0.0 {
                (wait / elapsed_s).min(1.0)
            } else {
                0.0
            },
            read_queue,
            ready_queue,
            bad_rows: c.bad_rows.load(Relaxed),
        }
    }
}
