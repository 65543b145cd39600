//! `train finetune`: the image encoder plus a linear head trained on a
//! label set's train split with 1%, 10% or 100% of its patients, early
//! stopping on the validation split's mean AUC, and the best epoch scored
//! on the test split as zero-shot is (AUC, F1 and accuracy at thresholds
//! chosen on validation, bootstrap intervals). `--freeze` trains the head
//! alone (the linear protocol).
//!
//! The fraction is drawn by patient, not by image, so no patient's images
//! are split between the labelled subset and the rest; the same seed draws
//! the same patients, and a smaller fraction's patients lie inside a
//! larger one's (see [`evaluation::probe::subsample`]). The patients drawn
//! are written to `fraction.json`.
//!
//! Labels: uncertain (-1) and, unless `missing_as_negative`, missing
//! CheXpert labels are left out of the loss and of the scores, as in
//! zero-shot evaluation. Multi-label sets train one sigmoid per class
//! (binary cross-entropy); exclusive sets ([`LabelSet::exclusive`]) a
//! softmax over their classes and "none" (cross-entropy).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use evaluation::probe::subsample;
use evaluation::zero_shot::{ClassInput, Summary, evaluate};
use pipeline::{
    AugmentConfig, Batch, LABEL_MISSING, Loader, LoaderConfig, Mode, NUM_LABELS, Position,
    SourceKind, Sources,
};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Reduction, Tensor};

use crate::config::{OptimConfig, OptimKind, Schedule};
use crate::data::{ShardRecord, ShardSet, stored_rows};
use crate::fit::{fit_to, write_atomic};
use crate::label_sets::{ClassLabels, LabelSet, StoredRow, finding_lists, subject_ids, target};
use crate::optim::Optimizer;
use crate::session::Weights;

/// The result file of a fine-tuning folder.
pub const RESULT_FILE: &str = "finetune.json";

/// What to fine-tune, on what, and how.
#[derive(Debug, Clone)]
pub struct FinetuneOptions {
    /// A run, a checkpoint, or a Hugging Face CLIPModel folder.
    pub checkpoint: PathBuf,
    /// Shard folders with train, validate and test splits.
    pub shards: Vec<PathBuf>,
    /// The label set, and its classes (the set's default when empty).
    pub label_set: LabelSet,
    /// Classes by name.
    pub classes: Vec<String>,
    /// Share of the train split's patients whose images are used.
    pub fraction: f64,
    /// Train the head only (the encoder stays as loaded).
    pub freeze: bool,
    /// Epochs at most.
    pub epochs: u64,
    /// Stop when the validation mean AUC has not improved for this many epochs.
    pub patience: u64,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate (AdamW, linear warm-up over the first epoch's
    /// tenth, then cosine decay to 0).
    pub lr: f64,
    /// AdamW's decoupled weight decay (not on biases, norms, embeddings).
    pub weight_decay: f64,
    /// CheXpert sets: count "not mentioned" as negative.
    pub missing_as_negative: bool,
    /// Bootstrap resamples of the test scores.
    pub resamples: usize,
    /// Seed of the patients drawn, the head, the order and augmentation, the bootstrap.
    pub seed: u64,
    /// Loader threads.
    pub threads: usize,
    /// Device.
    pub device: Device,
    /// bf16 autocast on CUDA.
    pub autocast: Option<model::autocast::Reduced>,
    /// Hash every shard against its manifest first.
    pub verify_sha256: bool,
}

/// The patients drawn for the labelled subset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fraction {
    /// The fraction asked for.
    pub fraction: f64,
    /// The seed it was drawn with.
    pub seed: u64,
    /// Patients in the train split.
    pub patients_total: usize,
    /// Images in the train split.
    pub images_total: usize,
    /// Images of the patients drawn.
    pub images: usize,
    /// The patients drawn, sorted.
    pub patients: Vec<String>,
}

/// One epoch's record (`history.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Epoch {
    /// 1-based.
    pub epoch: u64,
    /// Optimiser steps so far.
    pub steps: u64,
    /// Mean training loss of the epoch.
    pub train_loss: f64,
    /// Mean AUC over the classes on the validation split.
    pub val_mean_auc: Option<f64>,
}

