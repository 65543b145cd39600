//! Data-parallel collectives through libtorch's distributed engine (c10d),
//! bound through `csrc/dist.cpp`: a [`ProcessGroup`] joined by a TCPStore
//! rendezvous, on c10d's ProcessGroupGloo for CPU tensors or its
//! ProcessGroupNCCL for CUDA tensors (the latter only in builds that found
//! NCCL's and CUDA's headers, see [`nccl_available`]).
//!
//! Every call is collective: all ranks make the same calls, in the same
//! order, with tensors of the same shapes. A failure (a peer that died, a
//! timeout, mismatched shapes) is a [`DistError`] carrying c10d's message;
//! the process is never aborted, so the caller can say what it was doing.
//!
//! ```no_run
//! use model::dist::{Backend, JoinOptions, ProcessGroup};
//! use std::time::Duration;
//!
//! let group = ProcessGroup::join(&JoinOptions {
//!     master_addr: "127.0.0.1".into(),
//!     master_port: 29500,
//!     rank: 0,
//!     world_size: 2,
//!     timeout: Duration::from_secs(60),
//!     backend: Backend::Gloo,
//! })?;
//! let grads = vec![tch::Tensor::ones([3], (tch::Kind::Float, tch::Device::Cpu))];
//! group.all_reduce_mean(&grads)?;
//! # Ok::<(), model::dist::DistError>(())
//! ```

use std::ffi::{CString, c_char, c_int, c_void};
use std::time::Duration;

use tch::Tensor;

/// A tch tensor handle as the shim sees it (`at::Tensor*`).
type Handle = *const c_void;

unsafe extern "C" {
    fn mmclip_dist_join(
        addr: *const c_char,
        port: c_int,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        backend: c_int,
        device: c_int,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn mmclip_dist_free(group: *mut c_void);
    fn mmclip_dist_has_nccl() -> bool;
    fn mmclip_dist_broadcast(
        group: *mut c_void,
        tensors: *const Handle,
        n: c_int,
        root: c_int,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn mmclip_dist_all_reduce_mean(
        group: *mut c_void,
        tensors: *const Handle,
        n: c_int,
        bucket_bytes: i64,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn mmclip_dist_all_gather(
        group: *mut c_void,
        input: Handle,
        output: Handle,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn mmclip_dist_barrier(group: *mut c_void, err: *mut c_char, err_len: usize) -> c_int;
    fn mmclip_reducer_new(
        group: *mut c_void,
        params: *const Handle,
        n: c_int,
        bucket_bytes: i64,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn mmclip_reducer_free(reducer: *mut c_void);
    fn mmclip_reducer_arm(reducer: *mut c_void);
    fn mmclip_reducer_finish(
        reducer: *mut c_void,
        early: *mut usize,
        total: *mut usize,
        rebuilt: *mut bool,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn mmclip_reducer_buckets(reducer: *mut c_void, index: *mut i64, bucket: *mut i64);
}

/// What [`ProcessGroup::finish_gradients`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Averaged {
    /// Buckets whose all-reduce the backward pass started before its last
    /// gradient was ready: their communication overlapped with its work.
    pub early: usize,
    /// Buckets in all.
    pub total: usize,
    /// Whether the buckets were then rebuilt in the order the gradients
    /// became ready (after the first step, and when the set of parameters
    /// with a gradient changes).
    pub rebuilt: bool,
}

/// Bucket size of [`ProcessGroup::all_reduce_mean`]: DDP's default
/// (`bucket_cap_mb = 25`).
pub const BUCKET_BYTES: i64 = 25 * 1024 * 1024;

/// Whether this build can make an NCCL group (it found NCCL's and a CUDA
/// toolkit's headers; see `build.rs`).
pub fn nccl_available() -> bool {
    // SAFETY: no arguments, no state.
    unsafe { mmclip_dist_has_nccl() }
}

/// Which c10d backend carries the collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// ProcessGroupGloo: CPU tensors, over TCP.
    Gloo,
    /// ProcessGroupNCCL on the given CUDA device: CUDA tensors.
    Nccl {
        /// This process's CUDA index (`LOCAL_RANK`).
        device: usize,
    },
}

/// Where and how to join a group.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// Host of rank 0, which serves the rendezvous store.
    pub master_addr: String,
    /// Port of the rendezvous store.
    pub master_port: u16,
    /// This process's rank, `0..world_size`.
    pub rank: usize,
    /// Number of processes.
    pub world_size: usize,
    /// How long the rendezvous and each collective may wait for the other
    /// ranks before failing.
    pub timeout: Duration,
    /// The backend.
    pub backend: Backend,
}

/// Why a collective (or the join) failed.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The options cannot describe a group.
    #[error("process group: {0}")]
    Options(String),
    /// c10d refused or failed: its message names what it waited for.
    #[error("process group (rank {rank} of {world_size}): {op} failed: {message}")]
    Torch {
        /// The collective.
        op: &'static str,
        /// This rank.
        rank: usize,
        /// The group's size.
        world_size: usize,
        /// c10d's message.
        message: String,
    },
}

/// A joined process group; left when dropped.
pub struct ProcessGroup {
    raw: *mut c_void,
    rank: usize,
    world_size: usize,
    /// The gradient reducer of [`ProcessGroup::watch_gradients`], owned
    /// here so that it never outlives the group it reduces through.
    reducer: *mut c_void,
    /// How many parameters the reducer watches.
    watched: usize,
}

// SAFETY: c10d's backends may be called from any thread; this handle is
// used by one thread at a time (`&self` calls are collectives that each
// rank issues in program order).
unsafe impl Send for ProcessGroup {}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .finish()
    }
}

