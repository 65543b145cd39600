//! `train eval zero-shot`: each class scored by a positive and a negative
//! prompt (softmax over the pair of scaled cosine similarities), AUC, F1
//! and accuracy per class and their means, with the F1/accuracy threshold
//! chosen on the validation split and applied to the test split, bootstrap
//! intervals, and an ensemble of several checkpoints (mean of their scores).

use std::path::PathBuf;

use anyhow::{Result, bail};
use evaluation::zero_shot::{ClassInput, Summary, ensemble, evaluate};
use pipeline::LABEL_MISSING;
use schemas::CHEXPERT_CLASSES;
use tch::{Device, Kind, Tensor};

use crate::data::ShardSet;
use crate::encode::{Embedded, embed_split, embed_texts};
use crate::prompts::Templates;
use crate::session::Session;

/// What to evaluate and how.
#[derive(Debug, Clone)]
pub struct ZeroShotOptions {
    /// Checkpoints (or run folders); several are ensembled.
    pub checkpoints: Vec<PathBuf>,
    /// Shard folders holding the splits.
    pub shards: Vec<PathBuf>,
    /// Split the metrics are reported on.
    pub test_split: String,
    /// Split the thresholds are chosen on.
    pub val_split: String,
    /// Classes (CheXpert names); all 14 when empty.
    pub classes: Vec<String>,
    /// Prompt pair templates.
    pub templates: Templates,
    /// Count "not mentioned" as negative (default: left out, as uncertain).
    pub missing_as_negative: bool,
    /// Bootstrap resamples.
    pub resamples: usize,
    /// Bootstrap seed.
    pub seed: u64,
    /// Loader threads.
    pub threads: usize,
    /// Device.
    pub device: Device,
}

/// Scores of one checkpoint: per class, (validation, test) probabilities.
type Scores = Vec<(Vec<f32>, Vec<f32>)>;

/// Runs the evaluation and returns the summary.
pub fn run(opts: &ZeroShotOptions) -> Result<Summary> {
    if opts.checkpoints.is_empty() {
        bail!("no checkpoint to evaluate");
    }
    let classes: Vec<&str> = if opts.classes.is_empty() {
        CHEXPERT_CLASSES.iter().map(|(name, _)| *name).collect()
    } else {
        opts.classes.iter().map(String::as_str).collect()
    };
    let indices: Vec<usize> = classes
        .iter()
        .map(|c| {
            CHEXPERT_CLASSES
                .iter()
                .position(|(name, _)| name == c)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "unknown class {c:?}; the CheXpert classes are {:?}",
                        CHEXPERT_CLASSES.map(|c| c.0)
                    )
                })
        })
        .collect::<Result<_>>()?;
    let shards = ShardSet::from_dirs(&opts.shards)?;

    let mut per_checkpoint: Vec<Scores> = Vec::new();
    let mut reference: Option<(Embedded, Embedded)> = None;
    for path in &opts.checkpoints {
        let session = Session::from_checkpoint(path, opts.device)?;
        let val = embed_split(&session, &shards, &opts.val_split, opts.threads)?;
        let test = embed_split(&session, &shards, &opts.test_split, opts.threads)?;
        let scale = session
            .model
            .clip
            .logit_scale()
            .exp()
            .to_device(Device::Cpu)
            .detach();
        let mut scores = Scores::new();
        for c in &indices {
            let (pos, neg) = opts
                .templates
                .pair_for(CHEXPERT_CLASSES[*c].0)
                .expect("a CheXpert class");
            let text = embed_texts(&session, &[pos, neg])?;
            scores.push((
                pair_probability(&val.images, &text, &scale),
                pair_probability(&test.images, &text, &scale),
            ));
        }
        per_checkpoint.push(scores);
        if let Some((v, t)) = &reference
            && (v.keys != val.keys || t.keys != test.keys)
        {
            bail!(
                "{}: evaluated rows differ between checkpoints",
                path.display()
            );
        }
        reference.get_or_insert((val, test));
    }
    let (val, test) = reference.expect("at least one checkpoint");
    let label = |rows: &[[i8; 14]], c: usize| -> Vec<i8> {
        rows.iter()
            .map(|r| {
                if r[c] == LABEL_MISSING && opts.missing_as_negative {
                    0
                } else {
                    r[c]
                }
            })
            .collect()
    };
    let inputs: Vec<ClassInput> = indices
        .iter()
        .enumerate()
        .map(|(k, &c)| {
            let val_runs: Vec<Vec<f32>> = per_checkpoint.iter().map(|s| s[k].0.clone()).collect();
            let test_runs: Vec<Vec<f32>> = per_checkpoint.iter().map(|s| s[k].1.clone()).collect();
            ClassInput {
                name: CHEXPERT_CLASSES[c].0.to_string(),
                val_scores: ensemble(&val_runs),
                val_labels: label(&val.labels, c),
                test_scores: ensemble(&test_runs),
                test_labels: label(&test.labels, c),
            }
        })
        .collect();
    Ok(evaluate(&inputs, opts.resamples, opts.seed))
}

/// P(positive) per image: softmax over the scaled similarities to the
/// positive and negative prompt. `images: [n, C]`, `text: [2, C]`, unit rows.
pub fn pair_probability(images: &Tensor, text: &Tensor, scale: &Tensor) -> Vec<f32> {
    let logits = images.matmul(&text.tr()) * scale; // [n, 2]
    let p = logits.softmax(-1, Kind::Float).select(1, 0);
    Vec::<f32>::try_from(&p.contiguous()).expect("float scores")
}
