//! `train --shards … --config … --out RUN`: the training loop.
//!
//! Each optimiser step draws `accumulate` batches from the loader, runs
//! [`Mmclip::step`] in the warm-up phase (masked modelling only) for the
//! first `warmup_steps` steps and jointly after, and updates. A non-finite
//! loss or gradient skips the step (counted; too many in a row stop the
//! run). The skip is decided on the device ([`Optimizer::update`]) and a
//! step's losses and outcome are read back one step late, after the next
//! step's work is queued, so on a GPU the host does not wait for the
//! device at every step; before a checkpoint the step is read at once.
//! Metrics go to `RUN/metrics.jsonl`; checkpoints to
//! `RUN/checkpoints/`. Started again on a folder with checkpoints, the run
//! resumes from the latest and continues exactly as it would have: the
//! loader restarts at the saved position and the masks of step s depend
//! only on the seed and s.
//!
//! Under torchrun or SLURM with several processes ([`crate::dist`]), each
//! rank trains on its slice of the same global batch with the gradients
//! averaged, and rank 0 alone writes the run folder. Each rank's step is
//! [`model::Mmclip::step_sharded`] on its rows, which computes what one
//! process computes for them (masks, Loss_align over every rank's rows,
//! Loss_MLM over every rank's tokens), so a run on W processes follows the
//! run on one at the same global batch up to rounding.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use model::mmclip::{Phase, step_seed};
use pipeline::{Loader, LoaderConfig, Position};
use serde_json::json;
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};
use text::tokenize::ClipTokenizer;

use crate::checkpoint::{self, TrainState};
use crate::config::TrainConfig;
use crate::data::{ShardRecord, ShardSet, Staged};
use crate::dist::{Dist, Launch};
use crate::graph_step::{GraphSteps, Micro};
use crate::optim::{Optimizer, Update};
use crate::session::{RUN_FILE, RunModel, Session, TOKENIZER_FILE};

/// What `fit` needs besides the config.
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// Shard folders (paired and unpaired, told apart by their manifests).
    pub shards: Vec<PathBuf>,
    /// The run folder.
    pub out: PathBuf,
    /// Tokenizer; default: the one the paired shards record.
    pub tokenizer: Option<PathBuf>,
    /// Device; default CUDA when present.
    pub device: Device,
    /// Stop after this many steps in this invocation (for tests and
    /// interruption drills); the run can be resumed.
    pub stop_after: Option<u64>,
    /// Show a progress bar.
    pub progress: bool,
    /// Hash every shard against its manifest before training.
    pub verify_sha256: bool,
    /// Resume on shards other than those the checkpoint was trained on.
    pub allow_other_shards: bool,
    /// Replay each step as a captured CUDA graph ([`crate::graph_step`]);
    /// on the CPU the same fixed-shape steps run eagerly.
    pub cuda_graph: bool,
}

/// The metrics file inside a run folder, one JSON line per logged step.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct FitSummary {
    /// The step reached.
    pub step: u64,
    /// Steps skipped as non-finite.
    pub skipped_steps: u64,
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
}

/// Runs (or resumes) training.
///
/// A run folder is bound to its config and its shards once it has a
/// checkpoint: resuming with another config is refused, and with other
/// shards unless `allow_other_shards`. Before the first checkpoint nothing
/// is bound, so a start that failed (a wrong path, a bad value) can be
/// retried into the same folder with corrected arguments.
pub fn fit(cfg: &TrainConfig, opts: &FitOptions) -> Result<FitSummary> {
    let mut run = Run::prepare(cfg, opts)?;
    run.resume(opts)?;
    if run.state.step >= cfg.train.steps {
        tracing::info!("the run is already complete at step {}", run.state.step);
        return Ok(run.summary(None));
    }
    run.train(opts)
}

