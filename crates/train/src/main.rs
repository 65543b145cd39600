//! `train`: MMCLIP pre-training, evaluation, embedding, export and pictures.
//!
//! ```text
//! train --shards DIR [--shards DIR …] --config FILE --out RUN
//! train eval zero-shot --checkpoint RUN_OR_CKPT --shards DIR --out DIR
//! train eval linear-probe --checkpoint RUN_OR_CKPT --shards DIR --out DIR
//! train finetune --checkpoint RUN_CKPT_OR_HF_DIR --shards DIR --label-set NAME --fraction F --out DIR [--freeze]
//! train report --runs DIR [--runs DIR …] --out DIR
//! train embed --weights RUN_CKPT_OR_HF_DIR (--images DIR | --texts FILE) --out FILE.parquet
//! train export-hf --checkpoint RUN_OR_CKPT --out DIR
//! train viz-masks --checkpoint RUN_OR_CKPT --shards DIR --out DIR [--lesions lesions.jsonl]
//! train plot --run RUN
//! train config            (prints the default config)
//! ```
//!
//! Every command that reads shards hashes them against their manifests
//! first; `--no-verify` skips that for speed.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use tch::Device;
use train::config::TrainConfig;
use train::fit::{FitOptions, write_atomic};
use train::prompts::Templates;

#[derive(Parser)]
#[command(name = "train", version, about = "MMCLIP pre-training and evaluation")]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    fit: FitArgs,
    /// Do not hash the shards against their manifests' sha256 (faster;
    /// footers and row counts are still checked).
    #[arg(long, global = true)]
    no_verify: bool,
}

#[derive(Args)]
struct FitArgs {
    /// Shard folders written by `ingest` (paired and unpaired are told apart by their manifests).
    #[arg(long, required = true)]
    shards: Vec<PathBuf>,
    /// TOML config; missing keys take the paper's defaults (`train config` prints them).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run folder: config, metrics.jsonl, checkpoints. An existing run resumes.
    #[arg(long, required = true)]
    out: Option<PathBuf>,
    /// Tokenizer file; default: the one the paired shards were made with.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Train on this device (`cpu`, `cuda`, `cuda:N`); default CUDA when present.
    #[arg(long)]
    device: Option<String>,
    /// Stop after this many steps of this invocation (the run can be resumed).
    #[arg(long)]
    stop_after: Option<u64>,
    /// Resume even though the shards differ from those the run's latest
    /// checkpoint was trained on.
    #[arg(long)]
    allow_other_shards: bool,
    /// Capture each step in a CUDA graph and replay it (CUDA only; needs
    /// `[optim] fused = true` and one process).
    #[arg(long)]
    cuda_graph: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Evaluate a checkpoint.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Embed image files or text lines into a Parquet file.
    Embed(EmbedArgs),
    /// Fine-tune the image encoder and a linear head on a label set with a
    /// fraction of its patients; score the best epoch on the test split.
    Finetune(FinetuneArgs),
    /// One Markdown + JSON table, in the paper's layout, from evaluation
    /// folders (zero-shot, fine-tuning, linear probe).
    Report {
        /// Evaluation folders (or folders holding them).
        #[arg(long, required = true)]
        runs: Vec<PathBuf>,
        /// Output folder: report.md and report.json.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a checkpoint's encoders as a Hugging Face CLIPModel folder.
    ExportHf {
        /// A checkpoint folder or a run folder (its latest checkpoint).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Draw AttMIM's masks over sample images (and measure lesion coverage).
    VizMasks {
        #[arg(long)]
        checkpoint: PathBuf,
        /// A paired (MIMIC-CXR) shard folder.
        #[arg(long)]
        shards: PathBuf,
        #[arg(long, default_value = "test")]
        split: String,
        /// Images drawn.
        #[arg(long, default_value_t = 6)]
        pictures: usize,
        /// Images with lesions measured.
        #[arg(long, default_value_t = 200)]
        measure: usize,
        /// The synthetic world's lesions.jsonl.
        #[arg(long)]
        lesions: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// AttMIM's λ1 for the masks, instead of the checkpoint's.
        #[arg(long)]
        lambda1: Option<f64>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        device: Option<String>,
    },
    /// Draw a run's metrics as PNG curves (RUN/plots/).
    Plot {
        #[arg(long)]
        run: PathBuf,
    },
    /// Print the default config as TOML.
    Config,
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Zero-shot classification with positive/negative prompt pairs.
    ZeroShot {
        /// Checkpoint or run folder; repeat to ensemble.
        #[arg(long, required = true)]
        checkpoint: Vec<PathBuf>,
        #[arg(long, required = true)]
        shards: Vec<PathBuf>,
        #[arg(long, default_value = "test")]
        split: String,
        /// Split the F1/accuracy thresholds are chosen on.
        #[arg(long, default_value = "validate")]
        val_split: String,
        /// Label set: `chexpert` (MIMIC-CXR rows, 14 classes) or `padchest`
        /// (PadChest rows, their findings).
        #[arg(long, value_enum, default_value = "chexpert")]
        label_set: train::label_sets::LabelSet,
        /// Classes (CheXpert names or PadChest findings); when absent, all 14
        /// CheXpert classes or the 8 PadChest findings that name one of them.
        #[arg(long)]
        class: Vec<String>,
        /// PadChest: score the N most frequent findings of the test split
        /// that are not CheXpert classes ("unseen") instead.
        #[arg(long, conflicts_with = "class")]
        unseen_top: Option<usize>,
        /// Positive template, `{}` = the class phrase.
        #[arg(long)]
        positive: Option<String>,
        /// Negative template.
        #[arg(long)]
        negative: Option<String>,
        /// Count "not mentioned" labels as negative.
        #[arg(long)]
        missing_as_negative: bool,
        #[command(flatten)]
        scoring: ScoringArgs,
    },
    /// Logistic regression on frozen image embeddings with 1%, 10%, 100% of the labels.
    LinearProbe {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long, required = true)]
        shards: Vec<PathBuf>,
        #[arg(long, value_delimiter = ',', default_value = "0.01,0.1,1.0")]
        fractions: Vec<f64>,
        #[command(flatten)]
        scoring: ScoringArgs,
    },
}

