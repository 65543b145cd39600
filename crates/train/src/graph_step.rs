//! `train --cuda-graph`: each training step replays a CUDA graph captured
//! from it ([`model::graph`]), so the host queues one launch per step
//! instead of thousands of kernels.
//!
//! A graph replays fixed shapes on fixed memory, so each batch is copied
//! into the fixed buffers of its shape ([`Shape`]: phase, and per
//! micro-batch rows, paired rows and image size; the text always spans the
//! whole context, [`TextWidth::Context`](crate::data::TextWidth)), with its
//! mask draws ([`model::mmclip::StepNoise`]) and the learning rate (a device
//! scalar the fused update reads, [`Lr::Device`]). With gradient
//! accumulation one graph holds all of a step's micro-batches, forward and
//! backward one after the other, and the update. A shape's first
//! [`EAGER_RUNS`] steps run eagerly on a side stream (PyTorch's recipe: the
//! optimiser's buffers and the libraries' workspaces exist before the
//! capture); the next is captured and replayed, and so is every later step
//! of that shape. Every step is a real training step: the eager ones and
//! the replays compute the same thing.
//!
//! What it needs: the fused update (the plain one reads its skip flag on
//! the host), one process. On the CPU nothing is
//! captured and every step runs eagerly from the fixed buffers: the tests
//! check there that those steps equal the ordinary ones.

use std::collections::HashMap;

use anyhow::{Context, Result};
use model::autocast::Reduced;
use model::graph::{CudaGraph, SideStream};
use model::mmclip::{Phase, StepNoise};
use model::{Mmclip, StepBatch};
use tch::{Device, Kind, Tensor};

use crate::fit::{LossSlots, step_record};
use crate::optim::{Lr, Optimizer};

/// Eager steps of a shape before it is captured.
pub const EAGER_RUNS: u32 = 2;

/// Graphs kept at once: each holds a step's activations in its own memory
/// pool. A shape beyond them runs eagerly.
pub const MAX_GRAPHS: usize = 4;

/// What a captured step's shapes depend on: the phase, and each
/// micro-batch's rows, paired rows and image size.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Shape {
    joint: bool,
    micro: Vec<[i64; 4]>,
}

/// One micro-batch of a step, with its draws.
pub struct Micro {
    /// Images at the model's size, text over the whole context.
    pub batch: StepBatch,
    /// Its mask draws.
    pub noise: StepNoise,
}

/// The fixed inputs of one shape's step, and its graph once captured.
struct Slot {
    micro: Vec<Micro>,
    lr: Tensor,
    eager_runs: u32,
    /// The graph and the record its replays write.
    graph: Option<(CudaGraph, Tensor)>,
}

/// One step's record on the device (see [`step_record`]) and which losses
/// it has.
pub struct Queued {
    /// The record, float64 on the device; a replay's is the graph's own
    /// output, rewritten by the next replay of that graph (copy it away
    /// first: `fit` queues its download at once).
    pub record: Tensor,
    /// Whether the step has Loss_align.
    pub has_align: bool,
    /// Whether the step has Loss_MLM.
    pub has_mlm: bool,
}

/// The fixed-shape steps of a run, by shape.
pub struct GraphSteps {
    device: Device,
    reduced: Option<Reduced>,
    slots: HashMap<Shape, Slot>,
    /// Said once: a shape that found every graph taken.
    warned_full: bool,
}

impl GraphSteps {
    /// Steps on `device` under autocast `reduced`.
    pub fn new(device: Device, reduced: Option<Reduced>) -> GraphSteps {
        GraphSteps {
            device,
            reduced,
            slots: HashMap::new(),
            warned_full: false,
        }
    }

    /// Graphs captured so far.
    pub fn captured(&self) -> usize {
        self.slots.values().filter(|s| s.graph.is_some()).count()
    }