/// A run between its preparation and its last step: the process group,
/// the run folder, the model, the optimiser and the training state.
struct Run<'a> {
    cfg: &'a TrainConfig,
    out: &'a Path,
    /// The process group under torchrun or SLURM; `None` on one process.
    dist: Option<Dist>,
    device: Device,
    /// Whether this process writes the run folder (rank 0, or the only one).
    writes: bool,
    shards: ShardSet,
    /// The shards' folders and manifests, recorded with the run.
    records: Vec<ShardRecord>,
    config_sha: String,
    /// The latest checkpoint when the folder has one.
    latest: Option<PathBuf>,
    run_model: RunModel,
    session: Session,
    opt: Optimizer,
    state: TrainState,
    /// The fixed-shape steps of `--cuda-graph`.
    graphs: Option<GraphSteps>,
}

/// One optimiser step as queued on the device, read by [`Run::resolve`].
struct Pending {
    /// The steps done with this one (`state.step` after it).
    step: u64,
    phase: Phase,
    lr: f64,
    /// Images of the global batches it trained on.
    images: u64,
    /// The loader's epoch after it.
    epoch: u64,
    /// When its work was queued: the window of a metrics line runs from
    /// queue time to queue time, since steps are read back unevenly (one
    /// step late, or at once before a checkpoint).
    queued: Instant,
    /// Whether it writes a metrics line.
    log: bool,
    /// Whether any micro-batch had Loss_align, Loss_MLM.
    has_align: bool,
    has_mlm: bool,
    /// Float64, on its way to the host: the [`LossSlots`], the gradient
    /// norm, the skip flag and the weights' finiteness (1 or 0).
    values: Option<model::transfer::Download>,
}

impl<'a> Run<'a> {
    /// Joins the process group, binds the run folder to the config and the
    /// tokenizer, and builds the model and the optimiser, seeded.
    fn prepare(cfg: &'a TrainConfig, opts: &'a FitOptions) -> Result<Run<'a>> {
        let out = opts.out.as_path();
        // Joined first, so that a rank whose arguments fail below fails the
        // others' next collective instead of leaving them at the rendezvous.
        let (dist, device) = match Launch::from_env()? {
            Some(launch) => {
                let (dist, device) = Dist::join(launch, opts.device)?;
                (Some(dist), device)
            }
            None => (None, opts.device),
        };
        // Rank 0 writes the run folder; the others only read it.
        let writes = dist.as_ref().is_none_or(Dist::is_main);
        if opts.cuda_graph {
            let refused = [
                (
                    !cfg.optim.fused,
                    "optim.fused = false (the plain update reads its skip flag on the host)",
                ),
                (dist.is_some(), "the run has several processes"),
            ];
            if let Some((_, why)) = refused.iter().find(|(bad, _)| *bad) {
                bail!("--cuda-graph needs optim.fused = true and one process; here {why}");
            }
        }

        // The shard folders and their manifests are read before the run folder
        // is touched.
        let shards = ShardSet::from_dirs(&opts.shards)?;
        let records = ShardRecord::of_dirs(&opts.shards)?;
        let tokenizer_path = opts
            .tokenizer
            .clone()
            .or_else(|| shards.tokenizer.clone())
            .context("no tokenizer: the shards record none; pass --tokenizer")?;
        let config_text = cfg.to_toml();
        let config_sha = hex::encode(Sha256::digest(config_text.as_bytes()));
        let (latest, tokenizer) =
            prepare_folder(out, dist.as_ref(), &config_text, &tokenizer_path)?;

