//! Throughput of the full MMCLIP training step: zero_grad → [`Mmclip::step`]
//! (joint phase) → backward → SGD-momentum update, on a synthetic batch, with
//! the step's analytic model FLOPs and, given the accelerator's peak, its MFU.
//!
//! ```text
//! step_bench [--device cpu|cuda] [--preset vit-b16|small|tiny] [--batch 64]
//!            [--paired-fraction 0.75] [--steps 20] [--warmup 3] [--autocast bf16|f16]
//!            [--peak-tflops F] [--threads N] [--seed S] [--json OUT] [--flops-only]
//!            [--fit-extras] [--count-ops] [--fused] [--cuda-graph]
//! ```
//!
//! Prints one JSON line (and writes it to `--json`); `--flops-only` builds
//! the model and batch, skips the steps and prints the FLOPs (and shapes).
//! Each step's update decides on the device whether the gradients are
//! finite (`Optimizer::update`). `--fit-extras` adds what `train`'s loop
//! (`crates/train/src/fit.rs`) does around each step besides it: the loss
//! checked with the gradients, the weights' finiteness, and the previous
//! step's losses and outcome read back to the host while this step is
//! queued (one step late), to show what that costs on a GPU. `bench/train_step/run.sh`
//! runs it next to `bench/train_step/reference.py`, the same step in PyTorch
//! eager; `bench/train_step/README.md` says how to carry it to a GPU machine.
//!
//! `--count-ops` runs one more step after the timed ones and counts the ATen
//! operators it dispatches ([`model::op_count`]), split into forward,
//! backward and update, and those among them estimated to launch a kernel
//! (`kernels_per_step`: no views, allocations or composites): the launch
//! count a GPU step pays, measured on any device (on CUDA the backward's
//! operators run on the autograd engine's threads and are not counted, so
//! count on the CPU). `top_kernels_per_step` names the most frequent.
//! `crates/train/tests/op_count.rs` holds the tiny preset's count to a
//! ceiling. It also counts the operators among them that make the host
//! wait for a CUDA device (`item`, `nonzero`, …: `host_syncs_per_step`);
//! a step with none can run ahead of the device.
//!
//! `--cuda-graph` (CUDA, with `--fused`) captures the whole step in a CUDA
//! graph ([`model::graph`]) and times its replays, after checking them
//! against eager steps (see `time_graph_steps`).
//!
//! `--autocast` runs the forward pass (not the backward or the update, as
//! PyTorch's AMP recipe does) under libtorch's autocast on the chosen
//! device in bfloat16 or float16 ([`model::autocast`]; float16 without a
//! gradient scaler, which does not change the time of a step).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use model::autocast::Reduced;
use model::mmclip::{MimMode, PromptFeatures, step_seed};
use model::{Mmclip, MmclipConfig, Phase, StepBatch};
use serde_json::json;
use tch::{Device, Kind, Tensor, nn};
use train::config::{ModelSection, OptimConfig, Preset};
use train::optim::Optimizer;

/// CLIP BPE ids: start-of-text and end-of-text (the largest id, where the
/// text encoder pools).
const START: i64 = 49406;
const EOT: i64 = 49407;
/// AttMIM's 14 CheXpert prompts.
const PROMPTS: i64 = 14;

/// Operators listed by name in `--count-ops`' `top_kernels_per_step`.
const TOP_OPS: usize = 25;