fn handles(tensors: &[Tensor]) -> Vec<Handle> {
    tensors.iter().map(|t| t.as_ptr() as Handle).collect()
}

impl ProcessGroup {
    /// Joins the group: rank 0 serves a TCPStore at
    /// `master_addr:master_port`, the others connect to it, and the
    /// backend's rendezvous runs over it. Returns once every rank has
    /// joined, or fails after `timeout`.
    pub fn join(opts: &JoinOptions) -> Result<ProcessGroup, DistError> {
        if opts.world_size == 0 || opts.rank >= opts.world_size {
            return Err(DistError::Options(format!(
                "rank {} is not in a world of {}",
                opts.rank, opts.world_size
            )));
        }
        let addr = CString::new(opts.master_addr.as_str())
            .map_err(|_| DistError::Options("the master address holds a NUL byte".into()))?;
        let (backend, device) = match opts.backend {
            Backend::Gloo => (0, 0),
            Backend::Nccl { device } => (1, device as c_int),
        };
        let mut raw = std::ptr::null_mut();
        let timeout_ms = opts.timeout.as_millis().min(i64::MAX as u128) as i64;
        let group = ProcessGroup {
            raw: std::ptr::null_mut(),
            rank: opts.rank,
            world_size: opts.world_size,
            reducer: std::ptr::null_mut(),
            watched: 0,
        };
        group.call("join", |err, len| {
            // SAFETY: `addr` outlives the call; `raw` receives an owned
            // group on success only.
            unsafe {
                mmclip_dist_join(
                    addr.as_ptr(),
                    c_int::from(opts.master_port),
                    opts.rank as c_int,
                    opts.world_size as c_int,
                    timeout_ms,
                    backend,
                    device,
                    &mut raw,
                    err,
                    len,
                )
            }
        })?;
        Ok(ProcessGroup { raw, ..group })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of processes in the group.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    fn call(
        &self,
        op: &'static str,
        f: impl FnOnce(*mut c_char, usize) -> c_int,
    ) -> Result<(), DistError> {
        crate::shim::call(f).map_err(|message| DistError::Torch {
            op,
            rank: self.rank,
            world_size: self.world_size,
            message,
        })
    }

    /// Overwrites every rank's `tensors` with rank `root`'s, in place.
    pub fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<(), DistError> {
        let h = handles(tensors);
        self.call("broadcast", |err, len| {
            // SAFETY: `h` holds live tensor handles for the call.
            unsafe {
                mmclip_dist_broadcast(
                    self.raw,
                    h.as_ptr(),
                    h.len() as c_int,
                    root as c_int,
                    err,
                    len,
                )
            }
        })
    }

    /// Replaces each tensor by its mean over the ranks, in place. The
    /// tensors travel in buckets of [`BUCKET_BYTES`] (flattened, reduced,
    /// copied back), as DDP's gradient buckets.
    pub fn all_reduce_mean(&self, tensors: &[Tensor]) -> Result<(), DistError> {
        self.all_reduce_mean_in_buckets(tensors, BUCKET_BYTES)
    }

    /// [`ProcessGroup::all_reduce_mean`] with buckets of `bucket_bytes`
    /// (a tensor larger than that travels alone).
    pub fn all_reduce_mean_in_buckets(
        &self,
        tensors: &[Tensor],
        bucket_bytes: i64,
    ) -> Result<(), DistError> {
        let h = handles(tensors);
        self.call("all_reduce", |err, len| {
            // SAFETY: `h` holds live tensor handles for the call.
            unsafe {
                mmclip_dist_all_reduce_mean(
                    self.raw,
                    h.as_ptr(),
                    h.len() as c_int,
                    bucket_bytes,
                    err,
                    len,
                )
            }
        })
    }

    /// Every rank's `input` stacked along dimension 0 in rank order:
    /// `[world_size · n, …]` from `[n, …]`. No gradient flows through it.
    pub fn all_gather(&self, input: &Tensor) -> Result<Tensor, DistError> {
        let input = if input.dim() == 0 {
            input.detach().reshape([1])
        } else {
            input.detach()
        };
        let mut shape = input.size();
        shape[0] *= self.world_size as i64;
        let output = Tensor::empty(shape.as_slice(), (input.kind(), input.device()));
        self.call("all_gather", |err, len| {
            // SAFETY: both handles are live for the call.
            unsafe {
                mmclip_dist_all_gather(
                    self.raw,
                    input.as_ptr() as Handle,
                    output.as_ptr() as Handle,
                    err,
                    len,
                )
            }
        })?;
        Ok(output)
    }

    /// Every rank's `local` rows in rank order, `[W·n, …]` from `[n, …]`,
    /// as [`ProcessGroup::all_gather`], except that this rank's own rows are
    /// `local` itself, so a loss over all the rows backpropagates into them.
    ///
    /// The gradient reaches `local` multiplied by W: every rank computes the
    /// same loss over the gathered rows and each backpropagates only into
    /// its own, so the mean of the ranks' gradients (the trainer's
    /// all-reduce) is one process's gradient only if each rank's share
    /// counts W times. open_clip's `gather_with_grad` gets the same factor
    /// from its all-gather's backward, which sums the ranks' gradients. The
    /// values are `local`'s exactly: the factor multiplies `local − local`.
    pub fn all_gather_with_grad(&self, local: &Tensor) -> Result<Tensor, DistError> {
        let n = local.size()[0];
        let (w, r) = (self.world_size as i64, self.rank as i64);
        let all = self.all_gather(&local.contiguous())?; // [W·n, …]
        let own = local.detach() + (local - local.detach()) * w as f64;
        Ok(Tensor::cat(
            &[
                all.narrow(0, 0, r * n),
                own,
                all.narrow(0, (r + 1) * n, (w - r - 1) * n),
            ],
            0,
        ))
    }

    /// Returns once every rank has reached it.
    pub fn barrier(&self) -> Result<(), DistError> {
        self.call("barrier", |err, len| {
            // SAFETY: the group is live.
            unsafe { mmclip_dist_barrier(self.raw, err, len) }
        })
    }

    /// Averages the gradients of `params` (trainable leaves, in the same
    /// order on every rank: their creation order) overlapped with the
    /// backward pass, as DDP does: they are cut into buckets of about
    /// `bucket_bytes` in reverse order, and during a backward pass armed by
    /// [`ProcessGroup::arm_gradients`] each bucket's all-reduce starts as
    /// soon as its last gradient is accumulated (`csrc/dist.cpp`).
    /// [`ProcessGroup::finish_gradients`] completes the step, and after the
    /// first step rebuilds the buckets in the order rank 0 saw the
    /// gradients become ready. Replaces the parameters watched before.
    pub fn watch_gradients(
        &mut self,
        params: &[Tensor],
        bucket_bytes: i64,
    ) -> Result<(), DistError> {
        self.unwatch();
        let h = handles(params);
        let mut reducer = std::ptr::null_mut();
        self.call("watching the gradients", |err, len| {
            // SAFETY: `h` holds live tensor handles; `reducer` receives an
            // owned reducer on success only.
            unsafe {
                mmclip_reducer_new(
                    self.raw,
                    h.as_ptr(),
                    h.len() as c_int,
                    bucket_bytes,
                    &mut reducer,
                    err,
                    len,
                )
            }
        })?;
        self.reducer = reducer;
        self.watched = params.len();
        Ok(())
    }

    fn unwatch(&mut self) {
        if !self.reducer.is_null() {
            // SAFETY: made by `mmclip_reducer_new`, freed once; it removes
            // its hooks from the parameters.
            unsafe { mmclip_reducer_free(self.reducer) };
            self.reducer = std::ptr::null_mut();
            self.watched = 0;
        }
    }

    /// The next backward pass starts the watched gradients' all-reduces as
    /// their buckets complete (arm it before the last micro-batch's
    /// backward pass only: the earlier ones accumulate).
    pub fn arm_gradients(&self) {
        if !self.reducer.is_null() {
            // SAFETY: a live reducer.
            unsafe { mmclip_reducer_arm(self.reducer) }
        }
    }

    /// After an armed backward pass: starts the buckets still incomplete
    /// (a parameter without a gradient on this rank contributes zeros),
    /// waits for every bucket and replaces each gradient by its mean over
    /// the ranks. A gradient defined on any rank is defined on all
    /// afterwards; one defined on none stays undefined (as on one process).
    /// Buckets start in order, so a parameter without a gradient, or one
    /// ready late, holds back the buckets after its own; the buckets are
    /// rebuilt in the order the gradients became ready on rank 0 (the
    /// parameters without one last) after the first step and whenever the
    /// set of parameters with a gradient on some rank changes.
    pub fn finish_gradients(&self) -> Result<Averaged, DistError> {
        if self.reducer.is_null() {
            return Err(DistError::Options(
                "finish_gradients without watch_gradients".into(),
            ));
        }
        let (mut early, mut total, mut rebuilt) = (0usize, 0usize, false);
        self.call("averaging the gradients", |err, len| {
            // SAFETY: a live reducer; the outputs outlive the call.
            unsafe {
                mmclip_reducer_finish(self.reducer, &mut early, &mut total, &mut rebuilt, err, len)
            }
        })?;
        Ok(Averaged {
            early,
            total,
            rebuilt,
        })
    }

    /// The watched parameters' buckets, in launch order, as indices into
    /// the slice given to [`ProcessGroup::watch_gradients`]; empty when
    /// nothing is watched.
    pub fn gradient_buckets(&self) -> Vec<Vec<usize>> {
        if self.reducer.is_null() {
            return Vec::new();
        }
        let n = self.watched;
        let (mut index, mut bucket) = (vec![0i64; n], vec![0i64; n]);
        // SAFETY: a live reducer over `n` parameters writes `n` entries each.
        unsafe { mmclip_reducer_buckets(self.reducer, index.as_mut_ptr(), bucket.as_mut_ptr()) };
        let mut out: Vec<Vec<usize>> = Vec::new();
        for (i, b) in index.into_iter().zip(bucket) {
            if out.len() <= b as usize {
                out.push(Vec::new());
            }
            out[b as usize].push(i as usize);
        }
        out
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.unwatch();
        if !self.raw.is_null() {
            // SAFETY: `raw` came from `mmclip_dist_join` and is freed once.
            unsafe { mmclip_dist_free(self.raw) }
        }
    }
}
