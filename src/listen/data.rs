//! Per-CPU data of one session (spec §3.2, doc §6.6): one socket per CPU on ports
//! from `first_port` upward, UDP (one datagram = one page) or TCP (one stream),
//! each written to its own temporary file. Up to one thread per CPU of this
//! machine serves a session's CPUs with `poll`; TCP data moves socket → pipe →
//! file with `splice`, so it never passes through user space.

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{splice, OFlag, SpliceFFlags};
use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::ListenError;

/// Bytes moved per splice call.
const SPLICE_LEN: usize = 1 << 20;
/// Most bytes taken from one TCP stream before the others get their turn.
const TURN_BYTES: u64 = 8 << 20;
/// Most datagrams taken from one UDP socket before the others get their turn.
const TURN_DATAGRAMS: usize = 256;
/// Datagrams taken per `recvmmsg` and written to the file with one `write`: one
/// receive and one write per page cost a data thread more than the copies at
/// saturation, and the CPUs it spends are the ones the client's load competes for.
const UDP_BATCH: usize = 64;

enum Sock {
    Udp(UdpSocket),
    Listening(TcpListener),
    Stream {
        sock: TcpStream,
        /// (read end, write end) or `None` after splice turned out unsupported.
        pipe: Option<(OwnedFd, OwnedFd)>,
    },
    Done,
}

struct Cpu {
    sock: Sock,
    file: File,
    bytes: u64,
    warned_short: bool,
}

/// The bound data sockets of one session, before they are served.
pub(crate) struct DataPorts {
    /// One port per CPU, in CPU order.
    pub ports: Vec<u16>,
    cpus: Vec<Cpu>,
    page_size: usize,
}

/// Binds `port` on every address (IPv6 dual stack, else IPv4).
fn bind_one(port: u16, tcp: bool) -> std::io::Result<Sock> {
    let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    let v4 = SocketAddr::from(([0, 0, 0, 0], port));
    let sock = |a: SocketAddr| -> std::io::Result<Sock> {
        Ok(if tcp {
            Sock::Listening(TcpListener::bind(a)?)
        } else {
            Sock::Udp(UdpSocket::bind(a)?)
        })
    };
    match sock(v6) {
        Err(e)
            if e.kind() == ErrorKind::AddrNotAvailable
                || e.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
        {
            sock(v4)
        }
        r => r,
    }
}

/// Receive buffer asked for on UDP data sockets: UDP has no flow control, so a
/// burst the data thread cannot take at once must fit in the socket (the
/// kernel's global UDP memory limit still bounds what many sockets can hold).
const UDP_RCVBUF: usize = 4 << 20;

/// Enlarges a UDP socket's receive buffer: beyond `rmem_max` when privileged
/// (SO_RCVBUFFORCE), else as far as `rmem_max` allows.
fn grow_receive_buffer(s: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(s, sockopt::RcvBufForce, &UDP_RCVBUF).is_err() {
        let _ = setsockopt(s, sockopt::RcvBuf, &UDP_RCVBUF);
    }
}

