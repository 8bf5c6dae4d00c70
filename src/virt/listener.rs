//! `listen --virt` (spec §3.3–§3.8): the host broker between guests and managers.
//!
//! One thread accepts on both unix sockets; every connection gets its own thread,
//! so no peer can stall another (the VS bugs of spec §5.2 items 14–22 are the
//! shape this avoids). For each guest registered by `connect`, a bridge (the C
//! original's forked "GL") copies bytes between the agent FIFO pair and one end of
//! a socketpair; the other end is the agent's control channel, handed to a manager
//! with SCM_RIGHTS. The FIFOs are opened read-write so that no open ever blocks
//! (QEMU's pipe chardev holds them read-write too).
//!
//! The network listener (`listen -p`) hooks in at [`VirtListener::run`]: it polls
//! only the two unix sockets and a stop flag, so a TCP accept loop can run in
//! another thread of the same process.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::unistd::Gid;

use super::{
    chgrp, io_err, is_fifo, make_dir, make_fifo_pair, validate_domain, with_suffix, Result,
    VirtError, VirtPaths,
};
use crate::msg::session::{self, ManagerRequest};
use crate::msg::v2::{self, Msg};
use crate::msg::{Channel, MsgError, Wait};

/// One `--dom` of the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSetup {
    pub name: String,
    /// Mode of the domain directory (`-m`, default 0710); the FIFOs get read and
    /// write for every class that has any bit here (0710 → 0660).
    pub perms: u32,
    pub group: Option<Gid>,
    /// `-c`: create this many CPU FIFO pairs.
    pub cpus: u32,
}

/// Creates the directories and FIFOs of spec §3.3.
pub fn prepare(paths: &VirtPaths, group: Option<Gid>, domains: &[DomainSetup]) -> Result<()> {
    make_dir(&paths.run_dir, 0o755, None)?;
    make_dir(&paths.virt_dir, 0o755, group)?;
    for d in domains {
        validate_domain(&d.name)?;
        let g = d.group.or(group);
        make_dir(&paths.domain_dir(&d.name), d.perms, g)?;
        // Read and write for whoever may use the directory (QEMU writes `.out`).
        let fifo_mode = 0o600
            | if d.perms & 0o070 != 0 { 0o060 } else { 0 }
            | if d.perms & 0o007 != 0 { 0o006 } else { 0 };
        make_fifo_pair(&paths.agent_fifo(&d.name), fifo_mode, g)?;
        for cpu in 0..d.cpus {
            make_fifo_pair(&paths.cpu_fifo(&d.name, cpu), fifo_mode, g)?;
        }
    }
    Ok(())
}

#[derive(Debug)]
struct Guest {
    cpus: Vec<PathBuf>,
}

#[derive(Debug)]
struct Agent {
    id: u64,
    cpus: u32,
    fd: Arc<OwnedFd>,
    /// A manager holds the channel: only it reads from it.
    busy: bool,
    /// The idle agent session is reading from the channel; a manager may take the
    /// agent only once it has finished (two readers would split messages).
    reading: bool,
}

#[derive(Debug, Default)]
struct Registry {
    guests: BTreeMap<String, Guest>,
    agents: BTreeMap<String, Agent>,
    next_id: u64,
}

