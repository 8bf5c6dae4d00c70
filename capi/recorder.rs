//! The recorder's C ABI (spec §2.3, §7): thin wrappers around
//! [`crate::recorder::CpuRecorder`].
//!
//! A `struct tracecmd_recorder *` points to a `RecorderHandle`. Its stop handle is a
//! separate field so that `tracecmd_stop_recording` (from a signal handler, or another
//! thread) never forms a reference to the recorder that `tracecmd_start_recording` is
//! using at the same time.

use std::ffi::{CStr, OsStr};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::raw::{c_char, c_int, c_long, c_uint, c_ulong};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::ptr;
use std::time::Duration;

use nix::errno::Errno;

use super::types::tracecmd_recorder;
use crate::recorder::{CpuRecorder, Input, Output, RecordFlags, RecorderError, StopHandle};
use crate::tracefs;

/// The caller's `struct buffer_instance` (private to trace-record.c); never looked at.
pub struct buffer_instance {
    _private: [u8; 0],
}

/// What a `struct tracecmd_recorder *` points to.
struct RecorderHandle {
    stop: StopHandle,
    rec: CpuRecorder,
}

fn into_handle(res: Result<CpuRecorder, RecorderError>) -> *mut tracecmd_recorder {
    match res {
        Ok(rec) => {
            let handle = Box::new(RecorderHandle {
                stop: rec.stop_handle(),
                rec,
            });
            Box::into_raw(handle).cast()
        }
        Err(e) => fail(e),
    }
}

fn fail(e: RecorderError) -> *mut tracecmd_recorder {
    log::warn!("{e}");
    Errno::set_raw(e.errno());
    ptr::null_mut()
}

fn invalid(what: &str) -> RecorderError {
    RecorderError::Invalid(what.to_string())
}

/// A C path argument; `None` for NULL.
///
/// # Safety
/// `s` is NULL or a NUL-terminated string.
unsafe fn c_path(s: *const c_char) -> Option<PathBuf> {
    if s.is_null() {
        return None;
    }
    let bytes = unsafe { CStr::from_ptr(s) }.to_bytes();
    Some(PathBuf::from(OsStr::from_bytes(bytes)))
}

/// The input of a buffer constructor: `buffer` or, for NULL, the tracing directory.
///
/// # Safety
/// `buffer` is NULL or a NUL-terminated string.
unsafe fn buffer_input(buffer: *const c_char, cpu: c_int) -> Result<Input, RecorderError> {
    let cpu = usize::try_from(cpu).map_err(|_| invalid("the CPU number is negative"))?;
    let dir = match unsafe { c_path(buffer) } {
        Some(dir) => dir,
        None => tracefs::tracing_dir()?,
    };
    Ok(Input::Buffer { dir, cpu })
}

/// Takes over the caller's fd (EBADF if it is negative).
fn own_fd(fd: c_int) -> Result<OwnedFd, RecorderError> {
    if fd < 0 {
        return Err(RecorderError::Output(std::io::Error::from_raw_os_error(
            libc::EBADF,
        )));
    }
    // SAFETY: the C contract hands the fd over to the recorder (spec §2.3).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn max_kb(maxkb: c_int) -> Result<u32, RecorderError> {
    u32::try_from(maxkb).map_err(|_| invalid("maxkb is negative"))
}

/// # Safety
/// `file` and `buffer` are NULL or NUL-terminated strings.
unsafe fn file_recorder(
    file: *const c_char,
    cpu: c_int,
    flags: c_uint,
    buffer: *const c_char,
    maxkb: c_int,
) -> Result<CpuRecorder, RecorderError> {
    let path = unsafe { c_path(file) }.ok_or_else(|| invalid("the output file name is NULL"))?;
    let input = unsafe { buffer_input(buffer, cpu) }?;
    CpuRecorder::to_file(input, &path, max_kb(maxkb)?, RecordFlags::from_bits(flags))
}

