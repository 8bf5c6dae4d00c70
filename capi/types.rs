//! Types and constants of the C ABI (spec §1.2, §1.3), laid out as trace-cmd.h lays them.

use std::os::raw::{c_int, c_short, c_ulong};

/// The public message handle (spec §1.3). C callers read and write these fields
/// directly (`tracecmd_msg_get_fds` replaces `fd`; callers set `version`), so the
/// library reads them afresh on every call. Handles are allocated and freed only by
/// `tracecmd_msg_handle_alloc` / `tracecmd_msg_handle_close`, which reserve room
/// behind this struct for the server's done flag.
#[repr(C)]
#[derive(Debug)]
pub struct tracecmd_msg_handle {
    /// The connection.
    pub fd: c_int,
    /// Process id from a TRACE request (manager socket only).
    pub pid: c_int,
    /// CPU count: the local one on a client, the peer's on a server.
    pub cpu_count: c_short,
    /// Protocol version: 0 or 1 = V1, 2 = V2.
    pub version: c_short,
    /// `TRACECMD_MSG_FL_*` bits.
    pub flags: c_ulong,
}

/// Bits of `tracecmd_msg_handle.flags` (spec §1.2).
#[repr(C)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum tracecmd_msg_flags {
    /// Handle belongs to a client (record / agent).
    TRACECMD_MSG_FL_CLIENT = 1 << 0,
    /// Handle belongs to the listener.
    TRACECMD_MSG_FL_SERVER = 1 << 1,
    /// Per-CPU data over TCP instead of UDP.
    TRACECMD_MSG_FL_USE_TCP = 1 << 2,
    /// Client talks over TCP/IP: RINIT carries port numbers.
    TRACECMD_MSG_FL_NETWORK = 1 << 3,
    /// Client talks over virtio-serial: RINIT carries no ports.
    TRACECMD_MSG_FL_VIRT = 1 << 4,
    /// Handle on the manager socket (connect, list, record -A).
    TRACECMD_MSG_FL_MANAGER = 1 << 5,
    /// The guest agent.
    TRACECMD_MSG_FL_AGENT = 1 << 6,
}

/// Bit numbers of [`tracecmd_msg_flags`].
#[repr(C)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum tracecmd_msg_bits {
    TRACECMD_MSG_BIT_CLIENT = 0,
    TRACECMD_MSG_BIT_SERVER = 1,
    TRACECMD_MSG_BIT_USE_TCP = 2,
    TRACECMD_MSG_BIT_NETWORK = 3,
    TRACECMD_MSG_BIT_VIRT = 4,
    TRACECMD_MSG_BIT_MANAGER = 5,
    TRACECMD_MSG_BIT_AGENT = 6,
}

/// What a manager asked for (result of `tracecmd_msg_read_manager`). The names
/// are the virt-server branch's; the header also defines `TRACECMD_MSG_MNGR_*`
/// for each (build.rs), the names earlier versions of this header used.
#[repr(C)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum tracecmd_msg_mngr_type {
    TRACECMD_MSG_MNG_ERR = 0,
    TRACECMD_MSG_MNG_CONNECT = 1,
    TRACECMD_MSG_MNG_GLIST = 2,
    TRACECMD_MSG_MNG_ALIST = 3,
    TRACECMD_MSG_MNG_TRACE = 4,
}

/// Recorder flags (spec §1.2).
#[repr(C)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum tracecmd_record_flags {
    /// read()/write() instead of splice.
    TRACECMD_RECORD_NOSPLICE = 1 << 0,
    /// Read `snapshot_raw` instead of `trace_pipe_raw`.
    TRACECMD_RECORD_SNAPSHOT = 1 << 1,
    /// Blocking output side of splice.
    TRACECMD_RECORD_BLOCK = 1 << 2,
}

/// An opaque per-CPU recorder; created by the `tracecmd_create_*recorder*`
/// functions and released only by `tracecmd_free_recorder`.
pub struct tracecmd_recorder {
    _private: [u8; 0],
}

const _: () = assert!(
    std::mem::size_of::<tracecmd_msg_handle>()
        == if cfg!(target_pointer_width = "64") {
            24
        } else {
            16
        }
);
