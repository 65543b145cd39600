//! Weights cast to autocast's reduced type once per step, a group at a
//! time, instead of one cast per weight.
//!
//! Under autocast every weight a matrix product or convolution uses is cast
//! by a kernel of its own, and its gradient is cast back by another: about
//! 600 of a ViT-B/16 MMCLIP step's 4,000 kernels in bfloat16. A
//! [`WeightCasts`] scope instead casts the weights a step will use in
//! groups of about [`GROUP_ELEMENTS`] scalars, each with one list copy
//! forward and one backward (`csrc/cast.cpp`), and [`weight`] hands the
//! cast copies to the layers. The values are those of autocast (the same
//! rounding; a weight used twice has its reduced-type gradients summed
//! before the cast back, as with autocast's cached cast), so losses and
//! gradients are bitwise the same.
//!
//! Which weights are cast is learnt, not listed: [`weight`] records the
//! weights a step asks for and does not find, in the order first asked, and
//! the next steps cast them. Consecutive weights share a group, and a group
//! is cast when the step first asks for one of its weights, where autocast
//! would have cast that weight. That place matters: the backward pass runs
//! the operations made later first, so the group's cast back runs as soon
//! as the backward pass has left the layers that use it, and its gradients
//! are ready in time for the all-reduce of their bucket (cast before the
//! forward pass, every group would wait for the end of the backward pass).
//! Outside a scope, or without autocast, [`weight`] returns the weight
//! itself.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, c_int, c_void};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tch::{Device, Tensor, nn};

use crate::autocast::{self, Reduced};
use crate::shim::call;

unsafe extern "C" {
    fn mmclip_cast_group(
        tensors: *const *mut c_void,
        n: c_int,
        dtype: c_int,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn mmclip_tensor_impl(t: *const c_void) -> *const c_void;
}

/// Scalars per group (16 MiB of float32): of the order of a transformer
/// layer, smaller than a gradient bucket.
pub const GROUP_ELEMENTS: i64 = 1 << 22;

/// The tensor a handle refers to (shallow copies share it).
fn key(t: &Tensor) -> usize {
    // SAFETY: `t` is a live handle.
    unsafe { mmclip_tensor_impl(t.as_ptr() as *const c_void) as usize }
}

/// `weights` cast to `reduced` as one autograd operation.
pub fn cast_group(weights: &[Tensor], reduced: Reduced) -> Result<Vec<Tensor>, String> {
    let handles: Vec<*mut c_void> = weights.iter().map(|t| t.as_ptr() as *mut c_void).collect();
    let mut out: Vec<*mut c_void> = vec![std::ptr::null_mut(); weights.len()];
    call(|err, len| {
        // SAFETY: `handles` are live tensors; `out` has room for one new
        // handle per tensor.
        unsafe {
            mmclip_cast_group(
                handles.as_ptr(),
                handles.len() as c_int,
                reduced.code() as c_int,
                out.as_mut_ptr(),
                err,
                len,
            )
        }
    })
    .map_err(|e| format!("casting {} weights to {reduced:?}: {e}", weights.len()))?;
    // SAFETY: each is a new `at::Tensor*` that the returned tensor owns.
    Ok(out
        .into_iter()
        .map(|p| unsafe { Tensor::from_ptr(p as *mut _) })
        .collect())
}

/// The weights of the step in progress on this thread: the recorded
/// groups (each taken when it is cast), the cast copies, and the weights
/// asked for and not recorded.
struct Active {
    groups: Vec<Vec<Tensor>>,
    group_of: HashMap<usize, usize>,
    casts: HashMap<usize, Tensor>,
    first_used: Vec<Tensor>,
    seen: HashSet<usize>,
    reduced: Reduced,
}

thread_local! {
    static ACTIVE: RefCell<Option<Active>> = const { RefCell::new(None) };
}

/// The weight a matrix product or convolution should use: inside a
/// [`WeightCasts`] scope its cast copy (its group is cast at the first
/// such request; a weight not yet recorded is recorded for the next
/// step), else `w` itself, which autocast casts as usual.
///
/// Panics when libtorch fails to cast a group, as a tensor operation does.
pub fn weight(w: &Tensor) -> Tensor {
    ACTIVE.with(|active| {
        let mut active = active.borrow_mut();
        let Some(active) = active.as_mut() else {
            return w.shallow_clone();
        };
        let k = key(w);
        if let Some(cast) = active.casts.get(&k) {
            return cast.shallow_clone();
        }
        if let Some(&g) = active.group_of.get(&k) {
            let group = std::mem::take(&mut active.groups[g]);
            let cast = cast_group(&group, active.reduced).unwrap_or_else(|e| panic!("{e}"));
            for (w, c) in group.iter().zip(cast) {
                active.casts.insert(key(w), c);
            }
            return active.casts[&k].shallow_clone();
        }
        if w.is_floating_point() && w.kind() != active.reduced.kind() && active.seen.insert(k) {
            active.first_used.push(w.shallow_clone());
        }
        w.shallow_clone()
    })
}

/// `nn::Linear`'s forward with [`weight`]'s weights.
pub fn linear(layer: &nn::Linear, xs: &Tensor) -> Tensor {
    let bias = layer.bs.as_ref().map(weight);
    xs.linear(&weight(&layer.ws), bias.as_ref())
}

/// A model's record of the weights its steps cast, in first-use order.
#[derive(Debug)]
pub struct WeightCasts {
    weights: Mutex<Vec<Tensor>>,
    group_elements: i64,
    enabled: AtomicBool,
}

impl Default for WeightCasts {
    fn default() -> Self {
        WeightCasts::with_group_elements(GROUP_ELEMENTS)
    }
}

/// While alive, [`weight`] hands out the scope's casts on this thread;
/// dropping it records the weights first used in it.
#[must_use = "the casts serve only while the scope is alive"]
pub struct Scope<'a> {
    owner: Option<&'a WeightCasts>,
    /// The casts are this thread's: dropped on another, the scope would
    /// leave them in place here.
    _thread: std::marker::PhantomData<*const ()>,
}