/// Core constructor: records `<buffer>/per_cpu/cpu<cpu>/trace_pipe_raw` (or
/// `snapshot_raw` with `TRACECMD_RECORD_SNAPSHOT`) into `fd`; with `maxkb > 0`, `fd`
/// and `fd2` form the max-kb ring, merged into `fd` by `tracecmd_free_recorder`.
/// `buffer` NULL means the top-level tracing directory. The recorder owns `fd` and
/// `fd2` (also when it fails). Returns NULL with errno set on failure.
///
/// # Safety
/// `buffer` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn tracecmd_create_buffer_recorder_fd2(
    fd: c_int,
    fd2: c_int,
    cpu: c_int,
    flags: c_uint,
    buffer: *const c_char,
    maxkb: c_int,
) -> *mut tracecmd_recorder {
    ffi_guard!(ptr::null_mut(), {
        // Take fd2 first so that it is closed too when fd is bad.
        let second = if fd2 >= 0 { own_fd(fd2).ok() } else { None };
        let first = match own_fd(fd) {
            Ok(f) => f,
            Err(e) => return fail(e),
        };
        let res = (|| {
            let max_kb = max_kb(maxkb)?;
            let output = match second {
                Some(second) => Output::Ring {
                    first,
                    second,
                    max_kb,
                },
                None if max_kb > 0 => return Err(invalid("maxkb needs a second file (fd2)")),
                None => Output::Stream(first),
            };
            let input = unsafe { buffer_input(buffer, cpu) }?;
            CpuRecorder::new(input, output, RecordFlags::from_bits(flags))
        })();
        into_handle(res)
    })
}

/// Records CPU `cpu` of `buffer` (NULL: the tracing directory) into `fd` (a file,
/// socket, pipe or virtio port), which the recorder owns and closes. NULL + errno on
/// failure.
///
/// # Safety
/// `buffer` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn tracecmd_create_buffer_recorder_fd(
    fd: c_int,
    cpu: c_int,
    flags: c_uint,
    buffer: *const c_char,
) -> *mut tracecmd_recorder {
    unsafe { tracecmd_create_buffer_recorder_fd2(fd, -1, cpu, flags, buffer, 0) }
}

/// Records CPU `cpu` of `buffer` (NULL: the tracing directory) into `file`
/// (created/truncated, mode 0644; removed again on failure). NULL + errno on failure.
///
/// # Safety
/// `file` and `buffer` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn tracecmd_create_buffer_recorder(
    file: *const c_char,
    cpu: c_int,
    flags: c_uint,
    buffer: *const c_char,
) -> *mut tracecmd_recorder {
    ffi_guard!(ptr::null_mut(), {
        into_handle(unsafe { file_recorder(file, cpu, flags, buffer, 0) })
    })
}

/// As `tracecmd_create_buffer_recorder`, keeping only the last `maxkb` KiB (between
/// half of it and all of it): `file` and `file.1` (unlinked at once) alternate, and
/// `tracecmd_free_recorder` merges them into `file` in time order. `maxkb == 0`: no
/// limit.
///
/// # Safety
/// `file` and `buffer` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn tracecmd_create_buffer_recorder_maxkb(
    file: *const c_char,
    cpu: c_int,
    flags: c_uint,
    buffer: *const c_char,
    maxkb: c_int,
) -> *mut tracecmd_recorder {
    ffi_guard!(ptr::null_mut(), {
        into_handle(unsafe { file_recorder(file, cpu, flags, buffer, maxkb) })
    })
}

