//! trace-cmd's message protocol (spec §1, §3, §6): framing, codecs, handshakes.
//!
//! Three dialects share one socket discipline:
//!
//! * [`v1`] — the pre-2014 text handshake ("tracecmd", decimal strings, option
//!   strings, a comma-separated port list; spec §3.1);
//! * [`v2`] — the 8-byte-header messages of released V2 and of the virt-server
//!   branch (spec §1.4, §1.5, §1.7): [`v2::Msg`] with [`v2::Msg::encode`],
//!   [`v2::decode`] and [`v2::recv`];
//! * [`v3`] — the 12-byte-header framing of modern trace-cmd (spec §6.2b), with the
//!   bodies of TINIT, RINIT, SEND_DATA, FIN_DATA, CLOSE and NOT_SUPP.
//!
//! Every receive goes through a [`Channel`]: a borrowed fd plus a receive timeout
//! that covers a *whole* message (default 5 s, see [`default_timeout`]), so a peer that
//! stops half-way makes the call fail with [`MsgError::TimedOut`] instead of hanging.
//! Receives that the C original makes without a timeout use [`Wait::Blocking`]: they
//! still return [`MsgError::Interrupted`] when a signal arrives.
//!
//! [`negotiate`] holds the protocol negotiation of both sides for every generation:
//! the text handshake with the fallback rules of spec §3.2 and §6.3, the one
//! protocol-version enum [`Proto`], and the TINIT/RINIT (or V1 text) announcement
//! of V1, V2 and V3; [`session`] the other message sequences of spec §2.1
//! (metadata, strings, manager and agent messages, fd passing) as safe functions
//! that the C layer and the CLI share.
//!
//! Decoding is strict and bounded: nothing is allocated from a size field before it
//! has been checked against [`MSG_MAX_LEN`], and every malformed input is a
//! [`MsgError`] that says what was wrong.

