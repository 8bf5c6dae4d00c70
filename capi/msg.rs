//! The message layer of the C ABI (spec §2.1, §7): `tracecmd_msg_*` and `page_size`.
//!
//! Conversions only: every protocol decision is in `crate::msg` (the TINIT/RINIT
//! handshake in `crate::msg::negotiate`). Conventions:
//! * return 0 (or a count) on success and a negative errno on failure, unless the
//!   C original documents another value (`-1` from `tracecmd_msg_connect_guest`
//!   and `tracecmd_msg_agent_parameters`, `2` from `tracecmd_msg_transfer_fd`);
//! * a NULL handle or NULL required pointer gives `-EINVAL` (NULL / false / ERR
//!   for functions returning those);
//! * the public handle fields are read afresh on every call, because C code writes
//!   `fd`, `version`, `cpu_count` and `flags` directly;
//! * strings and arrays handed to the caller come from `malloc` (free them with
//!   `free`);
//! * receives time out after 5 s (`tracecmd_msg_set_timeout`,
//!   `TRACECMD_MSG_TIMEOUT_MS`) except where the C original blocks; those waits
//!   return `-EINTR` when a signal arrives.
//!
//! V1 handles: with `version == 1` (V1_PROTOCOL) on the handle,
//! `tracecmd_msg_metadata_send` writes the bytes raw (the V1 stream),
//! `tracecmd_msg_finish_sending_metadata` and `tracecmd_msg_send_close_msg` send
//! nothing, and `tracecmd_msg_collect_metadata` copies the raw stream until EOF.
//! Any other version uses messages.


// These functions are C entry points: the pointer contract is the C API's,
// checked for NULL at the top of each body, not Rust's `unsafe fn`.
#![allow(clippy::not_unsafe_ptr_arg_deref)]
use super::types::{tracecmd_msg_flags as fl, tracecmd_msg_handle, tracecmd_msg_mngr_type};
use crate::msg::negotiate::{self, Initial};
use crate::msg::session::{self, ManagerRequest};
use crate::msg::{self, Channel, MsgError};
use std::ffi::CStr;
use std::os::fd::{BorrowedFd, IntoRawFd};
use std::os::raw::{c_char, c_int, c_uint, c_ulong};
use std::ptr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// Page size sent in TINIT (spec §1.1). trace-cmd's record sets it to
/// `getpagesize()` before TINIT; if it is still 0 then, the library sends the
/// system page size instead of a 0 every listener would refuse.
#[no_mangle]
pub static mut page_size: c_uint = 0;

/// `handle->version` value of the V1 text protocol.
const V1_PROTOCOL: i16 = 1;

/// What `tracecmd_msg_handle_alloc` really allocates: the public handle first, so a
/// pointer to this is a valid `struct tracecmd_msg_handle *`, then the done flag.
#[repr(C)]
struct HandleExt {
    public: tracecmd_msg_handle,
    done: AtomicI32,
}

/// A handle pointer known to be non-NULL and to come from `tracecmd_msg_handle_alloc`.
/// Fields are accessed through the raw pointer (no long-lived references), so a
/// signal handler storing the done flag never aliases a `&mut`.
#[derive(Clone, Copy)]
struct H(*mut tracecmd_msg_handle);

impl H {
    fn new(p: *mut tracecmd_msg_handle) -> Option<H> {
        (!p.is_null()).then_some(H(p))
    }
    // SAFETY (all accessors): the caller passed a handle from
    // tracecmd_msg_handle_alloc that it has not closed (the C contract).
    fn fd(self) -> c_int {
        unsafe { ptr::addr_of!((*self.0).fd).read() }
    }
    fn set_fd(self, fd: c_int) {
        unsafe { ptr::addr_of_mut!((*self.0).fd).write(fd) }
    }
    fn cpu_count(self) -> i16 {
        unsafe { ptr::addr_of!((*self.0).cpu_count).read() }
    }
    fn set_cpu_count(self, n: u32) {
        unsafe { ptr::addr_of_mut!((*self.0).cpu_count).write(n as i16) }
    }
    fn set_pid(self, pid: u32) {
        unsafe { ptr::addr_of_mut!((*self.0).pid).write(pid as c_int) }
    }
    fn version(self) -> i16 {
        unsafe { ptr::addr_of!((*self.0).version).read() }
    }
    fn flags(self) -> c_ulong {
        unsafe { ptr::addr_of!((*self.0).flags).read() }
    }
    fn add_flags(self, f: c_ulong) {
        unsafe { ptr::addr_of_mut!((*self.0).flags).write(self.flags() | f) }
    }
    fn done(self) -> &'static AtomicI32 {
        // SAFETY: every handle is a HandleExt (see tracecmd_msg_handle_alloc).
        unsafe { &*ptr::addr_of!((*self.0.cast::<HandleExt>()).done) }
    }
    fn is_v1(self) -> bool {
        self.version() == V1_PROTOCOL
    }
    /// The connection as a channel with the current default timeout.
    fn channel(self) -> Result<Channel<'static>, c_int> {
        let fd = self.fd();
        if fd < 0 {
            return Err(-libc::EBADF);
        }
        // SAFETY: the handle owns `fd` (or the caller lent it) for the whole call.
        Ok(Channel::new(unsafe { BorrowedFd::borrow_raw(fd) }))
    }
}

