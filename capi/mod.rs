//! The C ABI of trace-cmd's virt-server branch (spec §2, §7).
//!
//! Thin and mechanical: every `extern "C"` body runs inside [`ffi_guard!`], which
//! catches a panic and returns the function's error value instead of unwinding into
//! C. Protocol and recording decisions live in the safe core under `src/`.

/// Runs `$body` and returns its value; if it panics, logs and returns `$on_panic`.
///
/// Every exported function uses this so that no panic crosses into C code.
macro_rules! ffi_guard {
    ($on_panic:expr, $body:block) => {{
        match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| $body)) {
            Ok(v) => v,
            Err(_) => {
                ::log::error!("internal error (panic) caught at the C boundary");
                $on_panic
            }
        }
    }};
}
#[allow(unused_imports)]
pub(crate) use ffi_guard;

pub mod recorder;
pub mod types;