        let clip = match &cfg.model.init {
            Some(dir) => crate::hf::read_config(dir)?,
            None => cfg.model.preset_clip(),
        };
        let run_model = RunModel {
            mmclip: cfg.model.mmclip(clip),
            prompts: cfg.prompts.clone(),
            shards: records.clone(),
        };
        tch::manual_seed(cfg.train.seed as i64);
        let session = Session::new(run_model.clone(), tokenizer, device)?;
        if let Some(dir) = &cfg.model.init {
            crate::hf::load_weights(dir, &session.vs)?;
        }
        let opt = Optimizer::new(&session.vs, &cfg.optim);
        let graphs = opts
            .cuda_graph
            .then(|| GraphSteps::new(device, cfg.train.autocast.reduced_on(device)));
        let state = TrainState {
            step: 0,
            next_position: Position::default(),
            optimizer_steps: 0,
            seed: cfg.train.seed,
            skipped_steps: 0,
            nonfinite_in_a_row: 0,
            config_sha256: config_sha.clone(),
            shards: records.clone(),
        };
        Ok(Run {
            cfg,
            out,
            dist,
            device,
            writes,
            shards,
            records,
            config_sha,
            latest,
            run_model,
            session,
            opt,
            state,
            graphs,
        })
    }

    /// Continues from the latest checkpoint, if any: its weights, optimiser
    /// and state (step, loader position, counters), checked against the
    /// config and the shards. Then every rank agrees on the start, and the
    /// metrics written after that checkpoint are dropped.
    fn resume(&mut self, opts: &FitOptions) -> Result<()> {
        if let Some(dir) = &self.latest {
            self.state = checkpoint::load(dir, &mut self.session.vs, &mut self.opt)?;
            if self.state.config_sha256 != self.config_sha {
                bail!("{}: written with another config", dir.display());
            }
            if self.state.shards.is_empty() {
                tracing::warn!(
                    "{}: the checkpoint does not record its shards; they are not checked",
                    dir.display()
                );
            } else if let Some(why) = crate::data::shards_differ(&self.state.shards, &self.records)
            {
                if !opts.allow_other_shards {
                    bail!(
                        "{}: the run was trained on other shards: {why}; \
                         use the same --shards, or pass --allow-other-shards to continue on these knowingly",
                        self.out.display()
                    );
                }
                tracing::warn!("continuing on other shards (--allow-other-shards): {why}");
            }
            self.state.shards = self.records.clone();
            tracing::info!("resuming from {} (step {})", dir.display(), self.state.step);
        }
        if let Some(d) = &mut self.dist {
            crate::dist::agree_on_start(d, &self.session.vs, self.state.step, self.out)?;
            d.watch_gradients(&self.session.vs)?;
        }
        if self.writes {
            write_atomic(
                &self.out.join(RUN_FILE),
                &serde_json::to_vec_pretty(&self.run_model)?,
            )?;
            // Lines past the resumed step were written by the interrupted run after
            // its last checkpoint; the resumed run writes them again.
            truncate_metrics(&self.out.join(METRICS_FILE), self.state.step)?;
        }
        Ok(())
    }

    /// The step loop, from the resumed step to the last (or `stop_after`
    /// steps on): each step, then its metrics line and checkpoint when due.
    fn train(mut self, opts: &FitOptions) -> Result<FitSummary> {
        let t = &self.cfg.train;
        let mut loader = self.open_loader(opts)?;
        let mut metrics = Metrics::open(self.out, self.writes)?;
        let end = opts
            .stop_after
            .map_or(t.steps, |n| (self.state.step + n).min(t.steps));
        let bar = progress_bar(opts.progress && self.writes, self.state.step, t.steps);
        let mut window = Window::new();
        let mut last_checkpoint = None;
        let mut late: Option<Pending> = None;
        while self.state.step < end {
            let mut pending = self.step(&mut loader)?;
            pending.log = pending.step.is_multiple_of(t.log_every) || pending.step == end;
            // The previous step is read while this one runs on the device.
            if let Some(previous) = late.take() {
                self.resolve(previous, &mut window, &mut metrics, &loader, &bar)?;
            }
            bar.inc(1);
            if self.state.step.is_multiple_of(t.checkpoint_every) || self.state.step == end {
                self.resolve(pending, &mut window, &mut metrics, &loader, &bar)?;
                last_checkpoint = self.checkpoint()?.or(last_checkpoint);
            } else {
                late = Some(pending);
            }
        }
        bar.finish_and_clear();
        Ok(self.summary(last_checkpoint))
    }

    /// The loader of this rank's slice of each global batch, at the
    /// resumed position. The shards are opened (and hashed) only now that
    /// the run is known to have steps left to do.
    fn open_loader(&self, opts: &FitOptions) -> Result<Loader> {
        let t = &self.cfg.train;
        let loader_cfg = LoaderConfig {
            batch_size: t.batch_size,
            paired_fraction: t.paired_fraction,
            seed: t.seed,
            threads: t.loader_threads,
            prefetch: t.prefetch,
            augment: t.augment.clone(),
            world_size: self.dist.as_ref().map_or(1, |d| d.launch().world_size),
            rank: self.dist.as_ref().map_or(0, |d| d.launch().rank),
            ..Default::default()
        };
        let sources = self.shards.open(Some("train"), opts.verify_sha256)?;
        Ok(Loader::new(sources, &loader_cfg, self.state.next_position)?)
    }

    /// One optimiser step, queued: the masked-modelling warm-up or the
    /// joint phase, `accumulate` micro-batches forward and backward, the
    /// gradients averaged over the ranks, then the update, skipped on the
    /// device when the loss or the gradient is not finite. Nothing is read
    /// back but the batches' row counts.
    fn step(&mut self, loader: &mut Loader) -> Result<Pending> {
        let phase = if self.state.step < self.cfg.train.warmup_steps {
            Phase::WarmUp
        } else {
            Phase::Joint
        };
        let lr = self.opt.lr_at(self.state.step, self.cfg.train.steps);
        let (values, images, has_align, has_mlm) = if self.graphs.is_some() {
            self.graph_step(loader, phase, lr)?
        } else {
            self.opt.zero_grad();
            let (losses, images) = self.forward_backward(loader, phase)?;
            if let Some(d) = &self.dist {
                d.average_gradients()?;
            }
            // Every rank holds the same mean losses and averaged gradients,
            // so every rank decides the same.
            let update = self.opt.update(lr, Some(&losses.sums.get(0)));
            let values = step_record(&losses, &update, &self.opt.weights_finite());
            (values, images, losses.has_align, losses.has_mlm)
        };
        // Started now, waited for in `resolve` after the next step is
        // queued: the wait covers this step's work only.
        let values = model::transfer::Download::start(&values).map_err(anyhow::Error::msg)?;
        self.state.step += 1;
        Ok(Pending {
            step: self.state.step,
            phase,
            lr,
            images,
            epoch: self.state.next_position.epoch,
            queued: Instant::now(),
            log: false,
            has_align,
            has_mlm,
            values: Some(values),
        })
    }

    /// [`Run::step`] through the fixed-shape steps of `--cuda-graph`: its
    /// `accumulate` micro-batches with the ordinary step's draws, one
    /// process (checked in `prepare`).
    fn graph_step(
        &mut self,
        loader: &mut Loader,
        phase: Phase,
        lr: f64,
    ) -> Result<(Tensor, u64, bool, bool)> {
        let accumulate = self.cfg.optim.accumulate;
        let mut micro = Vec::with_capacity(accumulate as usize);
        let mut images = 0;
        for m in 0..accumulate {
            let (staged, step_batch, seed) = self.next_micro(loader, m, true)?;
            images += staged.batch.size as u64;
            let noise = self
                .session
                .model
                .step_noise(&step_batch, seed, None, self.device);
            micro.push(Micro {
                batch: step_batch,
                noise,
            });
        }
        let model = &self.session.model;
        let graphs = self.graphs.as_mut().context("no fixed-shape steps")?;
        let queued = graphs
            .step(model, &mut self.opt, phase, &micro, lr)
            .with_context(|| format!("step {}", self.state.step))?;
        Ok((queued.record, images, queued.has_align, queued.has_mlm))
    }

    /// Micro-batch `m` of the step: drawn from the loader (its position
    /// recorded), on the device at the model's image size (with the text
    /// over the whole context for `graph`), and its seed.
    fn next_micro(
        &mut self,
        loader: &mut Loader,
        m: u64,
        graph: bool,
    ) -> Result<(Staged, model::StepBatch, u64)> {
        let batch = loader.next().context("the loader stopped")??;
        self.state.next_position = batch.position.next(loader.steps_per_epoch());
        let staged = if graph {
            Staged::for_graph(batch, self.device)?
        } else {
            Staged::new(batch, self.device)
        };
        let step_batch = model::StepBatch {
            pixels: fit_to(
                &staged.step.pixels,
                self.session.run.mmclip.clip.vision.image_size,
            ),
            input_ids: staged.step.input_ids.shallow_clone(),
            entity: staged.step.entity.shallow_clone(),
        };
        let seed = step_seed(
            self.state.seed,
            self.state.step * self.cfg.optim.accumulate + m,
        );
        Ok((staged, step_batch, seed))
    }

    /// The micro-batches of one step: each one's gradient, scaled by
    /// 1/`accumulate`, and its losses, added up on the device (their mean
    /// over the ranks); with the images the step trained on.
    fn forward_backward(&mut self, loader: &mut Loader, phase: Phase) -> Result<(LossSlots, u64)> {
        let accumulate = self.cfg.optim.accumulate;
        let ranks = self
            .dist
            .as_ref()
            .map_or(1, |d| d.launch().world_size as u64);
        let reduced = self.cfg.train.autocast.reduced_on(self.device);
        let mut sums: Option<LossSlots> = None;
        let mut images = 0;
        for micro in 0..accumulate {
            let (staged, step_batch, seed) = self.next_micro(loader, micro, false)?;
            images += staged.batch.size as u64 * ranks;
            let paired = step_batch.paired_rows();
            let total_rows = step_batch.pixels.size()[0];
            let shard = self
                .dist
                .as_ref()
                .map(|d| model::mmclip::Shard::new(d.group(), paired, total_rows - paired));
            let (losses, _) = model::autocast::autocast(self.device, reduced, || {
                self.session
                    .model
                    .step_sharded(&step_batch, phase, seed, shard.as_ref())
            })
            .with_context(|| format!("step {}", self.state.step))?;
            let slots = LossSlots::of(&losses);
            sums = Some(match sums {
                None => slots,
                Some(s) => s.add(&slots),
            });
            if let (Some(d), true) = (&self.dist, micro + 1 == accumulate) {
                // The last micro-batch's backward pass starts the gradients'
                // all-reduces as their buckets complete.
                d.arm_gradients();
            }
            (losses.total / accumulate as f64).backward();
        }
        let sums = sums.context("optim.accumulate is 0")?;
        if let Some(d) = &self.dist {
            d.group()
                .all_reduce_mean(std::slice::from_ref(&sums.sums))?;
        }
        Ok((sums, images))
    }

    /// Reads a queued step back (one transfer) and acts on it: counts a
    /// skipped step (too many in a row stop the run), stops on weights the
    /// update made non-finite, and writes the metrics line when due.
    fn resolve(
        &mut self,
        mut p: Pending,
        window: &mut Window,
        metrics: &mut Metrics,
        loader: &Loader,
        bar: &ProgressBar,
    ) -> Result<()> {
        let values = p.values.take().context("a step read twice")?;
        let outcome = Outcome::read(values, p.has_align, p.has_mlm)?;
        if outcome.skipped {
            self.count_skip(p.step)?;
        } else if !outcome.weights_finite {
            bail!(
                "step {}: the update made the weights non-finite ({} holds NaN or infinity; \
                 lr {}, gradient norm {}); stopping without saving, so the last \
                 checkpoint{} is finite; lower optim.lr or set optim.grad_clip and resume",
                p.step,
                self.opt.non_finite_variable().unwrap_or("a variable"),
                p.lr,
                outcome.grad_norm,
                checkpoint::list(self.out)?
                    .pop()
                    .map_or(String::new(), |(_, d)| format!(" ({})", d.display()))
            );
        } else {
            self.state.optimizer_steps += 1;
            self.state.nonfinite_in_a_row = 0;
        }
        window.images += p.images;
        if p.log {
            let n = self.cfg.optim.accumulate as f64;
            let line = window.line(&p, &outcome, n, self.state.skipped_steps, loader);
            metrics.write(&line)?;
            bar.set_message(format!("loss {:.4}", outcome.total / n));
        }
        Ok(())
    }

    /// Counts a skipped (non-finite) step; too many in a row stop the run.
    fn count_skip(&mut self, step: u64) -> Result<()> {
        let t = &self.cfg.train;
        self.state.skipped_steps += 1;
        self.state.nonfinite_in_a_row += 1;
        tracing::warn!("step {step}: non-finite loss or gradient, step skipped");
        if self.state.nonfinite_in_a_row > t.max_nonfinite_in_a_row {
            bail!(
                "{} non-finite steps in a row (limit train.max_nonfinite_in_a_row = {}): stopping at step {step}; \
                 lower optim.lr or set optim.grad_clip, and resume from the last checkpoint",
                self.state.nonfinite_in_a_row,
                t.max_nonfinite_in_a_row,
            );
        }
        Ok(())
    }

    /// Rank 0 writes a checkpoint (returned); every rank then checks that
    /// the ranks' weights agree and waits for the write.
    fn checkpoint(&self) -> Result<Option<PathBuf>> {
        let written = if self.writes {
            Some(checkpoint::save(
                self.out,
                &self.session.vs,
                &self.opt,
                &self.state,
                self.cfg.train.keep_last,
            )?)
        } else {
            None
        };
        if let Some(d) = &self.dist {
            d.check_same_weights(&self.session.vs, self.state.step)?;
            d.barrier("rank 0 writing a checkpoint")?;
        }
        Ok(written)
    }

    fn summary(&self, checkpoint: Option<PathBuf>) -> FitSummary {
        FitSummary {
            step: self.state.step,
            skipped_steps: self.state.skipped_steps,
            checkpoint,
        }
    }
}

