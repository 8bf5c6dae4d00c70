//! The guests of a recording (`record -A GUEST[:pid] <guest options>`): which
//! options go to which guest, the manager side of the virt-server session (spec
//! §3.6, completed: get the agent's control channel and the per-CPU FIFOs from the
//! listener, send the arguments, answer the agent's TINIT, collect its metadata,
//! stop it at the end), and the recorders of its CPU FIFOs.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use super::remote::{AgentAddr, AgentSession};
use super::tsync::{ClockSync, GuestClock, GuestSync, TsyncConfig};
use super::{BoxError, BufferKey, CpuRecorderSet, GuestProblem, RecordError, TraceWriter};
use crate::msg::session;
use crate::msg::v2::{self, Msg};
use crate::msg::{Channel, MsgError, Wait};
use crate::output::Metadata;
use crate::recorder::{CpuRecorder, Input, RecordFlags};
use crate::transport;
use crate::virt::meta::parse_metadata;
use crate::virt::{Result, VirtError, VirtPaths};

/// Most metadata bytes accepted from a guest (kallsyms of a big kernel is ~20 MiB).
pub const MAX_GUEST_METADATA: usize = 256 << 20;

/// How long `record -A` waits for a connected but busy agent.
pub const AGENT_WAIT: Duration = Duration::from_secs(15);

/// Whether the listener lists an agent named `name`.
fn agent_listed(paths: &VirtPaths, name: &str) -> Result<bool> {
    Ok(
        crate::virt::guest::list(paths, crate::virt::guest::Listing::Agents)?
            .iter()
            .any(|(n, _)| n == name),
    )
}

/// A guest being recorded.
#[derive(Debug)]
pub struct GuestSession {
    pub name: String,
    /// The listener holds the agent for us until FINISH or this socket closes.
    manager: OwnedFd,
    agent: OwnedFd,
    /// The per-CPU FIFO read ends (take them for the recorders).
    pub cpu_fifos: Vec<OwnedFd>,
    /// CPUs the agent records (its TINIT).
    pub cpus: u32,
    pub page_size: u32,
    /// The guest's v6 metadata (magic … saved cmdlines).
    pub metadata: Vec<u8>,
    /// From our RINIT to the agent's first metadata message: one round trip
    /// plus a little work, which bounds how long an answer should take.
    pub reply_time: Duration,
}

/// Splits `GUEST[:pid]`.
pub fn parse_guest_spec(spec: &str) -> Result<(String, u32)> {
    let (name, pid) = match spec.rsplit_once(':') {
        Some((n, p)) => (
            n,
            p.parse::<u32>().map_err(|_| {
                VirtError::Invalid(format!("{spec:?}: the part after ':' must be a pid"))
            })?,
        ),
        None => (spec, 0),
    };
    crate::virt::validate_domain(name)?;
    Ok((name.to_string(), pid))
}

/// What the listener hands a manager for one guest (spec §3.6): the manager
/// connection (which holds the agent until FINISH or close), the agent's control
/// channel and the per-CPU FIFO read ends. A test can make one from socket pairs
/// and pipes and play the agent itself.
#[derive(Debug)]
pub struct GuestLink {
    /// The connection to the listener's manager socket.
    pub manager: OwnedFd,
    /// The agent's control channel.
    pub agent: OwnedFd,
    /// The read ends of the guest's per-CPU FIFOs, in CPU order.
    pub cpu_fifos: Vec<OwnedFd>,
}

