//! The message layer of the C ABI (spec §2.1, §7): `tracecmd_msg_*` and `page_size`.
//!
//! FIRST CUT: every symbol with its final signature so C suites can compile; bodies
//! that are not wired to the core yet return -ENOSYS (or NULL / false / ERR).

#![allow(unused_variables)] // first cut, removed once wired

use super::types::{tracecmd_msg_handle, tracecmd_msg_mngr_type};
use std::os::raw::{c_char, c_int, c_uint, c_ulong};

/// Page size sent in TINIT (spec §1.1); trace-cmd's record sets it to getpagesize().
#[no_mangle]
pub static mut page_size: c_uint = 0;

macro_rules! todo_body {
    ($v:expr) => {
        super::ffi_guard!($v, { $v })
    };
}

#[no_mangle]
pub extern "C" fn tracecmd_msg_handle_alloc(
    fd: c_int,
    flags: c_ulong,
) -> *mut tracecmd_msg_handle {
    todo_body!(std::ptr::null_mut())
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_handle_close(msg_handle: *mut tracecmd_msg_handle) {
    todo_body!(())
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_done(msg_handle: *mut tracecmd_msg_handle) -> bool {
    todo_body!(false)
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_set_done(msg_handle: *mut tracecmd_msg_handle) {
    todo_body!(())
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_set_timeout(msec: c_int) {
    todo_body!(())
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_connect_to_server(msg_handle: *mut tracecmd_msg_handle) -> c_int {
    todo_body!(-libc::ENOSYS)
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_send_init_data(
    msg_handle: *mut tracecmd_msg_handle,
    client_ports: *mut *mut c_int,
) -> c_int {
    todo_body!(-libc::ENOSYS)
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_metadata_send(
    msg_handle: *mut tracecmd_msg_handle,
    buf: *const c_char,
    size: c_int,
) -> c_int {
    todo_body!(-libc::ENOSYS)
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_finish_sending_metadata(
    msg_handle: *mut tracecmd_msg_handle,
) -> c_int {
    todo_body!(-libc::ENOSYS)
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_send_close_msg(msg_handle: *mut tracecmd_msg_handle) {
    todo_body!(())
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_set_connection(
    msg_handle: *mut tracecmd_msg_handle,
    domain: *const c_char,
) -> c_int {
    todo_body!(-libc::ENOSYS)
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_initial_setting(msg_handle: *mut tracecmd_msg_handle) -> c_int {
    todo_body!(-libc::ENOSYS)
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_send_port_array(
    msg_handle: *mut tracecmd_msg_handle,
    ports: *mut c_int,
) -> c_int {
    todo_body!(-libc::ENOSYS)
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_collect_metadata(
    msg_handle: *mut tracecmd_msg_handle,
    ofd: c_int,
) -> c_int {
    todo_body!(-libc::ENOSYS)
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_read_manager(
    msg_handle: *mut tracecmd_msg_handle,
) -> tracecmd_msg_mngr_type {
    todo_body!(tracecmd_msg_mngr_type::TRACECMD_MSG_MNGR_ERR)
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_get_connect(
    msg_handle: *mut tracecmd_msg_handle,
    domain: *mut *mut c_char,
    agent_fifo: *mut *mut c_char,
    cpu_fifos: *mut *mut *mut c_char,
) -> c_int {
    todo_body!(-libc::ENOSYS)
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_send_cpus(msg_handle: *mut tracecmd_msg_handle, cpus: c_int) -> c_int {
    todo_body!(-libc::ENOSYS)
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_send_domain(
    msg_handle: *mut tracecmd_msg_handle,
    domain: *mut c_char,
    cpus: c_int,
) -> c_int {
    todo_body!(-libc::ENOSYS)
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_get_domain(
    msg_handle: *mut tracecmd_msg_handle,
    domain: *mut *mut c_char,
) -> c_int {
    todo_body!(-libc::ENOSYS)
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_send_finish(msg_handle: *mut tracecmd_msg_handle) -> c_int {
    todo_body!(-libc::ENOSYS)
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_transfer_fd(
    msg_handle: *mut tracecmd_msg_handle,
    fd: c_int,
    cpus: c_int,
) -> c_int {
    todo_body!(-libc::ENOSYS)
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_get_fds(
    msg_handle: *mut tracecmd_msg_handle,
    cpu_count: c_int,
    _fds: *mut c_int,
) -> c_int {
    todo_body!(-libc::ENOSYS)
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_agent_connect(
    msg_handle: *mut tracecmd_msg_handle,
    cpu_count: c_int,
) -> c_int {
    todo_body!(-libc::ENOSYS)
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_agent_parameters(
    msg_handle: *mut tracecmd_msg_handle,
    argc: c_int,
    argv: *mut *mut c_char,
) -> c_int {
    todo_body!(-libc::ENOSYS)
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_list_domains(msg_handle: *mut tracecmd_msg_handle) -> c_int {
    todo_body!(-libc::ENOSYS)
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_list_guests(msg_handle: *mut tracecmd_msg_handle) -> c_int {
    todo_body!(-libc::ENOSYS)
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_list_agents(msg_handle: *mut tracecmd_msg_handle) -> c_int {
    todo_body!(-libc::ENOSYS)
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_connect_guest(
    msg_handle: *mut tracecmd_msg_handle,
    domain: *const c_char,
    agent: *const c_char,
    nr_cpus: c_int,
    cpu_list: *const *mut c_char,
) -> c_int {
    todo_body!(-libc::ENOSYS)
}
#[no_mangle]
pub extern "C" fn tracecmd_msg_connect_agent(
    msg_handle: *mut tracecmd_msg_handle,
    guest: *const c_char,
    pid: c_int,
    cpu_count: *mut c_int,
) -> c_int {
    todo_body!(-libc::ENOSYS)
}