/// Binds the run folder `out` to the config and the tokenizer, returning
/// its latest checkpoint and the run's tokenizer. A folder with a
/// checkpoint must hold the same config; one without is (re)written. Rank
/// 0 writes; the other ranks wait for it and read.
fn prepare_folder(
    out: &Path,
    dist: Option<&Dist>,
    config_text: &str,
    tokenizer_path: &Path,
) -> Result<(Option<PathBuf>, ClipTokenizer)> {
    let writes = dist.is_none_or(Dist::is_main);
    if out.exists() && !out.is_dir() {
        bail!("--out {}: exists and is not a folder", out.display());
    }
    if writes {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    } else if let Some(d) = dist {
        // Rank 0 creates the folder and writes config and tokenizer first.
        d.barrier("rank 0 preparing the run folder")?;
    }
    let latest = checkpoint::list(out)?.pop().map(|(_, dir)| dir);
    let config_path = out.join("config.toml");
    let run_tokenizer = out.join(TOKENIZER_FILE);
    if latest.is_some() {
        match std::fs::read_to_string(&config_path) {
            Ok(existing) if existing != config_text => bail!(
                "{}: this run was started with another config; use a new --out folder or the same config",
                config_path.display()
            ),
            Ok(_) => {}
            Err(_) if writes => write_atomic(&config_path, config_text.as_bytes())?,
            Err(e) => return Err(e).with_context(|| format!("reading {}", config_path.display())),
        }
    } else if writes {
        // Nothing trained yet: whatever an earlier start left is replaced.
        write_atomic(&config_path, config_text.as_bytes())?;
    }
    if writes && (latest.is_none() || !run_tokenizer.exists()) {
        let bytes = std::fs::read(tokenizer_path)
            .with_context(|| format!("reading the tokenizer {}", tokenizer_path.display()))?;
        write_atomic(&run_tokenizer, &bytes)?;
    }
    if let Some(d) = dist.filter(|d| d.is_main()) {
        d.barrier("rank 0 preparing the run folder")?;
    }
    Ok((latest, ClipTokenizer::from_file(&run_tokenizer)?))
}