#[derive(Parser)]
#[command(about = "Times the full MMCLIP training step on a synthetic batch")]
struct Args {
    /// `cpu` or `cuda` (device 0).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Model sizes: `vit-b16` (the paper's), `small`, `tiny` (crates/train/src/config.rs).
    #[arg(long, default_value = "vit-b16")]
    preset: String,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch: i64,
    /// Share of the batch with a report (the rest are image-only rows).
    #[arg(long, default_value_t = 0.75)]
    paired_fraction: f64,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    steps: u64,
    /// Untimed steps first (allocator, cuDNN/cuBLAS heuristics, lazy init).
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Run the forward pass under autocast in this reduced type.
    #[arg(long, value_parser = ["bf16", "f16"])]
    autocast: Option<String>,
    /// Dense peak of the device in TFLOP/s for the MFU (H100 SXM bf16/fp16: 989).
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// libtorch intra-op threads (CPU); default: libtorch's choice.
    #[arg(long)]
    threads: Option<i32>,
    /// Seed of the weights, the batch and the masks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Only count the FLOPs of a step (no step runs; a GPU-sized batch fits a CPU).
    #[arg(long)]
    flops_only: bool,
    /// Also check the loss and the weights and read the previous step back, as fit.rs does.
    #[arg(long)]
    fit_extras: bool,
    /// Count the ATen operators of one more step (forward, backward, update).
    #[arg(long)]
    count_ops: bool,
    /// Update with libtorch's fused SGD kernel (`[optim] fused = true`).
    #[arg(long)]
    fused: bool,
    /// Capture the step (forward, backward, fused update) in a CUDA graph
    /// and time its replays; first checked against eager steps of a second
    /// model with the same initial weights (needs `--device cuda --fused`).
    #[arg(long)]
    cuda_graph: bool,
    /// Under autocast, cast each weight with a kernel of its own (autocast's
    /// way) instead of a group at a time once per step (`model::cast`).
    #[arg(long)]
    cast_per_weight: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => {
            if !tch::Cuda::is_available() {
                bail!(
                    "--device cuda: libtorch reports no CUDA device. Point LD_LIBRARY_PATH at the \
                     lib folder of a CUDA build of torch (python3 -c 'import torch,os;\
                     print(os.path.dirname(torch.__file__))')/lib, and build this binary against \
                     a libtorch that has libtorch_cuda.so (crates/model/build.rs links it)"
                );
            }
            Device::Cuda(0)
        }
        other => bail!("--device {other}: expected cpu or cuda"),
    };
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let preset: Preset = serde_json::from_value(json!(args.preset))
        .with_context(|| format!("--preset {}: expected vit-b16, small or tiny", args.preset))?;
    if args.batch < 1 || !(0.0..=1.0).contains(&args.paired_fraction) || args.steps == 0 {
        bail!("need --batch ≥ 1, --paired-fraction in [0, 1] and --steps ≥ 1");
    }
    let section = ModelSection {
        preset,
        ..Default::default()
    };
    let cfg = section.mmclip(section.preset_clip());
    let b = args.batch;
    let p = (b as f64 * args.paired_fraction).round() as i64;
    if p < 1 {
        bail!("the joint step needs at least one paired row: raise --batch or --paired-fraction");
    }
    let l = cfg.clip.text.max_position_embeddings;

    if args.cuda_graph && (!device.is_cuda() || !args.fused || args.fit_extras || args.count_ops) {
        bail!(
            "--cuda-graph needs --device cuda and --fused (the plain update reads its skip flag \
             on the host), without --fit-extras or --count-ops"
        );
    }

    let init = Instant::now();
    let prompt_lengths: Vec<i64> = (0..PROMPTS).map(|i| 4 + (i * 5) % 9).collect();
    // The same weights each time: `--cuda-graph` builds a second model.
    let build = || {
        tch::manual_seed(args.seed as i64);
        let vs = nn::VarStore::new(device);
        let model = Mmclip::new(vs.root(), &cfg, token_rows(&prompt_lengths, l));
        model.weight_casts().set_enabled(!args.cast_per_weight);
        (vs, model)
    };
    let (vs, model) = build();
    let batch = synthetic_batch(&cfg, b, p, device);
    let params = model::count_parameters(&vs);
    sync(device);
    let init_s = init.elapsed().as_secs_f64();

    let autocast = match args.autocast.as_deref() {
        None => None,
        Some("bf16") => Some(Reduced::BFloat16),
        Some(_) => Some(Reduced::Half),
    };
    let shape = StepShape {
        batch: b,
        paired: p,
        report_len: l,
        prompts: PROMPTS,
        // The model may trim the prompts' padding columns (`Mmclip::prompt_ids`
        // is what the prompt pass runs on); the reports need no such care: the
        // longest fills the context (see `synthetic_batch`).
        prompt_len: model.prompt_ids().size()[1],
        mlm_selected: selected_tokens(&cfg, &batch),
    };
    let breakdown = step_flops(&cfg, &shape);
    let flops: f64 = breakdown.iter().map(|(_, f)| f).sum();
    let mut line = json!({
        "impl": "rust-tch",
        "device": args.device,
        "preset": args.preset,
        "batch": b,
        "paired": p,
        "report_len": shape.report_len,
        "prompts": shape.prompts,
        "prompt_len": shape.prompt_len,
        "mlm_selected": shape.mlm_selected,
        "autocast": autocast.is_some(),
        "autocast_dtype": autocast.map(|r| match r {
            Reduced::BFloat16 => "bfloat16",
            Reduced::Half => "float16",
        }),
        "threads": args.threads,
        "params": params,
        "param_tensors": vs.trainable_variables().len(),
        "fit_extras": args.fit_extras,
        "fused_optimizer": args.fused,
        "cuda_graph": args.cuda_graph,
        "weight_casts": autocast.map(|_| if args.cast_per_weight { "per-weight" } else { "grouped" }),
        "init_s": init_s,
        "flops_per_step": flops,
        "flops_source": "analytic",
        "flops_breakdown": breakdown.iter().map(|(k, f)| (k.to_string(), json!(f))).collect::<serde_json::Map<_, _>>(),
        "peak_tflops": args.peak_tflops,
    });
    if !args.flops_only {
        let fields = if args.cuda_graph {
            time_graph_steps(
                &args,
                (&model, &vs),
                &build,
                &batch,
                autocast,
                device,
                flops,
            )?
        } else {
            time_steps(&args, &model, &batch, &vs, autocast, device, flops)?
        };
        line.as_object_mut().expect("a JSON object").extend(fields);
        // What the steps cast a group at a time (none without autocast or
        // with --cast-per-weight).
        let groups = model.weight_casts().groups();
        line["weight_cast_groups"] = json!(groups.len());
        line["weights_cast_in_groups"] = json!(groups.iter().sum::<usize>());
    }
    println!("{line}");
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{line}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs `warmup` untimed and `steps` timed training steps; the timing
/// fields of the JSON line.
fn time_steps(
    args: &Args,
    model: &Mmclip,
    batch: &StepBatch,
    vs: &nn::VarStore,
    autocast: Option<Reduced>,
    device: Device,
    flops: f64,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let cfg = OptimConfig {
        fused: args.fused,
        ..OptimConfig::default()
    };
    let mut opt = Optimizer::new(vs, &cfg);
    let lr = cfg.lr;
    let mut times = Vec::with_capacity(args.steps as usize);
    let mut last = None;
    let mut late: Option<model::transfer::Download> = None;
    for i in 0..args.warmup + args.steps {
        sync(device);
        let start = Instant::now();
        opt.zero_grad();
        let (losses, trace) = model::autocast::autocast(device, autocast, || {
            model.step(batch, Phase::Joint, step_seed(args.seed, i))
        });
        losses.total.backward();
        if args.fit_extras {
            // fit.rs: the update checks the loss too, the weights are
            // checked, and the previous step's record is read while this
            // one is queued.
            let update = opt.update(lr, Some(&losses.total));
            let record = Tensor::stack(
                &[
                    losses.total.detach().to_kind(Kind::Double),
                    update.grad_norm,
                    update.skipped.to_kind(Kind::Double),
                    opt.weights_finite().to_kind(Kind::Double),
                ],
                0,
            );
            let record = model::transfer::Download::start(&record).map_err(anyhow::Error::msg)?;
            if let Some(previous) = late.replace(record) {
                let host = previous.finish().map_err(anyhow::Error::msg)?;
                let _ = Vec::<f64>::try_from(&host)?;
            }
        } else {
            opt.step(lr);
        }
        let queued = start.elapsed().as_secs_f64();
        sync(device);
        if i >= args.warmup {
            times.push((start.elapsed().as_secs_f64(), queued));
        }
        last = Some((losses, trace));
    }
    let counted = args.count_ops.then(|| {
        model::op_count::count_by_name(|| count_step_ops(args, (model, &mut opt), batch, autocast))
    });
    let (losses, trace) = last.expect("at least one step ran");
    let selected = trace.mlm_selected.sum(Kind::Int64).int64_value(&[]);
    let expected = selected_tokens(model.config(), batch);
    if selected != expected {
        bail!("EntMLM selected {selected} tokens, the FLOP count assumed {expected}");
    }
    let value = |t: &Tensor| t.to_kind(Kind::Double).double_value(&[]);
    let opt_value = |t: &Option<Tensor>| t.as_ref().map(value);
    let loss_total = value(&losses.total);
    let mut fields = timing_fields(args, args.warmup, &times, flops);
    let more = json!({
        "loss_total": loss_total,
        "loss_mim": value(&losses.mim),
        "loss_mlm": opt_value(&losses.mlm),
        "loss_align": opt_value(&losses.align),
        "losses_finite": loss_total.is_finite(),
        "aten_ops_per_step": counted.as_ref().map(|c| &c.0.0),
        "kernels_per_step": counted.as_ref().map(|c| &c.0.1),
        "host_syncs_per_step": counted.as_ref().map(|c| &c.0.2),
        "top_kernels_per_step": counted.as_ref().map(|c| top_kernels(&c.1)),
    });
    fields.extend(object(more));
    Ok(fields)
}