impl DataPorts {
    /// Binds one socket per CPU, searching upward from `first_port` and skipping
    /// ports in use, and creates the temporary files `paths`.
    pub(crate) fn bind(
        tcp: bool,
        page_size: u32,
        first_port: u16,
        paths: Vec<PathBuf>,
    ) -> Result<DataPorts, ListenError> {
        let mut next = u32::from(first_port);
        let mut cpus = Vec::with_capacity(paths.len());
        let mut ports = Vec::with_capacity(paths.len());
        for path in &paths {
            let (port, sock) = loop {
                if next > u32::from(u16::MAX) {
                    return Err(ListenError::NoPorts(first_port));
                }
                let port = next as u16;
                next += 1;
                match bind_one(port, tcp) {
                    Ok(s) => break (port, s),
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::AddrInUse | ErrorKind::PermissionDenied
                        ) =>
                    {
                        continue
                    }
                    Err(e) => {
                        return Err(ListenError::Io {
                            what: format!("binding data port {port}"),
                            source: e,
                        })
                    }
                }
            };
            if let Sock::Udp(s) = &sock {
                grow_receive_buffer(s);
            }
            match &sock {
                Sock::Udp(s) => s.set_nonblocking(true),
                Sock::Listening(s) => s.set_nonblocking(true),
                _ => Ok(()),
            }
            .map_err(|e| ListenError::Io {
                what: "a data socket".into(),
                source: e,
            })?;
            let file = File::create(path).map_err(|e| ListenError::Io {
                what: format!("creating {}", path.display()),
                source: e,
            })?;
            ports.push(port);
            cpus.push(Cpu {
                sock,
                file,
                bytes: 0,
                warned_short: false,
            });
        }
        Ok(DataPorts {
            ports,
            cpus,
            page_size: page_size as usize,
        })
    }

    /// Serves the sockets on threads until [`DataThread::finish`]: one per CPU, up
    /// to as many as this machine has CPUs. At saturation the data threads compete
    /// with the load itself for the CPUs; one thread for all of a session's CPUs
    /// got a fraction of the time per-CPU readers (3.x's one process per CPU) get,
    /// and the client's ring buffers overran (cli/bench/README.md).
    pub(crate) fn start(self, label: String) -> Result<DataThread, ListenError> {
        let (stop_r, stop_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| ListenError::Io {
                what: "a stop pipe".into(),
                source: e.into(),
            })?;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, self.cpus.len().max(1));
        let mut groups: Vec<Vec<(usize, Cpu)>> = (0..threads).map(|_| Vec::new()).collect();
        let ncpus = self.cpus.len();
        for (i, c) in self.cpus.into_iter().enumerate() {
            groups[i % threads].push((i, c));
        }
        let mut handles = Vec::with_capacity(threads);
        for (n, group) in groups.into_iter().enumerate() {
            // Each thread gets its own copy of the read end, so that the stop write
            // never meets a pipe without readers (no SIGPIPE, whenever they end).
            let thread_stop = stop_r.try_clone().map_err(|e| ListenError::Io {
                what: "a stop pipe".into(),
                source: e,
            })?;
            let page_size = self.page_size;
            let label = label.clone();
            let name = if threads > 1 {
                format!("data{n} {label}")
            } else {
                format!("data {label}")
            };
            let handle = std::thread::Builder::new()
                .name(name)
                .stack_size(super::SESSION_STACK)
                .spawn(move || serve(group, page_size, thread_stop, &label))
                .map_err(|e| ListenError::Io {
                    what: "starting a data thread".into(),
                    source: e,
                })?;
            handles.push(handle);
        }
        Ok(DataThread {
            handles,
            cpus: ncpus,
            stop: stop_w,
            _stop_r: stop_r,
        })
    }
}

/// The running data threads of a session.
pub(crate) struct DataThread {
    handles: Vec<JoinHandle<Vec<(usize, u64, bool)>>>,
    cpus: usize,
    stop: OwnedFd,
    _stop_r: OwnedFd,
}

/// What the data threads received.
pub(crate) struct Drained {
    /// Bytes received per CPU.
    pub bytes: Vec<u64>,
    /// False when data was still coming at [`MAX_DRAIN`] and the rest was left
    /// unread.
    pub complete: bool,
}

/// How long data may keep trickling in after the session ended, in all.
pub(crate) const MAX_DRAIN: Duration = Duration::from_secs(30);

impl DataThread {
    /// Tells the threads the session is over: each keeps reading until none of its
    /// sockets had anything for `quiet` (or every one reached its end), at most
    /// [`MAX_DRAIN`]; returns the bytes received per CPU.
    pub(crate) fn finish(self, quiet: Duration) -> Drained {
        let ms = quiet.as_millis().min(u128::from(u32::MAX)) as u32;
        // One message per thread: each reads one (writes this small are atomic)
        // and then no longer watches the pipe.
        for _ in 0..self.handles.len() {
            let _ = nix::unistd::write(&self.stop, &ms.to_ne_bytes());
        }
        let mut drained = Drained {
            bytes: vec![0; self.cpus],
            complete: true,
        };
        for h in self.handles {
            match h.join() {
                Ok(got) => {
                    for (cpu, bytes, complete) in got {
                        drained.bytes[cpu] = bytes;
                        drained.complete &= complete;
                    }
                }
                Err(_) => {
                    return Drained {
                        bytes: vec![],
                        complete: false,
                    }
                }
            }
        }
        drained
    }
}