/// `RUN/metrics.jsonl`, appended to by the process that writes the run.
struct Metrics {
    file: Option<std::fs::File>,
    path: PathBuf,
}

impl Metrics {
    fn open(out: &Path, writes: bool) -> Result<Metrics> {
        let path = out.join(METRICS_FILE);
        let file = if writes {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            Some(file)
        } else {
            None
        };
        Ok(Metrics { file, path })
    }

    fn write(&mut self, line: &serde_json::Value) -> Result<()> {
        if let Some(file) = &mut self.file {
            writeln!(file, "{line}").with_context(|| format!("writing {}", self.path.display()))?;
        }
        Ok(())
    }
}

/// The loader's 224-px images resized (area average or bilinear) to the
/// model's input side, when it differs (the small test models).
pub fn fit_to(pixels: &Tensor, side: i64) -> Tensor {
    let current = pixels.size()[3];
    if current == side {
        pixels.shallow_clone()
    } else if current % side == 0 {
        pixels.avg_pool2d(
            [current / side, current / side],
            [current / side, current / side],
            [0, 0],
            false,
            true,
            None,
        )
    } else {
        pixels.upsample_bilinear2d([side, side], false, None, None)
    }
}

/// One step's losses on the device: float64 `[total, mim, align, mlm]`,
/// 0 where a term is absent, summed over its micro-batches; which terms
/// any micro-batch had.
pub(crate) struct LossSlots {
    pub(crate) sums: Tensor,
    has_align: bool,
    has_mlm: bool,
}