impl WeightCasts {
    /// Groups of at least `n` scalars each ([`GROUP_ELEMENTS`] by default).
    pub fn with_group_elements(n: i64) -> WeightCasts {
        WeightCasts {
            weights: Mutex::new(Vec::new()),
            group_elements: n.max(1),
            enabled: AtomicBool::new(true),
        }
    }

    /// Casting per step (the default) or, off, autocast's cast per weight
    /// (to measure the difference).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Starts a step's casts: when autocast reduces on `device` in this
    /// thread, the recorded weights are cast in groups as [`weight`] asks
    /// for them. Inert without autocast, when disabled, and inside another
    /// scope (whose casts serve).
    pub fn begin(&self, device: Device) -> Scope<'_> {
        let inert = Scope {
            owner: None,
            _thread: std::marker::PhantomData,
        };
        let Some(reduced) = autocast::reduced(device) else {
            return inert;
        };
        if !self.enabled.load(Ordering::Relaxed) || ACTIVE.with(|a| a.borrow().is_some()) {
            return inert;
        }
        let weights = self.weights.lock().unwrap_or_else(|e| e.into_inner());
        let groups: Vec<Vec<Tensor>> = groups(&weights, self.group_elements)
            .map(|g| g.iter().map(Tensor::shallow_clone).collect())
            .collect();
        let group_of = groups
            .iter()
            .enumerate()
            .flat_map(|(g, ws)| ws.iter().map(move |w| (key(w), g)))
            .collect();
        ACTIVE.with(|a| {
            *a.borrow_mut() = Some(Active {
                groups,
                group_of,
                casts: HashMap::with_capacity(weights.len()),
                first_used: Vec::new(),
                seen: HashSet::new(),
                reduced,
            })
        });
        Scope {
            owner: Some(self),
            _thread: std::marker::PhantomData,
        }
    }

    /// The sizes of the recorded weights' groups, as the next step casts
    /// them.
    pub fn groups(&self) -> Vec<usize> {
        let weights = self.weights.lock().unwrap_or_else(|e| e.into_inner());
        groups(&weights, self.group_elements)
            .map(|g| g.len())
            .collect()
    }
}

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        let Some(owner) = self.owner else { return };
        let Some(active) = ACTIVE.with(|a| a.borrow_mut().take()) else {
            return;
        };
        let mut weights = owner.weights.lock().unwrap_or_else(|e| e.into_inner());
        weights.extend(active.first_used);
    }
}