#[derive(Args)]
struct FinetuneArgs {
    /// A checkpoint, a run folder, or a Hugging Face CLIPModel folder.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Shard folders with train, validate and test splits.
    #[arg(long, required = true)]
    shards: Vec<PathBuf>,
    /// The label set (`chexpert`, `chexpert5`, `nih`, `covidx`, ...).
    #[arg(long, value_enum)]
    label_set: train::label_sets::LabelSet,
    /// Classes, instead of the label set's default.
    #[arg(long)]
    class: Vec<String>,
    /// Share of the train split's patients used (0.01, 0.1, 1.0).
    #[arg(long, default_value_t = 1.0)]
    fraction: f64,
    /// Train the linear head only (the linear protocol).
    #[arg(long)]
    freeze: bool,
    /// Epochs at most.
    #[arg(long, default_value_t = 10)]
    epochs: u64,
    /// Stop after this many epochs without a better validation mean AUC.
    #[arg(long, default_value_t = 3)]
    patience: u64,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Peak learning rate (AdamW, cosine schedule).
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    #[arg(long, default_value_t = 0.05)]
    weight_decay: f64,
    /// CheXpert label sets: count "not mentioned" labels as negative.
    #[arg(long)]
    missing_as_negative: bool,
    #[command(flatten)]
    scoring: ScoringArgs,
}

/// What every scoring command (zero-shot, linear probe, fine-tuning) takes.
#[derive(Args)]
struct ScoringArgs {
    /// Bootstrap resamples of the test rows for the intervals.
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// Seed of every random draw (bootstrap resamples, label fractions, new weights).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Device (`cpu`, `cuda`, `cuda:N`); default CUDA when present.
    #[arg(long)]
    device: Option<String>,
}

