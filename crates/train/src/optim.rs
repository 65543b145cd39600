//! SGD with momentum and AdamW over a `VarStore`, with their state as named
//! tensors so a checkpoint can hold it (libtorch's optimisers behind `tch`
//! do not expose theirs). The updates are `torch.optim.SGD` (dampening 0,
//! no Nesterov; the first step's buffer is the gradient) and
//! `torch.optim.AdamW` (bias-corrected, decoupled decay).
//!
//! [`Optimizer::update`] decides on the device: the gradient norm, the
//! clipping, whether the step is finite and the update count stay there
//! (with the fused kernels, which take the skip flag), so that a training
//! loop can read a step's outcome later, without the host waiting for the
//! device at every step.

use std::collections::{BTreeMap, BTreeSet, HashMap};

pub use model::fused::Lr;
use tch::{Kind, Tensor, nn::VarStore};

use crate::config::{OptimConfig, OptimKind, Schedule};

/// The optimiser: hyper-parameters, the variables it updates, its state.
pub struct Optimizer {
    cfg: OptimConfig,
    /// (name, variable) of every trainable variable, sorted by name.
    vars: Vec<(String, Tensor)>,
    /// The variables weight decay applies to (see [`Optimizer::decays`]).
    decayed: BTreeSet<String>,
    /// Per-variable state: SGD `momentum`; AdamW `exp_avg`, `exp_avg_sq`.
    state: BTreeMap<String, Tensor>,
    /// Updates applied, skipped ones not counted (AdamW's bias correction
    /// counts them): a float32 scalar on the variables' device, where the
    /// skip is decided, as PyTorch keeps its `state_steps`.
    steps: Tensor,
}

/// What [`Optimizer::update`] decided, on the device and not read yet.
pub struct Update {
    /// The gradients' global L2 norm before clipping (float64 scalar).
    pub grad_norm: Tensor,
    /// 1 when the update was skipped (a non-finite loss or gradient), else
    /// 0 (float32 scalar).
    pub skipped: Tensor,
}

impl Optimizer {
    /// An optimiser over the trainable variables of `vs`.
    pub fn new(vs: &VarStore, cfg: &OptimConfig) -> Optimizer {
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        // The group each variable was created in (`nn::Path::set_group`),
        // by its storage: tch keeps groups apart from names.
        let groups: HashMap<usize, usize> = vs
            .variables_
            .lock()
            .expect("the variable store's lock")
            .trainable_variables
            .iter()
            .map(|v| (v.tensor.data_ptr() as usize, v.group))
            .collect();
        let decayed = vars
            .iter()
            .filter(|(_, t)| {
                t.dim() >= 2
                    && groups.get(&(t.data_ptr() as usize)) != Some(&model::NO_WEIGHT_DECAY)
            })
            .map(|(name, _)| name.clone())
            .collect();
        let device = vars.first().map_or(tch::Device::Cpu, |(_, v)| v.device());
        Optimizer {
            cfg: cfg.clone(),
            vars,
            decayed,
            state: BTreeMap::new(),
            steps: Tensor::zeros([], (Kind::Float, device)),
        }
    }

    fn device(&self) -> tch::Device {
        self.steps.device()
    }

    /// The gradients of the variables that have one.
    fn grads(&self) -> Vec<Tensor> {
        self.vars
            .iter()
            .map(|(_, v)| v.grad())
            .filter(Tensor::defined)
            .collect()
    }

    /// Whether weight decay applies to the variable `name`: to the weight
    /// matrices and convolution kernels, not to biases, norms, scalars such
    /// as `logit_scale`, or the token and position embedding tables (created
    /// in [`model::NO_WEIGHT_DECAY`]), as timm and open_clip do.
    pub fn decays(&self, name: &str) -> bool {
        self.decayed.contains(name)
    }