#[derive(Debug, Default)]
struct Shared {
    reg: Mutex<Registry>,
    freed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.reg.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The bound sockets of a running `listen --virt`; removed on drop.
pub struct VirtListener {
    paths: VirtPaths,
    agent_sock: UnixListener,
    mgr_sock: UnixListener,
    shared: Arc<Shared>,
}

fn bind(path: &Path, group: Option<Gid>) -> Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        if UnixStream::connect(path).is_ok() {
            return Err(VirtError::Invalid(format!(
                "another listener already serves {}",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(path);
    }
    let l = UnixListener::bind(path).map_err(io_err(format!("cannot bind {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(io_err(format!("cannot chmod {}", path.display())))?;
    chgrp(path, group)?;
    l.set_nonblocking(true)
        .map_err(io_err("cannot make the socket non-blocking"))?;
    Ok(l)
}

impl VirtListener {
    /// Prepares the directories, binds both sockets (mode 0660, group `group`).
    pub fn bind(
        paths: &VirtPaths,
        group: Option<Gid>,
        domains: &[DomainSetup],
    ) -> Result<VirtListener> {
        prepare(paths, group, domains)?;
        let agent_sock = bind(&paths.agent_socket(), group)?;
        let mgr_sock = match bind(&paths.manager_socket(), group) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(paths.agent_socket());
                return Err(e);
            }
        };
        Ok(VirtListener {
            paths: paths.clone(),
            agent_sock,
            mgr_sock,
            shared: Arc::new(Shared::default()),
        })
    }

    /// A flag that ends [`VirtListener::run`] (within 200 ms) when set.
    pub fn stop_flag(&self) -> impl Fn() + Send + Sync + 'static {
        let s = self.shared.clone();
        move || s.stop.store(true, Ordering::SeqCst)
    }

    /// Accepts connections until `stopped()` or the stop flag says so.
    pub fn run(&self, stopped: &dyn Fn() -> bool) -> Result<()> {
        log::info!(
            "listening for agents on {} and managers on {}",
            self.paths.agent_socket().display(),
            self.paths.manager_socket().display()
        );
        while !stopped() && !self.shared.stop.load(Ordering::SeqCst) {
            let mut fds = [
                PollFd::new(self.agent_sock.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.mgr_sock.as_fd(), PollFlags::POLLIN),
            ];
            match nix::poll::poll(&mut fds, PollTimeout::from(200u16)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    return Err(VirtError::Msg(e.into()));
                }
            }
            self.accept_agents();
            self.accept_managers();
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.freed.notify_all();
        Ok(())
    }

    fn accept_agents(&self) {
        while let Ok((s, _)) = self.agent_sock.accept() {
            let _ = s.set_nonblocking(false);
            let pid = peer_pid(&s);
            let name = pid
                .and_then(qemu_name_of)
                .unwrap_or_else(|| format!("pid{}", pid.unwrap_or(0)));
            let shared = self.shared.clone();
            spawn(format!("agent-{name}"), move || {
                agent_session(&shared, &name, s.into())
            });
        }
    }

    fn accept_managers(&self) {
        while let Ok((s, _)) = self.mgr_sock.accept() {
            let _ = s.set_nonblocking(false);
            let shared = self.shared.clone();
            let paths = self.paths.clone();
            spawn("manager".into(), move || {
                manager_session(&shared, &paths, s.into())
            });
        }
    }
}

impl Drop for VirtListener {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.freed.notify_all();
        let _ = std::fs::remove_file(self.paths.agent_socket());
        let _ = std::fs::remove_file(self.paths.manager_socket());
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name.clone()).spawn(f) {
        log::error!("cannot start thread {name}: {e}");
    }
}

fn peer_pid(s: &UnixStream) -> Option<i32> {
    nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .map(|c| c.pid())
}

/// `record -A GUEST:pid`: the connected guest whose QEMU process is `pid`, found by
/// QEMU's `-name`, or else by the domain's CPU FIFOs that the process holds open
/// (QEMU's pipe chardevs). The VS listener compared with its own bridge's pid,
/// which no user knows (spec §5.1 Q1 (a)).
fn domain_of_pid(shared: &Shared, pid: u32) -> Option<String> {
    let pid = i32::try_from(pid)
        .ok()
        .filter(|p| *p as u32 != std::process::id())?;
    let named = qemu_name_of(pid);
    let links: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .collect();
    let reg = shared.lock();
    if let Some(n) = named.filter(|n| reg.agents.contains_key(n)) {
        return Some(n);
    }
    reg.guests
        .iter()
        .filter(|(name, _)| reg.agents.contains_key(*name))
        .find(|(_, g)| {
            g.cpus.iter().any(|p| {
                links.contains(&with_suffix(p, ".in")) || links.contains(&with_suffix(p, ".out"))
            })
        })
        .map(|(name, _)| name.clone())
}

/// The `-name` of a QEMU process connected directly to the agent socket.
fn qemu_name_of(pid: i32) -> Option<String> {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut it = cmd.split(|&c| c == 0);
    while let Some(a) = it.next() {
        if a == b"-name" {
            let v = String::from_utf8_lossy(it.next()?).into_owned();
            let v = v
                .split(',')
                .next()?
                .trim_start_matches("guest=")
                .to_string();
            return validate_domain(&v).is_ok().then_some(v);
        }
    }
    None
}

/// Waits until `fd` is readable, up to 300 ms.
fn readable(fd: &OwnedFd) -> bool {
    let mut p = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    matches!(nix::poll::poll(&mut p, PollTimeout::from(300u16)), Ok(n) if n > 0)
}

/// Whether the peer of socket `fd` has closed (EOF pending or error).
fn peer_closed(fd: &OwnedFd) -> bool {
    let mut b = [0u8; 1];
    match nix::sys::socket::recv(
        fd.as_raw_fd(),
        &mut b,
        nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(0) => true,
        Ok(_) => false,
        Err(nix::errno::Errno::EAGAIN) => false,
        Err(_) => true,
    }
}

/// One agent connection: handshake (TCONNECT/RCONNECT, CINIT/CRINIT), then idle
/// while no manager holds it; an agent that restarts handshakes again.
fn agent_session(shared: &Shared, name: &str, fd: OwnedFd) {
    let fd = Arc::new(fd);
    let ch = Channel::new(fd.as_fd());
    let mut registered: Option<u64> = None;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        // Idle: the agent speaks only when (re)starting; a manager holding the
        // channel owns everything it says.
        {
            let mut reg = shared.lock();
            while registered
                .is_some_and(|id| reg.agents.get(name).is_some_and(|a| a.id == id && a.busy))
                && !shared.stop.load(Ordering::SeqCst)
            {
                reg = shared
                    .freed
                    .wait_timeout(reg, Duration::from_millis(300))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        if !readable(&fd) {
            continue;
        }
        // Claim the channel for this read, unless a manager took the agent meanwhile.
        if let Some(id) = registered {
            let mut reg = shared.lock();
            match reg.agents.get_mut(name) {
                Some(a) if a.id == id && a.busy => continue,
                Some(a) if a.id == id => a.reading = true,
                _ => {}
            }
        }
        let got = read_idle(&ch, &fd);
        if let Some(id) = registered {
            let mut reg = shared.lock();
            if let Some(a) = reg.agents.get_mut(name).filter(|a| a.id == id) {
                a.reading = false;
            }
            shared.freed.notify_all();
        }
        let Some(msg) = got else {
            log::info!("agent of {name} disconnected");
            break;
        };
        let cpus = match msg {
            Ok(Msg::TConnect) => {
                if let Err(e) = v2::send(&ch, &Msg::rconnect()) {
                    log::warn!("agent of {name}: {e}; dropping the connection");
                    break;
                }
                continue;
            }
            Ok(Msg::CInit { cpus }) => {
                if let Err(e) = v2::send(&ch, &Msg::CRInit) {
                    log::warn!("agent of {name}: {e}; dropping the connection");
                    break;
                }
                cpus
            }
            Ok(Msg::TInit { .. }) => {
                log::warn!("{name}: `record --virt` clients are not served; use `agent --virt` in the guest");
                break;
            }
            Ok(m) => {
                log::debug!("agent of {name}: ignoring {} while idle", m.cmd().name());
                continue;
            }
            Err(MsgError::Closed) => break,
            Err(e @ (MsgError::Io(_) | MsgError::Send(_))) => {
                log::warn!("agent of {name}: {e}; dropping the connection");
                break;
            }
            Err(e) => {
                // Out of step (e.g. garbage from a broken guest); `read_idle`
                // threw away what was pending: a restarting agent begins with a
                // fresh TCONNECT.
                log::warn!("agent of {name}: {e}; discarded its pending bytes");
                continue;
            }
        };
        let mut reg = shared.lock();
        reg.next_id += 1;
        let id = reg.next_id;
        log::info!("agent of {name} ready with {cpus} CPUs");
        reg.agents.insert(
            name.to_string(),
            Agent {
                id,
                cpus,
                fd: fd.clone(),
                busy: false,
                reading: false,
            },
        );
        registered = Some(id);
    }
    if let Some(id) = registered {
        let mut reg = shared.lock();
        if reg.agents.get(name).is_some_and(|a| a.id == id) {
            reg.agents.remove(name);
        }
    }
}

/// One read of an idle agent's channel: `None` if the agent has gone, else the
/// message (or the error, after throwing away what was pending).
fn read_idle(ch: &Channel<'_>, fd: &OwnedFd) -> Option<crate::msg::Result<Msg>> {
    if peer_closed(fd) {
        return None;
    }
    let got = v2::recv(ch, Wait::Timed);
    if matches!(
        got,
        Err(ref e) if !matches!(e, MsgError::Closed | MsgError::Io(_) | MsgError::Send(_))
    ) {
        discard_pending(fd);
    }
    Some(got)
}

fn open_rw(p: &Path) -> std::io::Result<std::fs::File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(p)
}

/// The bridge of a registered guest: agent FIFOs ⇄ socketpair ⇄ agent session.
fn start_bridge(shared: &Arc<Shared>, name: &str, agent: &Path) -> Result<()> {
    let to_guest = open_rw(&with_suffix(agent, ".in"))
        .map_err(io_err(format!("cannot open {}.in", agent.display())))?;
    let from_guest = open_rw(&with_suffix(agent, ".out"))
        .map_err(io_err(format!("cannot open {}.out", agent.display())))?;
    let (mine, theirs) = UnixStream::pair().map_err(io_err("cannot create a socketpair"))?;
    let mine2 = mine
        .try_clone()
        .map_err(io_err("cannot duplicate a socket"))?;
    let n = name.to_string();
    let mut to_guest = to_guest;
    let mut from_guest = from_guest;
    spawn(format!("bridge-in-{n}"), move || {
        let mut mine = mine;
        let mut buf = vec![0u8; 8192];
        while let Ok(k) = mine.read(&mut buf) {
            if k == 0 || to_guest.write_all(&buf[..k]).is_err() {
                break;
            }
        }
    });
    spawn(format!("bridge-out-{n}"), move || {
        let mut mine2 = mine2;
        let mut buf = vec![0u8; 8192];
        while let Ok(k) = from_guest.read(&mut buf) {
            if k == 0 || mine2.write_all(&buf[..k]).is_err() {
                break;
            }
        }
    });
    let shared = shared.clone();
    let n = name.to_string();
    spawn(format!("agent-{n}"), move || {
        agent_session(&shared, &n, theirs.into())
    });
    Ok(())
}

/// `connect`: check and register; ACK on success, FINISH on refusal.
fn register_guest(
    shared: &Arc<Shared>,
    paths: &VirtPaths,
    req: session::GuestConnect,
) -> std::result::Result<String, String> {
    let domain =
        String::from_utf8(req.domain).map_err(|_| "domain name is not UTF-8".to_string())?;
    validate_domain(&domain).map_err(|e| e.to_string())?;
    let to_path = |b: Vec<u8>| -> std::result::Result<PathBuf, String> {
        let s = String::from_utf8(b).map_err(|_| "a path is not UTF-8".to_string())?;
        let p = PathBuf::from(&s);
        // Relative paths are taken as under the domain's directory.
        Ok(if p.is_absolute() {
            p
        } else {
            paths.domain_dir(&domain).join(p)
        })
    };
    let agent = to_path(req.agent)?;
    let cpus = req
        .cpus
        .into_iter()
        .map(to_path)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    for base in std::iter::once(&agent).chain(cpus.iter()) {
        for sfx in [".in", ".out"] {
            let p = with_suffix(base, sfx);
            if !is_fifo(&p) {
                return Err(format!("{} is not a FIFO", p.display()));
            }
        }
    }
    {
        let reg = shared.lock();
        if reg.guests.contains_key(&domain) {
            return Err(format!("guest {domain:?} is already registered"));
        }
    }
    start_bridge(shared, &domain, &agent).map_err(|e| e.to_string())?;
    shared.lock().guests.insert(domain.clone(), Guest { cpus });
    Ok(domain)
}

fn manager_session(shared: &Arc<Shared>, paths: &VirtPaths, fd: OwnedFd) {
    let ch = Channel::new(fd.as_fd());
    let req = match session::read_manager(&ch) {
        Ok(r) => r,
        Err(e) => {
            log::debug!("manager connection: {e}");
            return;
        }
    };
    let res = match req {
        ManagerRequest::Connect { cpus } => match session::get_connect(&ch, cpus) {
            Ok(gc) => match register_guest(shared, paths, gc) {
                Ok(d) => {
                    log::info!("guest {d:?} registered");
                    answer_connect(&ch, &Msg::Ack)
                }
                Err(why) => {
                    log::warn!("refused a connect: {why}");
                    answer_connect(&ch, &Msg::Finish)
                }
            },
            Err(e) => Err(e),
        },
        ManagerRequest::GuestList => {
            let list: Vec<(String, u32)> = shared
                .lock()
                .guests
                .iter()
                .map(|(n, g)| (n.clone(), g.cpus.len() as u32))
                .collect();
            send_list(&ch, &list)
        }
        ManagerRequest::AgentList => {
            let list: Vec<(String, u32)> = shared
                .lock()
                .agents
                .iter()
                .map(|(n, a)| (n.clone(), a.cpus))
                .collect();
            send_list(&ch, &list)
        }
        ManagerRequest::Trace { pid } if pid != 0 => match domain_of_pid(shared, pid) {
            // As with a name, minus the name exchange: DOMAIN{cpus}, then the fds.
            Some(name) => hand_over(shared, &ch, &fd, &name),
            None => {
                log::warn!("record -A GUEST:{pid}: no connected guest runs in process {pid}");
                session::send_finish(&ch)
            }
        },
        ManagerRequest::Trace { .. } => match session::get_domain(&ch) {
            Ok(name) => {
                let name = String::from_utf8_lossy(&name).into_owned();
                hand_over(shared, &ch, &fd, &name)
            }
            Err(e) => Err(e),
        },
    };
    if let Err(e) = res {
        log::warn!("manager connection: {e}");
    }
}

/// Answers a `connect`. The virt-server's C `connect` closes right after its
/// strings without reading an answer (spec §3.4), so a peer that is gone by
/// now is what the protocol expects, not a failure.
fn answer_connect(ch: &Channel<'_>, answer: &Msg) -> crate::msg::Result<()> {
    match v2::send(ch, answer) {
        Err(MsgError::Send(e))
            if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) =>
        {
            log::debug!("the connect client closed without reading the answer (as the virt-server's C connect does)");
            Ok(())
        }
        r => r,
    }
}

fn send_list(ch: &Channel<'_>, list: &[(String, u32)]) -> crate::msg::Result<()> {
    for (n, c) in list {
        session::send_domain(ch, n.as_bytes(), *c)?;
    }
    session::send_finish(ch)
}

/// `record -A`: pass the agent channel and the CPU FIFOs, then hold the agent
/// until the manager sends FINISH (clean end) or its socket closes; in the
/// latter case stop the agent (CLOSE, wait for its ACK) before freeing it.
fn hand_over(
    shared: &Arc<Shared>,
    ch: &Channel<'_>,
    mgr: &OwnedFd,
    name: &str,
) -> crate::msg::Result<()> {
    let (agent_fd, cpus, id, cpu_paths) = {
        let mut reg = shared.lock();
        let cpu_paths: Vec<PathBuf> = reg
            .guests
            .get(name)
            .map(|g| g.cpus.clone())
            .unwrap_or_default();
        // Wait for an idle read of the agent session to end: from here on only the
        // manager reads the channel.
        while reg.agents.get(name).is_some_and(|a| a.reading && !a.busy) {
            reg = shared
                .freed
                .wait_timeout(reg, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        match reg.agents.get_mut(name) {
            Some(a) if !a.busy => {
                a.busy = true;
                (a.fd.clone(), a.cpus, a.id, cpu_paths)
            }
            Some(_) => {
                drop(reg);
                log::warn!("record -A {name}: the agent is in use by another manager");
                return session::send_finish(ch);
            }
            None => {
                drop(reg);
                log::warn!("record -A {name}: no agent of that name is connected");
                return session::send_finish(ch);
            }
        }
    };
    let n = cpus.min(cpu_paths.len() as u32);
    let res = (|| -> crate::msg::Result<bool> {
        session::send_cpus(ch, cpus)?;
        session::transfer_fd(ch, agent_fd.as_fd(), n)?;
        for (i, p) in cpu_paths.iter().take(n as usize).enumerate() {
            let f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(with_suffix(p, ".out"))?;
            session::transfer_fd(ch, f.as_fd(), n - i as u32)?;
        }
        log::info!("agent of {name} handed to a manager");
        // Hold the agent until the manager says it is done (FINISH after the
        // agent confirmed its stop) or goes away.
        let ch = Channel::new(mgr.as_fd()).with_timeout(None);
        loop {
            match v2::recv(&ch, Wait::Blocking) {
                Ok(Msg::Finish) => return Ok(true),
                Ok(_) | Err(MsgError::Interrupted) => continue,
                Err(_) => return Ok(false),
            }
        }
    })();
    if !matches!(res, Ok(true)) {
        // The manager died (or the hand-over failed): stop the agent and wait
        // for its flush, so that the next manager starts on a page boundary. An
        // agent that was not recording ignores the CLOSE.
        let ach = Channel::new(agent_fd.as_fd()).with_timeout(Some(Duration::from_secs(5)));
        if v2::send(&ach, &Msg::Close).is_ok() {
            discard_until_ack(&agent_fd);
        }
        std::thread::sleep(Duration::from_millis(300));
        for p in cpu_paths.iter().take(n as usize) {
            drain_fifo(&with_suffix(p, ".out"));
        }
    }
    let mut reg = shared.lock();
    if let Some(a) = reg.agents.get_mut(name) {
        if a.id == id {
            a.busy = false;
        }
    }
    shared.freed.notify_all();
    log::info!("agent of {name} released");
    res.map(|_| ())
}

/// After a manager died, possibly in the middle of a message: throw away what
/// the agent still sends (the rest of its metadata, then its stop confirmation)
/// until it has been quiet for a second after an ACK, or for 5 s.
fn discard_until_ack(fd: &OwnedFd) {
    const ACK: [u8; 8] = [0, 0, 0, 8, 0, 0, 0, 9];
    let start = std::time::Instant::now();
    let mut tail: Vec<u8> = Vec::new();
    let mut last = std::time::Instant::now();
    let mut buf = vec![0u8; 65536];
    while start.elapsed() < Duration::from_secs(120) {
        let quiet = last.elapsed();
        if quiet > Duration::from_secs(5)
            || (quiet > Duration::from_secs(1) && tail.ends_with(&ACK))
        {
            return;
        }
        if !readable(fd) {
            continue;
        }
        match nix::sys::socket::recv(
            fd.as_raw_fd(),
            &mut buf,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => return,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                let keep = tail.len().saturating_sub(8);
                tail.drain(..keep);
                last = std::time::Instant::now();
            }
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Reads and drops whatever `fd` has pending right now.
fn discard_pending(fd: &OwnedFd) {
    let mut buf = vec![0u8; 65536];
    while matches!(
        nix::sys::socket::recv(fd.as_raw_fd(), &mut buf, nix::sys::socket::MsgFlags::MSG_DONTWAIT),
        Ok(n) if n > 0
    ) {}
}

/// Throws away what a dead manager left in a CPU FIFO, so the next one starts on
/// a page boundary.
fn drain_fifo(p: &Path) {
    let Ok(mut f) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p)
    else {
        return;
    };
    let mut buf = vec![0u8; 65536];
    while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
}