/// A step's record as [`Outcome::read`] reads it: float64 `[total, mim,
/// align, mlm, gradient norm, skipped, weights finite]` on the device.
pub(crate) fn step_record(losses: &LossSlots, update: &Update, weights_finite: &Tensor) -> Tensor {
    Tensor::cat(
        &[
            losses.sums.shallow_clone(),
            update.grad_norm.reshape([1]),
            update.skipped.to_kind(Kind::Double).reshape([1]),
            weights_finite.to_kind(Kind::Double).reshape([1]),
        ],
        0,
    )
}

impl LossSlots {
    pub(crate) fn of(l: &model::Losses) -> LossSlots {
        let zero = || l.total.zeros_like();
        let parts: Vec<Tensor> = [
            l.total.shallow_clone(),
            l.mim.shallow_clone(),
            l.align.as_ref().map_or_else(zero, Tensor::shallow_clone),
            l.mlm.as_ref().map_or_else(zero, Tensor::shallow_clone),
        ]
        .iter()
        .map(|t| t.detach().to_kind(Kind::Double).reshape([1]))
        .collect();
        LossSlots {
            sums: Tensor::cat(&parts, 0),
            has_align: l.align.is_some(),
            has_mlm: l.mlm.is_some(),
        }
    }

    pub(crate) fn add(self, other: &LossSlots) -> LossSlots {
        LossSlots {
            sums: self.sums + &other.sums,
            has_align: self.has_align || other.has_align,
            has_mlm: self.has_mlm || other.has_mlm,
        }
    }
}