/// `--count-ops`: the operators of one more joint step, by phase: all of
/// them, those estimated to launch a kernel, and the host synchronisations.
fn count_step_ops(
    args: &Args,
    (model, opt): (&Mmclip, &mut Optimizer),
    batch: &StepBatch,
    autocast: Option<Reduced>,
) -> (serde_json::Value, serde_json::Value, serde_json::Value) {
    let device = batch.pixels.device();
    let lr = OptimConfig::default().lr;
    let step = step_seed(args.seed, args.warmup + args.steps);
    use model::op_count::count_syncs as count;
    let ((), zero) = count(|| opt.zero_grad());
    let (losses, forward) = count(|| {
        model::autocast::autocast(device, autocast, || model.step(batch, Phase::Joint, step).0)
    });
    let ((), backward) = count(|| losses.total.backward());
    // What fit.rs queues after the backward pass: the update with its
    // decision, and the weights' check.
    let (_, update) = count(|| (opt.update(lr, Some(&losses.total)), opt.weights_finite()));
    let phases = |f: fn(&model::op_count::Counts) -> u64| {
        json!({
            "forward": f(&forward),
            "backward": f(&backward),
            "update": f(&zero) + f(&update),
            "total": f(&zero) + f(&forward) + f(&backward) + f(&update),
        })
    };
    (
        phases(|c| c.ops),
        phases(|c| c.kernels),
        phases(|c| c.syncs),
    )
}