/// Serves `cpus` (CPU number, state) until stopped; returns (CPU, bytes received,
/// complete) for each.
fn serve(
    mut cpus: Vec<(usize, Cpu)>,
    page_size: usize,
    stop: OwnedFd,
    label: &str,
) -> Vec<(usize, u64, bool)> {
    let mut buf = vec![0u8; UDP_BATCH * page_size];
    let mut quiet: Option<Duration> = None;
    let mut drain_end = Instant::now();
    let mut complete = true;
    loop {
        if cpus.iter().all(|(_, c)| matches!(c.sock, Sock::Done)) {
            break;
        }
        // Quiet is what poll saw, not time on the clock: a thread that the
        // scheduler kept waiting (hundreds of sessions on two CPUs) still takes
        // everything that is queued in its sockets before it calls them quiet.
        let timeout = match quiet {
            Some(q) => {
                let now = Instant::now();
                if now >= drain_end {
                    complete = false;
                    log::warn!(
                        "{label}: data still arriving {MAX_DRAIN:?} after the session ended; the rest is dropped"
                    );
                    break;
                }
                PollTimeout::try_from(q.min(drain_end - now)).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        let mut fds = Vec::with_capacity(cpus.len() + 1);
        let mut idx = Vec::with_capacity(cpus.len());
        if quiet.is_none() {
            fds.push(PollFd::new(stop.as_fd(), PollFlags::POLLIN));
        }
        for (i, (_, c)) in cpus.iter().enumerate() {
            let fd = match &c.sock {
                Sock::Udp(s) => s.as_fd(),
                Sock::Listening(s) => s.as_fd(),
                Sock::Stream { sock, .. } => sock.as_fd(),
                Sock::Done => continue,
            };
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
            idx.push(i);
        }
        let n = match nix::poll::poll(&mut fds, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                log::error!("{label}: poll on the data sockets failed: {e}; data reception ends");
                complete = false;
                break;
            }
        };
        if n == 0 && quiet.is_some() {
            break;
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let ready = if quiet.is_none() {
            if ready[0] {
                let mut ms = [0u8; 4];
                let _ = nix::unistd::read(stop.as_raw_fd(), &mut ms);
                quiet = Some(Duration::from_millis(u64::from(u32::from_ne_bytes(ms))));
                // A data port nobody connected to yet stays open through the
                // drain: under load a client's data connection can come after
                // its control connection ended, and its data is as good.
                drain_end = Instant::now() + MAX_DRAIN;
            }
            &ready[1..]
        } else {
            &ready[..]
        };
        for (&i, &r) in idx.iter().zip(ready) {
            if r {
                let (cpu, c) = &mut cpus[i];
                service(c, *cpu, &mut buf, page_size, label);
            }
        }
    }
    cpus.iter()
        .map(|(cpu, c)| (*cpu, c.bytes, complete))
        .collect()
}

/// Moves what is ready on one CPU's socket; true if data arrived.
fn service(c: &mut Cpu, cpu: usize, buf: &mut [u8], page_size: usize, label: &str) -> bool {
    let mut got = false;
    match &mut c.sock {
        Sock::Done => {}
        Sock::Listening(l) => match l.accept() {
            Ok((sock, peer)) => {
                log::debug!("{label}: CPU {cpu} data connection from {peer}");
                let pipe = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).ok();
                if let Some((_, w)) = &pipe {
                    // Fewer, larger splices; the default 64 KiB still works.
                    let _ = nix::fcntl::fcntl(
                        w.as_raw_fd(),
                        nix::fcntl::FcntlArg::F_SETPIPE_SZ(SPLICE_LEN as i32),
                    );
                }
                if sock.set_nonblocking(true).is_err() {
                    c.sock = Sock::Done;
                } else {
                    c.sock = Sock::Stream { sock, pipe };
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => {
                log::warn!("{label}: CPU {cpu}: accepting the data connection failed: {e}");
                c.sock = Sock::Done;
            }
        },
        Sock::Udp(s) => {
            let mut taken = 0;
            while taken < TURN_DATAGRAMS {
                let batch = match recv_batch(s, buf, page_size) {
                    Ok(b) => b,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // ICMP errors from a vanished client: keep the socket.
                        log::debug!("{label}: CPU {cpu}: {e}");
                        break;
                    }
                };
                taken += batch.len();
                let end = pack_pages(buf, page_size, &batch, |long, n| {
                    if !c.warned_short {
                        if long {
                            log::warn!("{label}: CPU {cpu}: datagram longer than a page ({page_size} bytes); cut");
                        } else {
                            log::warn!("{label}: CPU {cpu}: datagram of {n} bytes is shorter than a page; padded");
                        }
                        c.warned_short = true;
                    }
                });
                if end > 0 {
                    if let Err(e) = c.file.write_all(&buf[..end]) {
                        log::error!("{label}: CPU {cpu}: writing the data file failed: {e}");
                        c.sock = Sock::Done;
                        break;
                    }
                    c.bytes += end as u64;
                    got = true;
                }
                if batch.len() < buf.len() / page_size {
                    // The socket had no more: poll says when it has.
                    break;
                }
            }
        }
        Sock::Stream { sock, pipe } => {
            let r = match pipe {
                Some((pr, pw)) => splice_some(sock, pr, pw, &c.file),
                None => copy_some(sock, &mut c.file, buf),
            };
            match r {
                Ok(Moved::Bytes(n)) => {
                    c.bytes += n;
                    got = n > 0;
                }
                Ok(Moved::End(n)) => {
                    c.bytes += n;
                    got = n > 0;
                    c.sock = Sock::Done;
                }
                Ok(Moved::Unsupported) => {
                    log::debug!("{label}: CPU {cpu}: splice unsupported; copying");
                    *pipe = None;
                }
                Err(e) => {
                    log::warn!("{label}: CPU {cpu}: data connection failed: {e}");
                    c.sock = Sock::Done;
                }
            }
        }
    }
    got
}

/// One received datagram: its length, and whether it was longer than its page.
#[derive(Clone, Copy)]
struct Datagram {
    len: usize,
    truncated: bool,
}

/// Receives, without waiting, up to one datagram per page of `buf`, each at the
/// start of its own page.
fn recv_batch(s: &UdpSocket, buf: &mut [u8], page_size: usize) -> std::io::Result<Vec<Datagram>> {
    let mut iovs: Vec<libc::iovec> = buf
        .chunks_exact_mut(page_size)
        .map(|page| libc::iovec {
            iov_base: page.as_mut_ptr().cast(),
            iov_len: page_size,
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: every header points at one iovec of a distinct page of `buf`, all
    // alive and exclusively borrowed for the call; the count is `msgs.len()`.
    let n = unsafe {
        libc::recvmmsg(
            s.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(msgs[..n as usize]
        .iter()
        .map(|m| Datagram {
            len: m.msg_len as usize,
            truncated: m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        })
        .collect())
}

/// Makes the received datagrams (datagram i at page i of `buf`) one run of whole
/// pages at the start of `buf`: a short one padded with zeros, a long one cut (it
/// was cut on receipt), an empty one dropped. `odd(long, len)` is told of each
/// datagram that was not exactly a page. Returns the bytes of the run.
fn pack_pages(
    buf: &mut [u8],
    page_size: usize,
    batch: &[Datagram],
    mut odd: impl FnMut(bool, usize),
) -> usize {
    let mut end = 0;
    for (i, d) in batch.iter().enumerate() {
        if d.len == 0 {
            continue;
        }
        let at = i * page_size;
        if d.truncated {
            odd(true, d.len);
        } else if d.len < page_size {
            odd(false, d.len);
            buf[at + d.len..at + page_size].fill(0);
        }
        if at != end {
            buf.copy_within(at..at + page_size, end);
        }
        end += page_size;
    }
    end
}

enum Moved {
    Bytes(u64),
    End(u64),
    Unsupported,
}

/// Splices what the socket has into the file through the pipe.
fn splice_some(
    sock: &TcpStream,
    pr: &OwnedFd,
    pw: &OwnedFd,
    file: &File,
) -> std::io::Result<Moved> {
    let mut total = 0u64;
    while total < TURN_BYTES {
        let n = match splice(
            sock,
            None,
            pw,
            None,
            SPLICE_LEN,
            SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
        ) {
            Ok(0) => return Ok(Moved::End(total)),
            Ok(n) => n,
            Err(Errno::EAGAIN) => return Ok(Moved::Bytes(total)),
            Err(Errno::EINTR) => continue,
            Err(Errno::EINVAL) if total == 0 => return Ok(Moved::Unsupported),
            Err(e) => return Err(e.into()),
        };
        let mut left = n;
        while left > 0 {
            match splice(pr, None, file, None, left, SpliceFFlags::SPLICE_F_MOVE) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(k) => left -= k,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        total += n as u64;
    }
    Ok(Moved::Bytes(total))
}

/// The read/write fallback where splice is not available.
fn copy_some(mut sock: &TcpStream, file: &mut File, buf: &mut [u8]) -> std::io::Result<Moved> {
    use std::io::Read;
    let mut total = 0u64;
    while total < TURN_BYTES {
        match sock.read(buf) {
            Ok(0) => return Ok(Moved::End(total)),
            Ok(n) => {
                file.write_all(&buf[..n])?;
                total += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Moved::Bytes(total)),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Moved::Bytes(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_pages_pads_short_drops_empty_and_closes_gaps() {
        let page = 8;
        let mut buf = vec![0xAAu8; 4 * page];
        buf[page..2 * page].fill(1);
        buf[2 * page..3 * page].fill(2);
        buf[3 * page..].fill(3);
        let d = |len, truncated| Datagram { len, truncated };
        // page 0 empty, page 1 full, page 2 short (3 bytes), page 3 cut.
        let batch = [d(0, false), d(page, false), d(3, false), d(page, true)];
        let mut seen = Vec::new();
        let end = pack_pages(&mut buf, page, &batch, |long, n| seen.push((long, n)));
        assert_eq!(end, 3 * page);
        assert_eq!(&buf[..page], &[1; 8]);
        assert_eq!(&buf[page..2 * page], &[2, 2, 2, 0, 0, 0, 0, 0]);
        assert_eq!(&buf[2 * page..3 * page], &[3; 8]);
        assert_eq!(seen, vec![(false, 3), (true, page)]);
    }

    #[test]
    fn recv_batch_takes_several_datagrams_in_one_call() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        let page = 64;
        for b in [5u8, 6, 7] {
            tx.send(&[b; 64]).unwrap();
        }
        tx.send(&[9u8; 100]).unwrap();
        let mut buf = vec![0u8; 8 * page];
        let mut got = Vec::new();
        // Loopback delivers at once, but do not rely on it for all four.
        for _ in 0..100 {
            match recv_batch(&rx, &mut buf[got.len() * page..], page) {
                Ok(b) => got.extend(b),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            if got.len() == 4 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(got.len(), 4);
        assert_eq!(&buf[page..2 * page], &[6; 64]);
        assert!(!got[2].truncated && got[2].len == 64);
        assert!(got[3].truncated && got[3].len == 64);
        assert!(matches!(
            recv_batch(&rx, &mut buf, page).map_err(|e| e.kind()),
            Err(ErrorKind::WouldBlock)
        ));
    }
}