/// A step as read back on the host.
struct Outcome {
    total: f64,
    mim: f64,
    align: Option<f64>,
    mlm: Option<f64>,
    grad_norm: f64,
    skipped: bool,
    weights_finite: bool,
}

impl Outcome {
    /// Reads `p.values` to the host (on CUDA, waits for the step).
    fn read(values: model::transfer::Download, has_align: bool, has_mlm: bool) -> Result<Outcome> {
        let host = values.finish().map_err(anyhow::Error::msg)?;
        let v = Vec::<f64>::try_from(&host).context("reading a step's losses")?;
        let [total, mim, align, mlm, grad_norm, skipped, weights_finite] = v[..] else {
            bail!("a step's record holds {} values, 7 expected", v.len());
        };
        Ok(Outcome {
            total,
            mim,
            align: has_align.then_some(align),
            mlm: has_mlm.then_some(mlm),
            grad_norm,
            skipped: skipped != 0.0,
            weights_finite: weights_finite != 0.0,
        })
    }
}

/// Throughput since the last metrics line.
struct Window {
    /// When the last logged step was queued (or the loop started).
    start: Instant,
    images: u64,
}

impl Window {
    fn new() -> Window {
        Window {
            start: Instant::now(),
            images: 0,
        }
    }

    /// The metrics line of step `p` (losses averaged over its `accumulate`
    /// micro-batches), and a new window.
    fn line(
        &mut self,
        p: &Pending,
        o: &Outcome,
        accumulate: f64,
        skipped_steps: u64,
        loader: &Loader,
    ) -> serde_json::Value {
        let n = accumulate;
        let elapsed = p.queued.duration_since(self.start).as_secs_f64();
        let stats = loader.stats();
        let line = json!({
            "step": p.step,
            "phase": p.phase,
            "loss": o.total / n,
            "loss_align": o.align.map(|a| a / n),
            "loss_mim": o.mim / n,
            "loss_mlm": o.mlm.map(|m| m / n),
            "lr": p.lr,
            "grad_norm": if o.skipped || !o.grad_norm.is_finite() { None } else { Some(o.grad_norm) },
            "images_per_s": self.images as f64 / elapsed.max(1e-9),
            "loader_wait": stats.consumer_wait_share,
            "skipped_steps": skipped_steps,
            "epoch": p.epoch,
        });
        *self = Window {
            start: p.queued,
            images: 0,
        };
        line
    }
}