/// The operators that launched the most kernels, most first, as
/// `[name, count]` pairs.
fn top_kernels(by_name: &std::collections::BTreeMap<String, u64>) -> serde_json::Value {
    let mut pairs: Vec<(&String, &u64)> = by_name.iter().collect();
    pairs.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    json!(pairs.iter().take(TOP_OPS).collect::<Vec<_>>())
}

/// The JSON object of a `json!` object literal.
fn object(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    let serde_json::Value::Object(fields) = value else {
        unreachable!("json! of an object literal is an object")
    };
    fields
}

/// The timing fields of the JSON line: `times` are the timed steps'
/// seconds, each with the seconds the host took to queue it (on CUDA the
/// step runs on after that; a step whose host time is close to its whole
/// time is launch-bound; on the CPU the two are the same).
fn timing_fields(
    args: &Args,
    warmup: u64,
    times: &[(f64, f64)],
    flops: f64,
) -> serde_json::Map<String, serde_json::Value> {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let host_median = median(times.iter().map(|t| t.1).collect());
    let times: Vec<f64> = times.iter().map(|t| t.0).collect();
    let total_s: f64 = times.iter().sum();
    let mean_s = total_s / times.len() as f64;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let achieved = flops / mean_s / 1e12;
    object(json!({
        "steps": args.steps,
        "warmup": warmup,
        "ms_per_step_mean": 1e3 * mean_s,
        "ms_per_step_median": 1e3 * sorted[sorted.len() / 2],
        "ms_per_step_min": 1e3 * sorted[0],
        "host_ms_per_step_median": 1e3 * host_median,
        "images_per_s": args.batch as f64 * times.len() as f64 / total_s,
        "tflops_achieved": achieved,
        "mfu": args.peak_tflops.map(|peak| achieved / peak),
        // tch exposes no CUDA allocator statistics; run.sh samples nvidia-smi.
        "peak_gpu_mib": null,
        "peak_rss_mib": peak_rss_mib(),
    }))
}