/// The listener's virt recorder: copies from the caller's `trace_fd` (a guest's
/// per-CPU FIFO) into `file` with splice. On success the recorder owns `trace_fd`
/// (closed by `tracecmd_free_recorder`); on failure it is left to the caller.
/// NULL + errno on failure.
///
/// # Safety
/// `file` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn tracecmd_create_recorder_virt(
    file: *const c_char,
    cpu: c_int,
    trace_fd: c_int,
) -> *mut tracecmd_recorder {
    ffi_guard!(ptr::null_mut(), {
        let _ = cpu; // only names the input of a buffer recorder
        let Some(path) = (unsafe { c_path(file) }) else {
            return fail(invalid("the output file name is NULL"));
        };
        if trace_fd < 0 {
            return fail(RecorderError::Input(std::io::Error::from_raw_os_error(
                libc::EBADF,
            )));
        }
        // Work on a duplicate so that a failure leaves the caller's fd alone.
        let dup = match nix::fcntl::fcntl(trace_fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(0)) {
            // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(e) => {
                return fail(RecorderError::Input(std::io::Error::from_raw_os_error(
                    e as i32,
                )))
            }
        };
        let res = CpuRecorder::to_file(Input::Fd(dup), &path, 0, RecordFlags::default());
        if res.is_ok() {
            // The recorder now owns the input, as the original's does.
            let _ = nix::unistd::close(trace_fd);
        }
        into_handle(res)
    })
}

/// `tracecmd_create_buffer_recorder_fd` on the top-level tracing directory.
#[no_mangle]
pub extern "C" fn tracecmd_create_recorder_fd(
    fd: c_int,
    cpu: c_int,
    flags: c_uint,
) -> *mut tracecmd_recorder {
    unsafe { tracecmd_create_buffer_recorder_fd(fd, cpu, flags, ptr::null()) }
}

/// `tracecmd_create_buffer_recorder` on the top-level tracing directory.
///
/// # Safety
/// `file` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn tracecmd_create_recorder(
    file: *const c_char,
    cpu: c_int,
    flags: c_uint,
) -> *mut tracecmd_recorder {
    unsafe { tracecmd_create_buffer_recorder(file, cpu, flags, ptr::null()) }
}

/// `tracecmd_create_buffer_recorder_maxkb` on the top-level tracing directory.
///
/// # Safety
/// `file` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn tracecmd_create_recorder_maxkb(
    file: *const c_char,
    cpu: c_int,
    flags: c_uint,
    maxkb: c_int,
) -> *mut tracecmd_recorder {
    unsafe { tracecmd_create_buffer_recorder_maxkb(file, cpu, flags, ptr::null(), maxkb) }
}

/// Exported for link compatibility only: `instance` is trace-record.c's private
/// `struct buffer_instance`, which a library cannot interpret. Always returns NULL
/// with errno set to ENOSYS.
#[no_mangle]
pub extern "C" fn tracecmd_create_agent_recorder(
    instance: *mut buffer_instance,
    cpu: c_int,
    flags: c_uint,
) -> *mut tracecmd_recorder {
    ffi_guard!(ptr::null_mut(), {
        let _ = (instance, cpu, flags);
        Errno::set_raw(libc::ENOSYS);
        ptr::null_mut()
    })
}

/// The recorder behind a C handle; `None` for NULL.
///
/// # Safety
/// `recorder` is NULL or a live handle. Only the `rec` field is borrowed:
/// `tracecmd_stop_recording` touches only `stop`, so the two may run at once.
unsafe fn recorder_mut<'a>(recorder: *mut tracecmd_recorder) -> Option<&'a mut CpuRecorder> {
    let h = recorder.cast::<RecorderHandle>();
    if h.is_null() {
        return None;
    }
    Some(unsafe { &mut *ptr::addr_of_mut!((*h).rec) })
}

