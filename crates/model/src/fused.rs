//! libtorch's fused optimiser updates: `_fused_sgd_` and `_fused_adamw_`,
//! the kernels behind `torch.optim.SGD(fused=True)` and
//! `torch.optim.AdamW(fused=True)`, bound through `csrc/fused_optim.cpp`.
//! One call updates a whole list of parameters (CPU and CUDA, float32 and
//! reduced types), where an update written with tensor operators dispatches
//! several operators per parameter tensor.
//!
//! The arithmetic is PyTorch's: SGD with dampening 0 and no Nesterov, the
//! first step taking the gradient as the momentum buffer; AdamW with
//! decoupled decay and bias correction from each parameter's step count.
//!
//! Both take an optional `skip` flag on the device (`found_inf`, as
//! `torch.amp.GradScaler` passes it): 1 leaves parameters and state
//! untouched, so a non-finite step is skipped without the host waiting for
//! the device to say so. [`global_norm`] and [`mul_`] are the other list
//! operators of an update (`_foreach_norm`, `_foreach_mul_`): gradient norm
//! and clipping in one operator each instead of one per parameter tensor;
//! [`set_grads_to_none`] drops the gradients without launching anything.

use std::ffi::{c_char, c_int, c_void};

use tch::{Device, Kind, Tensor};

/// A tch tensor handle as the shim sees it (`at::Tensor*`).
type Handle = *const c_void;