/// Declares a dialect's command enum with its numbers and upstream names, once:
/// `from_u32` and `name` are generated from the same list, so a command cannot be
/// numbered without a name, and a `match` on the enum that misses one fails to
/// compile.
macro_rules! commands {
    ($(#[$meta:meta])* $vis:vis enum $name:ident {
        $($(#[$vmeta:meta])* $variant:ident = $num:literal => $text:literal,)*
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u32)]
        $vis enum $name {
            $($(#[$vmeta])* $variant = $num,)*
        }

        impl $name {
            /// The command with number `n`, if it is one.
            pub fn from_u32(n: u32) -> Option<$name> {
                match n {
                    $($num => Some($name::$variant),)*
                    _ => None,
                }
            }

            /// The command's name as the C original spells it.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }
    };
}

pub mod channel;
pub mod negotiate;
pub mod ptp;
pub mod session;
pub mod tsync;
pub mod v1;
pub mod v2;
pub mod v3;

pub use channel::{default_timeout, parse_timeout, set_default_timeout, Channel, Wait};
/// The module's earlier name, kept so existing callers compile.
pub use negotiate as handshake;
pub use negotiate::Proto;

/// Largest message accepted or sent, header included (spec §1.1).
pub const MSG_MAX_LEN: usize = 8192;
/// Largest SENDMETA / SEND_DATA payload: 8192 − 12 (spec §1.1).
pub const MSG_META_MAX_LEN: usize = 8180;
/// Largest CPU (or argument) count a message may carry.
pub const MAX_CPUS: u32 = 4096;
/// Largest TINIT option (V2 binary) or V1 option string (spec §1.7, §3.1).
pub const MAX_OPTION_SIZE: u32 = 4096;
/// Largest string accepted by the string transfer of spec §1.6.
pub const MAX_STRING_LEN: usize = 64 * 1024;
/// The payload of RCONNECT, NUL included (spec §1.1).
pub const CONNECTION_MSG: &[u8; 12] = b"tracecmd-V2\0";

/// What went wrong while talking the protocol. Each variant maps to the errno the
/// C layer returns ([`MsgError::errno`]).
#[derive(Debug, thiserror::Error)]
pub enum MsgError {
    #[error("I/O error on the connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("could not send to the peer: {0}")]
    Send(std::io::Error),
    #[error("the peer closed the connection")]
    Closed,
    #[error("no complete message within {0} ms; the peer stopped sending (set TRACECMD_MSG_TIMEOUT_MS to wait longer)")]
    TimedOut(u64),
    #[error("interrupted by a signal while waiting for the peer")]
    Interrupted,
    #[error("message size {size} is outside {min}..={max} bytes; the stream is not a trace-cmd message stream")]
    BadSize { size: u32, min: u32, max: u32 },
    #[error("unknown command {0}; the peer speaks another protocol version")]
    UnknownCommand(u32),
    #[error("{cmd} message of {size} bytes is shorter than its {min}-byte minimum")]
    TooShort {
        cmd: &'static str,
        size: u32,
        min: u32,
    },
    #[error("{cmd} message carries {len} bytes of payload but takes none")]
    UnexpectedPayload { cmd: &'static str, len: usize },
    #[error("{cmd} size field says {field} bytes but the message carries {actual}")]
    SizeMismatch {
        cmd: &'static str,
        field: u32,
        actual: usize,
    },
    #[error("{what} of {value} is out of range (allowed 0..={max})")]
    OutOfRange {
        what: &'static str,
        value: i64,
        max: i64,
    },
    #[error("bad TINIT option: {0}")]
    BadOption(String),
    #[error("expected {expected} but the peer sent {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("the peer ended the session (CLOSE) instead of answering")]
    Aborted,
    #[error("the peer is not a trace-cmd server: {0}")]
    NotTraceCmd(String),
    #[error("the peer speaks protocol {0}, which this side cannot handle")]
    ProtocolMismatch(String),
    #[error("malformed text-protocol field: {0}")]
    BadText(String),
    #[error("string of more than {0} bytes refused")]
    StringTooLong(usize),
    #[error("{0} does not fit in one message")]
    TooBig(&'static str),
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    #[error("no file descriptor came with the message")]
    NoFd,
    #[error("message incomplete: {have} of {need} bytes")]
    Incomplete { have: usize, need: usize },
    #[error("the listener knows no such guest agent")]
    NoSuchAgent,
    #[error("cannot connect to {path}: {err}")]
    Connect { path: String, err: std::io::Error },
}

impl MsgError {
    /// The positive errno value the C layer negates and returns.
    pub fn errno(&self) -> i32 {
        use MsgError::*;
        match self {
            Io(e) | Connect { err: e, .. } => e.raw_os_error().unwrap_or(libc::EIO),
            Send(_) => libc::ECOMM,
            Closed => libc::ENOTCONN,
            TimedOut(_) => libc::ETIMEDOUT,
            Interrupted => libc::EINTR,
            BadSize { .. } | TooShort { .. } | UnexpectedPayload { .. } | SizeMismatch { .. } => {
                libc::ENOMSG
            }
            UnknownCommand(_) | OutOfRange { .. } | BadOption(_) | Unexpected { .. } => {
                libc::EINVAL
            }
            BadText(_) | InvalidArgument(_) => libc::EINVAL,
            Aborted => libc::ECONNABORTED,
            NotTraceCmd(_) | ProtocolMismatch(_) => libc::EPROTONOSUPPORT,
            StringTooLong(_) | TooBig(_) => libc::EMSGSIZE,
            NoFd => libc::EBADMSG,
            Incomplete { .. } => libc::ENOMSG,
            NoSuchAgent => libc::ENODEV,
        }
    }
}

impl From<nix::errno::Errno> for MsgError {
    fn from(e: nix::errno::Errno) -> Self {
        MsgError::Io(std::io::Error::from_raw_os_error(e as i32))
    }
}

/// Result of this module's functions.
pub type Result<T> = std::result::Result<T, MsgError>;

/// The big-endian u32 at `off` of `b` (the wire's byte order); `b` must hold it.
pub(crate) fn get32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

/// The big-endian u64 at `off` of `b`; `b` must hold it.
pub(crate) fn get64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// Checks a count taken from the wire against `0..=max`.
pub(crate) fn check_count(what: &'static str, value: i64, max: u32) -> Result<u32> {
    if value < 0 || value > i64::from(max) {
        return Err(MsgError::OutOfRange {
            what,
            value,
            max: i64::from(max),
        });
    }
    Ok(value as u32)
}
