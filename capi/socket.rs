//! The connection helper of the C ABI (spec §2.2) and `receive_fd` (spec §2.1).
//!
//! Both symbols are defined by trace-cmd's own program too; the Makefile weakens
//! them in the static library so that both link.


// These functions are C entry points: the pointer contract is the C API's,
// checked for NULL at the top of each body, not Rust's `unsafe fn`.
#![allow(clippy::not_unsafe_ptr_arg_deref)]
use crate::msg::{session, Channel, MsgError};
use std::ffi::CStr;
use std::os::fd::{BorrowedFd, IntoRawFd};
use std::os::raw::{c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Connects an `AF_UNIX` stream socket to the path `agent`. Returns the fd, or -1
/// with `errno` set (`EINVAL` for NULL, `ENAMETOOLONG` for a path that does not fit
/// `sun_path`, else the error of `socket`/`connect`); on failure it prints
/// `Can not connect to socket <path>` to stderr; the socket is closed.
#[no_mangle]
pub extern "C" fn tracecmd_connect_to_socket(agent: *mut c_char) -> c_int {
    super::ffi_guard!(-1, {
        if agent.is_null() {
            nix::errno::Errno::set_raw(libc::EINVAL);
            return -1;
        }
        // SAFETY: a NUL-terminated path from the caller.
        let bytes = unsafe { CStr::from_ptr(agent) }.to_bytes();
        let path = Path::new(std::ffi::OsStr::from_bytes(bytes));
        match crate::transport::connect_unix(path) {
            Ok(fd) => fd.into_raw_fd(),
            Err(e) => {
                let errno = e.errno();
                eprintln!("Can not connect to socket {}", path.display());
                log::warn!("{e}");
                nix::errno::Errno::set_raw(errno);
                -1
            }
        }
    })
}

/// Manager side of one fd transfer on socket `fd`: waits (no timeout) for
/// CONNECT{n}, stores n in `*cpus`, sends ACK and receives the descriptor.
/// Returns the fd; -EINVAL if the message is not CONNECT (or an argument is bad),
/// -ENOTCONN at end of stream (the C original returned 0 there), -1 if no
/// descriptor came with the message, another negative errno otherwise.
///
/// cbindgen:ignore
#[no_mangle]
pub extern "C" fn receive_fd(fd: c_int, cpus: *mut c_int) -> c_int {
    super::ffi_guard!(-libc::EFAULT, {
        if fd < 0 || cpus.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: the caller keeps `fd` open during the call.
        let ch = Channel::new(unsafe { BorrowedFd::borrow_raw(fd) });
        match session::receive_fd(&ch) {
            Ok((got, n)) => {
                // SAFETY: non-NULL out-pointer.
                unsafe { *cpus = n as c_int };
                got.into_raw_fd()
            }
            Err(MsgError::NoFd) => -1,
            Err(e) => {
                log::warn!("receive fd: {e}");
                -e.errno()
            }
        }
    })
}