unsafe extern "C" {
    fn mmclip_fused_sgd(
        params: *const Handle,
        grads: *const Handle,
        momentum_buffers: *const Handle,
        n: c_int,
        n_buffers: c_int,
        weight_decay: f64,
        momentum: f64,
        lr: f64,
        lr_tensor: Handle,
        is_first_step: bool,
        found_inf: Handle,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn mmclip_fused_adamw(
        params: *const Handle,
        grads: *const Handle,
        exp_avgs: *const Handle,
        exp_avg_sqs: *const Handle,
        state_steps: *const Handle,
        n: c_int,
        lr: f64,
        lr_tensor: Handle,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        found_inf: Handle,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn mmclip_foreach_norm(
        tensors: *const Handle,
        n: c_int,
        out: Handle,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn mmclip_foreach_mul_(
        tensors: *const Handle,
        n: c_int,
        factor: Handle,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn mmclip_set_grads_to_none(
        tensors: *const Handle,
        n: c_int,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// Why a fused update did not run.
#[derive(Debug, thiserror::Error)]
pub enum FusedError {
    /// The lists differ in length.
    #[error("fused {op}: {what} has {got} tensors, {want} expected")]
    Lengths {
        /// The operator.
        op: &'static str,
        /// Which list.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The length expected.
        want: usize,
    },
    /// libtorch refused the update (devices, dtypes or shapes that differ).
    #[error("fused {op}: {message}")]
    Torch {
        /// The operator.
        op: &'static str,
        /// libtorch's message.
        message: String,
    },
}

/// A learning rate: a value the host passes with each call, or a float32
/// scalar on the parameters' device that the kernel reads (so a captured
/// CUDA graph, which replays the values it was captured with, follows a
/// schedule written into the tensor before each replay).
#[derive(Debug, Clone, Copy)]
pub enum Lr<'a> {
    /// Passed by value.
    Value(f64),
    /// Read on the device.
    Device(&'a Tensor),
}

impl Lr<'_> {
    fn parts(self) -> (f64, Handle) {
        match self {
            Lr::Value(v) => (v, std::ptr::null()),
            Lr::Device(t) => (f64::NAN, t.as_ptr() as Handle),
        }
    }
}

/// SGD hyper-parameters of [`sgd_`].
#[derive(Debug, Clone, Copy)]
pub struct SgdSettings<'a> {
    /// Learning rate.
    pub lr: Lr<'a>,
    /// Momentum (0: none).
    pub momentum: f64,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f64,
    /// The buffers hold nothing yet: they become the (decayed) gradients.
    pub first_step: bool,
}

/// AdamW hyper-parameters of [`adamw_`].
#[derive(Debug, Clone, Copy)]
pub struct AdamwSettings<'a> {
    /// Learning rate.
    pub lr: Lr<'a>,
    /// β1, β2.
    pub betas: (f64, f64),
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

fn handles(tensors: &[Tensor]) -> Vec<Handle> {
    tensors.iter().map(|t| t.as_ptr() as Handle).collect()
}

fn maybe(t: Option<&Tensor>) -> Handle {
    t.map_or(std::ptr::null(), |t| t.as_ptr() as Handle)
}

fn check(op: &'static str, n: usize, lists: &[(&'static str, usize)]) -> Result<c_int, FusedError> {
    for &(what, got) in lists {
        if got != n {
            return Err(FusedError::Lengths {
                op,
                what,
                got,
                want: n,
            });
        }
    }
    Ok(n as c_int)
}

fn call(op: &'static str, f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), FusedError> {
    crate::shim::call(f).map_err(|message| FusedError::Torch { op, message })
}

/// One SGD update of `params` in place with their `grads`, updating the
/// `momentum_buffers` (same shapes; on the first step their contents are
/// ignored and replaced by the gradients; none when the momentum is 0), as
/// `torch.optim.SGD(fused=True)`. Nothing changes when `skip` (a float32
/// scalar on the parameters' device) holds 1.
pub fn sgd_(
    params: &[Tensor],
    grads: &[Tensor],
    momentum_buffers: &[Tensor],
    s: SgdSettings<'_>,
    skip: Option<&Tensor>,
) -> Result<(), FusedError> {
    // libtorch takes no buffers at all when there is no momentum.
    let buffers = if s.momentum == 0.0 { 0 } else { params.len() };
    let n = check("sgd", params.len(), &[("grads", grads.len())])?;
    let n_buffers = check(
        "sgd",
        buffers,
        &[("momentum_buffers", momentum_buffers.len())],
    )?;
    if n == 0 {
        return Ok(());
    }
    let (p, g, m) = (handles(params), handles(grads), handles(momentum_buffers));
    let (lr, lr_tensor) = s.lr.parts();
    call("sgd", |err, len| {
        // SAFETY: two arrays of `n` and one of `n_buffers` live tensor
        // handles, borrowed for the call (the lengths checked above); the
        // shim catches every C++ exception.
        unsafe {
            mmclip_fused_sgd(
                p.as_ptr(),
                g.as_ptr(),
                m.as_ptr(),
                n,
                n_buffers,
                s.weight_decay,
                s.momentum,
                lr,
                lr_tensor,
                s.first_step,
                maybe(skip),
                err,
                len,
            )
        }
    })
}

/// One AdamW update of `params` in place, as `torch.optim.AdamW(fused=True)`
/// after its step counts were advanced to `step` (1 on the first update; a
/// float32 scalar on the parameters' device, read there): the moments are
/// updated in place and bias-corrected with `step`. Nothing changes when
/// `skip` (a float32 scalar on the same device) holds 1.
pub fn adamw_(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    step: &Tensor,
    s: AdamwSettings<'_>,
    skip: Option<&Tensor>,
) -> Result<(), FusedError> {
    let n = check(
        "adamw",
        params.len(),
        &[
            ("grads", grads.len()),
            ("exp_avgs", exp_avgs.len()),
            ("exp_avg_sqs", exp_avg_sqs.len()),
        ],
    )?;
    if n == 0 {
        return Ok(());
    }
    // PyTorch keeps one float32 step tensor per parameter; every parameter
    // here shares the optimiser's count, and the kernel only reads it.
    let steps: Vec<Tensor> = params.iter().map(|_| step.shallow_clone()).collect();
    let (p, g, m, v, t) = (
        handles(params),
        handles(grads),
        handles(exp_avgs),
        handles(exp_avg_sqs),
        handles(&steps),
    );
    let (lr, lr_tensor) = s.lr.parts();
    call("adamw", |err, len| {
        // SAFETY: five arrays of `n` live tensor handles, borrowed for the
        // call; the shim catches every C++ exception.
        unsafe {
            mmclip_fused_adamw(
                p.as_ptr(),
                g.as_ptr(),
                m.as_ptr(),
                v.as_ptr(),
                t.as_ptr(),
                n,
                lr,
                lr_tensor,
                s.betas.0,
                s.betas.1,
                s.weight_decay,
                s.eps,
                maybe(skip),
                err,
                len,
            )
        }
    })
}

/// The L2 norm of all `tensors` together (a float64 scalar on `device`, 0
/// for none), accumulated in float64, as `torch.nn.utils.clip_grad_norm_`
/// computes it: one list operator, read by nobody until the caller asks.
pub fn global_norm(tensors: &[Tensor], device: Device) -> Result<Tensor, FusedError> {
    let out = Tensor::zeros([], (Kind::Double, device));
    if tensors.is_empty() {
        return Ok(out);
    }
    let t = handles(tensors);
    let n = tensors.len() as c_int;
    call("norm", |err, len| {
        // SAFETY: `n` live tensor handles and `out`, borrowed for the call;
        // the shim catches every C++ exception.
        unsafe { mmclip_foreach_norm(t.as_ptr(), n, out.as_ptr() as Handle, err, len) }
    })?;
    Ok(out)
}

/// Multiplies every tensor in place by `factor`, a scalar tensor on their
/// device (of their type).
pub fn mul_(tensors: &[Tensor], factor: &Tensor) -> Result<(), FusedError> {
    if tensors.is_empty() {
        return Ok(());
    }
    let t = handles(tensors);
    let n = tensors.len() as c_int;
    call("mul", |err, len| {
        // SAFETY: as in `global_norm`.
        unsafe { mmclip_foreach_mul_(t.as_ptr(), n, factor.as_ptr() as Handle, err, len) }
    })
}

/// Drops the gradient of every tensor (`zero_grad(set_to_none=True)`,
/// PyTorch's default): the next backward pass stores each gradient instead
/// of adding it to zeros (one kernel less per tensor), and a tensor that
/// gets none stays without one, so an optimiser leaves it alone.
pub fn set_grads_to_none(tensors: &[Tensor]) -> Result<(), FusedError> {
    if tensors.is_empty() {
        return Ok(());
    }
    let t = handles(tensors);
    let n = tensors.len() as c_int;
    call("set_grads_to_none", |err, len| {
        // SAFETY: as in `global_norm`.
        unsafe { mmclip_set_grads_to_none(t.as_ptr(), n, err, len) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Tensors of `shapes` with values in [-1, 1] that differ with `seed`,
    /// made without torch's generator: the tests beside these reseed it.
    fn tensors(seed: i64, shapes: &[&[i64]]) -> Vec<Tensor> {
        shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let n: i64 = s.iter().product();
                let phase = (seed * 7 + i as i64) as f64;
                (Tensor::arange(n, (Kind::Float, Device::Cpu)) * (0.37 + 0.11 * seed as f64)
                    + phase)
                    .sin()
                    .reshape(*s)
            })
            .collect()
    }

    fn max_diff(a: &[Tensor], b: &[Tensor]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs().max().double_value(&[]))
            .fold(0.0, f64::max)
    }

    const SHAPES: [&[i64]; 3] = [&[7, 5], &[5], &[3, 4, 2]];

    fn value(lr: Lr) -> f64 {
        match lr {
            Lr::Value(v) => v,
            Lr::Device(t) => t.double_value(&[]),
        }
    }

    /// `torch.optim.SGD`'s update written with tensor operators.
    fn plain_sgd(p: &[Tensor], g: &[Tensor], m: &mut [Tensor], s: SgdSettings) {
        for (i, (p, g)) in p.iter().zip(g).enumerate() {
            let d = g + p * s.weight_decay;
            let buf = if s.first_step {
                d.copy()
            } else {
                &m[i] * s.momentum + &d
            };
            let mut p = p.shallow_clone();
            let _ = p.g_add_(&(&buf * -value(s.lr)));
            m[i] = buf;
        }
    }

    #[test]
    fn sgd_matches_the_update_written_with_operators_over_steps() {
        let fused_p = tensors(1, &SHAPES);
        let plain_p: Vec<Tensor> = fused_p.iter().map(Tensor::copy).collect();
        let fused_m: Vec<Tensor> = fused_p.iter().map(Tensor::zeros_like).collect();
        let mut plain_m: Vec<Tensor> = fused_m.iter().map(Tensor::copy).collect();
        for step in 0..4 {
            let g = tensors(10 + step, &SHAPES);
            let s = SgdSettings {
                lr: Lr::Value(0.1),
                momentum: 0.9,
                weight_decay: 0.01,
                first_step: step == 0,
            };
            sgd_(&fused_p, &g, &fused_m, s, None).unwrap();
            plain_sgd(&plain_p, &g, &mut plain_m, s);
        }
        let d = max_diff(&fused_p, &plain_p);
        assert!(d < 1e-6, "parameters differ by {d}");
        assert!(
            max_diff(&fused_p, &tensors(1, &SHAPES)) > 0.1,
            "nothing moved"
        );
    }

    #[test]
    fn adamw_matches_the_update_written_with_operators_over_steps() {
        let fused_p = tensors(2, &SHAPES);
        let plain_p: Vec<Tensor> = fused_p.iter().map(Tensor::copy).collect();
        let zeros = || -> Vec<Tensor> { fused_p.iter().map(Tensor::zeros_like).collect() };
        let (m, v) = (zeros(), zeros());
        let (pm, pv) = (zeros(), zeros());
        let s = AdamwSettings {
            lr: Lr::Value(1e-2),
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.05,
        };
        for step in 1..=4u64 {
            let g = tensors(20 + step as i64, &SHAPES);
            adamw_(&fused_p, &g, &m, &v, &Tensor::from(step as f32), s, None).unwrap();
            for i in 0..SHAPES.len() {
                let (mut p, mut m, mut v) = (
                    plain_p[i].shallow_clone(),
                    pm[i].shallow_clone(),
                    pv[i].shallow_clone(),
                );
                let _ = p.g_mul_scalar_(1.0 - value(s.lr) * s.weight_decay);
                let _ = m
                    .g_mul_scalar_(s.betas.0)
                    .g_add_(&(&g[i] * (1.0 - s.betas.0)));
                let _ = v
                    .g_mul_scalar_(s.betas.1)
                    .g_add_(&(g[i].square() * (1.0 - s.betas.1)));
                let bc1 = 1.0 - s.betas.0.powi(step as i32);
                let bc2 = 1.0 - s.betas.1.powi(step as i32);
                let denom = (&v / bc2).sqrt() + s.eps;
                let _ = p.g_add_(&(&m / denom * (-value(s.lr) / bc1)));
            }
        }
        let d = max_diff(&fused_p, &plain_p);
        assert!(d < 1e-6, "parameters differ by {d}");
        assert!(
            max_diff(&fused_p, &tensors(2, &SHAPES)) > 0.01,
            "nothing moved"
        );
    }

    #[test]
    fn sgd_without_momentum_takes_no_buffers() {
        let p = tensors(4, &SHAPES);
        let before: Vec<Tensor> = p.iter().map(Tensor::copy).collect();
        let g = tensors(5, &SHAPES);
        let s = SgdSettings {
            lr: Lr::Value(0.5),
            momentum: 0.0,
            weight_decay: 0.0,
            first_step: false,
        };
        sgd_(&p, &g, &[], s, None).unwrap();
        let want: Vec<Tensor> = before.iter().zip(&g).map(|(b, g)| b - g * 0.5).collect();
        assert!(max_diff(&p, &want) < 1e-6);
        let err = sgd_(&p, &g, &g, s, None).unwrap_err().to_string();
        assert!(err.contains("momentum_buffers has 3 tensors"), "{err}");
    }

    #[test]
    fn a_learning_rate_on_the_device_updates_as_the_same_value() {
        let lr = Tensor::from(0.05f32);
        for adam in [false, true] {
            let (a, b) = (tensors(11, &SHAPES), tensors(11, &SHAPES));
            let g = tensors(12, &SHAPES);
            let zeros = || -> Vec<Tensor> { a.iter().map(Tensor::zeros_like).collect() };
            let (ma, va, mb, vb) = (zeros(), zeros(), zeros(), zeros());
            for (p, m, v, lr) in [
                (&a, &ma, &va, Lr::Value(0.05)),
                (&b, &mb, &vb, Lr::Device(&lr)),
            ] {
                if adam {
                    let s = AdamwSettings {
                        lr,
                        betas: (0.9, 0.999),
                        eps: 1e-8,
                        weight_decay: 0.1,
                    };
                    adamw_(p, &g, m, v, &Tensor::from(1.0f32), s, None).unwrap();
                } else {
                    let s = SgdSettings {
                        lr,
                        momentum: 0.9,
                        weight_decay: 0.1,
                        first_step: true,
                    };
                    sgd_(p, &g, m, s, None).unwrap();
                }
            }
            assert!(
                max_diff(&a, &tensors(11, &SHAPES)) > 1e-3,
                "adam {adam}: no update"
            );
            assert!(max_diff(&a, &b) < 1e-7, "adam {adam}: {}", max_diff(&a, &b));
        }
    }

    #[test]
    fn lists_of_other_lengths_and_mixed_types_are_errors_not_crashes() {
        let p = tensors(3, &SHAPES);
        let s = SgdSettings {
            lr: Lr::Value(0.1),
            momentum: 0.9,
            weight_decay: 0.0,
            first_step: true,
        };
        let err = sgd_(&p, &p[..2], &p, s, None).unwrap_err().to_string();
        assert!(err.contains("grads has 2 tensors"), "{err}");
        let doubles: Vec<Tensor> = p.iter().map(|t| t.to_kind(Kind::Double)).collect();
        let bufs: Vec<Tensor> = p.iter().map(Tensor::zeros_like).collect();
        let err = sgd_(&p, &doubles, &bufs, s, None).unwrap_err();
        assert!(matches!(err, FusedError::Torch { .. }), "{err}");
    }

    #[test]
    fn a_skip_flag_of_one_leaves_parameters_and_state_untouched() {
        let p = tensors(6, &SHAPES);
        let g = tensors(7, &SHAPES);
        let copies = |t: &[Tensor]| -> Vec<Tensor> { t.iter().map(Tensor::copy).collect() };
        let zeros = || -> Vec<Tensor> { p.iter().map(Tensor::zeros_like).collect() };
        let (m, v, bufs) = (zeros(), zeros(), tensors(8, &SHAPES));
        let (p0, bufs0) = (copies(&p), copies(&bufs));
        let skip = Tensor::from(1.0f32);
        let adamw = AdamwSettings {
            lr: Lr::Value(0.1),
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.1,
        };
        adamw_(&p, &g, &m, &v, &Tensor::from(1.0f32), adamw, Some(&skip)).unwrap();
        let sgd = SgdSettings {
            lr: Lr::Value(0.1),
            momentum: 0.9,
            weight_decay: 0.1,
            first_step: false,
        };
        sgd_(&p, &g, &bufs, sgd, Some(&skip)).unwrap();
        assert_eq!(
            max_diff(&p, &p0),
            0.0,
            "skipped updates moved the parameters"
        );
        assert_eq!(
            max_diff(&bufs, &bufs0),
            0.0,
            "a skipped SGD update moved its buffers"
        );
        assert_eq!(max_diff(&m, &zeros()) + max_diff(&v, &zeros()), 0.0);
        // A flag of 0 updates.
        sgd_(&p, &g, &bufs, sgd, Some(&Tensor::from(0.0f32))).unwrap();
        assert!(max_diff(&p, &p0) > 0.01, "an unskipped update did nothing");
    }

    #[test]
    fn list_norm_and_scaling_match_their_per_tensor_forms_and_gradients_drop() {
        let t = tensors(9, &SHAPES);
        let norm = global_norm(&t, Device::Cpu).unwrap();
        assert_eq!(norm.kind(), Kind::Double);
        let want = t
            .iter()
            .map(|x| {
                x.to_kind(Kind::Double)
                    .square()
                    .sum(Kind::Double)
                    .double_value(&[])
            })
            .sum::<f64>()
            .sqrt();
        let got = norm.double_value(&[]);
        assert!(
            (got - want).abs() < 1e-12 * want,
            "norm {got}, per tensor {want}"
        );
        assert_eq!(
            global_norm(&[], Device::Cpu).unwrap().double_value(&[]),
            0.0
        );

        let before: Vec<Tensor> = t.iter().map(Tensor::copy).collect();
        mul_(&t, &Tensor::from(0.5f32)).unwrap();
        let halves: Vec<Tensor> = before.iter().map(|x| x * 0.5).collect();
        assert_eq!(max_diff(&t, &halves), 0.0);

        let w = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&w * 2.0).sum(Kind::Float).backward();
        assert!(w.grad().defined());
        set_grads_to_none(std::slice::from_ref(&w)).unwrap();
        assert!(!w.grad().defined(), "the gradient was not dropped");
        (&w * 3.0).sum(Kind::Float).backward();
        assert_eq!(
            w.grad().double_value(&[0]),
            3.0,
            "stored, not added to the old one"
        );
    }
}