/// Logs `e` and returns its negative errno.
fn fail(what: &str, e: &MsgError) -> c_int {
    log::warn!("{what}: {e}");
    -e.errno()
}

fn ret0(what: &str, r: msg::Result<()>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => fail(what, &e),
    }
}

/// Runs `f` on the handle's channel: -EINVAL for NULL, -EBADF for a closed fd.
fn on_handle(p: *mut tracecmd_msg_handle, f: impl FnOnce(H, &Channel<'static>) -> c_int) -> c_int {
    let Some(h) = H::new(p) else {
        return -libc::EINVAL;
    };
    match h.channel() {
        Ok(ch) => f(h, &ch),
        Err(e) => e,
    }
}

fn effective_page_size() -> u32 {
    // SAFETY: a plain read of a C global; C writes it before any TINIT.
    let p = unsafe { ptr::addr_of!(page_size).read_volatile() };
    if p != 0 {
        return p;
    }
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |v| v as u32)
}

/// A malloc'd, NUL-terminated copy of `s` (NULL if malloc fails).
pub(crate) fn malloc_str(s: &[u8]) -> *mut c_char {
    // SAFETY: we write s.len() + 1 bytes into a buffer of that size.
    unsafe {
        let p = libc::malloc(s.len() + 1).cast::<u8>();
        if !p.is_null() {
            ptr::copy_nonoverlapping(s.as_ptr(), p, s.len());
            *p.add(s.len()) = 0;
        }
        p.cast()
    }
}

/// A C string argument as bytes; None for NULL.
///
/// SAFETY: `p` is NULL or a NUL-terminated string valid for the call.
unsafe fn c_bytes<'a>(p: *const c_char) -> Option<&'a [u8]> {
    (!p.is_null()).then(|| CStr::from_ptr(p).to_bytes())
}

/// Allocates a handle for `fd`. Every handle carries the done flag, whatever the
/// flags say. NULL if `calloc` fails.
#[no_mangle]
pub extern "C" fn tracecmd_msg_handle_alloc(fd: c_int, flags: c_ulong) -> *mut tracecmd_msg_handle {
    super::ffi_guard!(ptr::null_mut(), {
        // SAFETY: calloc returns zeroed memory suitably aligned for any type (or
        // NULL); all-zero bytes are a valid HandleExt (0 fields, done = 0).
        let ext = unsafe { libc::calloc(1, std::mem::size_of::<HandleExt>()) }.cast::<HandleExt>();
        let Some(h) = H::new(ext.cast()) else {
            return ptr::null_mut();
        };
        h.set_fd(fd);
        // SAFETY: h points to the zeroed handle just allocated.
        unsafe { ptr::addr_of_mut!((*h.0).flags).write(flags) };
        h.0
    })
}

/// Closes the handle's fd (if >= 0) and frees the handle. NULL is ignored.
#[no_mangle]
pub extern "C" fn tracecmd_msg_handle_close(msg_handle: *mut tracecmd_msg_handle) {
    super::ffi_guard!((), {
        let Some(h) = H::new(msg_handle) else { return };
        let fd = h.fd();
        if fd >= 0 {
            // SAFETY: the handle owns its fd.
            unsafe { libc::close(fd) };
        }
        // SAFETY: allocated by tracecmd_msg_handle_alloc with calloc.
        unsafe { libc::free(msg_handle.cast()) };
    })
}

/// The done flag (set by `tracecmd_msg_set_done`); false for NULL.
#[no_mangle]
pub extern "C" fn tracecmd_msg_done(msg_handle: *mut tracecmd_msg_handle) -> bool {
    super::ffi_guard!(false, {
        H::new(msg_handle).is_some_and(|h| h.done().load(Ordering::SeqCst) != 0)
    })
}

