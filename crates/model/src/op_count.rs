//! How many ATen operators a piece of work dispatches: the CPU-measurable
//! proxy for a GPU step's kernel launches (a launch-bound step is one with
//! too many small operators, and their number does not depend on the
//! device). Counted by a libtorch RecordFunction callback in
//! `csrc/op_count.cpp`; nested operators count each (`aten::linear` and the
//! `aten::addmm` it runs are two).
//!
//! ```no_run
//! let x = tch::Tensor::ones([4], (tch::Kind::Float, tch::Device::Cpu));
//! let (y, ops) = model::op_count::count(|| (&x + 1) * 2);
//! assert!(ops >= 2);
//! # drop(y);
//! ```

unsafe extern "C" {
    fn mmclip_op_count_start();
    fn mmclip_op_count_stop();
    fn mmclip_op_count_total() -> u64;
}

/// Counts while alive: [`OpCounter::ops`] is the number of operators the
/// calling thread dispatched since it was made (on the CPU, the backward
/// passes it runs included; other threads' work is not counted).
pub struct OpCounter {
    start: u64,
}

impl OpCounter {
    /// Starts counting.
    pub fn new() -> OpCounter {
        // SAFETY: the shim's functions take no arguments and guard their
        // registration with a lock; they only add or remove a callback.
        unsafe { mmclip_op_count_start() };
        OpCounter {
            start: unsafe { mmclip_op_count_total() },
        }
    }

    /// Operators this thread dispatched since the counter was made.
    pub fn ops(&self) -> u64 {
        // SAFETY: reads an atomic counter.
        (unsafe { mmclip_op_count_total() }) - self.start
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
    let counter = OpCounter::new();
    let out = f();
    let ops = counter.ops();
    (out, ops)
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
}