/// `--cuda-graph`: `model` (its weights as `build` makes them) runs the
/// warm-up steps eagerly on a side stream, then one step (forward under
/// autocast, backward, fused update) is captured and replayed for every
/// later step, each step's draws copied into the captured noise buffers
/// first. A second model from `build` runs every step eagerly on the same
/// batch and draws: the losses and gradient norms of the replays must
/// match its steps within bf16 noise (the bounds of `tests/step_parity.rs`),
/// or this fails before any figure is printed. The last `steps` replays
/// are timed as [`time_steps`] times eager steps.
fn time_graph_steps(
    args: &Args,
    (model, vs): (&Mmclip, &nn::VarStore),
    build: &dyn Fn() -> (nn::VarStore, Mmclip),
    batch: &StepBatch,
    autocast: Option<Reduced>,
    device: Device,
    flops: f64,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    use model::graph::{CudaGraph, SideStream};
    let cfg = OptimConfig {
        fused: true,
        ..OptimConfig::default()
    };
    let lr = cfg.lr;
    let total = args.warmup.max(2) + 2 * args.steps;
    let seeds: Vec<u64> = (0..total).map(|i| step_seed(args.seed, i)).collect();
    let draws = |i: usize| model.step_noise(batch, seeds[i], None, Device::Cpu);
    // [total loss, gradient norm, skipped] of one step, on the device.
    let step = |m: &Mmclip, opt: &mut Optimizer, noise: &model::mmclip::StepNoise| {
        let (losses, _) = model::autocast::autocast(device, autocast, || {
            m.step_with_noise(batch, Phase::Joint, noise, None)
                .expect("a step without a group calls no collective")
        });
        losses.total.backward();
        let update = opt.update(lr, Some(&losses.total));
        Tensor::stack(
            &[
                losses.total.detach().to_kind(Kind::Double),
                update.grad_norm,
                update.skipped.to_kind(Kind::Double),
            ],
            0,
        )
    };

    // The eager reference, every step.
    let (reference_vs, reference) = build();
    let mut reference_opt = Optimizer::new(&reference_vs, &cfg);
    let mut expected = Vec::new();
    for &seed in &seeds {
        reference_opt.zero_grad();
        let noise = model.step_noise(batch, seed, None, device);
        expected.push(step(&reference, &mut reference_opt, &noise).copy());
    }

    // Warm-up on a side stream, then the capture.
    let mut opt = Optimizer::new(vs, &cfg);
    let mut noise = model.step_noise(batch, seeds[0], None, device);
    let warmup = args.warmup.max(2) as usize;
    let mut got = Vec::new();
    {
        let _side = SideStream::enter(device).map_err(anyhow::Error::msg)?;
        for i in 0..warmup {
            noise.copy_from(&draws(i));
            opt.zero_grad();
            let record = model::graph::run_capturable(|| step(model, &mut opt, &noise))
                .map_err(anyhow::Error::msg)?;
            got.push(record.copy());
        }
    }
    // The backward pass of the capture makes the gradients in the graph's
    // memory, and every replay writes them there.
    opt.zero_grad();
    let (graph, record) =
        CudaGraph::capture(device, || step(model, &mut opt, &noise)).map_err(anyhow::Error::msg)?;
    let mut times = Vec::with_capacity(args.steps as usize);
    for i in warmup..total as usize {
        sync(device);
        let start = Instant::now();
        noise.copy_from(&draws(i));
        graph.replay().map_err(anyhow::Error::msg)?;
        got.push(record.copy());
        let queued = start.elapsed().as_secs_f64();
        sync(device);
        if i >= total as usize - args.steps as usize {
            times.push((start.elapsed().as_secs_f64(), queued));
        }
    }

    // Parity: every step's loss and gradient norm, and the weights at the end.
    let rows = |v: &[Tensor]| -> Result<Vec<Vec<f64>>> {
        v.iter()
            .map(|t| Ok(Vec::<f64>::try_from(&t.to_device(Device::Cpu))?))
            .collect()
    };
    let (want, have) = (rows(&expected)?, rows(&got)?);
    let rel = |a: f64, b: f64| (a - b).abs() / a.abs().max(1e-6);
    let mut worst = (0.0f64, 0.0f64);
    for (i, (w, h)) in want.iter().zip(&have).enumerate() {
        let (loss, norm) = (rel(w[0], h[0]), rel(w[1], h[1]));
        if !(loss <= 2.1e-3 && norm <= 2.3e-2) || w[2] != h[2] {
            bail!(
                "CUDA graph replay differs from the eager step at step {i}: loss {} against {}, \
                 gradient norm {} against {}, skipped {} against {}",
                h[0],
                w[0],
                h[1],
                w[1],
                h[2],
                w[2]
            );
        }
        worst = (worst.0.max(loss), worst.1.max(norm));
    }
    let reference_vars = reference_vs.variables();
    let weights_diff = vs
        .variables()
        .iter()
        .map(|(name, v)| (v - &reference_vars[name]).abs().max().double_value(&[]))
        .fold(0.0f64, f64::max);

    let last = have.last().expect("at least one replay");
    let mut fields = timing_fields(args, warmup as u64, &times, flops);
    let more = json!({
        "loss_total": last[0],
        "losses_finite": last[0].is_finite(),
        "graph_parity": {
            "steps_compared": want.len(),
            "max_loss_rel_diff": worst.0,
            "max_grad_norm_rel_diff": worst.1,
            "max_weight_abs_diff": weights_diff,
        },
    });
    fields.extend(object(more));
    Ok(fields)
}