/// Consecutive runs of `weights` of at least `elements` scalars (the last
/// may be smaller).
fn groups(weights: &[Tensor], elements: i64) -> impl Iterator<Item = &[Tensor]> {
    let mut rest = weights;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut size = 0;
        let mut end = 0;
        while end < rest.len() && size < elements {
            size += rest[end].numel() as i64;
            end += 1;
        }
        let (group, tail) = rest.split_at(end);
        rest = tail;
        Some(group)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn leaf(shape: &[i64]) -> Tensor {
        leaf_on(shape, Device::Cpu)
    }

    fn leaf_on(shape: &[i64], device: Device) -> Tensor {
        Tensor::randn(shape, (Kind::Float, device)).set_requires_grad(true)
    }

    /// A group cast is autocast's cast of each weight, forward and back,
    /// whatever the weights' layouts; an output left unused gives its
    /// weight no gradient.
    #[test]
    fn a_group_casts_as_autocast_would_and_back() {
        let a = leaf(&[3, 5]);
        let b = leaf(&[5, 3])
            .transpose(0, 1)
            .detach()
            .set_requires_grad(true);
        let unused = leaf(&[4]);
        let weights = [a.shallow_clone(), b.shallow_clone(), unused.shallow_clone()];
        let cast = cast_group(&weights, Reduced::BFloat16).unwrap();
        for (w, c) in weights.iter().zip(&cast) {
            assert_eq!(c.kind(), Kind::BFloat16);
            assert_eq!(c.stride(), w.stride());
            assert!(c.equal(&w.to_kind(Kind::BFloat16)));
        }
        let x = Tensor::randn([2, 3], (Kind::BFloat16, Device::Cpu));
        // `a` used twice: its two reduced-type gradients are summed first.
        let y = x.matmul(&cast[0]).sum(Kind::Float)
            + x.matmul(&cast[0]).square().sum(Kind::Float)
            + cast[1].square().sum(Kind::Float);
        y.backward();
        // The same through autocast's path: a cast per weight.
        let (a2, b2) = (
            a.detach().set_requires_grad(true),
            b.detach().set_requires_grad(true),
        );
        let ca = a2.to_kind(Kind::BFloat16);
        let y2 = x.matmul(&ca).sum(Kind::Float)
            + x.matmul(&ca).square().sum(Kind::Float)
            + b2.to_kind(Kind::BFloat16).square().sum(Kind::Float);
        y2.backward();
        assert!(a.grad().equal(&a2.grad()));
        assert!(b.grad().equal(&b2.grad()));
        assert_eq!(b.grad().stride(), b.stride());
        assert!(!unused.grad().defined());
    }

    /// Outside a scope, or in one without autocast, the layers get the
    /// weights themselves; inside one, the recorded weights' casts, and the
    /// groups close at `GROUP_ELEMENTS`.
    #[test]
    fn weights_are_recorded_then_cast_in_groups() {
        let _serial = autocast::serial();
        let big = leaf(&[GROUP_ELEMENTS / 1024, 1024]);
        let small = [leaf(&[8, 8]), leaf(&[8])];
        let casts = WeightCasts::default();
        let ask = || {
            [&big, &small[0], &small[1]]
                .map(|w| weight(w).kind())
                .to_vec()
        };
        assert_eq!(ask(), vec![Kind::Float; 3]);
        {
            let _scope = casts.begin(Device::Cpu);
            assert_eq!(ask(), vec![Kind::Float; 3], "no autocast, no casts");
        }
        assert!(casts.groups().is_empty());
        let reduced = Some(Reduced::BFloat16);
        autocast::autocast(Device::Cpu, reduced, || {
            {
                let _scope = casts.begin(Device::Cpu);
                assert_eq!(ask(), vec![Kind::Float; 3], "first asked: recorded");
            }
            assert_eq!(casts.groups(), vec![1, 2]);
            let _scope = casts.begin(Device::Cpu);
            assert_eq!(ask(), vec![Kind::BFloat16; 3]);
            // A nested scope leaves the outer one's casts in place.
            drop(casts.begin(Device::Cpu));
            assert_eq!(ask(), vec![Kind::BFloat16; 3]);
        });
        assert_eq!(ask(), vec![Kind::Float; 3]);
        casts.set_enabled(false);
        autocast::autocast(Device::Cpu, reduced, || {
            let _scope = casts.begin(Device::Cpu);
            assert_eq!(ask(), vec![Kind::Float; 3], "disabled");
        });
    }

    /// On CUDA, where the list copy converts types on its fast path (a
    /// launch per few dozen tensors): a ViT-B/16-sized group, more tensors
    /// than one launch takes, one of them transposed, cast and cast back
    /// as one cast per weight would.
    #[test]
    #[ignore = "needs a CUDA device: `cargo test -p model cast -- --ignored` on one"]
    fn cuda_group_casts_are_the_per_weight_casts() {
        let device = Device::Cuda(0);
        let mut weights: Vec<Tensor> = (0..100).map(|i| leaf_on(&[64 + i, 768], device)).collect();
        weights.push(
            leaf_on(&[768, 3072], device)
                .transpose(0, 1)
                .detach()
                .set_requires_grad(true),
        );
        let cast = cast_group(&weights, Reduced::BFloat16).unwrap();
        let mut loss = Tensor::zeros([], (Kind::Float, device));
        for (i, (w, c)) in weights.iter().zip(&cast).enumerate() {
            assert!(c.equal(&w.to_kind(Kind::BFloat16)), "weight {i}");
            loss += c.square().sum(Kind::Float) * (i as f64 + 1.0);
        }
        loss.backward();
        for (i, w) in weights.iter().enumerate() {
            let plain = w.detach().set_requires_grad(true);
            (plain.to_kind(Kind::BFloat16).square().sum(Kind::Float) * (i as f64 + 1.0)).backward();
            assert!(w.grad().equal(&plain.grad()), "weight {i}'s gradient");
            assert_eq!(w.grad().stride(), w.stride());
        }
    }
}