/// Records until `tracecmd_stop_recording`, then flushes. After an idle round in
/// which the input gave no whole page, waits `sleep` microseconds (at most 100 ms)
/// before trying again. Returns 0, or a negative errno value (-EINVAL for NULL).
/// A stop that arrived before this call makes it flush and return at once.
///
/// A ring buffer recorded into a regular file is written behind: the first call
/// starts a writer thread of this recorder (all signals blocked in it), and the
/// calling thread only moves ring-buffer pages into pipes, so that a slow file write
/// does not hold up the draining. The flush at the end waits until the file has
/// everything. The writer thread writes whole pages at page-aligned offsets with
/// `O_DIRECT`, past the page cache, through a second open of the same file (the
/// output fd's offset is kept where it would be); an output at an unaligned offset,
/// opened with `O_APPEND`, or on a file system that refuses `O_DIRECT` is written
/// through the page cache, and so is every output when the environment has
/// `TRACECMD_RS_NO_DIRECT` set (for slow disks, where the page cache absorbs bursts).
///
/// While it records a ring buffer, the calling thread, when in the normal or batch
/// scheduling class, runs as `SCHED_FIFO` priority 1 (the lowest real-time priority,
/// with reset-on-fork) where it may (root, `CAP_SYS_NICE` or `RLIMIT_RTPRIO`), so
/// that it drains the buffer as soon as the kernel wakes it; it does little per
/// wake-up. With `TRACECMD_RS_NO_RT` set in the environment, or when that is refused,
/// it asks for a 0.1 ms time slice instead (`sched_setattr`, taken by Linux 6.12 and
/// later), which gets it a CPU sooner without more CPU time. The thread's own
/// scheduling is back when this returns.
///
/// # Safety
/// `recorder` is NULL or came from a `tracecmd_create_*recorder*` function and was
/// not freed.
#[no_mangle]
pub unsafe extern "C" fn tracecmd_start_recording(
    recorder: *mut tracecmd_recorder,
    sleep: c_ulong,
) -> c_int {
    ffi_guard!(-libc::EFAULT, {
        let Some(rec) = (unsafe { recorder_mut(recorder) }) else {
            return -libc::EINVAL;
        };
        // c_ulong is u32 on 32-bit targets.
        #[allow(clippy::useless_conversion)]
        let sleep = Duration::from_micros(u64::from(sleep));
        match rec.record(sleep) {
            Ok(()) => 0,
            Err(e) => {
                log::error!("{e}");
                -e.errno()
            }
        }
    })
}

/// Makes `tracecmd_start_recording` flush and return. NULL-safe and
/// async-signal-safe (a single atomic store): callable from a signal handler in the
/// recording thread or from any other thread.
///
/// # Safety
/// `recorder` is NULL or a live recorder.
#[no_mangle]
pub unsafe extern "C" fn tracecmd_stop_recording(recorder: *mut tracecmd_recorder) {
    // The guard costs no allocation unless a panic happens.
    ffi_guard!((), {
        let h = recorder.cast::<RecorderHandle>();
        if h.is_null() {
            return;
        }
        // SAFETY: reads only the `stop` field, never the recorder in use.
        let stop = unsafe { &*ptr::addr_of!((*h).stop) };
        stop.stop();
    })
}

/// Moves what the input has now, including a ring buffer's partial last page, and
/// pads the output with zeros to a whole page. Returns the bytes written, or a
/// negative errno value (-EINVAL for NULL).
///
/// # Safety
/// `recorder` is NULL or a live recorder not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn tracecmd_flush_recording(recorder: *mut tracecmd_recorder) -> c_long {
    ffi_guard!(-(libc::EFAULT as c_long), {
        let Some(rec) = (unsafe { recorder_mut(recorder) }) else {
            return -(libc::EINVAL as c_long);
        };
        match rec.flush() {
            Ok(n) => c_long::try_from(n).unwrap_or(c_long::MAX),
            Err(e) => {
                log::error!("{e}");
                -(e.errno() as c_long)
            }
        }
    })
}

/// Writes out what the writer thread still holds and ends it, merges a max-kb ring
/// into its file, closes every fd the recorder owns and frees it. NULL-safe.
///
/// # Safety
/// `recorder` is NULL or a live recorder that no other thread uses any more.
#[no_mangle]
pub unsafe extern "C" fn tracecmd_free_recorder(recorder: *mut tracecmd_recorder) {
    ffi_guard!((), {
        let h = recorder.cast::<RecorderHandle>();
        if h.is_null() {
            return;
        }
        // SAFETY: made by `into_handle` with Box::into_raw; ownership comes back here.
        let handle = unsafe { Box::from_raw(h) };
        if let Err(e) = handle.rec.finish() {
            log::error!("{e}");
        }
    })
}