/// `finetune.json`: what was trained and how it scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneResult {
    /// The weights started from.
    pub checkpoint: PathBuf,
    /// The shard folders and their manifests' sha256.
    pub shards: Vec<ShardRecord>,
    /// The label set's name.
    pub label_set: String,
    /// Head only.
    pub freeze: bool,
    /// The labelled subset (its patient list is in `fraction.json`).
    pub fraction: f64,
    /// Patients and images drawn.
    pub patients: usize,
    /// Images drawn.
    pub images: usize,
    /// Epochs run (early stopping may end before the maximum).
    pub epochs_run: u64,
    /// The epoch whose weights were scored.
    pub best_epoch: u64,
    /// Its validation mean AUC.
    pub best_val_mean_auc: Option<f64>,
    /// The seed.
    pub seed: u64,
    /// The test split's scores.
    pub summary: Summary,
}

/// Every row's label lists (list-label sets), by shard file and row.
type Lists = HashMap<StoredRow, Option<Vec<String>>>;

/// Fine-tunes, writes `out/` (`fraction.json`, `history.jsonl`,
/// `head.safetensors` when frozen or `model.safetensors`, the result) and
/// returns the result.
pub fn run(opts: &FinetuneOptions, out: &Path) -> Result<FinetuneResult> {
    if !(opts.fraction > 0.0 && opts.fraction <= 1.0) {
        bail!("--fraction {} is not within (0, 1]", opts.fraction);
    }
    if opts.epochs == 0 || opts.batch_size == 0 {
        bail!("--epochs and --batch-size must be at least 1");
    }
    if out.join(RESULT_FILE).exists() {
        bail!(
            "{}: already holds a finished fine-tuning ({RESULT_FILE}); choose another --out",
            out.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;

    let mut shards = ShardSet::from_dirs(&opts.shards)?;
    if let Some(source) = opts.label_set.list_source() {
        if shards.unpaired.is_empty() {
            bail!("the {source} label set needs `ingest {source}` shards among --shards");
        }
        shards.paired.clear();
    } else if !shards.paired.is_empty() && !shards.unpaired.is_empty() {
        bail!(
            "fine-tune on one kind of shard folder at a time: the CheXpert label sets read \
             either MIMIC-CXR (paired) folders or `ingest chexpert` folders"
        );
    }
    if opts.verify_sha256 {
        shards.verify()?;
    }
    // The unseen PadChest sets score the test split's most frequent unseen
    // findings, as zero-shot does.
    let named = match opts.label_set.unseen_top() {
        Some(n) if opts.classes.is_empty() => crate::zero_shot::unseen_classes(&shards, "test", n)?,
        _ => opts.classes.clone(),
    };
    let names: Vec<(String, ClassLabels)> = opts.label_set.resolve(&named)?;
    let classes: Vec<ClassLabels> = names.iter().map(|(_, labels)| labels.clone()).collect();

    // The labelled subset: the drawn patients' train rows.
    let mut train = open_split(&shards, "train")?;
    let train_rows = stored_rows(&train);
    let subjects = subject_ids(&train_rows)?;
    let patients: Vec<&String> = subjects
        .iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let drawn: BTreeSet<&String> = subsample(patients.len(), opts.fraction, opts.seed)
        .into_iter()
        .map(|i| patients[i])
        .collect();
    let keep: HashMap<&StoredRow, bool> = train_rows
        .iter()
        .zip(&subjects)
        .map(|(r, s)| (r, drawn.contains(s)))
        .collect();
    let source = only_source(&mut train)?;
    let paths: Vec<PathBuf> = (0..source.num_shards())
        .map(|i| source.shard_path(i).to_path_buf())
        .collect();
    Arc::get_mut(source)
        .expect("a just-opened source has one owner")
        .retain(|shard, row| {
            keep.get(&StoredRow {
                shard: paths[shard].clone(),
                row,
            })
            .copied()
            .unwrap_or(false)
        });
    let fraction = Fraction {
        fraction: opts.fraction,
        seed: opts.seed,
        patients_total: patients.len(),
        images_total: train_rows.len(),
        images: source.len() as usize,
        patients: drawn.iter().map(|s| s.to_string()).collect(),
    };
    write_atomic(
        &out.join("fraction.json"),
        &serde_json::to_vec_pretty(&fraction)?,
    )?;
    let val = open_split(&shards, "validate")?;
    let test = open_split(&shards, "test")?;
    let lists: Lists = match opts.label_set.list_source() {
        None => Lists::new(),
        Some(source) => {
            let mut lists = Lists::new();
            for sources in [&train, &val, &test] {
                let rows = stored_rows(sources);
                lists.extend(rows.iter().cloned().zip(finding_lists(&rows, source)?));
            }
            lists
        }
    };
    let labeller = Labeller {
        classes: &classes,
        lists: &lists,
        empty_is_negative: opts.label_set.empty_list_is_negative(),
        missing_as_negative: opts.missing_as_negative,
    };

    // The model: the encoder, its non-image parts frozen, and the head.
    let weights = Weights::open(&opts.checkpoint, None, opts.device)?;
    let (clip, cfg) = weights.clip();
    // Seeded after loading: building a run's whole model draws more
    // numbers than a Hugging Face folder's CLIP, and the head must not
    // depend on which the weights came from.
    tch::manual_seed(opts.seed as i64);
    let side = cfg.vision.image_size;
    let outputs = classes.len() as i64 + i64::from(opts.label_set.exclusive());
    let head = nn::linear(
        weights.vs().root() / "finetune_head",
        cfg.projection_dim,
        outputs,
        Default::default(),
    );
    let prefixes = weights.image_prefixes();
    let mut trained: Vec<(String, Tensor)> = Vec::new();
    for (name, var) in weights.vs().variables() {
        let image = prefixes.iter().any(|p| name.starts_with(p));
        let learn = name.starts_with("finetune_head.") || (image && !opts.freeze);
        let _ = var.set_requires_grad(learn);
        if learn {
            trained.push((name, var));
        }
    }
    trained.sort_by(|a, b| a.0.cmp(&b.0));
    let steps_per_epoch = fraction.images.div_ceil(opts.batch_size) as u64;
    let total_steps = steps_per_epoch * opts.epochs;
    let mut opt = Optimizer::new(
        weights.vs(),
        &OptimConfig {
            kind: OptimKind::Adamw,
            lr: opts.lr,
            weight_decay: opts.weight_decay,
            schedule: Schedule::Cosine,
            lr_warmup_steps: (steps_per_epoch / 10).max(1),
            grad_clip: Some(1.0),
            ..OptimConfig::default()
        },
    );
    // Under autocast the encoder's weights are cast a group at a time.
    let weight_casts = model::cast::WeightCasts::default();
    let forward = |pixels: &Tensor| -> Tensor {
        model::autocast::autocast(opts.device, opts.autocast, || {
            let _casts = weight_casts.begin(opts.device);
            let features = if opts.freeze {
                tch::no_grad(|| clip.encode_image(pixels).pooled)
            } else {
                clip.encode_image(pixels).pooled
            };
            head.forward(&features)
        })
        .to_kind(Kind::Float)
    };
    let loader_cfg = |mode_train: bool, epoch: u64| LoaderConfig {
        batch_size: opts.batch_size,
        paired_fraction: if shards.paired.is_empty() { 0.0 } else { 1.0 },
        keep_last_partial: true,
        threads: opts.threads,
        prefetch: 2,
        seed: opts.seed.wrapping_add(epoch),
        ..if mode_train {
            LoaderConfig {
                shuffle: true,
                mode: Mode::Train,
                augment: AugmentConfig::default(),
                epochs: Some(1),
                ..LoaderConfig::default()
            }
        } else {
            LoaderConfig::eval()
        }
    };

    let mut history = Vec::new();
    // The best epoch: its number, validation mean AUC, weights and
    // validation scores (kept, so the best weights are not scored twice).
    let mut best: Option<(u64, Option<f64>, Vec<Tensor>, Scores)> = None;
    let mut step = 0u64;
    let mut since_best = 0u64;
    for epoch in 1..=opts.epochs {
        let (mut loss_sum, mut batches) = (0.0, 0u64);
        for batch in Loader::new(train.clone(), &loader_cfg(true, epoch), Position::default())? {
            let batch = batch?;
            let targets = labeller.batch(&train, &batch);
            let logits = forward(&pixels(&batch, side, opts.device));
            let Some(loss) = loss(&logits, &targets, classes.len(), opts.label_set.exclusive())
            else {
                continue;
            };
            opt.zero_grad();
            loss.backward();
            let update = opt.update(opt.lr_at(step, total_steps), None);
            if update.skipped.double_value(&[]) != 0.0 {
                bail!(
                    "epoch {epoch}: the gradient is not finite (norm {}); lower --lr and run again",
                    update.grad_norm.double_value(&[])
                );
            }
            step += 1;
            loss_sum += loss.double_value(&[]);
            batches += 1;
        }
        let val_scores = score_split(&val, &labeller, &forward, &loader_cfg(false, 0), side, opts)?;
        let val_auc = mean_auc(&val_scores.0, &val_scores.1);
        let record = Epoch {
            epoch,
            steps: step,
            train_loss: loss_sum / batches.max(1) as f64,
            val_mean_auc: val_auc,
        };
        eprintln!(
            "epoch {epoch}: loss {:.4}, validation mean AUC {}",
            record.train_loss,
            val_auc.map_or("—".into(), |a| format!("{a:.4}"))
        );
        history.push(serde_json::to_string(&record)?);
        write_atomic(
            &out.join("history.jsonl"),
            format!("{}\n", history.join("\n")).as_bytes(),
        )?;
        let better = match &best {
            None => true,
            Some((_, b, _, _)) => {
                val_auc.unwrap_or(f64::NEG_INFINITY) > b.unwrap_or(f64::NEG_INFINITY)
            }
        };
        if better {
            let copy = tch::no_grad(|| {
                trained
                    .iter()
                    .map(|(_, t)| t.to_device(Device::Cpu).copy())
                    .collect()
            });
            best = Some((epoch, val_auc, copy, val_scores));
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= opts.patience {
                eprintln!("no better validation AUC for {since_best} epochs: stopping");
                break;
            }
        }
    }
    let epochs_run = history.len() as u64;
    let (best_epoch, best_auc, best_weights, (val_scores, val_labels)) =
        best.expect("at least one epoch ran");
    tch::no_grad(|| {
        for ((_, var), saved) in trained.iter().zip(&best_weights) {
            let mut var = var.shallow_clone();
            var.copy_(saved);
        }
    });
    let named: Vec<(&str, &Tensor)> = trained
        .iter()
        .zip(&best_weights)
        .map(|((name, _), t)| (name.as_str(), t))
        .collect();
    let file = out.join(if opts.freeze {
        "head.safetensors"
    } else {
        "model.safetensors"
    });
    let partial = crate::fit::partial_path(&file);
    Tensor::write_safetensors(&named, &partial)
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &file).with_context(|| format!("writing {}", file.display()))?;

    let (test_scores, test_labels) = score_split(
        &test,
        &labeller,
        &forward,
        &loader_cfg(false, 0),
        side,
        opts,
    )?;
    let inputs: Vec<ClassInput> = names
        .iter()
        .enumerate()
        .map(|(k, (name, _))| ClassInput {
            name: name.clone(),
            val_scores: val_scores[k].clone(),
            val_labels: val_labels[k].clone(),
            test_scores: test_scores[k].clone(),
            test_labels: test_labels[k].clone(),
        })
        .collect();
    let result = FinetuneResult {
        checkpoint: opts.checkpoint.clone(),
        shards: ShardRecord::of_dirs(&opts.shards)?,
        label_set: label_set_name(opts.label_set),
        freeze: opts.freeze,
        fraction: opts.fraction,
        patients: fraction.patients.len(),
        images: fraction.images,
        epochs_run,
        best_epoch,
        best_val_mean_auc: best_auc,
        seed: opts.seed,
        summary: evaluate(&inputs, opts.resamples, opts.seed),
    };
    write_atomic(
        &out.join("finetune.md"),
        result_markdown(&result).as_bytes(),
    )?;
    write_atomic(&out.join(RESULT_FILE), &serde_json::to_vec_pretty(&result)?)?;
    Ok(result)
}

/// The set's name as the command line spells it.
pub fn label_set_name(set: LabelSet) -> String {
    use clap::ValueEnum;
    set.to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

/// The result as Markdown: what was trained, then the per-class table.
pub fn result_markdown(r: &FinetuneResult) -> String {
    format!(
        "# Fine-tuning on {} ({}, {:.0}% of the labels: {} patients, {} images)\n\n\
         Best epoch {} of {} (validation mean AUC {}).\n\n{}",
        r.label_set,
        if r.freeze {
            "linear, encoder frozen"
        } else {
            "end to end"
        },
        r.fraction * 100.0,
        r.patients,
        r.images,
        r.best_epoch,
        r.epochs_run,
        r.best_val_mean_auc
            .map_or("—".into(), |a| format!("{a:.3}")),
        r.summary.to_markdown()
    )
}

/// Opens one split of the shards.
fn open_split(shards: &ShardSet, split: &str) -> Result<Sources> {
    let sources = shards.open(Some(split), false)?;
    let rows: u64 = [&sources.paired, &sources.unpaired]
        .into_iter()
        .flatten()
        .map(|s| s.len())
        .sum();
    if rows == 0 {
        bail!(
            "no rows of split {split:?} in --shards: fine-tuning needs train, validate and test rows"
        );
    }
    Ok(sources)
}

/// The one open source of a split (paired or image-only).
fn only_source(sources: &mut Sources) -> Result<&mut Arc<pipeline::Source>> {
    match (&mut sources.paired, &mut sources.unpaired) {
        (Some(s), None) | (None, Some(s)) => Ok(s),
        _ => bail!("fine-tuning reads one kind of shard folder at a time"),
    }
}

/// A batch's images on the device, at the model's side.
fn pixels(batch: &Batch, side: i64, device: Device) -> Tensor {
    let [b, c, h, w] = batch.images_shape().map(|d| d as i64);
    fit_to(
        &Tensor::from_slice(&batch.images)
            .view([b, c, h, w])
            .to_device(device),
        side,
    )
}

/// Reads each row's labels for the run's classes.
struct Labeller<'a> {
    classes: &'a [ClassLabels],
    lists: &'a Lists,
    empty_is_negative: bool,
    missing_as_negative: bool,
}

impl Labeller<'_> {
    /// `[rows][classes]` labels of a batch (1, 0, or left out: -1 and
    /// [`LABEL_MISSING`]).
    fn batch(&self, sources: &Sources, batch: &Batch) -> Vec<Vec<i8>> {
        batch
            .rows
            .iter()
            .zip(batch.labels.chunks_exact(NUM_LABELS))
            .map(|(r, chexpert)| {
                let source = match r.source {
                    SourceKind::Paired => &sources.paired,
                    SourceKind::Unpaired => &sources.unpaired,
                }
                .as_ref()
                .expect("a batch row comes from an open source");
                let stored = StoredRow {
                    shard: source.shard_path(r.loc.shard as usize).to_path_buf(),
                    row: r.loc.row,
                };
                self.classes
                    .iter()
                    .map(|c| match c {
                        ClassLabels::Chexpert(i) => match chexpert[*i] {
                            LABEL_MISSING if self.missing_as_negative => 0,
                            l => l,
                        },
                        ClassLabels::Finding(f) => target(
                            self.lists.get(&stored).and_then(|l| l.as_deref()),
                            f,
                            self.empty_is_negative,
                        ),
                    })
                    .collect()
            })
            .collect()
    }
}