/// How many report tokens EntMLM selects in `batch` (it takes exactly
/// ⌈λ3·n⌉ of a row's n eligible tokens, whatever the noise): the rows of
/// the vocabulary head. Eligible: entity tokens t with 1 ≤ t ≤ end-of-text.
fn selected_tokens(cfg: &MmclipConfig, batch: &StepBatch) -> i64 {
    let ids = batch.input_ids.to_device(Device::Cpu);
    let (p, l) = ids.size2().expect("input_ids are [P, L]");
    let eot = ids.argmax(-1, false).unsqueeze(1); // the largest id
    let pos = Tensor::arange(l, (Kind::Int64, Device::Cpu)).unsqueeze(0);
    let predictable = pos.le_tensor(&eot).logical_and(&pos.ge(1));
    let noise = model::att_mim::mask_noise(p, l, 0, Device::Cpu);
    let entity = batch.entity.to_device(Device::Cpu);
    model::ent_mlm::select_tokens(&predictable, &entity, &noise, cfg.mlm)
        .sum(Kind::Int64)
        .int64_value(&[])
}

/// Waits for the device's queued work, so the clock reads finished steps.
fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Token rows `[start, random ids…, end-of-text, 0…]` of the given lengths
/// (end-of-text included), `[rows, l]` int64 on the CPU. The random ids lie
/// below the start id, so the end-of-text is each row's largest id.
fn token_rows(lengths: &[i64], l: i64) -> Tensor {
    let rows: Vec<Tensor> = lengths
        .iter()
        .map(|&n| {
            let ids = Tensor::randint_low(1, START, [l], (Kind::Int64, Device::Cpu));
            let _ = ids.narrow(0, 0, 1).fill_(START);
            let _ = ids.narrow(0, n - 1, 1).fill_(EOT);
            let _ = ids.narrow(0, n, l - n).fill_(0);
            ids
        })
        .collect();
    Tensor::stack(&rows, 0)
}

/// `b` random images (`randn`, CLIP-normalised scale) and `p` reports on
/// `device`. Report r has `77 − (37·r mod 58)` tokens (20 to 77; report 0
/// fills the context, as the many MIMIC reports truncated at 77 do, so the
/// text passes run at full width whether or not the model trims padding),
/// and entity flags on the real tokens t (1 ≤ t < end-of-text) with
/// `(7t + 3r) mod 10 < 3`: 30 %. `reference.py` builds the same lengths
/// and flags, so EntMLM selects the same number of tokens on both sides.
fn synthetic_batch(cfg: &MmclipConfig, b: i64, p: i64, device: Device) -> StepBatch {
    let l = cfg.clip.text.max_position_embeddings;
    let side = cfg.clip.vision.image_size;
    let lengths: Vec<i64> = (0..p).map(|r| l - (37 * r) % (l - 19).max(1)).collect();
    let entity: Vec<bool> = lengths
        .iter()
        .enumerate()
        .flat_map(|(r, &n)| {
            (0..l).map(move |t| t >= 1 && t < n - 1 && (7 * t + 3 * r as i64) % 10 < 3)
        })
        .collect();
    StepBatch {
        pixels: Tensor::randn([b, 3, side, side], (Kind::Float, device)),
        input_ids: token_rows(&lengths, l).to_device(device),
        entity: Tensor::from_slice(&entity).view([p, l]).to_device(device),
    }
}