#[derive(Args)]
struct EmbedArgs {
    /// A checkpoint, a run folder, or a Hugging Face CLIPModel folder.
    #[arg(long)]
    weights: PathBuf,
    /// A folder of image files (png, jpg).
    #[arg(long, conflicts_with = "texts", required_unless_present = "texts")]
    images: Option<PathBuf>,
    /// A text file, one text per line.
    #[arg(long)]
    texts: Option<PathBuf>,
    /// Tokenizer for a Hugging Face folder without tokenizer.json.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Output Parquet file.
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    device: Option<String>,
}

fn device(name: Option<&str>) -> Result<Device> {
    Ok(match name {
        None => Device::cuda_if_available(),
        Some("cpu") => Device::Cpu,
        Some("cuda") => Device::Cuda(0),
        Some(other) => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::Cuda(n),
            None => anyhow::bail!("unknown device {other:?}: use cpu, cuda or cuda:N"),
        },
    })
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let verify = !cli.no_verify;
    match cli.command {
        None => {
            let a = cli.fit;
            let cfg = match &a.config {
                Some(path) => TrainConfig::load(path)?,
                None => TrainConfig::default(),
            };
            let device = device(a.device.as_deref())?;
            if a.cuda_graph && !device.is_cuda() {
                bail!("--cuda-graph needs a CUDA device; this run is on {device:?}");
            }
            let opts = FitOptions {
                shards: a.shards,
                out: a.out.expect("clap requires --out"),
                tokenizer: a.tokenizer,
                device,
                stop_after: a.stop_after,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
                verify_sha256: verify,
                allow_other_shards: a.allow_other_shards,
                cuda_graph: a.cuda_graph,
            };
            let summary = train::fit::fit(&cfg, &opts)?;
            eprintln!(
                "trained to step {} ({} skipped); checkpoint {}",
                summary.step,
                summary.skipped_steps,
                summary
                    .checkpoint
                    .map_or("unchanged".into(), |p| p.display().to_string())
            );
        }
        Some(Command::Config) => print!("{}", TrainConfig::default().to_toml()),
        Some(Command::Plot { run }) => {
            let files =
                evaluation::curves::plot_metrics(&run.join("metrics.jsonl"), &run.join("plots"))?;
            for f in files {
                println!("{}", f.display());
            }
        }
        Some(Command::ExportHf { checkpoint, out }) => {
            let session = train::session::Session::from_checkpoint(&checkpoint, Device::Cpu)?;
            let (run, _) = train::session::locate(&checkpoint)?;
            train::hf::export(&session, &run.join(train::session::TOKENIZER_FILE), &out)?;
            eprintln!("wrote {}", out.display());
        }
        Some(Command::Embed(a)) => train::embed::run(&train::embed::EmbedOptions {
            weights: a.weights,
            images: a.images,
            texts: a.texts,
            tokenizer: a.tokenizer,
            out: a.out,
            device: device(a.device.as_deref())?,
        })?,
        Some(Command::VizMasks {
            checkpoint,
            shards,
            split,
            pictures,
            measure,
            lesions,
            seed,
            lambda1,
            out,
            device: d,
        }) => {
            let shares = train::masks::run(&train::masks::MaskOptions {
                checkpoint,
                shards,
                split,
                pictures,
                measure,
                lesions,
                seed,
                lambda1,
                threads: threads(),
                out: out.clone(),
                device: device(d.as_deref())?,
                verify_sha256: verify,
            })?;
            if let Some(s) = shares {
                println!(
                    "lesion patches masked over {} images ({} lesion patches), λ1 {} λ2 {}:",
                    s.images, s.lesion_patches, s.lambda1, s.lambda2
                );
                println!(
                    "  {:<14} {:>13} {:>15}",
                    "strategy", "lesion share", "candidate share"
                );
                for ((strategy, share), (_, candidates)) in s.shares.iter().zip(&s.candidate_shares)
                {
                    println!(
                        "  {:<14} {:>13.3} {:>15.3}",
                        serde_json::to_value(strategy)?.as_str().unwrap_or("?"),
                        share,
                        candidates
                    );
                }
            }
            eprintln!("pictures in {}", out.display());
        }
        Some(Command::Eval(EvalCommand::ZeroShot {
            checkpoint,
            shards,
            split,
            val_split,
            label_set,
            class,
            unseen_top,
            positive,
            negative,
            missing_as_negative,
            scoring,
        })) => {
            let defaults = Templates::default();
            let opts = train::zero_shot::ZeroShotOptions {
                checkpoints: checkpoint,
                shards,
                test_split: split,
                val_split,
                label_set,
                classes: class,
                unseen_top,
                templates: Templates {
                    positive: positive.unwrap_or(defaults.positive),
                    negative: negative.unwrap_or(defaults.negative),
                },
                missing_as_negative,
                resamples: scoring.bootstrap,
                seed: scoring.seed,
                threads: threads(),
                device: device(scoring.device.as_deref())?,
                verify_sha256: verify,
            };
            let summary = train::zero_shot::run(&opts)?;
            let file = train::report::ZeroShotFile {
                label_set: Some(train::finetune::label_set_name(opts.label_set)),
                checkpoints: opts.checkpoints.clone(),
                summary,
            };
            write_report(
                &scoring.out,
                "zero_shot",
                &serde_json::to_value(&file)?,
                &file.summary.to_markdown(),
            )?;
            let summary = file.summary;
            println!("{}", summary.to_markdown());
        }
        Some(Command::Finetune(a)) => {
            let device = device(a.scoring.device.as_deref())?;
            let opts = train::finetune::FinetuneOptions {
                checkpoint: a.checkpoint,
                shards: a.shards,
                label_set: a.label_set,
                classes: a.class,
                fraction: a.fraction,
                freeze: a.freeze,
                epochs: a.epochs,
                patience: a.patience,
                batch_size: a.batch_size,
                lr: a.lr,
                weight_decay: a.weight_decay,
                missing_as_negative: a.missing_as_negative,
                resamples: a.scoring.bootstrap,
                seed: a.scoring.seed,
                threads: threads(),
                device,
                autocast: device
                    .is_cuda()
                    .then_some(model::autocast::Reduced::BFloat16),
                verify_sha256: verify,
            };
            let result = train::finetune::run(&opts, &a.scoring.out)?;
            println!("{}", train::finetune::result_markdown(&result));
        }
        Some(Command::Report { runs, out }) => {
            let report = train::report::collect(&runs)?;
            write_report(
                &out,
                "report",
                &serde_json::to_value(&report)?,
                &report.to_markdown(),
            )?;
            println!("{}", report.to_markdown());
        }
        Some(Command::Eval(EvalCommand::LinearProbe {
            checkpoint,
            shards,
            fractions,
            scoring,
        })) => {
            let results = train::linear_probe::run(&train::linear_probe::ProbeOptions {
                checkpoint,
                shards,
                fractions,
                resamples: scoring.bootstrap,
                seed: scoring.seed,
                threads: threads(),
                device: device(scoring.device.as_deref())?,
                verify_sha256: verify,
            })?;
            let mut md = String::new();
            for (fraction, summary) in &results {
                md.push_str(&format!(
                    "## {:.0}% of the labels\n\n{}\n",
                    fraction * 100.0,
                    summary.to_markdown()
                ));
            }
            let json = serde_json::to_value(
                results
                    .iter()
                    .map(|(f, s)| serde_json::json!({"fraction": f, "summary": s}))
                    .collect::<Vec<_>>(),
            )?;
            write_report(&scoring.out, "linear_probe", &json, &md)?;
            println!("{md}");
        }
    }
    Ok(())
}

/// Writes `DIR/NAME.json` and `DIR/NAME.md`.
fn write_report(
    dir: &std::path::Path,
    name: &str,
    json: &serde_json::Value,
    md: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(
        &dir.join(format!("{name}.json")),
        &serde_json::to_vec_pretty(json)?,
    )?;
    write_atomic(&dir.join(format!("{name}.md")), md.as_bytes())
}