    /// Queues one optimiser step of the micro-batches `micro` in `phase`
    /// with learning rate `lr`: each one's forward and backward pass (its
    /// gradient scaled by 1/`micro.len()`), then the update, skipped on the
    /// device when the loss or the gradient is not finite. The record holds
    /// the micro-batches' summed losses, as `fit`'s. A failed capture is an
    /// error: the run asked for graphs.
    pub fn step(
        &mut self,
        model: &Mmclip,
        opt: &mut Optimizer,
        phase: Phase,
        micro: &[Micro],
        lr: f64,
    ) -> Result<Queued> {
        anyhow::ensure!(!micro.is_empty(), "a step needs a micro-batch");
        let joint = phase == Phase::Joint;
        let mut shape = Shape {
            joint,
            micro: Vec::with_capacity(micro.len()),
        };
        for m in micro {
            let (rows, _, height, width) = m
                .batch
                .pixels
                .size4()
                .context("pixels must be [B, 3, H, W]")?;
            shape
                .micro
                .push([rows, m.batch.paired_rows(), height, width]);
        }
        let paired = shape.micro.iter().any(|m| m[1] > 0);
        let rows = shape.micro.iter().map(|m| m[0]).sum::<i64>();
        if joint {
            // The warm-up's graphs are done with.
            self.slots.retain(|s, _| s.joint);
        }
        let queued = |record| Queued {
            record,
            has_align: joint && paired,
            has_mlm: paired,
        };
        if !self.slots.contains_key(&shape) {
            let buffers = micro
                .iter()
                .map(|m| Micro {
                    batch: StepBatch {
                        pixels: m.batch.pixels.zeros_like(),
                        input_ids: m.batch.input_ids.zeros_like(),
                        entity: m.batch.entity.zeros_like(),
                    },
                    noise: StepNoise {
                        patches: m.noise.patches.zeros_like(),
                        tokens: m.noise.tokens.zeros_like(),
                    },
                })
                .collect();
            self.slots.insert(
                shape.clone(),
                Slot {
                    micro: buffers,
                    lr: Tensor::zeros([], (Kind::Float, self.device)),
                    eager_runs: 0,
                    graph: None,
                },
            );
        }
        let captured = self.captured();
        let (device, reduced) = (self.device, self.reduced);
        let slot = self.slots.get_mut(&shape).expect("inserted above");
        for (to, from) in slot.micro.iter_mut().zip(micro) {
            to.batch.pixels.copy_(&from.batch.pixels);
            to.batch.input_ids.copy_(&from.batch.input_ids);
            to.batch.entity.copy_(&from.batch.entity);
            to.noise.copy_from(&from.noise);
        }
        let _ = slot.lr.fill_(lr);
        let run =
            |opt: &mut Optimizer, slot: &Slot| run_step(model, opt, phase, (device, reduced), slot);

        if let Some((graph, record)) = &slot.graph {
            graph.replay().map_err(anyhow::Error::msg)?;
            return Ok(queued(record.shallow_clone()));
        }
        let room = captured < MAX_GRAPHS;
        if device.is_cuda() && slot.eager_runs >= EAGER_RUNS && room {
            // The capture's backward pass makes the gradients in the
            // graph's memory, where every replay writes them.
            opt.zero_grad();
            let (graph, record) =
                CudaGraph::capture(device, || run(opt, slot)).map_err(anyhow::Error::msg)?;
            let record = record?;
            // Capturing ran nothing: this step runs now.
            graph.replay().map_err(anyhow::Error::msg)?;
            tracing::info!(
                "captured the {} step of {rows} rows in {} micro-batch(es) in a CUDA graph",
                if joint { "joint" } else { "warm-up" },
                micro.len(),
            );
            slot.graph = Some((graph, record.shallow_clone()));
            return Ok(queued(record));
        }
        if device.is_cuda() && !room && !self.warned_full {
            self.warned_full = true;
            tracing::warn!(
                "{MAX_GRAPHS} CUDA graphs are kept already: steps of other shapes ({rows} rows \
                 here) run eagerly"
            );
        }
        opt.zero_grad();
        let _side = match device {
            Device::Cuda(_) => Some(SideStream::enter(device).map_err(anyhow::Error::msg)?),
            _ => None,
        };
        if slot.eager_runs >= EAGER_RUNS {
            return Ok(queued(run(opt, slot)?));
        }
        // The runs before a capture check that it can be captured.
        let record = model::graph::run_capturable(|| run(opt, slot))
            .map_err(|e| anyhow::anyhow!("{e}; run without --cuda-graph"))??;
        slot.eager_runs += 1;
        Ok(queued(record))
    }
}

