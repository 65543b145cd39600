//! How the Rust side calls the C++ shim (`csrc/shim.h`): an entry point
//! returns 0, or non-zero after writing a NUL-terminated message into the
//! caller's buffer (C++ exceptions never cross the C boundary).

use std::ffi::{CStr, c_char, c_int};

/// Calls `f` with an error buffer; its message when it fails.
pub(crate) fn call(f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), String> {
    let mut err = [0 as c_char; 4096];
    if f(err.as_mut_ptr(), err.len()) == 0 {
        return Ok(());
    }
    // SAFETY: the shim writes a NUL-terminated message within the buffer.
    let message = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
    Err(message.trim().to_string())
}