/// The loss of a batch, `None` when no row has a usable label. Multi-label:
/// binary cross-entropy over the (row, class) pairs labelled 0 or 1.
/// Exclusive: cross-entropy over the classes and "none" (the last output),
/// over the rows labelled for every class.
fn loss(logits: &Tensor, targets: &[Vec<i8>], classes: usize, exclusive: bool) -> Option<Tensor> {
    let device = logits.device();
    if exclusive {
        let mut rows = Vec::new();
        let mut index = Vec::new();
        for (r, t) in targets.iter().enumerate() {
            if t.iter().all(|&l| l == 0 || l == 1) {
                rows.push(r as i64);
                index.push(t.iter().position(|&l| l == 1).unwrap_or(classes) as i64);
            }
        }
        if rows.is_empty() {
            return None;
        }
        let picked = logits.index_select(0, &Tensor::from_slice(&rows).to_device(device));
        return Some(
            picked.cross_entropy_for_logits(&Tensor::from_slice(&index).to_device(device)),
        );
    }
    let flat: Vec<f32> = targets
        .iter()
        .flatten()
        .map(|&l| f32::from(l.max(0)))
        .collect();
    let mask: Vec<f32> = targets
        .iter()
        .flatten()
        .map(|&l| f32::from(u8::from(l == 0 || l == 1)))
        .collect();
    let labelled: f32 = mask.iter().sum();
    if labelled == 0.0 {
        return None;
    }
    let shape = [targets.len() as i64, classes as i64];
    let y = Tensor::from_slice(&flat).view(shape).to_device(device);
    let m = Tensor::from_slice(&mask).view(shape).to_device(device);
    let per = logits.binary_cross_entropy_with_logits::<Tensor>(&y, None, None, Reduction::None);
    Some((per * m).sum(Kind::Float) / f64::from(labelled))
}

