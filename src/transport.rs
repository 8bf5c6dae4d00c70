//! Sockets and fd passing: unix-socket connect and SCM_RIGHTS (spec §1.8, §2.2).
//!
//! * [`connect_unix`] — a connected `AF_UNIX` stream socket (no format-string or
//!   length games with the path: a path that does not fit `sun_path` is an error).
//! * [`send_fd`] / [`recv_fd`] — one descriptor per `sendmsg`, with the exact
//!   framing of the C original: a 2-byte data part (`00 00`) and one `SCM_RIGHTS`
//!   control message carrying one `int`.

use crate::msg::{Channel, MsgError, Result, Wait};
use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Connects an `AF_UNIX` stream socket to `path`.
pub fn connect_unix(path: &Path) -> Result<OwnedFd> {
    let err = |e: std::io::Error| MsgError::Connect {
        path: path.display().to_string(),
        err: e,
    };
    let addr = UnixAddr::new(path).map_err(|e| err(e.into()))?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .map_err(|e| err(e.into()))?;
    socket::connect(fd.as_raw_fd(), &addr).map_err(|e| err(e.into()))?;
    Ok(fd)
}

/// Sends `fd` over the unix socket `sock`: 2 data bytes `00 00` plus one
/// `SCM_RIGHTS` message. Returns the data bytes sent (2).
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<usize> {
    let data = [0u8; 2];
    let iov = [IoSlice::new(&data)];
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    loop {
        match socket::sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(MsgError::Send(e.into())),
        }
    }
}

/// Takes ownership of a descriptor the kernel just installed in this process.
fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` comes from an SCM_RIGHTS message that recvmsg just delivered:
    // the kernel created it for us and nothing else refers to it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Receives one descriptor sent with [`send_fd`] (or the C `write_fd`). Waits as
/// `wait` says; a second data byte that arrives separately is read too, so the
/// stream stays in step. Extra descriptors in the same message are closed.
pub fn recv_fd(ch: &Channel<'_>, wait: Wait) -> Result<OwnedFd> {
    let mut dl = ch.deadline(wait);
    let mut data = [0u8; 2];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let (n, fds, truncated) = loop {
        ch.wait_for_input(&mut dl)?;
        let mut iov = [IoSliceMut::new(&mut data)];
        match socket::recvmsg::<()>(
            ch.fd().as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs().map_err(MsgError::from)? {
                    if let ControlMessageOwned::ScmRights(v) = c {
                        fds.extend(v.into_iter().map(own));
                    }
                }
                break (msg.bytes, fds, msg.flags.contains(MsgFlags::MSG_CTRUNC));
            }
            Err(Errno::EINTR) if wait == Wait::Timed => continue,
            Err(Errno::EINTR) => return Err(MsgError::Interrupted),
            Err(Errno::EAGAIN) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if n == 0 {
        return Err(MsgError::Closed);
    }
    if n == 1 {
        let mut rest = [0u8; 1];
        ch.read_exact(&mut rest, &mut dl)?;
    }
    if truncated {
        log::warn!("fd passing: control data truncated; some descriptors were lost");
    }
    let mut fds = fds.into_iter();
    let fd = fds.next().ok_or(MsgError::NoFd)?;
    if fds.len() > 0 {
        log::warn!("fd passing: {} extra descriptors closed", fds.len());
    }
    Ok(fd)
}

/// The guest side of the per-CPU virtio port `cpu` (spec §1.1 `TRACE_PATH_CPU`).
pub fn virtio_cpu_path(cpu: u32) -> std::path::PathBuf {
    format!("/dev/virtio-ports/trace-path-cpu{cpu}").into()
}

/// A connected pair of unix stream sockets (for tests and in-process peers).
pub fn socketpair() -> Result<(OwnedFd, OwnedFd)> {
    Ok(socket::socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// `VMADDR_CID_ANY`: a vsock listener bound to every local CID.
pub const VSOCK_CID_ANY: u32 = u32::MAX;
/// `VMADDR_PORT_ANY`: let the kernel pick a free vsock port.
pub const VSOCK_PORT_ANY: u32 = u32::MAX;

fn vsock_socket() -> std::io::Result<OwnedFd> {
    Ok(socket::socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// Connects an `AF_VSOCK` stream socket to `cid:port`. The kernel bounds the wait
/// (2 s by default for vsock); a machine without vsock transport fails here.
pub fn connect_vsock(cid: u32, port: u32) -> std::io::Result<OwnedFd> {
    let fd = vsock_socket()?;
    socket::connect(fd.as_raw_fd(), &socket::VsockAddr::new(cid, port))?;
    Ok(fd)
}

/// A listening `AF_VSOCK` stream socket on `port` of every local CID
/// ([`VSOCK_PORT_ANY`]: a free port, see [`vsock_local_port`]).
pub fn listen_vsock(port: u32) -> std::io::Result<OwnedFd> {
    let fd = vsock_socket()?;
    socket::bind(fd.as_raw_fd(), &socket::VsockAddr::new(VSOCK_CID_ANY, port))?;
    socket::listen(
        &fd,
        socket::Backlog::new(16).unwrap_or(socket::Backlog::MAXCONN),
    )?;
    Ok(fd)
}

/// The port a vsock socket is bound to.
pub fn vsock_local_port(fd: BorrowedFd<'_>) -> std::io::Result<u32> {
    let a: socket::VsockAddr = socket::getsockname(fd.as_raw_fd())?;
    Ok(a.port())
}

/// The CID of a connected vsock socket's peer.
pub fn vsock_peer_cid(fd: BorrowedFd<'_>) -> std::io::Result<u32> {
    let a: socket::VsockAddr = socket::getpeername(fd.as_raw_fd())?;
    Ok(a.cid())
}

/// Accepts one connection on a listening socket of any family, without blocking
/// when `nonblocking` was set on it (then `WouldBlock`).
pub fn accept(listener: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let fd = socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