/// Sets the done flag. Async-signal-safe (one atomic store): call it from a
/// signal handler to make `tracecmd_msg_collect_metadata` stop waiting.
#[no_mangle]
pub extern "C" fn tracecmd_msg_set_done(msg_handle: *mut tracecmd_msg_handle) {
    super::ffi_guard!((), {
        if let Some(h) = H::new(msg_handle) {
            h.done().store(1, Ordering::SeqCst);
        }
    })
}

/// Sets the receive timeout in milliseconds for all later calls; negative means
/// wait forever (for debugging). Default 5000, or `TRACECMD_MSG_TIMEOUT_MS`.
#[no_mangle]
pub extern "C" fn tracecmd_msg_set_timeout(msec: c_int) {
    super::ffi_guard!((), {
        msg::set_default_timeout((msec >= 0).then(|| Duration::from_millis(msec as u64)));
    })
}

/// Virtio client: TCONNECT, then wait for the listener's RCONNECT.
#[no_mangle]
pub extern "C" fn tracecmd_msg_connect_to_server(msg_handle: *mut tracecmd_msg_handle) -> c_int {
    super::ffi_guard!(-libc::EFAULT, {
        on_handle(msg_handle, |_, ch| {
            ret0("connect to server", session::connect_to_server(ch))
        })
    })
}

fn open_virtio_ports(cpus: u32) -> Result<Vec<c_int>, c_int> {
    let mut fds = Vec::new();
    for cpu in 0..cpus {
        let path = crate::transport::virtio_cpu_path(cpu);
        match std::fs::OpenOptions::new().write(true).open(&path) {
            Ok(f) => fds.push(f.into_raw_fd()),
            Err(e) => {
                log::warn!("cannot open {}: {e}", path.display());
                for fd in fds {
                    // SAFETY: we opened it above and nobody else has it.
                    unsafe { libc::close(fd) };
                }
                return Err(-e.raw_os_error().unwrap_or(libc::EIO));
            }
        }
    }
    Ok(fds)
}

/// Record client: TINIT, then RINIT. `*client_ports` gets a malloc'd array of
/// RINIT's CPU count: the ports (NETWORK handles) or the opened
/// `/dev/virtio-ports/trace-path-cpu<N>` fds (VIRT handles).
#[no_mangle]
pub extern "C" fn tracecmd_msg_send_init_data(
    msg_handle: *mut tracecmd_msg_handle,
    client_ports: *mut *mut c_int,
) -> c_int {
    super::ffi_guard!(-libc::EFAULT, {
        if client_ports.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: non-NULL out-pointer from the caller.
        unsafe { *client_ports = ptr::null_mut() };
        on_handle(msg_handle, |h, ch| {
            let flags = h.flags();
            let network = flags & fl::TRACECMD_MSG_FL_NETWORK as c_ulong != 0;
            let virt = flags & fl::TRACECMD_MSG_FL_VIRT as c_ulong != 0;
            if !network && !virt {
                log::warn!("send_init_data: handle is neither NETWORK nor VIRT");
                return -libc::EINVAL;
            }
            let Ok(cpus) = u32::try_from(h.cpu_count()) else {
                return -libc::EINVAL;
            };
            let use_tcp = flags & fl::TRACECMD_MSG_FL_USE_TCP as c_ulong != 0;
            let rinit = match negotiate::send_init(ch, cpus, effective_page_size(), use_tcp) {
                Ok(r) => r,
                Err(e) => return fail("send init data", &e),
            };
            if rinit.cpus < cpus {
                log::warn!(
                    "send_init_data: the server offers {} CPUs for our {cpus}",
                    rinit.cpus
                );
                return -libc::EINVAL;
            }
            let values: Vec<c_int> = if network {
                if rinit.ports.len() != rinit.cpus as usize {
                    log::warn!("send_init_data: RINIT without ports on a network connection");
                    return -libc::EINVAL;
                }
                rinit.ports.iter().map(|&p| p as c_int).collect()
            } else {
                match open_virtio_ports(rinit.cpus) {
                    Ok(v) => v,
                    Err(e) => return e,
                }
            };
            // SAFETY: room for values.len() ints (at least one, so never malloc(0)).
            unsafe {
                let arr = libc::malloc(std::mem::size_of::<c_int>() * values.len().max(1))
                    .cast::<c_int>();
                if arr.is_null() {
                    return -libc::ENOMEM;
                }
                ptr::copy_nonoverlapping(values.as_ptr(), arr, values.len());
                *client_ports = arr;
            }
            0
        })
    })
}