fn progress_bar(show: bool, at: u64, total: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total).with_position(at);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} steps {per_sec} {msg}",
        )
        .expect("a valid template"),
    );
    bar
}

/// Keeps the lines of a metrics file up to `step` (none for 0). Lines past
/// it, and a last line cut short by a kill, are dropped; the file is only
/// rewritten when something is dropped.
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut kept = String::new();
    for line in text.split_inclusive('\n') {
        let logged = line
            .strip_suffix('\n')
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .and_then(|v| v["step"].as_u64());
        if logged.is_some_and(|s| s <= step) {
            kept.push_str(line);
        }
    }
    if kept.len() != text.len() {
        tracing::info!(
            "{}: keeping the lines up to step {step}, where the run resumes",
            path.display()
        );
        write_atomic(path, kept.as_bytes())?;
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file (`path` + `.partial`),
/// fsync and a rename, then fsyncs the folder so that the rename survives a
/// crash; a failed write removes the temporary file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(shards::write_atomic_through(
        path,
        &partial_path(path),
        bytes,
    )?)
}

/// The temporary file [`write_atomic`] writes `path` through.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_loss_is_read_back_into_its_own_field() {
        let t = |v: f64| Tensor::from(v as f32);
        for (align, mlm) in [
            (None, None),
            (Some(0.25), None),
            (None, Some(0.5)),
            (Some(0.25), Some(0.5)),
        ] {
            let losses = model::Losses {
                align: align.map(t),
                mim: t(1.5),
                mlm: mlm.map(t),
                total: t(3.0),
            };
            // Two micro-batches: the first with every term, the second with
            // these; a term counts when any micro-batch had it.
            let all = model::Losses {
                align: Some(t(1.0)),
                mim: t(1.0),
                mlm: Some(t(1.0)),
                total: t(1.0),
            };
            let slots = LossSlots::of(&losses);
            let both = LossSlots::of(&all).add(&slots);
            let record = |s: &LossSlots| {
                let v = Tensor::cat(
                    &[
                        s.sums.shallow_clone(),
                        Tensor::from_slice(&[2.0f64, 0.0, 1.0]),
                    ],
                    0,
                );
                let download = model::transfer::Download::start(&v).unwrap();
                Outcome::read(download, s.has_align, s.has_mlm).unwrap()
            };
            let read = record(&slots);
            assert_eq!(
                (read.total, read.mim, read.align, read.mlm),
                (3.0, 1.5, align, mlm)
            );
            assert_eq!(
                (read.grad_norm, read.skipped, read.weights_finite),
                (2.0, false, true)
            );
            let read = record(&both);
            assert_eq!(
                (read.total, read.mim, read.align, read.mlm),
                (
                    4.0,
                    2.5,
                    Some(1.0 + align.unwrap_or(0.0)),
                    Some(1.0 + mlm.unwrap_or(0.0))
                )
            );
        }
    }

    #[test]
    fn metrics_keep_the_lines_up_to_the_resumed_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        let line = |s: u64| format!("{{\"step\":{s},\"loss\":1.0}}\n");
        let full: String = (1..=5).map(line).collect();
        std::fs::write(&path, format!("{full}{{\"step\":6,\"lo")).unwrap();
        truncate_metrics(&path, 3).unwrap();
        let kept = std::fs::read_to_string(&path).unwrap();
        assert_eq!(kept, (1..=3).map(line).collect::<String>());
        truncate_metrics(&path, 3).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), kept);
        truncate_metrics(&path, 0).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        truncate_metrics(&dir.path().join("absent.jsonl"), 2).unwrap();
    }
}
