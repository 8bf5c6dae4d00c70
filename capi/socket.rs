//! The connection helper of the C ABI (spec §2.2) and `receive_fd` (spec §2.1).
//!
//! FIRST CUT: final signatures, bodies return -1 / -ENOSYS until wired to the core.

#![allow(unused_variables)] // first cut, removed once wired

use std::os::raw::{c_char, c_int};

#[no_mangle]
pub extern "C" fn tracecmd_connect_to_socket(agent: *mut c_char) -> c_int {
    super::ffi_guard!(-1, { -1 })
}

/// cbindgen:ignore
#[no_mangle]
pub extern "C" fn receive_fd(fd: c_int, cpus: *mut c_int) -> c_int {
    super::ffi_guard!(-libc::ENOSYS, { -libc::ENOSYS })
}
