//! How many ATen operators a piece of work dispatches: the CPU-measurable
//! proxy for a GPU step's kernel launches (a launch-bound step is one with
//! too many small operators, and their number does not depend on the
//! device). Counted by a libtorch RecordFunction callback in
//! `csrc/op_count.cpp`; nested operators count each (`aten::linear` and the
//! `aten::addmm` it runs are two); an operator over a list of tensors
//! (`_foreach_*`, `_fused_*`, `stack`) is one, as on CUDA. Operators that
//! make the host wait for a CUDA device (`item`, `nonzero`, …) are counted
//! apart too ([`OpCounter::syncs`]).
//!
//! ```no_run
//! let x = tch::Tensor::ones([4], (tch::Kind::Float, tch::Device::Cpu));
//! let (y, ops) = model::op_count::count(|| (&x + 1) * 2);
//! assert!(ops >= 2);
//! # drop(y);
//! ```

use std::collections::BTreeMap;

unsafe extern "C" {
    fn mmclip_op_count_start();
    fn mmclip_op_count_stop();
    fn mmclip_op_count_total() -> u64;
    fn mmclip_op_count_syncs() -> u64;
    fn mmclip_op_count_kernels() -> u64;
    fn mmclip_op_count_last_sync() -> *const std::ffi::c_char;
    fn mmclip_op_count_by_name(out: *mut u8, len: usize) -> usize;
}

/// Counts while alive: [`OpCounter::ops`] is the number of operators the
/// calling thread dispatched since it was made (on the CPU, the backward
/// passes it runs included; other threads' work is not counted).
pub struct OpCounter {
    start: u64,
    start_syncs: u64,
    start_kernels: u64,
}

impl OpCounter {
    /// Starts counting.
    pub fn new() -> OpCounter {
        // SAFETY: the shim's functions take no arguments and guard their
        // registration with a lock; they only add or remove a callback.
        unsafe { mmclip_op_count_start() };
        // SAFETY: reads thread-local counters.
        let (start, start_syncs, start_kernels) = unsafe {
            (
                mmclip_op_count_total(),
                mmclip_op_count_syncs(),
                mmclip_op_count_kernels(),
            )
        };
        OpCounter {
            start,
            start_syncs,
            start_kernels,
        }
    }

    /// Operators this thread dispatched since the counter was made.
    pub fn ops(&self) -> u64 {
        // SAFETY: reads an atomic counter.
        (unsafe { mmclip_op_count_total() }) - self.start
    }

    /// Operators among them estimated to launch a kernel: the innermost
    /// ones that are neither views nor allocations, and each list operator
    /// once (see `csrc/op_count.cpp`).
    pub fn kernels(&self) -> u64 {
        // SAFETY: reads a thread-local counter.
        (unsafe { mmclip_op_count_kernels() }) - self.start_kernels
    }

    /// Operators among them that wait for the device on CUDA (their value
    /// or size is read by the host: `item`, `nonzero`, `masked_select`, …).
    /// Copies to the host are not counted.
    pub fn syncs(&self) -> u64 {
        // SAFETY: reads a thread-local counter.
        (unsafe { mmclip_op_count_syncs() }) - self.start_syncs
    }

    /// The name of the last of [`OpCounter::syncs`] (`aten::nonzero`, …),
    /// `None` when there was none.
    pub fn last_sync(&self) -> Option<&'static str> {
        if self.syncs() == 0 {
            return None;
        }
        // SAFETY: null or one of the shim's static NUL-terminated names.
        let name = unsafe { mmclip_op_count_last_sync() };
        (!name.is_null())
            .then(|| unsafe { std::ffi::CStr::from_ptr(name) }.to_str().ok())
            .flatten()
    }
}

impl Default for OpCounter {
    fn default() -> Self {
        OpCounter::new()
    }
}

impl Drop for OpCounter {
    fn drop(&mut self) {
        // SAFETY: balanced with the start in `new`.
        unsafe { mmclip_op_count_stop() };
    }
}

/// Runs `f` and returns its result with the operators it dispatched on
/// this thread.
pub fn count<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let (out, c) = count_syncs(f);
    (out, c.ops)
}

/// What [`count_syncs`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Operators dispatched.
    pub ops: u64,
    /// Those among them estimated to launch a kernel
    /// ([`OpCounter::kernels`]).
    pub kernels: u64,
    /// Those among them that make the host wait for a CUDA device.
    pub syncs: u64,
    /// The last of those, by name.
    pub last_sync: Option<&'static str>,
}

/// Runs `f` and returns its result with the operators it dispatched on
/// this thread and the host synchronisations among them.
pub fn count_syncs<T>(f: impl FnOnce() -> T) -> (T, Counts) {
    let counter = OpCounter::new();
    let out = f();
    let counts = Counts {
        ops: counter.ops(),
        kernels: counter.kernels(),
        syncs: counter.syncs(),
        last_sync: counter.last_sync(),
    };
    (out, counts)
}

/// This thread's running kernel counts by operator name.
fn kernel_totals_by_name() -> BTreeMap<String, u64> {
    let mut buf = vec![0u8; 1 << 14];
    loop {
        // SAFETY: writes at most `buf.len()` bytes into `buf`.
        let len = unsafe { mmclip_op_count_by_name(buf.as_mut_ptr(), buf.len()) };
        if len <= buf.len() {
            buf.truncate(len);
            break;
        }
        buf.resize(len, 0);
    }
    String::from_utf8_lossy(&buf)
        .lines()
        .filter_map(|line| {
            let (name, count) = line.rsplit_once('\t')?;
            Some((name.to_string(), count.parse().ok()?))
        })
        .collect()
}

