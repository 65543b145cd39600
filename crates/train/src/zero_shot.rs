//! `train eval zero-shot`: each class scored by a positive and a negative
//! prompt (softmax over the pair of scaled cosine similarities), AUC, F1
//! and accuracy per class and their means, with the F1/accuracy threshold
//! chosen on the validation split and applied to the test split, bootstrap
//! intervals, and an ensemble of several checkpoints (mean of their scores).
//! The classes are CheXpert's on the MIMIC-CXR rows or PadChest findings on
//! the PadChest rows ([`crate::label_sets`]).

use std::path::PathBuf;

use anyhow::{Result, bail};
use evaluation::zero_shot::{ClassInput, Summary, ensemble, evaluate};
use pipeline::LABEL_MISSING;
use tch::{Device, Kind, Tensor};

use crate::data::ShardSet;
use crate::encode::{Embedded, embed_split, embed_texts};
use crate::label_sets::{ClassLabels, LabelSet, StoredRow, finding_lists, targets, unseen_top};
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
    /// Which label set the classes come from.
    pub label_set: LabelSet,
    /// Classes: CheXpert names, or PadChest findings; the label set's
    /// default when empty.
    pub classes: Vec<String>,
    /// PadChest only, without `classes`: score the this many most frequent
    /// unseen findings of the test split instead of the seen ones.
    pub unseen_top: Option<usize>,
    /// Prompt pair templates.
    pub templates: Templates,
    /// CheXpert only: count "not mentioned" as negative (default: left
    /// out, as uncertain).
    pub missing_as_negative: bool,
    /// Bootstrap resamples.
    pub resamples: usize,
    /// Bootstrap seed.
    pub seed: u64,
    /// Loader threads.
    pub threads: usize,
    /// Device.
    pub device: Device,
    /// Hash every shard against its manifest first.
    pub verify_sha256: bool,
}

/// Scores of one checkpoint: per class, (validation, test) probabilities.
type Scores = Vec<(Vec<f32>, Vec<f32>)>;

/// One class to score: its name, its prompt pair, and where its labels are.
struct Class {
    name: String,
    pair: (String, String),
    labels: ClassLabels,
}

/// Runs the evaluation and returns the summary.
pub fn run(opts: &ZeroShotOptions) -> Result<Summary> {
    if opts.checkpoints.is_empty() {
        bail!("no checkpoint to evaluate");
    }
    let mut shards = ShardSet::from_dirs(&opts.shards)?;
    if let Some(source) = opts.label_set.list_source() {
        // Releases with label lists are the image-only folders.
        if shards.unpaired.is_empty() {
            bail!(
                "the {source} label set needs `ingest {source}` shards among --shards \
                 (found only paired folders)"
            );
        }
        shards.paired.clear();
    }
    if opts.verify_sha256 {
        shards.verify()?;
    }
    let classes = classes(opts, &shards)?;

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
        for class in &classes {
            let text = embed_texts(&session, &[class.pair.0.clone(), class.pair.1.clone()])?;
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
    let lists = match opts.label_set.list_source() {
        None => None,
        Some(source) => {
            let lists = (
                finding_lists(&val.rows, source)?,
                finding_lists(&test.rows, source)?,
            );
            if lists.1.iter().all(Option::is_none) {
                bail!(
                    "no {source} rows in the {} split of --shards: the {source} label set \
                     scores `ingest {source}` shards",
                    opts.test_split
                );
            }
            Some(lists)
        }
    };
    let empty_is_negative = opts.label_set.empty_list_is_negative();
    let chexpert = |rows: &[[i8; 14]], c: usize| -> Vec<i8> {
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
    let inputs: Vec<ClassInput> = classes
        .iter()
        .enumerate()
        .map(|(k, class)| {
            let val_runs: Vec<Vec<f32>> = per_checkpoint.iter().map(|s| s[k].0.clone()).collect();
            let test_runs: Vec<Vec<f32>> = per_checkpoint.iter().map(|s| s[k].1.clone()).collect();
            let (val_labels, test_labels) = match (&class.labels, &lists) {
                (ClassLabels::Chexpert(c), _) => {
                    (chexpert(&val.labels, *c), chexpert(&test.labels, *c))
                }
                (ClassLabels::Finding(finding), Some((v, t))) => (
                    targets(v, finding, empty_is_negative),
                    targets(t, finding, empty_is_negative),
                ),
                (ClassLabels::Finding(_), None) => {
                    unreachable!("label-list classes come with their lists")
                }
            };
            ClassInput {
                name: class.name.clone(),
                val_scores: ensemble(&val_runs),
                val_labels,
                test_scores: ensemble(&test_runs),
                test_labels,
            }
        })
        .collect();
    Ok(evaluate(&inputs, opts.resamples, opts.seed))
}

/// The classes to score: the named ones, or the label set's default
/// (CheXpert: all 14; CheXpert 5: the competition classes; PadChest: the
/// seen findings, or with `unseen_top` the most frequent unseen findings of
/// the test split).
fn classes(opts: &ZeroShotOptions, shards: &ShardSet) -> Result<Vec<Class>> {
    let top = match opts.label_set {
        LabelSet::Padchest => opts.unseen_top,
        set => set.unseen_top(),
    };
    let names = match top {
        Some(n) if opts.classes.is_empty() => unseen_classes(shards, &opts.test_split, n)?,
        _ => opts.classes.clone(),
    };
    opts.label_set
        .resolve(&names)?
        .into_iter()
        .map(|(name, labels)| {
            let pair = match &labels {
                ClassLabels::Chexpert(_) => {
                    opts.templates.pair_for(&name).expect("a CheXpert class")
                }
                // The lists are compared lower-cased; the prompt reads
                // ChestX-ray14's `Pleural_Thickening` as words.
                ClassLabels::Finding(finding) => opts.templates.pair(&finding.replace('_', " ")),
            };
            Ok(Class { name, pair, labels })
        })
        .collect()
}

/// The `n` most frequent unseen PadChest findings of `split` (see
/// [`unseen_top`]); an error when there are none.
pub fn unseen_classes(shards: &ShardSet, split: &str, n: usize) -> Result<Vec<String>> {
    let classes = unseen_top(&finding_lists(&split_rows(shards, split)?, "padchest")?, n);
    if classes.is_empty() {
        bail!("no unseen PadChest findings among the {split} rows of --shards");
    }
    Ok(classes)
}

/// Where every row of `split` in `shards` is stored.
pub fn split_rows(shards: &ShardSet, split: &str) -> Result<Vec<StoredRow>> {
    Ok(crate::data::stored_rows(&shards.open(Some(split), false)?))
}

/// P(positive) per image: softmax over the scaled similarities to the
/// positive and negative prompt. `images: [n, C]`, `text: [2, C]`, unit rows.
pub fn pair_probability(images: &Tensor, text: &Tensor, scale: &Tensor) -> Vec<f32> {
    let logits = images.matmul(&text.tr()) * scale; // [n, 2]
    let p = logits.softmax(-1, Kind::Float).select(1, 0);
    Vec::<f32>::try_from(&p.contiguous()).expect("float scores")
}