/// Sends `size` bytes of metadata as SENDMETA chunks (raw bytes on a V1 handle).
/// `size == 0` sends one empty SENDMETA, as the C original does.
#[no_mangle]
pub extern "C" fn tracecmd_msg_metadata_send(
    msg_handle: *mut tracecmd_msg_handle,
    buf: *const c_char,
    size: c_int,
) -> c_int {
    super::ffi_guard!(-libc::EFAULT, {
        if size < 0 || (buf.is_null() && size > 0) {
            return -libc::EINVAL;
        }
        let data: &[u8] = if size == 0 {
            &[]
        } else {
            // SAFETY: the caller passes `size` readable bytes at `buf`.
            unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), size as usize) }
        };
        on_handle(msg_handle, |h, ch| {
            if h.is_v1() {
                ret0("metadata send (V1)", ch.send_all(data))
            } else {
                ret0("metadata send", session::send_metadata(ch, data))
            }
        })
    })
}

/// FINMETA (nothing on a V1 handle).
#[no_mangle]
pub extern "C" fn tracecmd_msg_finish_sending_metadata(
    msg_handle: *mut tracecmd_msg_handle,
) -> c_int {
    super::ffi_guard!(-libc::EFAULT, {
        on_handle(msg_handle, |h, ch| {
            if h.is_v1() {
                return 0;
            }
            ret0("finish sending metadata", session::finish_metadata(ch))
        })
    })
}

/// CLOSE (nothing on a V1 handle); errors are logged only.
#[no_mangle]
pub extern "C" fn tracecmd_msg_send_close_msg(msg_handle: *mut tracecmd_msg_handle) {
    super::ffi_guard!((), {
        on_handle(msg_handle, |h, ch| {
            if h.is_v1() {
                return 0;
            }
            ret0("send close", session::send_close(ch))
        });
    })
}

/// Listener, virtio: wait without timeout for TCONNECT and answer RCONNECT.
/// `-ECONNABORTED` on CLOSE, `-EINVAL` on another command, `-ENOTCONN` if the peer
/// is gone (the C original exits the whole process there instead).
#[no_mangle]
pub extern "C" fn tracecmd_msg_set_connection(
    msg_handle: *mut tracecmd_msg_handle,
    domain: *const c_char,
) -> c_int {
    super::ffi_guard!(-libc::EFAULT, {
        // SAFETY: NULL or a C string from the caller.
        let name = unsafe { c_bytes(domain) }.unwrap_or(b"?");
        let what = format!("connection from {}", String::from_utf8_lossy(name));
        on_handle(msg_handle, |_, ch| ret0(&what, session::set_connection(ch)))
    })
}

/// Listener: TINIT or CINIT. TINIT: sets cpu_count (and USE_TCP) and returns the
/// client's page size. CINIT: sets AGENT and cpu_count, answers CRINIT, returns 0.
#[no_mangle]
pub extern "C" fn tracecmd_msg_initial_setting(msg_handle: *mut tracecmd_msg_handle) -> c_int {
    super::ffi_guard!(-libc::EFAULT, {
        on_handle(msg_handle, |h, ch| match negotiate::initial_setting(ch) {
            Ok(Initial::Agent { cpus }) => {
                h.add_flags(fl::TRACECMD_MSG_FL_AGENT as c_ulong);
                h.set_cpu_count(cpus);
                0
            }
            Ok(Initial::Record {
                cpus,
                page_size: ps,
                use_tcp,
            }) => {
                h.set_cpu_count(cpus);
                if use_tcp {
                    h.add_flags(fl::TRACECMD_MSG_FL_USE_TCP as c_ulong);
                }
                ps as c_int
            }
            Err(e) => fail("initial setting", &e),
        })
    })
}

/// Listener: RINIT with the handle's cpu_count and, unless `ports` is NULL
/// (virt mode), cpu_count ports.
#[no_mangle]
pub extern "C" fn tracecmd_msg_send_port_array(
    msg_handle: *mut tracecmd_msg_handle,
    ports: *mut c_int,
) -> c_int {
    super::ffi_guard!(-libc::EFAULT, {
        on_handle(msg_handle, |h, ch| {
            let cpus = h.cpu_count();
            if cpus < 0 {
                return -libc::EINVAL;
            }
            let list: Option<Vec<u32>> = if ports.is_null() {
                None
            } else {
                // SAFETY: the caller passes cpu_count ints.
                let s = unsafe { std::slice::from_raw_parts(ports, cpus as usize) };
                if s.iter().any(|&p| !(0..=65535).contains(&p)) {
                    return -libc::EINVAL;
                }
                Some(s.iter().map(|&p| p as u32).collect())
            };
            ret0(
                "send port array",
                negotiate::send_port_array(ch, cpus as u32, list.as_deref()),
            )
        })
    })
}