/// Runs `f` and returns its result with the kernels it launched on this
/// thread ([`OpCounter::kernels`]) by operator name (a list operator
/// counts once, under its own name).
pub fn count_by_name<T>(f: impl FnOnce() -> T) -> (T, BTreeMap<String, u64>) {
    let counter = OpCounter::new();
    let before = kernel_totals_by_name();
    let out = f();
    let mut after = kernel_totals_by_name();
    drop(counter);
    after.retain(|name, n| {
        *n -= before.get(name).copied().unwrap_or(0);
        *n > 0
    });
    (out, after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn counts_each_dispatched_operator_and_nothing_outside() {
        let x = Tensor::ones([8, 8], (Kind::Float, Device::Cpu));
        let (_, one) = count(|| x.relu());
        let (_, three) = count(|| x.relu().exp().sum(Kind::Float));
        assert!(one >= 1, "relu dispatched {one} operators");
        assert!(three >= one + 2, "three ops counted {three}, one op {one}");
        let (_, none) = count(|| 1 + 1);
        assert_eq!(none, 0, "plain Rust dispatches no operator");
    }

    #[test]
    fn a_list_operator_counts_once_whatever_the_list_length() {
        let list = |n: usize| -> Vec<Tensor> {
            (0..n)
                .map(|_| Tensor::ones([3], (Kind::Float, Device::Cpu)))
                .collect()
        };
        let (short, long) = (list(2), list(40));
        let half = Tensor::from(0.5f32);
        let ((), two) = count(|| crate::fused::mul_(&short, &half).unwrap());
        let ((), forty) = count(|| crate::fused::mul_(&long, &half).unwrap());
        assert_eq!((two, forty), (1, 1), "one _foreach_mul_ each");
        let (_, stacked) = count(|| Tensor::stack(&long, 0));
        assert_eq!(stacked, 1, "a stack's views of each tensor are no kernels");
        // Operators after the list operator count again.
        let (_, after) = count(|| {
            crate::fused::mul_(&long, &half).unwrap();
            long[0].relu()
        });
        assert!(after >= 2, "{after}");
    }

    #[test]
    fn views_allocations_and_composites_are_no_kernels() {
        let x = Tensor::ones([8, 8], (Kind::Float, Device::Cpu));
        let kernels = |f: &dyn Fn() -> Tensor| count_syncs(f).1.kernels;
        assert_eq!(kernels(&|| x.relu()), 1);
        let y = x.copy();
        assert_eq!(
            kernels(&|| y.shallow_clone().relu_()),
            1,
            "an in-place operator writes"
        );
        assert_eq!(kernels(&|| x.relu().exp().sum(Kind::Float)), 3);
        assert_eq!(kernels(&|| x.view([4, 16])), 0);
        assert_eq!(kernels(&|| x.tr().transpose(0, 1).detach()), 0);
        assert_eq!(kernels(&|| x.reshape([64])), 0, "a reshape that is a view");
        assert_eq!(kernels(&|| x.tr().contiguous()), 1, "one copy");
        assert_eq!(
            kernels(&|| Tensor::empty([8], (Kind::Float, Device::Cpu))),
            0
        );
        assert_eq!(
            kernels(&|| Tensor::zeros([8], (Kind::Float, Device::Cpu))),
            1
        );
        let list = [x.shallow_clone(), x.shallow_clone()];
        assert_eq!(kernels(&|| Tensor::stack(&list, 0)), 1);
        let all = count_syncs(|| x.relu().view([64]).exp()).1;
        assert!(all.ops >= 3 && all.kernels == 2, "{all:?}");
    }

    #[test]
    fn counts_by_name_add_up_to_the_count() {
        let x = Tensor::ones([8, 8], (Kind::Float, Device::Cpu));
        let work = || x.exp().sigmoid().exp().sum(Kind::Float);
        let (_, by_name) = count_by_name(work);
        assert_eq!(by_name.get("aten::exp"), Some(&2), "{by_name:?}");
        assert_eq!(by_name.get("aten::sigmoid"), Some(&1), "{by_name:?}");
        assert_eq!(by_name.get("aten::sum"), Some(&1), "{by_name:?}");
        let (_, total) = count_syncs(work);
        assert_eq!(by_name.values().sum::<u64>(), total.kernels, "{by_name:?}");
        let (_, views) = count_by_name(|| x.view([64]).unsqueeze(0).tr());
        assert!(views.is_empty(), "{views:?}");
        let (_, none) = count_by_name(|| 1 + 1);
        assert!(none.is_empty(), "{none:?}");
    }

    #[test]
    fn reads_of_values_and_data_dependent_sizes_count_as_host_waits() {
        let x = Tensor::from_slice(&[0.0f32, 1.0, 2.0]);
        let ((), c) = count_syncs(|| {
            let _ = x.relu().sum(Kind::Float);
        });
        assert_eq!(c.syncs, 0, "arithmetic waits for nothing");
        let ((), item) = count_syncs(|| {
            let _ = x.sum(Kind::Float).double_value(&[]);
        });
        let ((), nonzero) = count_syncs(|| {
            let _ = x.nonzero();
        });
        let ((), masked) = count_syncs(|| {
            let _ = x.masked_select(&x.gt(0.5));
        });
        assert_eq!((item.syncs, nonzero.syncs), (1, 1), "{item:?} {nonzero:?}");
        assert_eq!(c.last_sync, None);
        assert_eq!(item.last_sync, Some("aten::_local_scalar_dense"));
        assert_eq!(nonzero.last_sync, Some("aten::nonzero"));
        assert!(masked.syncs >= 1, "{masked:?}");
    }
}
