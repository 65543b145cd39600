//! Copies between the host and the device that do not make the host wait
//! for the device.
//!
//! PyTorch synchronises the stream around a blocking copy between pageable
//! host memory and a CUDA device: the host waits for everything queued
//! before it. A training loop that queues step s + 1 before it reads step s
//! back would then wait for step s + 1 as well, and one that uploads each
//! batch would wait for the previous step. [`upload`] copies from pinned
//! memory without blocking; [`Download`] starts a non-blocking copy into
//! pinned memory and waits, when finished, on an event recorded after it
//! (`csrc/transfer.cpp`), so only for the work queued before the copy. On
//! the CPU both are plain copies.

use std::ffi::{c_char, c_int, c_void};

use tch::{Device, Tensor};

unsafe extern "C" {
    fn mmclip_event_record(
        index: c_int,
        event: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn mmclip_event_synchronize(event: *mut c_void, err: *mut c_char, err_len: usize) -> c_int;
    fn mmclip_event_free(event: *mut c_void);
    fn mmclip_copy_stream_enter(
        index: c_int,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn mmclip_copy_stream_leave(
        entered: *mut c_void,
        used: *const *mut c_void,
        n: c_int,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

fn call(what: &str, f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), String> {
    crate::shim::call(f).map_err(|message| format!("{what}: {message}"))
}

/// `host` (a CPU tensor) on `device`. On CUDA it is copied through pinned
/// memory without blocking (PyTorch's caching host allocator keeps the
/// pinned buffer until the copy is done).
pub fn upload(host: &Tensor, device: Device) -> Tensor {
    match device {
        Device::Cuda(_) => host
            .pin_memory(device)
            .to_device_(device, host.kind(), true, false),
        _ => host.to_device(device),
    }
}

/// `host` (a CPU tensor) on `device`, copied on a stream of its own: on
/// CUDA the copy overlaps the work queued before it (an [`upload`] waits
/// for that work on the device), and work queued afterwards on the current
/// stream waits for the copy. For a batch copied while the previous step
/// runs (`train --cuda-graph`). On the CPU a plain copy.
pub fn upload_beside(host: &Tensor, device: Device) -> Result<Tensor, String> {
    let Device::Cuda(index) = device else {
        return Ok(host.to_device(device));
    };
    let pinned = host.pin_memory(device);
    let mut entered = std::ptr::null_mut();
    call("entering the copy stream", |err, len| {
        // SAFETY: `entered` receives a new handle on success.
        unsafe { mmclip_copy_stream_enter(index as c_int, &mut entered, err, len) }
    })?;
    // Allocated and copied on the copy stream.
    let copied = pinned.f_to_device_(device, host.kind(), true, false);
    let used: Vec<*mut c_void> = copied.iter().map(|t| t.as_ptr() as *mut c_void).collect();
    call("leaving the copy stream", |err, len| {
        // SAFETY: `entered` is left once; `used` holds live tensor handles.
        unsafe { mmclip_copy_stream_leave(entered, used.as_ptr(), used.len() as c_int, err, len) }
    })?;
    copied.map_err(|e| format!("copying a {:?} tensor to {device:?}: {e}", host.size()))
}

/// A CUDA event recorded on the current stream of a device.
struct Event(*mut c_void);

impl Event {
    fn record(index: usize) -> Result<Event, String> {
        let mut raw = std::ptr::null_mut();
        call("recording a CUDA event", |err, len| {
            // SAFETY: `raw` receives a new event on success.
            unsafe { mmclip_event_record(index as c_int, &mut raw, err, len) }
        })?;
        Ok(Event(raw))
    }

    fn synchronize(&self) -> Result<(), String> {
        call("waiting for a CUDA event", |err, len| {
            // SAFETY: a live event made by `record`.
            unsafe { mmclip_event_synchronize(self.0, err, len) }
        })
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: made by `record`, freed once.
        unsafe { mmclip_event_free(self.0) }
    }
}

/// A copy of a tensor to the host, started and not yet waited for.
pub struct Download {
    host: Tensor,
    event: Option<Event>,
}

impl Download {
    /// Starts copying `t` to the host: on CUDA without blocking, into pinned
    /// memory, with an event recorded after the copy.
    pub fn start(t: &Tensor) -> Result<Download, String> {
        match t.device() {
            Device::Cuda(index) => {
                let host = t.to_device_(Device::Cpu, t.kind(), true, false);
                let event = Event::record(index)?;
                Ok(Download {
                    host,
                    event: Some(event),
                })
            }
            _ => Ok(Download {
                host: t.to_device(Device::Cpu),
                event: None,
            }),
        }
    }

    /// The host copy, once the device has done the work queued before it
    /// (and only that).
    pub fn finish(self) -> Result<Tensor, String> {
        if let Some(event) = &self.event {
            event.synchronize()?;
        }
        Ok(self.host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn on_the_cpu_both_ways_are_plain_copies() {
        let t = Tensor::from_slice(&[1.5f64, -2.0, 3.25]);
        let up = upload(&t, Device::Cpu);
        assert_eq!(Vec::<f64>::try_from(&up).unwrap(), vec![1.5, -2.0, 3.25]);
        let beside = upload_beside(&t, Device::Cpu).unwrap();
        assert_eq!(
            Vec::<f64>::try_from(&beside).unwrap(),
            vec![1.5, -2.0, 3.25]
        );
        let down = Download::start(&(&t * 2.0)).unwrap().finish().unwrap();
        assert_eq!(down.device(), Device::Cpu);
        assert_eq!(down.kind(), Kind::Double);
        assert_eq!(Vec::<f64>::try_from(&down).unwrap(), vec![3.0, -4.0, 6.5]);
    }

    /// On CUDA: values survive the round trip through pinned memory, and a
    /// download waits for the work queued before it.
    #[test]
    #[ignore = "needs a CUDA device: `cargo test -p model transfer -- --ignored` on one"]
    fn cuda_copies_do_not_block_and_arrive_whole() {
        let device = Device::Cuda(0);
        let host = Tensor::arange(1 << 20, (Kind::Float, Device::Cpu));
        let on_device = upload(&host, device);
        let squared = on_device.square().sum(Kind::Double);
        let down = Download::start(&squared).unwrap().finish().unwrap();
        let want = host.to_kind(Kind::Double).square().sum(Kind::Double);
        assert_eq!(down.double_value(&[]), want.double_value(&[]));
        // A copy on the copy stream, queued behind a long computation on the
        // current stream: the work queued after it reads the copied values.
        let busy = Tensor::randn([4096, 4096], (Kind::Float, device));
        let mut slow = busy.shallow_clone();
        for _ in 0..8 {
            slow = slow.matmul(&busy).tanh();
        }
        let fills: Vec<Tensor> = (0..4)
            .map(|k| Tensor::full([1 << 20], k as f64 + 0.5, (Kind::Float, Device::Cpu)))
            .map(|t| upload_beside(&t, device).unwrap())
            .collect();
        let sums: Vec<f64> = fills
            .iter()
            .map(|t| {
                Download::start(&t.sum(Kind::Double))
                    .unwrap()
                    .finish()
                    .unwrap()
            })
            .map(|t| t.double_value(&[]))
            .collect();
        let want: Vec<f64> = (0..4)
            .map(|k| (k as f64 + 0.5) * (1 << 20) as f64)
            .collect();
        assert_eq!(sums, want);
        drop(slow);
    }
}
