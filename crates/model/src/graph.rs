//! CUDA graphs: a training step captured once and replayed, so the host
//! queues one graph launch per step instead of thousands of kernels.
//!
//! libtorch's `at::cuda::CUDAGraph` does the work (`csrc/graph.cpp`), as
//! PyTorch's whole-network capture does (`torch.cuda.graph`): the step runs
//! a few times eagerly on a [`SideStream`] (so lazily made state such as
//! cuBLAS workspaces and optimiser buffers exists), the gradients are set
//! to none, and [`CudaGraph::capture`] records one step, whose tensors then
//! live in the graph's private memory pool. Each [`CudaGraph::replay`] runs
//! the same kernels on the same memory: new inputs are copied into the
//! captured input tensors first, and outputs are read from the captured
//! output tensors. Nothing inside may make the host wait for the device or
//! depend on a host value that changes between replays (see
//! [`crate::mmclip::Mmclip::step_with_noise`]).

use std::ffi::{c_char, c_int, c_void};

use tch::Device;

unsafe extern "C" {
    fn mmclip_graph_available() -> bool;
    fn mmclip_side_stream_enter(
        device: c_int,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn mmclip_side_stream_leave(stream: *mut c_void, err: *mut c_char, err_len: usize) -> c_int;
    fn mmclip_graph_capture_begin(
        device: c_int,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn mmclip_graph_capture_end(graph: *mut c_void, err: *mut c_char, err_len: usize) -> c_int;
    fn mmclip_graph_replay(graph: *mut c_void, err: *mut c_char, err_len: usize) -> c_int;
    fn mmclip_graph_free(graph: *mut c_void);
}

fn call(what: &str, f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), String> {
    crate::shim::call(f).map_err(|message| format!("{what}: {message}"))
}

/// Whether this build can capture CUDA graphs (it found CUDA's headers).
pub fn available() -> bool {
    // SAFETY: returns a constant.
    unsafe { mmclip_graph_available() }
}

fn cuda_index(device: Device, what: &str) -> Result<c_int, String> {
    match device {
        Device::Cuda(i) => Ok(i as c_int),
        other => Err(format!(
            "{what}: CUDA graphs need a CUDA device, not {other:?}"
        )),
    }
}

/// Runs `f`, an eager run of work to be captured, and fails when it made
/// the host wait for the device (read a value or a data-dependent size
/// back, [`crate::op_count`]): inside a capture CUDA refuses that with a
/// bare "operation not permitted when stream is capturing". The error names
/// the operator. Only this thread's operators are seen: on CUDA the
/// backward pass runs on the autograd engine's threads.
pub fn run_capturable<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    let (out, counts) = crate::op_count::count_syncs(f);
    if counts.syncs > 0 {
        return Err(format!(
            "this step cannot be captured in a CUDA graph: it makes the host wait for the \
             device {} time(s) (last in {})",
            counts.syncs,
            counts.last_sync.unwrap_or("an unnamed operator")
        ));
    }
    Ok(out)
}

/// A stream of the device's pool made current until dropped; it waits for
/// the work queued before it, and the stream current before waits for it
/// when it is dropped.
pub struct SideStream(*mut c_void);

impl SideStream {
    /// Makes a side stream current on `device` (a CUDA device).
    pub fn enter(device: Device) -> Result<SideStream, String> {
        let what = "entering a side stream";
        let index = cuda_index(device, what)?;
        let mut raw = std::ptr::null_mut();
        call(what, |err, len| {
            // SAFETY: `raw` receives a new stream handle on success.
            unsafe { mmclip_side_stream_enter(index, &mut raw, err, len) }
        })?;
        Ok(SideStream(raw))
    }
}

impl Drop for SideStream {
    fn drop(&mut self) {
        // SAFETY: made by `enter`, left once. A failure here means the
        // device itself failed, which the next operation reports too.
        let _ = call("leaving a side stream", |err, len| unsafe {
            mmclip_side_stream_leave(self.0, err, len)
        });
    }
}

/// A captured CUDA graph.
pub struct CudaGraph(*mut c_void);

impl CudaGraph {
    /// Captures what `f` queues on `device` into a graph (on a side
    /// stream, in the graph's own memory pool; nothing runs yet). The
    /// tensors `f` returns are the graph's outputs: each replay writes them
    /// anew.
    pub fn capture<R>(device: Device, f: impl FnOnce() -> R) -> Result<(CudaGraph, R), String> {
        let what = "starting a CUDA graph capture";
        let index = cuda_index(device, what)?;
        let mut raw = std::ptr::null_mut();
        call(what, |err, len| {
            // SAFETY: `raw` receives a new graph on success.
            unsafe { mmclip_graph_capture_begin(index, &mut raw, err, len) }
        })?;
        // Freed (and the capture ended) also when `f` panics.
        let graph = CudaGraph(raw);
        let out = f();
        call("ending a CUDA graph capture", |err, len| {
            // SAFETY: a graph that is capturing.
            unsafe { mmclip_graph_capture_end(graph.0, err, len) }
        })?;
        Ok((graph, out))
    }

    /// Queues the captured work on the current stream.
    pub fn replay(&self) -> Result<(), String> {
        call("replaying a CUDA graph", |err, len| {
            // SAFETY: a captured graph.
            unsafe { mmclip_graph_replay(self.0, err, len) }
        })
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: made by `capture_begin`, freed once.
        unsafe { mmclip_graph_free(self.0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    /// On CUDA: work captured once is replayed on new inputs copied into
    /// the captured input, including a backward pass into a gradient and
    /// an in-place update of a weight, as a training step's graph does.
    #[test]
    #[ignore = "needs a CUDA device: `cargo test -p model graph -- --ignored` on one"]
    fn a_captured_step_replays_on_new_inputs() {
        let device = Device::Cuda(0);
        let opts = (Kind::Float, device);
        let w = Tensor::ones([4], opts).set_requires_grad(true);
        let x = Tensor::zeros([4], opts);
        let step = || {
            let loss = (&w * &x).sum(Kind::Float);
            loss.backward();
            tch::no_grad(|| {
                let mut w = w.shallow_clone();
                let _ = w.f_sub_(&(w.grad() * 0.5)).unwrap();
            });
            loss.detach()
        };
        {
            let _side = SideStream::enter(device).unwrap();
            let _ = x.shallow_clone().fill_(1.0);
            let _ = step();
        }
        crate::fused::set_grads_to_none(std::slice::from_ref(&w)).unwrap();
        let (graph, loss) = CudaGraph::capture(device, step).unwrap();
        // The weights after the eager step: 1 − 0.5 = 0.5. Each replay
        // computes loss = Σ w·x, then w -= 0.5·x.
        let mut want_w = 0.5f64;
        for k in 1..4 {
            let v = k as f64;
            let _ = x.shallow_clone().fill_(v);
            graph.replay().unwrap();
            let got = loss.to_device(Device::Cpu).double_value(&[]);
            assert!(
                (got - 4.0 * want_w * v).abs() < 1e-4,
                "replay {k}: loss {got}"
            );
            want_w -= 0.5 * v;
            let w_now = w.to_device(Device::Cpu).double_value(&[0]);
            assert!((w_now - want_w).abs() < 1e-4, "replay {k}: w {w_now}");
        }
    }

    #[test]
    fn graphs_are_built_and_refuse_the_cpu() {
        assert!(
            available(),
            "this build has no CUDA graphs: build.rs found no CUDA headers"
        );
        let err = CudaGraph::capture(Device::Cpu, || ())
            .err()
            .expect("a CPU capture");
        assert!(
            err.contains("CUDA graphs need a CUDA device, not Cpu"),
            "{err}"
        );
        let err = SideStream::enter(Device::Cpu)
            .err()
            .expect("a CPU side stream");
        assert!(err.contains("need a CUDA device"), "{err}");
        let x = tch::Tensor::from_slice(&[1.0f32, 0.0]);
        assert_eq!(
            run_capturable(|| x.relu().sum(tch::Kind::Float).size()),
            Ok(vec![])
        );
        let err = run_capturable(|| x.nonzero()).expect_err("a host wait");
        assert!(err.contains("(last in aten::nonzero)"), "{err}");
        if !tch::Cuda::is_available() {
            let err = CudaGraph::capture(Device::Cuda(0), || ())
                .err()
                .expect("no device");
            assert!(err.contains("no CUDA device 0 on this machine"), "{err}");
        }
    }
}