/// Per class, the scores (probabilities) and labels of every row of a split.
type Scores = (Vec<Vec<f32>>, Vec<Vec<i8>>);

/// The [`Scores`] of a split.
fn score_split(
    sources: &Sources,
    labeller: &Labeller,
    forward: &dyn Fn(&Tensor) -> Tensor,
    cfg: &LoaderConfig,
    side: i64,
    opts: &FinetuneOptions,
) -> Result<Scores> {
    let k = labeller.classes.len();
    let (mut scores, mut labels) = (vec![Vec::new(); k], vec![Vec::new(); k]);
    for batch in Loader::new(sources.clone(), cfg, Position::default())? {
        let batch = batch?;
        let logits = tch::no_grad(|| forward(&pixels(&batch, side, opts.device)));
        let probs = if opts.label_set.exclusive() {
            logits.softmax(-1, Kind::Float).narrow(1, 0, k as i64)
        } else {
            logits.sigmoid()
        };
        let probs = Vec::<f32>::try_from(&probs.to_device(Device::Cpu).contiguous().view([-1]))
            .context("reading the scores")?;
        for (r, t) in labeller.batch(sources, &batch).iter().enumerate() {
            for c in 0..k {
                scores[c].push(probs[r * k + c]);
                labels[c].push(t[c]);
            }
        }
    }
    Ok((scores, labels))
}