/// Writes to a borrowed fd.
struct FdWriter(BorrowedFd<'static>);

impl std::io::Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        nix::unistd::write(self.0, buf).map_err(std::io::Error::from)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Listener: metadata to `ofd` until FINMETA, then wait (no timeout) for CLOSE
/// unless the done flag is set. A V1 handle copies the raw stream until EOF.
#[no_mangle]
pub extern "C" fn tracecmd_msg_collect_metadata(
    msg_handle: *mut tracecmd_msg_handle,
    ofd: c_int,
) -> c_int {
    super::ffi_guard!(-libc::EFAULT, {
        if ofd < 0 {
            return -libc::EBADF;
        }
        on_handle(msg_handle, |h, ch| {
            // SAFETY: the caller keeps `ofd` open during the call.
            let mut out = FdWriter(unsafe { BorrowedFd::borrow_raw(ofd) });
            let done = || h.done().load(Ordering::SeqCst) != 0;
            let r = if h.is_v1() {
                session::collect_raw(ch, &mut out, &done)
            } else {
                session::collect_metadata(ch, &mut out, &done)
            };
            match r {
                Ok(_) => 0,
                Err(e) => fail("collect metadata", &e),
            }
        })
    })
}

/// Listener: one manager request. CONNECT sets cpu_count, TRACE sets pid.
#[no_mangle]
pub extern "C" fn tracecmd_msg_read_manager(
    msg_handle: *mut tracecmd_msg_handle,
) -> tracecmd_msg_mngr_type {
    use tracecmd_msg_mngr_type::*;
    super::ffi_guard!(TRACECMD_MSG_MNG_ERR, {
        let Some(h) = H::new(msg_handle) else {
            return TRACECMD_MSG_MNG_ERR;
        };
        let Ok(ch) = h.channel() else {
            return TRACECMD_MSG_MNG_ERR;
        };
        match session::read_manager(&ch) {
            Ok(ManagerRequest::Connect { cpus }) => {
                h.set_cpu_count(cpus);
                TRACECMD_MSG_MNG_CONNECT
            }
            Ok(ManagerRequest::GuestList) => TRACECMD_MSG_MNG_GLIST,
            Ok(ManagerRequest::AgentList) => TRACECMD_MSG_MNG_ALIST,
            Ok(ManagerRequest::Trace { pid }) => {
                h.set_pid(pid);
                TRACECMD_MSG_MNG_TRACE
            }
            Err(e) => {
                fail("read manager", &e);
                TRACECMD_MSG_MNG_ERR
            }
        }
    })
}

/// Frees a NULL-terminated malloc'd string array.
///
/// SAFETY: `arr` is NULL or came from `malloc_str_array`.
unsafe fn free_str_array(arr: *mut *mut c_char) {
    if arr.is_null() {
        return;
    }
    let mut i = 0;
    while !(*arr.add(i)).is_null() {
        libc::free((*arr.add(i)).cast());
        i += 1;
    }
    libc::free(arr.cast());
}

/// A malloc'd array of malloc'd strings with a NULL entry at the end.
pub(crate) fn malloc_str_array(items: &[Vec<u8>]) -> *mut *mut c_char {
    // SAFETY: room for items.len() + 1 pointers, each written before use.
    unsafe {
        let arr = libc::malloc(std::mem::size_of::<*mut c_char>() * (items.len() + 1))
            .cast::<*mut c_char>();
        if arr.is_null() {
            return arr;
        }
        for (i, s) in items.iter().enumerate() {
            let p = malloc_str(s);
            *arr.add(i) = p;
            if p.is_null() {
                free_str_array(arr);
                return ptr::null_mut();
            }
        }
        *arr.add(items.len()) = ptr::null_mut();
        arr
    }
}

/// Listener, after a CONNECT request: ACK, then the domain, agent path and the
/// handle's cpu_count CPU paths. `*cpu_fifos` ends with a NULL entry. Everything
/// is malloc'd; on failure nothing is left allocated and the outputs are NULL.
#[no_mangle]
pub extern "C" fn tracecmd_msg_get_connect(
    msg_handle: *mut tracecmd_msg_handle,
    domain: *mut *mut c_char,
    agent_fifo: *mut *mut c_char,
    cpu_fifos: *mut *mut *mut c_char,
) -> c_int {
    super::ffi_guard!(-libc::EFAULT, {
        if domain.is_null() || agent_fifo.is_null() || cpu_fifos.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: non-NULL out-pointers from the caller.
        unsafe {
            *domain = ptr::null_mut();
            *agent_fifo = ptr::null_mut();
            *cpu_fifos = ptr::null_mut();
        }
        on_handle(msg_handle, |h, ch| {
            let n = h.cpu_count();
            if n < 0 {
                return -libc::EINVAL;
            }
            let gc = match session::get_connect(ch, n as u32) {
                Ok(gc) => gc,
                Err(e) => return fail("get connect", &e),
            };
            let d = malloc_str(&gc.domain);
            let a = malloc_str(&gc.agent);
            let c = malloc_str_array(&gc.cpus);
            if d.is_null() || a.is_null() || c.is_null() {
                // SAFETY: each is NULL or ours.
                unsafe {
                    libc::free(d.cast());
                    libc::free(a.cast());
                    free_str_array(c);
                }
                return -libc::ENOMEM;
            }
            // SAFETY: non-NULL out-pointers checked above.
            unsafe {
                *domain = d;
                *agent_fifo = a;
                *cpu_fifos = c;
            }
            0
        })
    })
}

/// DOMAIN{cpus}.
#[no_mangle]
pub extern "C" fn tracecmd_msg_send_cpus(msg_handle: *mut tracecmd_msg_handle, cpus: c_int) -> c_int {
    super::ffi_guard!(-libc::EFAULT, {
        if cpus < 0 {
            return -libc::EINVAL;
        }
        on_handle(msg_handle, |_, ch| {
            ret0("send cpus", session::send_cpus(ch, cpus as u32))
        })
    })
}

/// DOMAIN{cpus} followed by the domain name as a string.
#[no_mangle]
pub extern "C" fn tracecmd_msg_send_domain(
    msg_handle: *mut tracecmd_msg_handle,
    domain: *mut c_char,
    cpus: c_int,
) -> c_int {
    super::ffi_guard!(-libc::EFAULT, {
        // SAFETY: NULL or a C string from the caller.
        let Some(name) = (unsafe { c_bytes(domain) }) else {
            return -libc::EINVAL;
        };
        if cpus < 0 {
            return -libc::EINVAL;
        }
        on_handle(msg_handle, |_, ch| {
            ret0("send domain", session::send_domain(ch, name, cpus as u32))
        })
    })
}

/// Listener, after TRACE{pid 0}: ACK, then the guest name (malloc'd) in `*domain`.
#[no_mangle]
pub extern "C" fn tracecmd_msg_get_domain(
    msg_handle: *mut tracecmd_msg_handle,
    domain: *mut *mut c_char,
) -> c_int {
    super::ffi_guard!(-libc::EFAULT, {
        if domain.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: non-NULL out-pointer.
        unsafe { *domain = ptr::null_mut() };
        on_handle(msg_handle, |_, ch| match session::get_domain(ch) {
            Ok(name) => {
                let p = malloc_str(&name);
                if p.is_null() {
                    return -libc::ENOMEM;
                }
                // SAFETY: non-NULL out-pointer.
                unsafe { *domain = p };
                0
            }
            Err(e) => fail("get domain", &e),
        })
    })
}

/// FINISH.
#[no_mangle]
pub extern "C" fn tracecmd_msg_send_finish(msg_handle: *mut tracecmd_msg_handle) -> c_int {
    super::ffi_guard!(-libc::EFAULT, {
        on_handle(msg_handle, |_, ch| {
            ret0("send finish", session::send_finish(ch))
        })
    })
}

/// Listener: pass `fd` to the manager (CONNECT{cpus}, ACK, SCM_RIGHTS). Returns 2
/// (the data bytes of the SCM_RIGHTS message) on success, as the C original.
#[no_mangle]
pub extern "C" fn tracecmd_msg_transfer_fd(
    msg_handle: *mut tracecmd_msg_handle,
    fd: c_int,
    cpus: c_int,
) -> c_int {
    super::ffi_guard!(-libc::EFAULT, {
        if fd < 0 || cpus < 0 {
            return -libc::EINVAL;
        }
        on_handle(msg_handle, |_, ch| {
            // SAFETY: the caller keeps `fd` open during the call.
            let passed = unsafe { BorrowedFd::borrow_raw(fd) };
            match session::transfer_fd(ch, passed, cpus as u32) {
                Ok(n) => n as c_int,
                Err(e) => fail("transfer fd", &e),
            }
        })
    })
}

/// Manager, after `tracecmd_msg_connect_agent`: receives the agent channel (which
/// replaces `fd`; the old manager socket stays open on purpose, spec §3.6) and the
/// per-CPU FIFOs into `fds[0..cpu_count)` (-1 where none came; extra ones are
/// closed). On failure every received fd is closed and `fd` is unchanged.
#[no_mangle]
pub extern "C" fn tracecmd_msg_get_fds(
    msg_handle: *mut tracecmd_msg_handle,
    cpu_count: c_int,
    fds: *mut c_int,
) -> c_int {
    super::ffi_guard!(-libc::EFAULT, {
        if cpu_count < 0 || (fds.is_null() && cpu_count > 0) {
            return -libc::EINVAL;
        }
        let out: &mut [c_int] = if cpu_count == 0 {
            &mut []
        } else {
            // SAFETY: the caller passes room for cpu_count ints.
            unsafe { std::slice::from_raw_parts_mut(fds, cpu_count as usize) }
        };
        out.fill(-1);
        on_handle(msg_handle, |h, ch| match session::get_fds(ch) {
            Ok((main, cpu_fds)) => {
                for (slot, fd) in out.iter_mut().zip(cpu_fds) {
                    *slot = fd.into_raw_fd();
                }
                h.set_fd(main.into_raw_fd());
                0
            }
            Err(e) => fail("get fds", &e),
        })
    })
}

/// Agent: CINIT{cpu_count} (native byte order), CRINIT, then wait without timeout
/// for a manager's CONNECT. Returns its argc.
#[no_mangle]
pub extern "C" fn tracecmd_msg_agent_connect(
    msg_handle: *mut tracecmd_msg_handle,
    cpu_count: c_int,
) -> c_int {
    super::ffi_guard!(-libc::EFAULT, {
        if !(0..=msg::MAX_CPUS as c_int).contains(&cpu_count) {
            return -libc::EINVAL;
        }
        on_handle(msg_handle, |_, ch| {
            match session::agent_connect(ch, cpu_count as u32) {
                Ok(argc) => argc as c_int,
                Err(e) => fail("agent connect", &e),
            }
        })
    })
}

/// Agent: `argc` strings into `argv[0..argc)` (malloc'd). 0, or -1 on any failure
/// (then `argv[0..argc)` are all NULL).
#[no_mangle]
pub extern "C" fn tracecmd_msg_agent_parameters(
    msg_handle: *mut tracecmd_msg_handle,
    argc: c_int,
    argv: *mut *mut c_char,
) -> c_int {
    super::ffi_guard!(-1, {
        if argc < 0 || (argv.is_null() && argc > 0) {
            return -1;
        }
        let out: &mut [*mut c_char] = if argc == 0 {
            &mut []
        } else {
            // SAFETY: the caller passes room for argc pointers.
            unsafe { std::slice::from_raw_parts_mut(argv, argc as usize) }
        };
        out.fill(ptr::null_mut());
        on_handle(msg_handle, |_, ch| {
            let args = match session::agent_parameters(ch, argc as u32) {
                Ok(a) => a,
                Err(e) => {
                    fail("agent parameters", &e);
                    return -1;
                }
            };
            for (slot, a) in out.iter_mut().zip(&args) {
                *slot = malloc_str(a);
            }
            if out.iter().any(|p| p.is_null()) {
                for p in out.iter_mut() {
                    // SAFETY: NULL or malloc'd above.
                    unsafe { libc::free(p.cast()) };
                    *p = ptr::null_mut();
                }
                return -1;
            }
            0
        })
    })
}

fn print_entry(name: &[u8], cpus: u32) {
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let s = std::ffi::CString::new(&name[..end]).unwrap_or_default();
    // SAFETY: a constant format with one C string and one int; goes through C's
    // stdout so it stays in order with the caller's own output.
    unsafe { libc::printf(c"%s with %d cpus\n".as_ptr(), s.as_ptr(), cpus as c_int) };
}

fn print_line(line: &CStr) {
    // SAFETY: constant format, one C string.
    unsafe { libc::printf(c"%s\n".as_ptr(), line.as_ptr()) };
}

type ListFn = fn(&Channel<'_>, &mut dyn FnMut(&[u8], u32)) -> msg::Result<usize>;

fn list(msg_handle: *mut tracecmd_msg_handle, f: ListFn, empty: Option<&CStr>) -> c_int {
    on_handle(msg_handle, |_, ch| match f(ch, &mut print_entry) {
        Ok(n) => {
            if let (0, Some(line)) = (n, empty) {
                print_line(line);
            }
            n as c_int
        }
        Err(e) => fail("list", &e),
    })
}

/// Reads DOMAIN + name entries until FINISH, printing `<name> with <n> cpus` for
/// each; returns how many.
#[no_mangle]
pub extern "C" fn tracecmd_msg_list_domains(msg_handle: *mut tracecmd_msg_handle) -> c_int {
    super::ffi_guard!(-libc::EFAULT, { list(msg_handle, session::list_domains, None) })
}

/// GLIST, then `tracecmd_msg_list_domains` ("No guests registered" for none).
#[no_mangle]
pub extern "C" fn tracecmd_msg_list_guests(msg_handle: *mut tracecmd_msg_handle) -> c_int {
    super::ffi_guard!(-libc::EFAULT, {
        list(msg_handle, session::list_guests, Some(c"No guests registered"))
    })
}

/// ALIST, then `tracecmd_msg_list_domains` ("No agents registered" for none).
#[no_mangle]
pub extern "C" fn tracecmd_msg_list_agents(msg_handle: *mut tracecmd_msg_handle) -> c_int {
    super::ffi_guard!(-libc::EFAULT, {
        list(msg_handle, session::list_agents, Some(c"No agents registered"))
    })
}

/// `trace-cmd connect`: CONNECT{nr_cpus}, wait for ACK, then the domain, the agent
/// path and `nr_cpus` CPU paths as strings. -1 if the answer is not ACK.
#[no_mangle]
pub extern "C" fn tracecmd_msg_connect_guest(
    msg_handle: *mut tracecmd_msg_handle,
    domain: *const c_char,
    agent: *const c_char,
    nr_cpus: c_int,
    cpu_list: *const *mut c_char,
) -> c_int {
    super::ffi_guard!(-libc::EFAULT, {
        if !(0..=msg::MAX_CPUS as c_int).contains(&nr_cpus) || (cpu_list.is_null() && nr_cpus > 0)
        {
            return -libc::EINVAL;
        }
        // SAFETY: NULL or C strings from the caller; cpu_list has nr_cpus entries.
        let (Some(d), Some(a)) = (unsafe { c_bytes(domain) }, unsafe { c_bytes(agent) }) else {
            return -libc::EINVAL;
        };
        let mut cpus = Vec::with_capacity(nr_cpus as usize);
        for i in 0..nr_cpus as usize {
            // SAFETY: as above.
            match unsafe { c_bytes(*cpu_list.add(i)) } {
                Some(p) => cpus.push(p),
                None => return -libc::EINVAL,
            }
        }
        on_handle(msg_handle, |_, ch| {
            match session::connect_guest(ch, d, a, &cpus) {
                Ok(()) => 0,
                Err(e @ MsgError::Unexpected { .. }) => {
                    fail("connect guest", &e);
                    -1
                }
                Err(e) => fail("connect guest", &e),
            }
        })
    })
}

/// `record -A`: TRACE{pid}, then DOMAIN (found by pid) or ACK + guest name +
/// DOMAIN. `*cpu_count` gets the guest's CPU count. -ENODEV if the listener does
/// not know the agent.
#[no_mangle]
pub extern "C" fn tracecmd_msg_connect_agent(
    msg_handle: *mut tracecmd_msg_handle,
    guest: *const c_char,
    pid: c_int,
    cpu_count: *mut c_int,
) -> c_int {
    super::ffi_guard!(-libc::EFAULT, {
        // SAFETY: NULL or a C string from the caller.
        let name = unsafe { c_bytes(guest) };
        if cpu_count.is_null() || pid < 0 || (name.is_none() && pid == 0) {
            return -libc::EINVAL;
        }
        on_handle(msg_handle, |_, ch| {
            match session::connect_agent(ch, name.unwrap_or(b""), pid as u32) {
                Ok(n) => {
                    // SAFETY: non-NULL out-pointer.
                    unsafe { *cpu_count = n as c_int };
                    0
                }
                Err(e) => fail("connect agent", &e),
            }
        })
    })
}