    /// Learning rate at optimiser step `step` of `total`.
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        let base = self.cfg.lr;
        match self.cfg.schedule {
            Schedule::Constant => base,
            Schedule::Cosine => {
                let warm = self.cfg.lr_warmup_steps;
                if step < warm {
                    return base * (step + 1) as f64 / warm as f64;
                }
                let t = (step - warm) as f64 / (total.saturating_sub(warm)).max(1) as f64;
                base * 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
            }
        }
    }

    /// Drops every gradient, as PyTorch's `zero_grad()` (`set_to_none`):
    /// the backward pass then stores each gradient instead of adding it to
    /// zeros, and a variable that gets none this step is left alone by the
    /// update (no decay, no momentum), as in PyTorch.
    pub fn zero_grad(&mut self) {
        let vars: Vec<Tensor> = self.vars.iter().map(|(_, v)| v.shallow_clone()).collect();
        model::fused::set_grads_to_none(&vars).expect("dropping the model's own gradients");
    }

    /// The global L2 norm of the gradients, accumulated in float64 on their
    /// device (a float64 scalar; 0 when no variable has a gradient).
    pub fn grad_norm(&self) -> Tensor {
        self.norm_of(&self.grads())
    }

    fn norm_of(&self, tensors: &[Tensor]) -> Tensor {
        model::fused::global_norm(tensors, self.device())
            .expect("a norm of the model's own tensors")
    }

    /// 1 (a float32 scalar on the device) when every variable is finite,
    /// else 0: their float64 norm, which finite float32 values cannot
    /// overflow. Read it later; [`Optimizer::non_finite_variable`] names
    /// the culprit.
    pub fn weights_finite(&self) -> Tensor {
        let params: Vec<Tensor> = self.vars.iter().map(|(_, v)| v.shallow_clone()).collect();
        self.norm_of(&params).isfinite().to_kind(Kind::Float)
    }

    /// The first variable (by name) holding a NaN or an infinity, if any.
    /// Each variable is summed in float64 on its device and the sums are
    /// read back once: any NaN or infinity makes its sum non-finite, while
    /// finite float32 values cannot overflow a float64 sum. Only when the
    /// total is not finite are the variables looked at one by one.
    pub fn non_finite_variable(&self) -> Option<&str> {
        let sums: Vec<Tensor> = tch::no_grad(|| {
            self.vars
                .iter()
                .map(|(_, v)| v.sum(Kind::Double).reshape([1]))
                .collect()
        });
        if sums.is_empty() {
            return None;
        }
        let host = Tensor::cat(&sums, 0).to_device(tch::Device::Cpu);
        let values = Vec::<f64>::try_from(&host).expect("double sums on the host");
        self.vars
            .iter()
            .zip(values)
            .find(|(_, sum)| !sum.is_finite())
            .map(|((name, _), _)| name.as_str())
    }

    /// [`Optimizer::update`] with no loss to check, its decision unread.
    pub fn step(&mut self, lr: f64) {
        let _ = self.update(lr, None);
    }

    /// Clips the gradients to a global norm of `optim.grad_clip` when set (as
    /// `torch.nn.utils.clip_grad_norm_`: scaled by
    /// min(1, max / (norm + 1e-6))) and updates with learning rate `lr`,
    /// unless the gradient norm or `loss` is not finite: then nothing
    /// changes. Variables without a gradient (e.g. the contrastive parts
    /// during warm-up) are left alone.
    ///
    /// With the fused kernels nothing is read back: the decision is a flag
    /// on the device that the kernels take. The plain update, the
    /// reference, reads the flag and the step count before it runs.
    pub fn update(&mut self, lr: f64, loss: Option<&Tensor>) -> Update {
        self.update_with(Lr::Value(lr), loss)
    }

    /// [`Optimizer::update`] with the learning rate given as a value or as
    /// a scalar on the device ([`Lr::Device`]: a captured CUDA graph reads
    /// the schedule from it; the plain update reads it back).
    pub fn update_with(&mut self, lr: Lr<'_>, loss: Option<&Tensor>) -> Update {
        let grads = self.grads();
        let grad_norm = self.norm_of(&grads);
        let mut finite = grad_norm.isfinite();
        if let Some(loss) = loss {
            finite = finite.logical_and(&loss.isfinite());
        }
        let skipped = finite.logical_not().to_kind(Kind::Float);
        if let Some(max) = self.cfg.grad_clip {
            let factor = (max / (&grad_norm + 1e-6))
                .clamp_max(1.0)
                .to_kind(grads.first().map_or(Kind::Float, Tensor::kind));
            model::fused::mul_(&grads, &factor).expect("scaling the model's own gradients");
        }
        let _ = self.steps.g_add_scalar_(1.0).g_sub_(&skipped);
        if self.cfg.fused {
            self.fused_step(lr, &skipped);
        } else if skipped.double_value(&[]) == 0.0 {
            self.plain_step(match lr {
                Lr::Value(v) => v,
                Lr::Device(t) => t.double_value(&[]),
            });
        }
        Update { grad_norm, skipped }
    }

    fn plain_step(&mut self, lr: f64) {
        let c = self.cfg.clone();
        let t = self.steps.double_value(&[]) as i32;
        tch::no_grad(|| {
            for (name, v) in &mut self.vars {
                let g = v.grad();
                if !g.defined() {
                    continue;
                }
                match c.kind {
                    OptimKind::Sgd => {
                        let g = if c.weight_decay != 0.0 && self.decayed.contains(name) {
                            &g + &*v * c.weight_decay
                        } else {
                            g
                        };
                        let update = if c.momentum != 0.0 {
                            let key = format!("momentum.{name}");
                            match self.state.get_mut(&key) {
                                Some(buf) => {
                                    let _ = buf.g_mul_scalar_(c.momentum).g_add_(&g);
                                    buf.shallow_clone()
                                }
                                None => {
                                    let buf = g.detach().copy();
                                    self.state.insert(key, buf.shallow_clone());
                                    buf
                                }
                            }
                        } else {
                            g
                        };
                        let _ = v.g_add_(&(update * -lr));
                    }
                    OptimKind::Adamw => {
                        let (b1, b2) = c.betas;
                        if self.decayed.contains(name) {
                            let _ = v.g_mul_scalar_(1.0 - lr * c.weight_decay);
                        }
                        let m = self
                            .state
                            .entry(format!("exp_avg.{name}"))
                            .or_insert_with(|| g.zeros_like())
                            .shallow_clone();
                        let s = self
                            .state
                            .entry(format!("exp_avg_sq.{name}"))
                            .or_insert_with(|| g.zeros_like())
                            .shallow_clone();
                        let (mut m, mut s) = (m, s);
                        let _ = m.g_mul_scalar_(b1).g_add_(&(&g * (1.0 - b1)));
                        let _ = s.g_mul_scalar_(b2).g_add_(&(g.square() * (1.0 - b2)));
                        let bc1 = 1.0 - b1.powi(t);
                        let bc2 = 1.0 - b2.powi(t);
                        let denom = (&s / bc2).sqrt() + c.eps;
                        let _ = v.g_add_(&(&m / denom * (-lr / bc1)));
                    }
                }
            }
        });
    }

    /// [`Optimizer::step`] through libtorch's fused kernels
    /// ([`model::fused`]): the same state under the same names, so a
    /// checkpoint resumes with either update.
    fn fused_step(&mut self, lr: Lr<'_>, skipped: &Tensor) {
        let c = self.cfg.clone();
        let with_grad: Vec<(&String, &Tensor, Tensor)> = self
            .vars
            .iter()
            .map(|(name, v)| (name, v, v.grad()))
            .filter(|(_, _, g)| g.defined())
            .collect();
        // One kernel call per group of variables that share the settings:
        // decayed or not, and for SGD whether the momentum buffer starts now
        // (first step, or first gradient after the warm-up) or continues.
        let mut groups: BTreeMap<(bool, bool), [Vec<Tensor>; 4]> = BTreeMap::new();
        for (name, v, g) in &with_grad {
            // Without decay the two groups are one call.
            let decays = c.weight_decay != 0.0 && self.decayed.contains(*name);
            let mut state = |key: String| -> (bool, Tensor) {
                match self.state.get(&key) {
                    Some(t) => (false, t.shallow_clone()),
                    None => {
                        let t = g.zeros_like();
                        self.state.insert(key, t.shallow_clone());
                        (true, t)
                    }
                }
            };
            let (first, a, b) = match c.kind {
                // Without momentum there are no buffers (libtorch takes none).
                OptimKind::Sgd if c.momentum == 0.0 => (false, Tensor::new(), Tensor::new()),
                OptimKind::Sgd => {
                    let (first, buf) = state(format!("momentum.{name}"));
                    (first, buf, Tensor::new())
                }
                OptimKind::Adamw => {
                    let (_, m) = state(format!("exp_avg.{name}"));
                    let (_, s) = state(format!("exp_avg_sq.{name}"));
                    (false, m, s)
                }
            };
            let lists = groups.entry((decays, first)).or_default();
            lists[0].push(v.shallow_clone());
            lists[1].push(g.shallow_clone());
            for (list, t) in lists[2..].iter_mut().zip([a, b]) {
                if t.defined() {
                    list.push(t);
                }
            }
        }
        let result = tch::no_grad(|| {
            groups
                .iter()
                .try_for_each(|(&(decays, first), [p, g, a, b])| {
                    let weight_decay = if decays { c.weight_decay } else { 0.0 };
                    match c.kind {
                        OptimKind::Sgd => model::fused::sgd_(
                            p,
                            g,
                            a,
                            model::fused::SgdSettings {
                                lr,
                                momentum: c.momentum,
                                weight_decay,
                                first_step: first,
                            },
                            Some(skipped),
                        ),
                        OptimKind::Adamw => {
                            let s = model::fused::AdamwSettings {
                                lr,
                                betas: c.betas,
                                eps: c.eps,
                                weight_decay,
                            };
                            model::fused::adamw_(p, g, a, b, &self.steps, s, Some(skipped))
                        }
                    }
                })
        });
        // The lists are built from this model's own variables and gradients:
        // same devices, types and shapes, so libtorch has nothing to refuse.
        result.expect("fused update of the model's own variables");
    }

    /// The state as named tensors plus the step count, for a checkpoint.
    pub fn state(&self) -> (Vec<(String, Tensor)>, u64) {
        (
            self.state
                .iter()
                .map(|(k, v)| (k.clone(), v.shallow_clone()))
                .collect(),
            self.steps.double_value(&[]) as u64,
        )
    }

    /// Restores [`Optimizer::state`]; unknown names are an error (a
    /// checkpoint from another model).
    pub fn load_state(&mut self, tensors: Vec<(String, Tensor)>, steps: u64) -> Result<(), String> {
        let device = self.vars.first().map(|(_, v)| v.device());
        for (k, t) in tensors {
            let var_name = k.split_once('.').map(|(_, n)| n).unwrap_or("");
            if !self.vars.iter().any(|(n, _)| n == var_name) {
                return Err(format!(
                    "optimizer state {k} names no variable of this model"
                ));
            }
            let t = match device {
                Some(d) => t.to_device(d),
                None => t,
            };
            self.state.insert(k, t);
        }
        self.steps = Tensor::from(steps as f32).to_device(self.device());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, nn};

    /// One variable w = [[1, -2]] (a matrix, so weight decay applies);
    /// loss = Σ w² → grad 2w.
    fn one_var() -> (VarStore, Tensor) {
        let vs = VarStore::new(Device::Cpu);
        let w = vs
            .root()
            .var_copy("w", &Tensor::from_slice(&[1.0f32, -2.0]).view([1, 2]));
        (vs, w)
    }

    fn run(cfg: OptimConfig, steps: usize) -> Vec<f32> {
        let (vs, w) = one_var();
        let mut opt = Optimizer::new(&vs, &cfg);
        for _ in 0..steps {
            opt.zero_grad();
            w.square().sum(Kind::Float).backward();
            opt.step(cfg.lr);
        }
        Vec::<f32>::try_from(&w.flatten(0, -1)).unwrap()
    }

    #[test]
    fn a_nan_or_infinite_weight_is_found_by_its_variable() {
        let vs = VarStore::new(Device::Cpu);
        let a = vs
            .root()
            .var_copy("a", &Tensor::from_slice(&[1.0f32, -2.0]));
        let b = vs
            .root()
            .var_copy("b", &Tensor::from_slice(&[f32::MAX, f32::MAX, 3.0]));
        let opt = Optimizer::new(&vs, &OptimConfig::default());
        // Large finite values do not overflow the float64 sum.
        assert_eq!(opt.non_finite_variable(), None);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            tch::no_grad(|| {
                let _ = b.narrow(0, 2, 1).fill_(bad as f64);
            });
            assert_eq!(opt.non_finite_variable(), Some("b"), "{bad}");
        }
        tch::no_grad(|| {
            let _ = b.narrow(0, 2, 1).fill_(3.0);
            let _ = a.narrow(0, 0, 1).fill_(f64::NAN);
        });
        assert_eq!(opt.non_finite_variable(), Some("a"));
    }

    #[test]
    fn grad_norm_is_the_norm_of_all_gradients_together() {
        let vs = VarStore::new(Device::Cpu);
        let a = vs
            .root()
            .var_copy("a", &Tensor::from_slice(&[1.0f32, -2.0]));
        let b = vs
            .root()
            .var_copy("b", &Tensor::from_slice(&[3.0f32, 0.5, -1.5]));
        let _unused = vs.root().var_copy("c", &Tensor::from_slice(&[7.0f32]));
        let opt = Optimizer::new(&vs, &OptimConfig::default());
        assert_eq!(opt.grad_norm().double_value(&[]), 0.0, "no gradients yet");
        // loss = Σa² + Σb³: grads 2a and 3b²; c gets none.
        (a.square().sum(Kind::Float) + b.pow_tensor_scalar(3).sum(Kind::Float)).backward();
        let want = [2.0f64, -4.0, 27.0, 0.75, 6.75]
            .iter()
            .map(|g| g * g)
            .sum::<f64>()
            .sqrt();
        let got = opt.grad_norm().double_value(&[]);
        assert!((got - want).abs() < 1e-9 * want, "{got} vs {want}");
    }

    /// A non-finite loss or gradient leaves weights, state and step count
    /// as they were, plain and fused alike; a finite one after it updates
    /// as the first update would have.
    #[test]
    fn a_non_finite_loss_or_gradient_skips_the_update() {
        for kind in [OptimKind::Sgd, OptimKind::Adamw] {
            for fused in [false, true] {
                let cfg = OptimConfig {
                    kind,
                    lr: 0.1,
                    fused,
                    grad_clip: Some(1.0),
                    ..Default::default()
                };
                let (vs, w) = one_var();
                let mut opt = Optimizer::new(&vs, &cfg);
                let before = w.copy();
                for bad_loss in [true, false] {
                    opt.zero_grad();
                    let loss = w.square().sum(Kind::Float);
                    let factor = if bad_loss { 1.0 } else { f64::NAN };
                    (&loss * factor).backward();
                    let shown = if bad_loss {
                        &loss * f64::INFINITY
                    } else {
                        loss
                    };
                    let u = opt.update(cfg.lr, Some(&shown));
                    assert_eq!(u.skipped.double_value(&[]), 1.0, "{kind:?} fused {fused}");
                    assert_eq!(
                        (&w - &before).abs().max().double_value(&[]),
                        0.0,
                        "{kind:?} fused {fused}: a skipped update moved the weight"
                    );
                    assert_eq!(opt.state().1, 0, "a skipped update was counted");
                }
                opt.zero_grad();
                w.square().sum(Kind::Float).backward();
                let u = opt.update(cfg.lr, Some(&w.sum(Kind::Float)));
                assert_eq!(u.skipped.double_value(&[]), 0.0);
                // The gradient [2, -4] has norm √20, clipped to 1.
                assert!((u.grad_norm.double_value(&[]) - 20f64.sqrt()).abs() < 1e-9);
                assert_eq!(opt.state().1, 1);
                let unskipped = {
                    let (vs, w) = one_var();
                    let mut opt = Optimizer::new(&vs, &cfg);
                    opt.zero_grad();
                    w.square().sum(Kind::Float).backward();
                    opt.step(cfg.lr);
                    w
                };
                assert_eq!(
                    (&w - &unskipped).abs().max().double_value(&[]),
                    0.0,
                    "{kind:?} fused {fused}: the update after a skip differs from a first update"
                );
                assert_eq!(opt.weights_finite().double_value(&[]), 1.0);
                tch::no_grad(|| {
                    let _ = w.narrow(1, 0, 1).fill_(f64::INFINITY);
                });
                assert_eq!(opt.weights_finite().double_value(&[]), 0.0);
            }
        }
    }

    #[test]
    fn sgd_momentum_matches_torch_by_hand() {
        // lr 0.1, momentum 0.9: g1 = 2w0 = [2, -4], buf = g1, w1 = w0 - 0.1·g1 = [0.8, -1.6];
        // g2 = [1.6, -3.2], buf = 0.9·[2, -4] + g2 = [3.4, -6.8], w2 = w1 - 0.34·[1, -2] = [0.46, -0.92].
        let cfg = OptimConfig {
            lr: 0.1,
            ..Default::default()
        };
        let w = run(cfg, 2);
        assert!(
            (w[0] - 0.46).abs() < 1e-6 && (w[1] + 0.92).abs() < 1e-6,
            "{w:?}"
        );
    }

    #[test]
    fn adamw_first_step_moves_each_weight_by_lr() {
        // Bias-corrected first step: m̂ = g, v̂ = g², update = lr·g/(|g| + ε) ≈ lr·sign(g);
        // decay first: w·(1 − lr·wd).
        let cfg = OptimConfig {
            kind: OptimKind::Adamw,
            lr: 0.01,
            weight_decay: 0.1,
            ..Default::default()
        };
        let w = run(cfg, 1);
        let want = [1.0 * (1.0 - 0.001) - 0.01, -2.0 * (1.0 - 0.001) + 0.01];
        assert!(
            (w[0] as f64 - want[0]).abs() < 1e-6 && (w[1] as f64 - want[1]).abs() < 1e-6,
            "{w:?}"
        );
    }

    #[test]
    fn state_round_trips_and_resumed_updates_are_identical() {
        let cfg = OptimConfig {
            lr: 0.05,
            ..Default::default()
        };
        let straight = run(cfg.clone(), 4);
        let (vs, w) = one_var();
        let mut opt = Optimizer::new(&vs, &cfg);
        for _ in 0..2 {
            opt.zero_grad();
            w.square().sum(Kind::Float).backward();
            opt.step(cfg.lr);
        }
        let (state, steps) = opt.state();
        let state: Vec<(String, Tensor)> = state.into_iter().map(|(k, t)| (k, t.copy())).collect();
        let mut fresh = Optimizer::new(&vs, &cfg);
        fresh.load_state(state, steps).unwrap();
        for _ in 0..2 {
            fresh.zero_grad();
            w.square().sum(Kind::Float).backward();
            fresh.step(cfg.lr);
        }
        assert_eq!(Vec::<f32>::try_from(&w.flatten(0, -1)).unwrap(), straight);
        let bad = vec![(
            "momentum.nope".to_string(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        )];
        assert!(fresh.load_state(bad, 0).is_err());
        let _ = nn::VarStore::new(Device::Cpu);
    }

    #[test]
    fn cosine_schedule_ramps_then_decays() {
        let (vs, _) = one_var();
        let cfg = OptimConfig {
            schedule: Schedule::Cosine,
            lr_warmup_steps: 10,
            lr: 1.0,
            ..Default::default()
        };
        let opt = Optimizer::new(&vs, &cfg);
        assert!((opt.lr_at(0, 110) - 0.1).abs() < 1e-12);
        assert!((opt.lr_at(9, 110) - 1.0).abs() < 1e-12);
        assert!((opt.lr_at(60, 110) - 0.5).abs() < 1e-12);
        assert!(opt.lr_at(110, 110).abs() < 1e-12);
    }
}