/// The sizes of one step that the FLOPs depend on besides the config.
struct StepShape {
    /// Rows B.
    batch: i64,
    /// Rows with a report, P.
    paired: i64,
    /// Width of the report passes (tokens per report, padding included).
    report_len: i64,
    /// Prompts in AttMIM's prompt map.
    prompts: i64,
    /// Width of the prompt pass.
    prompt_len: i64,
    /// Report positions EntMLM selected (rows of the vocabulary head).
    mlm_selected: i64,
}

/// Model FLOPs of one joint-phase training step of [`Mmclip::step`], plus
/// backward, by pass: `(name, FLOPs)`, each already multiplied out.
///
/// Counted: every matrix product, 2 FLOPs per multiply-add — linear layers
/// (`2·tokens·in·out`), the patch convolution (`2·patches·3p²·D`), attention
/// scores and mixing (`2·T·S·D` each, over the full square: causal and
/// padded positions included, as dense kernels compute them), the vocabulary
/// head and the AttMIM maps. Not counted: norms, activations, softmax,
/// embeddings lookups, losses, the optimiser (all memory-bound, together a
/// few per cent at most of the matrix work here).
///
/// A pass whose result reaches the loss costs 3× its forward (backward = 2×:
/// gradients of inputs and of weights), with two exceptions, which are what
/// autograd really runs: the patch convolutions cost 2× (pixels need no
/// gradient) and the projection of the report tokens 1× (E_report feeds
/// only the mask selection, detached). Passes without gradient — the prompt
/// pass and the AttMIM maps — cost 1×.
///
/// Passes (METHOD.md; `crates/model/src/mmclip.rs`):
/// - `image_full`: the ViT on all B images (1 + N tokens) and both
///   projections (pooled and E_img);
/// - `image_visible`: "input" mode's second ViT pass on the 1 + K visible
///   tokens (K = N − round(λ2·N)); the patch convolution still runs on all
///   N patches before the gather;
/// - `report`: the text encoder on the P reports, projections;
/// - `report_masked`: EntMLM's second text pass, no projection;
/// - `prompts`: the prompt pass (no gradient) and its projection;
/// - `att_mim_maps`: A_r, A_p, A_i (`softmax(E_img E_ctxᵀ)·E_ctx`, no
///   gradient), for the strategy's maps; A_r over all B rows (the unpaired
///   rows are zero-padded, as the model computes them);
/// - `mim_decoder`: embedding of the 1 + K latent tokens, the decoder blocks
///   on 1 + N tokens, the pixel head;
/// - `text_decoder`: causal self-attention, cross-attention to E_img (keys
///   and values from the N image tokens), MLP per layer on P × L, and the
///   vocabulary head at the selected positions only;
/// - `align`: the P × P similarity matrix.
fn step_flops(cfg: &MmclipConfig, s: &StepShape) -> Vec<(&'static str, f64)> {
    let f = |x: i64| x as f64;
    // One pre-LN transformer layer on `seqs` sequences of `t` tokens, width
    // d, MLP width h: q, k, v, out (4·2·t·d²), scores and mixing (2·2·t²·d),
    // MLP (2·2·t·d·h).
    let layers = |n_layers: i64, seqs: i64, t: i64, d: i64, h: i64| {
        f(n_layers)
            * f(seqs)
            * (8.0 * f(t) * f(d * d) + 4.0 * f(t * t) * f(d) + 4.0 * f(t) * f(d) * f(h))
    };
    let (v, t) = (&cfg.clip.vision, &cfg.clip.text);
    let c = cfg.clip.projection_dim;
    let (b, p, l) = (s.batch, s.paired, s.report_len);
    let grid = v.image_size / v.patch_size;
    let n = grid * grid;
    let k = n - (cfg.att_mim.lambda2 * f(n)).round() as i64;
    let patch_conv =
        2.0 * f(b * n) * f(v.num_channels * v.patch_size * v.patch_size) * f(v.hidden_size);
    let vit = |tokens: i64| {
        layers(
            v.num_hidden_layers,
            b,
            tokens,
            v.hidden_size,
            v.intermediate_size,
        )
    };
    let text = |seqs: i64, len: i64| {
        layers(
            t.num_hidden_layers,
            seqs,
            len,
            t.hidden_size,
            t.intermediate_size,
        )
    };

    let image_full =
        2.0 * patch_conv + 3.0 * (vit(1 + n) + 2.0 * f(b * (1 + n)) * f(v.hidden_size * c));
    let image_visible = match cfg.mim_mode {
        MimMode::Input => 2.0 * patch_conv + 3.0 * vit(1 + k),
        MimMode::Feature => 0.0,
    };
    let report =
        3.0 * (text(p, l) + 2.0 * f(p * t.hidden_size * c)) + 2.0 * f(p * l) * f(t.hidden_size * c);
    let report_masked = 3.0 * text(p, l);
    let prompts = text(s.prompts, s.prompt_len)
        + 2.0 * f(s.prompts * (1 + s.prompt_len)) * f(t.hidden_size * c);

    // A = softmax(E_img E_ctxᵀ)·E_ctx: 2·N·M·C twice per row.
    let map = |ctx: i64| 4.0 * f(b * n) * f(ctx) * f(c);
    let prompt_ctx = match cfg.prompt_features {
        PromptFeatures::Pooled => s.prompts,
        // Every real token of every prompt; the widths bound it from above.
        PromptFeatures::Tokens => s.prompts * s.prompt_len,
    };
    use model::att_mim::MaskStrategy as S;
    let att_mim_maps = match cfg.att_mim.strategy {
        S::Random => 0.0,
        S::ImageReport => map(l),
        S::PromptDriven => map(prompt_ctx),
        S::ImageSelf => map(n),
        S::AttMim => map(l) + map(prompt_ctx) + map(n),
    };

    let (md, mdims) = (&cfg.mim_decoder, cfg.mim_decoder_dims());
    let pixels_per_patch = mdims.patch_size * mdims.patch_size * mdims.num_channels;
    let mim_decoder = 3.0
        * (2.0 * f(b * (1 + k)) * f(mdims.in_dim * md.hidden_size)
            + layers(
                md.num_layers,
                b,
                1 + n,
                md.hidden_size,
                md.mlp_ratio * md.hidden_size,
            )
            + 2.0 * f(b * (1 + n)) * f(md.hidden_size * pixels_per_patch));

    let (td, tdims) = (&cfg.text_decoder, cfg.text_decoder_dims());
    let dd = tdims.hidden_size;
    let per_layer = layers(1, p, l, dd, td.intermediate_size) // self-attention and MLP
        + 4.0 * f(p * l) * f(dd * dd) // cross-attention q, out
        + 4.0 * f(p * n) * f(tdims.image_dim * dd) // cross-attention k, v from E_img
        + 4.0 * f(p * l) * f(n) * f(dd); // cross-attention scores and mixing
    let text_decoder =
        3.0 * (f(td.num_layers) * per_layer + 2.0 * f(s.mlm_selected) * f(dd * tdims.vocab_size));
    let align = 3.0 * 2.0 * f(p * p) * f(c);

    vec![
        ("image_full", image_full),
        ("image_visible", image_visible),
        ("report", report),
        ("report_masked", report_masked),
        ("prompts", prompts),
        ("att_mim_maps", att_mim_maps),
        ("mim_decoder", mim_decoder),
        ("text_decoder", text_decoder),
        ("align", align),
    ]
}

/// Peak resident memory of this process (Linux `VmHWM`), MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ViT-B/16 at 224 px: 17.6 G multiply-adds per image for the encoder,
    /// the figure DeiT and timm quote as "17.6 GFLOPs" (they count a
    /// multiply-add as one), so 35.1 GFLOPs forward here.
    #[test]
    fn vit_b16_forward_is_twice_the_quoted_multiply_adds() {
        let cfg = MmclipConfig::default();
        let shape = StepShape {
            batch: 1,
            paired: 0,
            report_len: 77,
            prompts: 0,
            prompt_len: 0,
            mlm_selected: 0,
        };
        let full = step_flops(&cfg, &shape)[0].1;
        // image_full = 2·conv + 3·(layers + projections); undo the multipliers.
        let conv = 2.0 * 196.0 * 768.0 * 768.0;
        let proj = 2.0 * 197.0 * 768.0 * 512.0;
        let forward = (full - 2.0 * conv) / 3.0 - proj + conv;
        assert!((forward / 2.0 / 1e9 - 17.56).abs() < 0.05, "{forward}");
    }
}
