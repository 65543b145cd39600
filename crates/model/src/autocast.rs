//! Mixed precision: libtorch's autocast on a chosen device with a chosen
//! reduced type.
//!
//! `tch::autocast` switches only CUDA autocast, and only in libtorch's
//! default CUDA type, float16, which needs loss scaling against underflowing
//! gradients. The paper's recipe is bfloat16, which keeps float32's range.
//! [`autocast`] sets the per-device switch and type through the small shim
//! in `csrc/autocast.cpp`, so the same code runs bfloat16 autocast on CUDA in
//! training and on CPU in the parity test (`tests/step_parity.rs`), where
//! PyTorch's `torch.autocast("cpu", torch.bfloat16)` is the reference.

use std::os::raw::c_int;

use tch::{Device, Kind};

unsafe extern "C" {
    fn mmclip_autocast_is_enabled(device: i8) -> bool;
    fn mmclip_autocast_set_enabled(device: i8, enabled: bool);
    fn mmclip_autocast_dtype(device: i8) -> i8;
    fn mmclip_autocast_set_dtype(device: i8, dtype: i8);
    fn mmclip_autocast_increment_nesting() -> c_int;
    fn mmclip_autocast_decrement_nesting() -> c_int;
    fn mmclip_autocast_clear_cache();
}

/// `c10::DeviceType` values.
const CPU: i8 = 0;
const CUDA: i8 = 1;
/// `c10::ScalarType` values of the two reduced types autocast supports.
const HALF: i8 = 5;
const BFLOAT16: i8 = 15;

/// The reduced type autocast computes eligible operations in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduced {
    /// bfloat16: float32's exponent range, no loss scaling needed.
    BFloat16,
    /// float16: more mantissa, less range; gradients can underflow.
    Half,
}

impl Reduced {
    /// Its `c10::ScalarType` value.
    pub(crate) fn code(self) -> i8 {
        match self {
            Reduced::BFloat16 => BFLOAT16,
            Reduced::Half => HALF,
        }
    }

    /// The tensor kind autocast produces.
    pub fn kind(self) -> Kind {
        match self {
            Reduced::BFloat16 => Kind::BFloat16,
            Reduced::Half => Kind::Half,
        }
    }
}

fn device_code(device: Device) -> i8 {
    if device.is_cuda() { CUDA } else { CPU }
}

/// Restores the device's previous autocast state, also when `f` panics,
/// and empties libtorch's cast-weight cache on leaving the outermost level
/// (as `torch.autocast.__exit__` does).
struct Restore {
    device: i8,
    enabled: bool,
    dtype: i8,
}

impl Drop for Restore {
    fn drop(&mut self) {
        // SAFETY: plain setters of libtorch's thread-local autocast state.
        unsafe {
            if mmclip_autocast_decrement_nesting() == 0 {
                mmclip_autocast_clear_cache();
            }
            mmclip_autocast_set_enabled(self.device, self.enabled);
            mmclip_autocast_set_dtype(self.device, self.dtype);
        }
    }
}

/// Runs `f` with autocast on `device` in `reduced` precision when `reduced`
/// is `Some`, as it is otherwise. Operations libtorch lists as safe in
/// reduced precision (matrix products, convolutions, attention) then
/// compute in it; the rest stay in float32. The state is per thread and
/// restored afterwards.
pub fn autocast<T>(device: Device, reduced: Option<Reduced>, f: impl FnOnce() -> T) -> T {
    let Some(reduced) = reduced else {
        return f();
    };
    let device = device_code(device);
    // SAFETY: plain getters and setters of libtorch's thread-local autocast
    // state; `Restore` puts it back.
    let _restore = unsafe {
        let restore = Restore {
            device,
            enabled: mmclip_autocast_is_enabled(device),
            dtype: mmclip_autocast_dtype(device),
        };
        mmclip_autocast_set_enabled(device, true);
        mmclip_autocast_set_dtype(device, reduced.code());
        mmclip_autocast_increment_nesting();
        restore
    };
    f()
}

/// Whether autocast is on for `device` in this thread.
pub fn is_enabled(device: Device) -> bool {
    // SAFETY: a getter of libtorch's thread-local autocast state.
    unsafe { mmclip_autocast_is_enabled(device_code(device)) }
}

/// The reduced type autocast computes in on `device` in this thread, when
/// it is on.
pub fn reduced(device: Device) -> Option<Reduced> {
    let device = device_code(device);
    // SAFETY: getters of libtorch's thread-local autocast state.
    let (enabled, dtype) = unsafe {
        (
            mmclip_autocast_is_enabled(device),
            mmclip_autocast_dtype(device),
        )
    };
    match dtype {
        _ if !enabled => None,
        BFLOAT16 => Some(Reduced::BFloat16),
        HALF => Some(Reduced::Half),
        _ => None,
    }
}

/// Held by the tests that enter autocast. libtorch keeps autocast's cast
/// cache for the whole process, and a thread leaving autocast empties it:
/// a step on another thread then casts a weight it uses twice a second
/// time, and its gradient is summed in float32 rather than bfloat16.
#[cfg(test)]
pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    #[test]
    fn matrix_products_run_in_the_reduced_type_inside_only() {
        let _serial = serial();
        let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([8, 3], (Kind::Float, Device::Cpu));
        for reduced in [Reduced::BFloat16, Reduced::Half] {
            let inside = autocast(Device::Cpu, Some(reduced), || {
                assert!(is_enabled(Device::Cpu));
                (a.matmul(&b).kind(), (&a + 1.0).kind())
            });
            // The product is cast, the addition is not an autocast op.
            assert_eq!(inside, (reduced.kind(), Kind::Float), "{reduced:?}");
            assert!(!is_enabled(Device::Cpu));
            assert_eq!(a.matmul(&b).kind(), Kind::Float);
        }
        let off = autocast(Device::Cpu, None, || a.matmul(&b).kind());
        assert_eq!(off, Kind::Float);
    }

    #[test]
    fn nested_autocast_restores_the_outer_type_and_a_panic_restores_the_state() {
        let _serial = serial();
        let a = Tensor::randn([2, 2], (Kind::Float, Device::Cpu));
        let inner_then_outer = autocast(Device::Cpu, Some(Reduced::Half), || {
            let inner = autocast(Device::Cpu, Some(Reduced::BFloat16), || a.matmul(&a).kind());
            (inner, a.matmul(&a).kind())
        });
        assert_eq!(inner_then_outer, (Kind::BFloat16, Kind::Half));

        let caught = std::panic::catch_unwind(|| {
            autocast(Device::Cpu, Some(Reduced::BFloat16), || panic!("inside"))
        });
        assert!(caught.is_err());
        assert!(!is_enabled(Device::Cpu));
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
    }
}
