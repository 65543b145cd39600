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

use std::ffi::{CStr, c_char, c_int, c_void};

use tch::{Kind, Tensor};

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
        is_first_step: bool,
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
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
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
        /// `sgd` or `adamw`.
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
        /// `sgd` or `adamw`.
        op: &'static str,
        /// libtorch's message.
        message: String,
    },
}

/// SGD hyper-parameters of [`sgd_`].
#[derive(Debug, Clone, Copy)]
pub struct SgdSettings {
    /// Learning rate.
    pub lr: f64,
    /// Momentum (0: none).
    pub momentum: f64,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f64,
    /// The buffers hold nothing yet: they become the (decayed) gradients.
    pub first_step: bool,
}

/// AdamW hyper-parameters of [`adamw_`].
#[derive(Debug, Clone, Copy)]
pub struct AdamwSettings {
    /// Learning rate.
    pub lr: f64,
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
    let mut err = [0 as c_char; 1024];
    if f(err.as_mut_ptr(), err.len()) == 0 {
        return Ok(());
    }
    // SAFETY: the shim writes a NUL-terminated message within the buffer.
    let message = unsafe { CStr::from_ptr(err.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    Err(FusedError::Torch { op, message })
}

/// One SGD update of `params` in place with their `grads`, updating the
/// `momentum_buffers` (same shapes; on the first step their contents are
/// ignored and replaced by the gradients; none when the momentum is 0), as
/// `torch.optim.SGD(fused=True)`.
pub fn sgd_(
    params: &[Tensor],
    grads: &[Tensor],
    momentum_buffers: &[Tensor],
    s: SgdSettings,
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
                s.lr,
                s.first_step,
                err,
                len,
            )
        }
    })
}

/// One AdamW update of `params` in place, as `torch.optim.AdamW(fused=True)`
/// after its step counts were advanced to `step` (1 on the first update):
/// the moments are updated in place and bias-corrected with `step`.
pub fn adamw_(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    step: u64,
    s: AdamwSettings,
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
    // PyTorch keeps one float32 step tensor per parameter, on its device;
    // every parameter here shares the optimiser's count.
    let steps: Vec<Tensor> = params
        .iter()
        .map(|p| {
            Tensor::from(step as f32)
                .to_device(p.device())
                .to_kind(Kind::Float)
        })
        .collect();
    let (p, g, m, v, t) = (
        handles(params),
        handles(grads),
        handles(exp_avgs),
        handles(exp_avg_sqs),
        handles(&steps),
    );
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
                s.lr,
                s.betas.0,
                s.betas.1,
                s.weight_decay,
                s.eps,
                err,
                len,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn tensors(seed: i64, shapes: &[&[i64]]) -> Vec<Tensor> {
        tch::manual_seed(seed);
        shapes
            .iter()
            .map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu)))
            .collect()
    }

    fn max_diff(a: &[Tensor], b: &[Tensor]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs().max().double_value(&[]))
            .fold(0.0, f64::max)
    }

    const SHAPES: [&[i64]; 3] = [&[7, 5], &[5], &[3, 4, 2]];

    /// `torch.optim.SGD`'s update written with tensor operators.
    fn plain_sgd(p: &[Tensor], g: &[Tensor], m: &mut Vec<Tensor>, s: SgdSettings) {
        for (i, (p, g)) in p.iter().zip(g).enumerate() {
            let d = g + p * s.weight_decay;
            let buf = if s.first_step {
                d.copy()
            } else {
                &m[i] * s.momentum + &d
            };
            let mut p = p.shallow_clone();
            let _ = p.g_add_(&(&buf * -s.lr));
            m[i] = buf;
        }
    }

    #[test]
    fn sgd_matches_the_update_written_with_operators_over_steps() {
        let fused_p = tensors(1, &SHAPES);
        let plain_p: Vec<Tensor> = fused_p.iter().map(Tensor::copy).collect();
        let fused_m: Vec<Tensor> = fused_p.iter().map(Tensor::zeros_like).collect();
        let mut plain_m = fused_m.iter().map(Tensor::copy).collect();
        for step in 0..4 {
            let g = tensors(10 + step, &SHAPES);
            let s = SgdSettings {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 0.01,
                first_step: step == 0,
            };
            sgd_(&fused_p, &g, &fused_m, s).unwrap();
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
            lr: 1e-2,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.05,
        };
        for step in 1..=4u64 {
            let g = tensors(20 + step as i64, &SHAPES);
            adamw_(&fused_p, &g, &m, &v, step, s).unwrap();
            for i in 0..SHAPES.len() {
                let (mut p, mut m, mut v) = (
                    plain_p[i].shallow_clone(),
                    pm[i].shallow_clone(),
                    pv[i].shallow_clone(),
                );
                let _ = p.g_mul_scalar_(1.0 - s.lr * s.weight_decay);
                let _ = m
                    .g_mul_scalar_(s.betas.0)
                    .g_add_(&(&g[i] * (1.0 - s.betas.0)));
                let _ = v
                    .g_mul_scalar_(s.betas.1)
                    .g_add_(&(g[i].square() * (1.0 - s.betas.1)));
                let bc1 = 1.0 - s.betas.0.powi(step as i32);
                let bc2 = 1.0 - s.betas.1.powi(step as i32);
                let denom = (&v / bc2).sqrt() + s.eps;
                let _ = p.g_add_(&(&m / denom * (-s.lr / bc1)));
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
            lr: 0.5,
            momentum: 0.0,
            weight_decay: 0.0,
            first_step: false,
        };
        sgd_(&p, &g, &[], s).unwrap();
        let want: Vec<Tensor> = before.iter().zip(&g).map(|(b, g)| b - g * 0.5).collect();
        assert!(max_diff(&p, &want) < 1e-6);
        let err = sgd_(&p, &g, &g, s).unwrap_err().to_string();
        assert!(err.contains("momentum_buffers has 3 tensors"), "{err}");
    }

    #[test]
    fn lists_of_other_lengths_and_mixed_types_are_errors_not_crashes() {
        let p = tensors(3, &SHAPES);
        let s = SgdSettings {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
            first_step: true,
        };
        let err = sgd_(&p, &p[..2], &p, s).unwrap_err().to_string();
        assert!(err.contains("grads has 2 tensors"), "{err}");
        let doubles: Vec<Tensor> = p.iter().map(|t| t.to_kind(Kind::Double)).collect();
        let bufs: Vec<Tensor> = p.iter().map(Tensor::zeros_like).collect();
        let err = sgd_(&p, &doubles, &bufs, s).unwrap_err();
        assert!(matches!(err, FusedError::Torch { .. }), "{err}");
    }
}