#[cfg(test)]
mod learning {
    use super::*;
    use crate::config::OptimConfig;
    use model::{Clip, ClipConfig};
    use tch::{Device, nn};

    /// The optimiser and CLIP together can memorise 8 image–text pairs: the
    /// contrastive loss falls far below chance (ln 8).
    /// Plain and fused updates of a tiny CLIP over four steps, the first
    /// with gradients for the image encoder only (as in the warm-up, when
    /// the text side has none yet): every weight within float rounding.
    #[test]
    fn fused_updates_match_the_plain_ones() {
        // Both runs start from one set of weights and one batch, drawn
        // from seeded streams of their own: torch's generator is shared
        // with the tests running beside this one, which reseed it, and
        // some draws give a gradient near AdamW's ε somewhere (a weight
        // then moves by a share of lr in one kernel and not the other).
        let uniform = |shape: &[i64], seed: u64| {
            let n: i64 = shape.iter().product();
            model::att_mim::mask_noise(1, n, seed, Device::Cpu).view(shape)
        };
        let start = nn::VarStore::new(Device::Cpu);
        let _ = Clip::new(start.root(), &ClipConfig::tiny());
        let mut names: Vec<_> = start.variables().into_iter().collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        tch::no_grad(|| {
            for (i, (_, mut v)) in names.into_iter().enumerate() {
                // Drawn tensors become uniform with CLIP's spread (standard
                // deviation 0.02); constants (norms, scales) stay.
                if v.numel() > 1 && v.std(false).double_value(&[]) > 0.0 {
                    let u = uniform(&v.size(), 100 + i as u64);
                    v.copy_(&((u - 0.5) * (0.02 * 12f64.sqrt())));
                }
            }
        });
        let pixels = uniform(&[4, 3, 32, 32], 1) * 2.0 - 1.0;
        let ids = (uniform(&[4, 16], 2) * 97.0).to_kind(Kind::Int64) + 1;
        let _ = ids.narrow(1, 15, 1).fill_(99);
        for kind in [OptimKind::Sgd, OptimKind::Adamw] {
            let train = |fused: bool| {
                let mut vs = nn::VarStore::new(Device::Cpu);
                let clip = Clip::new(vs.root(), &ClipConfig::tiny());
                vs.copy(&start).expect("the same variables");
                let cfg = OptimConfig {
                    kind,
                    lr: 1e-2,
                    weight_decay: 0.05,
                    fused,
                    ..Default::default()
                };
                let mut opt = Optimizer::new(&vs, &cfg);
                for step in 0..4 {
                    opt.zero_grad();
                    let i = clip.encode_image(&pixels);
                    let loss = if step == 0 {
                        i.pooled.square().mean(Kind::Float)
                    } else {
                        let t = clip.encode_text(&ids);
                        model::losses::clip_loss(&i.pooled, &t.pooled, clip.logit_scale())
                    };
                    loss.backward();
                    opt.step(cfg.lr);
                }
                let mut vars = vs.variables().into_iter().collect::<Vec<_>>();
                vars.sort_by(|a, b| a.0.cmp(&b.0));
                (vars, opt.state().0.len())
            };
            let ((plain, plain_state), (fused, fused_state)) = (train(false), train(true));
            assert_eq!(plain_state, fused_state, "{kind:?}: the same state tensors");
            for ((name, a), (_, b)) in plain.iter().zip(&fused) {
                // Softmax ignores the key projection's bias (the middle
                // third of `qkv_proj.bias`): its gradient is rounding noise,
                // whose sign AdamW turns into a step of ±lr.
                let q_and_v = |t: &Tensor| {
                    let d = t.size()[0] / 3;
                    Tensor::cat(&[t.narrow(0, 0, d), t.narrow(0, 2 * d, d)], 0)
                };
                let (a, b) = if kind == OptimKind::Adamw && name.ends_with("qkv_proj.bias") {
                    (q_and_v(a), q_and_v(b))
                } else {
                    (a.shallow_clone(), b.shallow_clone())
                };
                // AdamW divides by √v + ε: where a gradient is near ε, the
                // two kernels' rounding moves a weight by a small share of
                // lr (1.3e-5 at lr 1e-2 has been seen); a wrong update
                // moves it by about lr.
                let tolerance = if kind == OptimKind::Adamw { 1e-4 } else { 1e-5 };
                let d = (a - b).abs().max().double_value(&[]);
                assert!(d < tolerance, "{kind:?} {name}: fused differs by {d}");
            }
        }
    }