/// One step from a slot's buffers: what `fit` queues for a step of one
/// process, with the learning rate read on the device.
fn run_step(
    model: &Mmclip,
    opt: &mut Optimizer,
    phase: Phase,
    (device, reduced): (Device, Option<Reduced>),
    slot: &Slot,
) -> Result<Tensor> {
    let n = slot.micro.len();
    let mut sums: Option<LossSlots> = None;
    for m in &slot.micro {
        let (losses, _) = model::autocast::autocast(device, reduced, || {
            model.step_with_noise(&m.batch, phase, &m.noise, None)
        })?;
        let slots = LossSlots::of(&losses);
        sums = Some(match sums {
            None => slots,
            Some(s) => s.add(&slots),
        });
        // Dividing by 1 changes nothing and would cost a kernel.
        if n == 1 {
            losses.total.backward();
        } else {
            (losses.total / n as f64).backward();
        }
    }
    let sums = sums.context("a step needs a micro-batch")?;
    let update = opt.update_with(Lr::Device(&slot.lr), Some(&sums.sums.get(0)));
    Ok(step_record(&sums, &update, &opt.weights_finite()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelSection, OptimConfig, OptimKind, Preset};
    use model::mmclip::step_seed;
    use tch::nn::VarStore;

    const START: i64 = 49406;
    const EOT: i64 = 49407;

    /// `[rows, width]` token ids of the given lengths (end-of-text
    /// included), zero-padded, and entity flags on every third real token.
    fn text(lengths: &[i64], width: i64) -> (Tensor, Tensor) {
        let mut ids = vec![0i64; lengths.len() * width as usize];
        let mut entity = vec![false; ids.len()];
        for (r, &n) in lengths.iter().enumerate() {
            let row = r * width as usize;
            for t in 0..n as usize {
                ids[row + t] = match t {
                    0 => START,
                    t if t + 1 == n as usize => EOT,
                    t => 300 + (7 * t as i64 + 13 * r as i64) % 40_000,
                };
                entity[row + t] = t > 0 && t + 1 < n as usize && t % 3 == 1;
            }
        }
        let shape = [lengths.len() as i64, width];
        (
            Tensor::from_slice(&ids).view(shape),
            Tensor::from_slice(&entity).view(shape),
        )
    }

    /// The tiny preset's model configuration.
    fn tiny() -> model::MmclipConfig {
        let section = ModelSection {
            preset: Preset::Tiny,
            ..Default::default()
        };
        section.mmclip(section.preset_clip())
    }

    fn build(cfg: &model::MmclipConfig, kind: OptimKind) -> (VarStore, Mmclip, Optimizer) {
        let vs = VarStore::new(Device::Cpu);
        let prompts = text(&[4, 6, 5], cfg.clip.text.max_position_embeddings).0;
        let model = Mmclip::new(vs.root(), cfg, prompts);
        let opt = Optimizer::new(
            &vs,
            &OptimConfig {
                kind,
                lr: 1e-3,
                grad_clip: Some(1.0),
                fused: true,
                ..OptimConfig::default()
            },
        );
        (vs, model, opt)
    }

    /// The fixed-shape steps (text over the whole context, draws and
    /// learning rate from buffers) are the ordinary steps (text cut after
    /// the longest report, learning rate by value): same records and same
    /// weights up to rounding, over a warm-up and two joint steps with a
    /// changing learning rate, with one micro-batch per step and with two
    /// (gradient accumulation, as `fit` runs it). With AdamW the weights
    /// are held to 2e-4: the key part of a `qkv_proj` bias has no gradient
    /// in exact arithmetic (softmax ignores it), and Adam scales the
    /// rounding noise that the other text width leaves there to a step of
    /// up to lr.
    #[test]
    fn fixed_shape_steps_equal_the_ordinary_steps() {
        fixed_shape_steps_equal_the_ordinary_steps_with(OptimKind::Sgd, 1, 1e-6);
        fixed_shape_steps_equal_the_ordinary_steps_with(OptimKind::Adamw, 1, 2e-4);
        fixed_shape_steps_equal_the_ordinary_steps_with(OptimKind::Sgd, 2, 1e-6);
    }

    fn fixed_shape_steps_equal_the_ordinary_steps_with(
        kind: OptimKind,
        accumulate: usize,
        weights_within: f64,
    ) {
        let cfg = tiny();
        let context = cfg.clip.text.max_position_embeddings;
        let side = cfg.clip.vision.image_size;
        // Each micro-batch's reports and images; the longest report is 20
        // tokens in each, so the ordinary steps cut the text there.
        let lengths = [[9, 20, 14], [20, 5, 11]];
        let longest = 20;
        tch::manual_seed(3);
        let (mut trimmed, mut padded) = (Vec::new(), Vec::new());
        for lengths in &lengths[..accumulate] {
            let pixels = Tensor::randn([4, 3, side, side], (Kind::Float, Device::Cpu));
            let (ids, entity) = text(lengths, longest);
            trimmed.push(StepBatch {
                pixels: pixels.shallow_clone(),
                input_ids: ids,
                entity,
            });
            let (ids, entity) = text(lengths, context);
            padded.push(StepBatch {
                pixels,
                input_ids: ids,
                entity,
            });
        }

        let (vs_a, model_a, mut opt_a) = build(&cfg, kind);
        let (mut vs_b, model_b, mut opt_b) = build(&cfg, kind);
        // The same weights: tests in other threads draw from the global
        // generator between the two builds.
        vs_b.copy(&vs_a).unwrap();
        let mut graphs = GraphSteps::new(Device::Cpu, None);
        let plan = [
            (Phase::WarmUp, 1e-3),
            (Phase::Joint, 5e-4),
            (Phase::Joint, 2e-4),
        ];
        for (k, &(phase, lr)) in plan.iter().enumerate() {
            let seed = |m: usize| step_seed(11, (k * accumulate + m) as u64);
            // `fit`'s step: each micro-batch's gradient scaled by
            // 1/accumulate, the losses summed.
            opt_a.zero_grad();
            let mut sums: Option<LossSlots> = None;
            for (m, batch) in trimmed.iter().enumerate() {
                let noise = model_a.step_noise(batch, seed(m), None, Device::Cpu);
                let (losses, _) = model_a.step_with_noise(batch, phase, &noise, None).unwrap();
                let slots = LossSlots::of(&losses);
                sums = Some(match sums {
                    None => slots,
                    Some(s) => s.add(&slots),
                });
                (losses.total / accumulate as f64).backward();
            }
            let slots = sums.unwrap();
            let update = opt_a.update(lr, Some(&slots.sums.get(0)));
            let want = step_record(&slots, &update, &opt_a.weights_finite());

            let micro: Vec<Micro> = padded
                .iter()
                .enumerate()
                .map(|(m, batch)| Micro {
                    batch: StepBatch {
                        pixels: batch.pixels.shallow_clone(),
                        input_ids: batch.input_ids.shallow_clone(),
                        entity: batch.entity.shallow_clone(),
                    },
                    noise: model_b.step_noise(batch, seed(m), None, Device::Cpu),
                })
                .collect();
            let got = graphs
                .step(&model_b, &mut opt_b, phase, &micro, lr)
                .unwrap();
            assert_eq!(
                (got.has_align, got.has_mlm),
                (phase == Phase::Joint, true),
                "step {k}"
            );
            let (want, got) = (
                Vec::<f64>::try_from(&want).unwrap(),
                Vec::<f64>::try_from(&got.record).unwrap(),
            );
            assert_eq!(want.len(), 7);
            for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                assert!(
                    (w - g).abs() <= 1e-5 * w.abs().max(1.0),
                    "{kind:?}, {accumulate} micro-batches, step {k}, record field {i}: \
                     {g} against {w}\n{got:?}\n{want:?}"
                );
            }
            assert_eq!(want[5], 0.0, "step {k} was skipped");
        }
        let b = vs_b.variables();
        let (mut moved, mut diff) = (0.0f64, (0.0f64, String::new()));
        for (name, a) in vs_a.variables() {
            let d = (&a - &b[&name]).abs().max().double_value(&[]);
            if d > diff.0 {
                diff = (d, name.clone());
            }
            moved = moved.max(a.abs().max().double_value(&[]));
        }
        assert!(
            diff.0 < weights_within,
            "{kind:?}, {accumulate} micro-batches: weights differ by {} in {}",
            diff.0,
            diff.1
        );
        assert!(moved > 0.0);
        assert_eq!(graphs.captured(), 0, "nothing is captured on the CPU");
    }

    /// A step that reads a device value on the host is refused before any
    /// capture, naming the operator: here the plain update, which reads its
    /// skip flag and step count.
    #[test]
    fn a_step_that_waits_for_the_device_is_refused_before_the_capture() {
        let cfg = tiny();
        let side = cfg.clip.vision.image_size;
        let context = cfg.clip.text.max_position_embeddings;
        let (ids, entity) = text(&[7, 12], context);
        let batch = StepBatch {
            pixels: Tensor::zeros([3, 3, side, side], (Kind::Float, Device::Cpu)),
            input_ids: ids,
            entity,
        };
        let (vs, model, mut fused) = build(&cfg, OptimKind::Sgd);
        let mut plain = Optimizer::new(
            &vs,
            &OptimConfig {
                kind: OptimKind::Sgd,
                fused: false,
                ..OptimConfig::default()
            },
        );
        let noise = model.step_noise(&batch, 1, None, Device::Cpu);
        let micro = [Micro { batch, noise }];
        let mut graphs = GraphSteps::new(Device::Cpu, None);
        let err = graphs
            .step(&model, &mut plain, Phase::Joint, &micro, 1e-3)
            .err()
            .expect("the plain update waits for the device");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("cannot be captured in a CUDA graph")
                && msg.contains("aten::_local_scalar_dense"),
            "{msg}"
        );
        // The fused update passes the same check, step after step.
        for _ in 0..=EAGER_RUNS {
            graphs
                .step(&model, &mut fused, Phase::Joint, &micro, 1e-3)
                .unwrap();
        }
    }
}