impl GuestLink {
    /// Asks the listener for the agent of `name` (or, with `pid != 0`, of the guest
    /// whose QEMU process is `pid`) and takes its fds.
    pub fn from_listener(paths: &VirtPaths, name: &str, pid: u32) -> Result<GuestLink> {
        // With `GUEST:pid` the listener picks the guest whose QEMU process is
        // `pid`; `name` is still the buffer's name in the file.
        // A manager that just ended frees its agent a moment later: while the
        // agent is connected (ALIST) but busy, retry for a while.
        let deadline = std::time::Instant::now() + AGENT_WAIT;
        let (mgr, cpus_announced) = loop {
            let mgr = transport::connect_unix(&paths.manager_socket())?;
            let ch = Channel::new(mgr.as_fd());
            match session::connect_agent(&ch, name.as_bytes(), pid) {
                Ok(c) => break (mgr, c),
                Err(MsgError::NoSuchAgent) | Err(MsgError::Closed) => {
                    if pid != 0 {
                        // The listener found no guest in that process.
                        return Err(VirtError::NoAgent(format!("{name}:{pid}")));
                    }
                    if std::time::Instant::now() >= deadline || !agent_listed(paths, name)? {
                        return Err(VirtError::NoAgent(name.to_string()));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let ch = Channel::new(mgr.as_fd());
        let (agent, cpu_fifos) = session::get_fds(&ch)?;
        log::info!(
            "guest {name}: agent with {cpus_announced} CPUs, {} CPU FIFOs",
            cpu_fifos.len()
        );
        Ok(GuestLink {
            manager: mgr,
            agent,
            cpu_fifos,
        })
    }
}

impl GuestSession {
    /// Connects through the listener to the agent of `name` and starts its
    /// recording with `argv` (the record options meant for the guest).
    pub fn start(paths: &VirtPaths, name: &str, pid: u32, argv: &[String]) -> Result<GuestSession> {
        GuestSession::start_on(GuestLink::from_listener(paths, name, pid)?, name, argv)
    }

    /// Starts the recording of the agent behind `link` with `argv`: CONNECT and the
    /// arguments, its TINIT, our RINIT, then its metadata.
    pub fn start_on(link: GuestLink, name: &str, argv: &[String]) -> Result<GuestSession> {
        let GuestLink {
            manager: mgr,
            agent,
            cpu_fifos,
        } = link;
        let ach = Channel::new(agent.as_fd());
        v2::send(
            &ach,
            &Msg::Connect {
                cpus: argv.len() as u32,
            },
        )?;
        for a in argv {
            session::send_string(&ach, a.as_bytes())?;
        }
        // The agent answers TINIT, or a string with the reason it refuses. A stray
        // ACK from an earlier session's stop may come first.
        let (cpus, page_size) = loop {
            match v2::recv(&ach, Wait::Timed)? {
                Msg::TInit {
                    cpus, page_size, ..
                } => break (cpus, page_size),
                Msg::Ack => continue,
                Msg::SendMeta(first) => {
                    let mut reason = first;
                    loop {
                        match v2::recv(&ach, Wait::Timed)? {
                            Msg::SendMeta(d) if reason.len() < 4096 => reason.extend(d),
                            Msg::SendMeta(_) => {}
                            _ => break,
                        }
                    }
                    // The agent is idle again: the listener may free it now.
                    let _ = v2::send(&Channel::new(mgr.as_fd()), &Msg::Finish);
                    return Err(VirtError::AgentRefused {
                        guest: name.to_string(),
                        reason: String::from_utf8_lossy(&reason).into_owned(),
                    });
                }
                m => {
                    return Err(MsgError::Unexpected {
                        expected: "TINIT",
                        got: m.cmd().name(),
                    }
                    .into())
                }
            }
        };
        if cpus as usize > cpu_fifos.len() {
            log::warn!(
                "guest {name} records {cpus} CPUs but only {} FIFOs were registered; the others are lost",
                cpu_fifos.len()
            );
        }
        session::send_port_array(&ach, cpus, None)?;
        let sent = std::time::Instant::now();
        let mut reply_time = None;
        let mut metadata = Vec::new();
        loop {
            let m = v2::recv(&ach, Wait::Timed)?;
            reply_time.get_or_insert_with(|| sent.elapsed());
            match m {
                Msg::SendMeta(d) => {
                    if metadata.len() + d.len() > MAX_GUEST_METADATA {
                        return Err(VirtError::BadMetadata(format!(
                            "more than {MAX_GUEST_METADATA} bytes"
                        )));
                    }
                    metadata.extend_from_slice(&d);
                }
                Msg::FinMeta => break,
                m => {
                    return Err(MsgError::Unexpected {
                        expected: "SENDMETA or FINMETA",
                        got: m.cmd().name(),
                    }
                    .into())
                }
            }
        }
        Ok(GuestSession {
            name: name.to_string(),
            manager: mgr,
            agent,
            cpu_fifos,
            cpus,
            page_size,
            metadata,
            reply_time: reply_time.unwrap_or_default(),
        })
    }

    /// Asks the agent to stop (CLOSE); [`GuestSession::wait_stopped`] waits for
    /// its confirmation.
    pub fn request_stop(&self) -> Result<()> {
        v2::send(&Channel::new(self.agent.as_fd()), &Msg::Close)?;
        Ok(())
    }

    /// Waits up to `wait` for the agent's ACK, which it sends once it has flushed
    /// every CPU; then tells the listener (FINISH) that the agent is free.
    pub fn wait_stopped(&self, wait: Duration) -> Result<()> {
        let ch = Channel::new(self.agent.as_fd()).with_timeout(Some(wait));
        loop {
            match v2::recv(&ch, Wait::Timed) {
                Ok(Msg::Ack) => {
                    let _ = v2::send(&Channel::new(self.manager.as_fd()), &Msg::Finish);
                    return Ok(());
                }
                Ok(m) => log::debug!(
                    "guest {}: ignoring {} after CLOSE",
                    self.name,
                    m.cmd().name()
                ),
                Err(MsgError::Interrupted) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// [`GuestSession::request_stop`], then [`GuestSession::wait_stopped`].
    pub fn stop(&self, wait: Duration) -> Result<()> {
        self.request_stop()?;
        self.wait_stopped(wait)
    }
}

/// One `-A GUEST[:pid]` (a virt-server guest), `-A ADDRESS[:PORT]` or
/// `-A NAME@CID[:PORT]` (a 3.x agent), and the options that followed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSpec {
    /// The guest's name (its buffer in the file).
    pub name: String,
    /// Its QEMU process, or 0.
    pub pid: u32,
    /// Where its 3.x agent listens; `None` for a virt-server guest.
    pub agent: Option<AgentAddr>,
    /// The record options meant for the guest.
    pub argv: Vec<String>,
}

/// Options of `record` that take a value (so the value is not the command).
const VALUE_OPTS: &[&str] = &[
    "-e",
    "-o",
    "-b",
    "-m",
    "-s",
    "-C",
    "-p",
    "-B",
    "-f",
    "-P",
    "-O",
    "--tsync-interval",
    "--file-version",
    "--compression",
];

/// Options that concern the whole run, wherever they stand.
const HOST_OPTS: &[&str] = &[
    "-o",
    "-q",
    "-v",
    "--verbose",
    "--debug",
    "--tsync-interval",
    "--file-version",
    "--compression",
];

/// Why a `record -A` command line cannot be split.
#[derive(Debug, thiserror::Error)]
pub enum GuestArgsError {
    /// `-A` at the end.
    #[error("-A needs a guest name")]
    MissingName,
    /// `-A` with a bad `GUEST[:pid]`.
    #[error(transparent)]
    BadSpec(#[from] VirtError),
    /// `-A GUEST` followed by no option of its own.
    #[error("no options for the guest: give events after -A GUEST, e.g. -A vm1 -e sched")]
    NoOptions,
}

/// Splits `trace-cmd record ...` into the host's arguments and the guests': the
/// options after `-A GUEST` (up to the next `-A` or the command) go to that guest,
/// except the run-wide `-o`, `-q`, `-v`, `--debug`, `--tsync-interval`,
/// `--file-version` and `--compression`.
pub fn split_guest_args(
    args: Vec<String>,
) -> std::result::Result<(Vec<String>, Vec<GuestSpec>), GuestArgsError> {
    let mut host = Vec::new();
    let mut guests: Vec<GuestSpec> = Vec::new();
    let mut it = args.into_iter().peekable();
    // argv[0] and "record"
    host.extend(it.by_ref().take(2));
    while let Some(a) = it.next() {
        if a == "-A" {
            let spec = it.next().ok_or(GuestArgsError::MissingName)?;
            let (name, pid, agent) = match AgentAddr::parse(&spec)? {
                Some((name, addr)) => (name, 0, Some(addr)),
                None => {
                    let (name, pid) = parse_guest_spec(&spec)?;
                    (name, pid, None)
                }
            };
            guests.push(GuestSpec {
                name,
                pid,
                agent,
                argv: Vec::new(),
            });
            continue;
        }
        if !a.starts_with('-') || a == "--" {
            // The command (and everything after it) is the host's.
            host.push(a);
            host.extend(it);
            break;
        }
        let takes_value = VALUE_OPTS.contains(&a.as_str());
        let target = match guests.last_mut() {
            Some(g) if !HOST_OPTS.contains(&a.as_str()) => &mut g.argv,
            _ => &mut host,
        };
        target.push(a);
        if takes_value {
            if let Some(v) = it.next() {
                target.push(v);
            }
        }
    }
    if guests.iter().any(|g| g.argv.is_empty()) {
        return Err(GuestArgsError::NoOptions);
    }
    Ok((host, guests))
}

/// How the host talks to a guest's agent.
#[derive(Debug)]
enum Control {
    /// Through the virt-server listener (`-A DOM`).
    Virt(GuestSession),
    /// Directly, to a 3.x agent (`-A ADDRESS:PORT`, `-A NAME@CID`).
    Agent(AgentSession),
}

impl Control {
    fn name(&self) -> &str {
        match self {
            Control::Virt(s) => &s.name,
            Control::Agent(s) => &s.name,
        }
    }

    fn cpus(&self) -> u32 {
        match self {
            Control::Virt(s) => s.cpus,
            Control::Agent(s) => s.cpus,
        }
    }

    fn request_stop(&self) -> Result<()> {
        match self {
            Control::Virt(s) => s.request_stop(),
            Control::Agent(s) => s.request_stop(),
        }
    }

    fn wait_stopped(&self, wait: Duration) -> Result<()> {
        match self {
            Control::Virt(s) => s.wait_stopped(wait),
            Control::Agent(s) => s.wait_stopped(wait),
        }
    }

    /// The guest's metadata: version 6 from a virt-server agent; 6 or 7 from a
    /// 3.x agent.
    fn metadata(&self) -> std::result::Result<Metadata, BoxError> {
        match self {
            Control::Virt(s) => Ok(parse_metadata(&s.metadata)?),
            Control::Agent(s) => Ok(Metadata::parse_streamed(&s.metadata, MAX_GUEST_METADATA)?),
        }
    }
}

/// A guest being recorded: its session with the agent and the recorders of its
/// CPU FIFOs or data connections (into the writer's buffer [`BufferKey::Guest`]).
#[derive(Debug)]
pub struct GuestRecording {
    // Recorders first: dropped (stopped) before the session's sockets close.
    recorders: CpuRecorderSet,
    // Its thread holds a copy of the agent's channel: stopped before the session.
    sync: Option<ClockSync>,
    /// What clock alignment this guest gets when `sync` gives none.
    unsynced: GuestSync,
    control: Control,
}

/// What a finished guest leaves for the file.
#[derive(Debug)]
pub struct GuestResult {
    /// The guest's name.
    pub name: String,
    /// CPUs recorded.
    pub cpus: usize,
    /// Its metadata (empty if unreadable).
    pub meta: Metadata,
    /// Why its data may be incomplete.
    pub problem: Option<GuestProblem>,
    /// Its clock sync, when the agent took part.
    pub clock: Option<GuestClock>,
    /// Why it has no clock sync, when `clock` is `None`.
    pub unsynced: GuestSync,
}

impl GuestRecording {
    /// Starts the guest's recording on `link` and one recorder per CPU FIFO, each
    /// writing to the output `writer` gives it; with `tsync`, offers clock sync.
    pub fn start(
        name: &str,
        link: GuestLink,
        argv: &[String],
        writer: &mut dyn TraceWriter,
        sleep: Duration,
        tsync: Option<&TsyncConfig>,
    ) -> std::result::Result<GuestRecording, RecordError> {
        let guest_err = |source| RecordError::Guest {
            guest: name.to_string(),
            source,
        };
        let mut session = GuestSession::start_on(link, name, argv).map_err(guest_err)?;
        let fifos = std::mem::take(&mut session.cpu_fifos);
        let mut rec = GuestRecording::record(Control::Virt(session), fifos, writer, sleep)?;
        // After the recorders: the guest's pages flow while the offer waits.
        let Control::Virt(session) = &rec.control else {
            unreachable!("made above")
        };
        match tsync.map(|cfg| ClockSync::start(&session.agent, cfg, session.reply_time)) {
            None => rec.unsynced = GuestSync::Off,
            Some(Ok(Some(s))) => rec.sync = Some(s),
            Some(Ok(None)) => rec.unsynced = GuestSync::AgentDeclined,
            Some(Err(e)) => rec.unsynced = GuestSync::Failed(e.to_string()),
        }
        Ok(rec)
    }

    /// Starts the recording of the 3.x agent at `addr` with `argv` and one recorder
    /// per data connection; `timeout` bounds each message and connection. With
    /// `tsync`, the summary says why the clocks stay apart (3.x syncs only over
    /// vsock, with an exchange this crate does not speak yet).
    pub fn start_agent(
        name: &str,
        addr: AgentAddr,
        argv: &[String],
        writer: &mut dyn TraceWriter,
        sleep: Duration,
        tsync: Option<&TsyncConfig>,
        timeout: Duration,
    ) -> std::result::Result<GuestRecording, RecordError> {
        let mut session =
            AgentSession::start(name, addr, argv, timeout, tsync.is_some()).map_err(|source| {
                RecordError::Guest {
                    guest: name.to_string(),
                    source,
                }
            })?;
        let socks = std::mem::take(&mut session.data);
        let conn = session.tsync.take();
        let mut rec = GuestRecording::record(Control::Agent(session), socks, writer, sleep)?;
        // The guest records with the clock its options name (3.x's default: local).
        let guest_clock = argv
            .iter()
            .rposition(|a| a == "-C")
            .and_then(|i| argv.get(i + 1))
            .map_or("local", String::as_str);
        match (tsync, addr.is_tcp(), conn) {
            (None, _, _) => rec.unsynced = GuestSync::Off,
            (Some(_), true, _) => rec.unsynced = GuestSync::TcpPeer,
            (Some(_), false, None) => rec.unsynced = GuestSync::AgentDeclined,
            (Some(_), false, Some(Err(e))) => rec.unsynced = GuestSync::Failed(e),
            (Some(cfg), false, Some(Ok(fd))) => match ClockSync::start_ptp(fd, cfg, guest_clock) {
                Ok(s) => rec.sync = Some(s),
                Err(e) => rec.unsynced = GuestSync::Failed(e.to_string()),
            },
        }
        Ok(rec)
    }

    /// One recorder per guest CPU, reading `inputs` (FIFOs or data sockets) into
    /// the writer's buffer of the guest.
    fn record(
        control: Control,
        inputs: Vec<OwnedFd>,
        writer: &mut dyn TraceWriter,
        sleep: Duration,
    ) -> std::result::Result<GuestRecording, RecordError> {
        let name = control.name().to_string();
        let mut rec = GuestRecording {
            recorders: CpuRecorderSet::new(&name),
            sync: None,
            unsynced: GuestSync::Off,
            control,
        };
        let key = BufferKey::Guest(name.clone());
        for (cpu, fd) in inputs.into_iter().enumerate() {
            let cpu_err = |source| RecordError::GuestCpu {
                guest: name.clone(),
                cpu,
                source,
            };
            let out = writer.cpu_output(&key, cpu, 0).map_err(cpu_err)?;
            let r =
                CpuRecorder::new(Input::Fd(fd), out, RecordFlags::default()).map_err(cpu_err)?;
            rec.recorders.start(cpu, r, sleep)?;
        }
        log::info!("guest {name}: recording {} CPUs", rec.control.cpus());
        Ok(rec)
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        self.control.name()
    }
}

/// Stops every guest (CLOSE, wait for the agent's ACK), lets the data still in
/// flight arrive, and stops the recorders.
pub fn finish_guests(guests: Vec<GuestRecording>, writer: &dyn TraceWriter) -> Vec<GuestResult> {
    // A slow guest (TCG under load) may need a while to flush every CPU through
    // its ports: six message timeouts (30 s by default) before calling it dead.
    let wait = crate::msg::default_timeout().unwrap_or(Duration::from_secs(5)) * 6;
    let mut results = Vec::new();
    // The last sync round of each guest, while its agent still answers.
    let mut guests: Vec<_> = guests
        .into_iter()
        .map(|mut g| {
            let clock = match (&g.control, g.sync.take()) {
                (Control::Virt(s), Some(sync)) => Some(sync.finish(Some(&s.agent))),
                (Control::Agent(_), Some(sync)) => Some(sync.finish(None)),
                _ => None,
            };
            (g, clock)
        })
        .collect();
    // All guests stop at once; then each confirmation is awaited.
    let asked = Instant::now();
    let requested: Vec<_> = guests
        .iter()
        .map(|(g, _)| g.control.request_stop())
        .collect();
    for ((g, clock), req) in guests.drain(..).zip(requested) {
        let name = g.control.name().to_string();
        let key = BufferKey::Guest(name.clone());
        let mut problem = req
            .and_then(|()| g.control.wait_stopped(wait))
            .err()
            .map(GuestProblem::NoStopConfirmation);
        if problem.is_none() {
            log::info!("guest {name}: stop confirmed after {:?}", asked.elapsed());
        }
        // The pages travel on other channels than the ACK: wait until the files
        // stop growing (at most 10 s).
        let start = Instant::now();
        let mut last = writer.recorded_bytes(&key);
        let mut quiet_since = Instant::now();
        while start.elapsed() < Duration::from_secs(10)
            && quiet_since.elapsed() < Duration::from_millis(400)
        {
            std::thread::sleep(Duration::from_millis(50));
            let now = writer.recorded_bytes(&key);
            if now != last {
                last = now;
                quiet_since = Instant::now();
            }
        }
        let GuestRecording {
            recorders,
            control,
            unsynced,
            ..
        } = g;
        let cpus = recorders.len();
        if let Err(e) = recorders.finish() {
            problem.get_or_insert(GuestProblem::Cpu(e));
        }
        let meta = match control.metadata() {
            Ok(m) => m,
            Err(e) => {
                problem.get_or_insert(GuestProblem::Metadata(e));
                Metadata::default()
            }
        };
        results.push(GuestResult {
            name,
            cpus,
            meta,
            problem,
            clock,
            unsynced,
        });
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options_after_a_go_to_the_guest() {
        let (host, guests) = split_guest_args(s(&[
            "tc", "record", "-e", "sched", "-A", "vm1", "-e", "sched", "-B", "x", "sleep", "2",
        ]))
        .unwrap();
        assert_eq!(host, s(&["tc", "record", "-e", "sched", "sleep", "2"]));
        assert_eq!(
            guests,
            vec![GuestSpec {
                name: "vm1".into(),
                pid: 0,
                agent: None,
                argv: s(&["-e", "sched", "-B", "x"])
            }]
        );
        let (host, g) = split_guest_args(s(&[
            "tc", "record", "-A", "a:7", "-e", "x", "-o", "f.dat", "-A", "b", "-v", "-e", "y",
        ]))
        .unwrap();
        assert_eq!(host, s(&["tc", "record", "-o", "f.dat", "-v"]));
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].pid, 7);
        assert_eq!(g[1].argv, s(&["-e", "y"]));
        let (host, g) = split_guest_args(s(&[
            "tc",
            "record",
            "-A",
            "a",
            "--file-version",
            "6",
            "-e",
            "x",
            "--compression",
            "none",
            "ls",
        ]))
        .unwrap();
        assert_eq!(
            host,
            s(&[
                "tc",
                "record",
                "--file-version",
                "6",
                "--compression",
                "none",
                "ls"
            ])
        );
        assert_eq!(g[0].argv, s(&["-e", "x"]));
        let (_, g) = split_guest_args(s(&[
            "tc",
            "record",
            "-A",
            "127.0.0.1:5000",
            "-e",
            "x",
            "-A",
            "vm@3",
            "-e",
            "y",
            "-A",
            "vm1:4",
            "-e",
            "z",
        ]))
        .unwrap();
        assert_eq!(g[0].name, "127.0.0.1");
        assert!(g[0].agent.is_some_and(|a| a.is_tcp()));
        assert_eq!(g[1].name, "vm");
        assert!(g[1].agent.is_some_and(|a| !a.is_tcp()));
        assert_eq!((g[2].agent, g[2].pid), (None, 4));
        assert!(split_guest_args(s(&["tc", "record", "-A", "vm@x", "-e", "x"])).is_err());
        assert!(split_guest_args(s(&["tc", "record", "-A"])).is_err());
        assert!(split_guest_args(s(&["tc", "record", "-A", "a/b", "-e", "x"])).is_err());
        assert!(split_guest_args(s(&["tc", "record", "-A", "a", "ls"])).is_err());
    }

    #[test]
    fn guest_spec() {
        assert_eq!(parse_guest_spec("vm1").unwrap(), ("vm1".into(), 0));
        assert_eq!(parse_guest_spec("vm1:42").unwrap(), ("vm1".into(), 42));
        assert!(parse_guest_spec("vm1:x").is_err());
        assert!(parse_guest_spec("../x").is_err());
        assert!(parse_guest_spec("").is_err());
    }
}