    /// Decay goes to the weight matrices and kernels only: not to biases,
    /// norms, `logit_scale`, the class token or the embedding tables.
    #[test]
    fn weight_decay_skips_biases_norms_scalars_and_embedding_tables() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _clip = Clip::new(vs.root(), &ClipConfig::tiny());
        let opt = Optimizer::new(
            &vs,
            &OptimConfig {
                weight_decay: 0.1,
                ..Default::default()
            },
        );
        let layer = "text_model.encoder.layers.0";
        for (name, decays) in [
            (format!("{layer}.self_attn.qkv_proj.weight"), true),
            (format!("{layer}.mlp.fc1.weight"), true),
            (
                "vision_model.embeddings.patch_embedding.weight".into(),
                true,
            ),
            ("visual_projection.weight".into(), true),
            (format!("{layer}.self_attn.qkv_proj.bias"), false),
            (format!("{layer}.layer_norm1.weight"), false),
            (format!("{layer}.layer_norm1.bias"), false),
            ("logit_scale".into(), false),
            ("vision_model.embeddings.class_embedding".into(), false),
            (
                "vision_model.embeddings.position_embedding.weight".into(),
                false,
            ),
            ("text_model.embeddings.token_embedding.weight".into(), false),
            (
                "text_model.embeddings.position_embedding.weight".into(),
                false,
            ),
        ] {
            assert!(
                opt.vars.iter().any(|(n, _)| *n == name),
                "{name} is not a variable"
            );
            assert_eq!(opt.decays(&name), decays, "{name}");
        }
    }

    /// With zero gradients an update is decay alone: decayed weights shrink
    /// by (1 − lr·wd) under AdamW and by lr·wd·w under SGD, the others stay;
    /// plain and fused alike.
    #[test]
    fn decay_moves_only_the_decayed_variables() {
        for kind in [OptimKind::Sgd, OptimKind::Adamw] {
            for fused in [false, true] {
                let vs = nn::VarStore::new(Device::Cpu);
                let root = vs.root();
                let w = root.var_copy("w", &Tensor::from_slice(&[1.0f32, 2.0]).view([1, 2]));
                let b = root.var_copy("b", &Tensor::from_slice(&[1.0f32, 2.0]));
                let table = root
                    .set_group(model::NO_WEIGHT_DECAY)
                    .var_copy("table", &Tensor::from_slice(&[1.0f32, 2.0]).view([2, 1]));
                let cfg = OptimConfig {
                    kind,
                    lr: 0.1,
                    momentum: 0.0,
                    weight_decay: 0.5,
                    fused,
                    ..Default::default()
                };
                let mut opt = Optimizer::new(&vs, &cfg);
                opt.zero_grad();
                ((&w.sum(Kind::Float) + b.sum(Kind::Float) + table.sum(Kind::Float)) * 0.0)
                    .backward();
                opt.step(cfg.lr);
                let values = |t: &Tensor| Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap();
                let shrunk = [0.95f32, 1.9];
                let close =
                    |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
                assert!(
                    close(&values(&w), &shrunk),
                    "{kind:?} fused {fused}: w {:?}",
                    values(&w)
                );
                assert!(
                    close(&values(&b), &[1.0, 2.0]),
                    "{kind:?} fused {fused}: b {:?}",
                    values(&b)
                );
                assert!(
                    close(&values(&table), &[1.0, 2.0]),
                    "{kind:?} fused {fused}: table {:?}",
                    values(&table)
                );
            }
        }
    }

    #[test]
    fn adamw_memorises_a_small_contrastive_set() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let clip = Clip::new(vs.root(), &ClipConfig::tiny());
        let pixels = Tensor::randn([8, 3, 32, 32], (Kind::Float, Device::Cpu));
        let ids = Tensor::randint_low(1, 98, [8, 16], (Kind::Int64, Device::Cpu));
        let _ = ids.narrow(1, 15, 1).fill_(99);
        let cfg = OptimConfig {
            kind: OptimKind::Adamw,
            lr: 1e-3,
            ..Default::default()
        };
        let mut opt = Optimizer::new(&vs, &cfg);
        let mut last = f64::NAN;
        for _ in 0..60 {
            opt.zero_grad();
            let (i, t) = (clip.encode_image(&pixels), clip.encode_text(&ids));
            let loss = model::losses::clip_loss(&i.pooled, &t.pooled, clip.logit_scale());
            last = loss.double_value(&[]);
            loss.backward();
            opt.step(cfg.lr);
        }
        assert!(
            last < 0.5,
            "contrastive loss stuck at {last} (chance {})",
            8f64.ln()
        );
    }
}
