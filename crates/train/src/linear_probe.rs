//! `train eval linear-probe`: logistic regression per class on the frozen
//! image encoder's embeddings of the train split, with 1%, 10% and 100% of
//! the labelled rows (nested subsets), scored on the test split with
//! thresholds chosen on the validation split, as zero-shot is.

use std::path::PathBuf;

use anyhow::{Context, Result};
use evaluation::probe::{ProbeConfig, fit_logistic, subsample};
use evaluation::zero_shot::{ClassInput, Summary, evaluate};
use rayon::prelude::*;
use schemas::CHEXPERT_CLASSES;
use tch::Device;

use crate::data::ShardSet;
use crate::encode::{Embedded, embed_split};
use crate::session::Session;

/// What to probe.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// The checkpoint (or run folder) whose image encoder is frozen.
    pub checkpoint: PathBuf,
    /// Shard folders with train, validation and test splits.
    pub shards: Vec<PathBuf>,
    /// Label fractions of the train split (0.01, 0.1, 1.0).
    pub fractions: Vec<f64>,
    /// Bootstrap resamples.
    pub resamples: usize,
    /// Seed of the subsets and the bootstrap.
    pub seed: u64,
    /// Loader threads, and threads fitting the classes' probes.
    pub threads: usize,
    /// Device for the encoder.
    pub device: Device,
    /// Hash every shard against its manifest first.
    pub verify_sha256: bool,
}

/// Summary per label fraction.
pub fn run(opts: &ProbeOptions) -> Result<Vec<(f64, Summary)>> {
    let session = Session::from_checkpoint(&opts.checkpoint, opts.device)?;
    let shards = ShardSet::from_dirs(&opts.shards)?;
    if opts.verify_sha256 {
        shards.verify()?;
    }
    let train = embed_split(&session, &shards, "train", opts.threads)?;
    let val = embed_split(&session, &shards, "validate", opts.threads)?;
    let test = embed_split(&session, &shards, "test", opts.threads)?;
    let dim = train.images.size()[1] as usize;
    let flat =
        |e: &Embedded| Vec::<f32>::try_from(&e.images.reshape([-1])).expect("float embeddings");
    let (train_x, val_x, test_x) = (flat(&train), flat(&val), flat(&test));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.max(1))
        .thread_name(|i| format!("probe-{i}"))
        .build()
        .context("starting the probe threads")?;
    let mut out = Vec::new();
    for &fraction in &opts.fractions {
        let rows = subsample(train.labels.len(), fraction, opts.seed);
        let x: Vec<f32> = rows
            .iter()
            .flat_map(|&r| train_x[r * dim..(r + 1) * dim].iter().copied())
            .collect();
        // Classes are fitted side by side: each fit is sequential and at
        // MIMIC-CXR scale takes minutes.
        let inputs: Vec<ClassInput> = pool.install(|| {
            CHEXPERT_CLASSES
                .par_iter()
                .enumerate()
                .filter_map(|(c, (name, _))| {
                    let y: Vec<i8> = rows.iter().map(|&r| train.labels[r][c]).collect();
                    // A class without both label values in the subset has no probe.
                    if !(y.contains(&0) && y.contains(&1)) {
                        return None;
                    }
                    // With both values present a failed fit is a fault, not
                    // a class to leave out of the table.
                    Some(
                        fit_logistic(&x, dim, &y, &ProbeConfig::default())
                            .with_context(|| format!("fitting the {name} probe"))
                            .map(|probe| ClassInput {
                                name: name.to_string(),
                                val_scores: probe.predict(&val_x),
                                val_labels: val.labels.iter().map(|l| l[c]).collect(),
                                test_scores: probe.predict(&test_x),
                                test_labels: test.labels.iter().map(|l| l[c]).collect(),
                            }),
                    )
                })
                .collect::<Result<_>>()
        })?;
        out.push((fraction, evaluate(&inputs, opts.resamples, opts.seed)));
    }
    Ok(out)
}