/// Mean AUC over the classes where it is defined.
fn mean_auc(scores: &[Vec<f32>], labels: &[Vec<i8>]) -> Option<f64> {
    let aucs: Vec<f64> = scores
        .iter()
        .zip(labels)
        .filter_map(|(s, l)| {
            let (s, p): (Vec<f32>, Vec<bool>) = s
                .iter()
                .zip(l)
                .filter_map(|(&s, &l)| evaluation::binary_label(l).map(|p| (s, p)))
                .unzip();
            evaluation::roc::auc(&s, &p)
        })
        .collect();
    (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_label_loss_leaves_out_uncertain_and_missing_labels() {
        let logits = Tensor::from_slice(&[2.0f32, -1.0, 0.5, 3.0]).view([2, 2]);
        let all = loss(&logits, &[vec![1, 0], vec![0, 1]], 2, false).unwrap();
        // The second row's first class uncertain, the first row's second missing.
        let some = loss(&logits, &[vec![1, LABEL_MISSING], vec![-1, 1]], 2, false).unwrap();
        let bce = |x: f64, y: f64| {
            -(y * (1.0 / (1.0 + (-x).exp())).ln() + (1.0 - y) * (1.0 / (1.0 + x.exp())).ln())
        };
        let expect_all = (bce(2.0, 1.0) + bce(-1.0, 0.0) + bce(0.5, 0.0) + bce(3.0, 1.0)) / 4.0;
        let expect_some = (bce(2.0, 1.0) + bce(3.0, 1.0)) / 2.0;
        assert!((all.double_value(&[]) - expect_all).abs() < 1e-6);
        assert!((some.double_value(&[]) - expect_some).abs() < 1e-6);
        assert!(
            loss(
                &logits,
                &[vec![-1, LABEL_MISSING], vec![LABEL_MISSING, -1]],
                2,
                false
            )
            .is_none()
        );
    }

    #[test]
    fn exclusive_loss_is_cross_entropy_over_the_classes_and_none() {
        // One class (COVID-19) and "none": a negative row's target is "none".
        let logits = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 2.0, 5.0, 5.0]).view([3, 2]);
        let l = loss(&logits, &[vec![1], vec![0], vec![LABEL_MISSING]], 1, true).unwrap();
        let ce0 = -(1f64.exp() / (1f64.exp() + 1.0)).ln();
        let ce1 = -(2f64.exp() / (1.0 + 2f64.exp())).ln();
        assert!((l.double_value(&[]) - (ce0 + ce1) / 2.0).abs() < 1e-6);
    }

    #[test]
    fn mean_auc_skips_classes_with_one_label_value() {
        let scores = vec![vec![0.9, 0.1, 0.8], vec![0.5, 0.5, 0.5]];
        let labels = vec![vec![1, 0, LABEL_MISSING], vec![0, 0, 0]];
        assert_eq!(mean_auc(&scores, &labels), Some(1.0));
        assert_eq!(mean_auc(&scores[1..], &labels[1..]), None);
    }
}
