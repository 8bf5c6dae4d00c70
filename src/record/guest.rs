//! The guests of a recording (`record -A GUEST[:pid] <guest options>`): which
//! options go to which guest, the manager side of the virt-server session (spec
//! §3.6, completed: get the agent's control channel and the per-CPU FIFOs from the
//! listener, send the arguments, answer the agent's TINIT, collect its metadata,
//! stop it at the end), and the recorders of its CPU FIFOs.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use super::tsync::{ClockSync, GuestClock, TsyncConfig};
use super::{BufferKey, CpuRecorderSet, GuestProblem, RecordError, TraceWriter};
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

/// One `-A GUEST[:pid]` and the options that followed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSpec {
    /// The guest's name (its buffer in the file).
    pub name: String,
    /// Its QEMU process, or 0.
    pub pid: u32,
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
            let (name, pid) = parse_guest_spec(&spec)?;
            guests.push(GuestSpec {
                name,
                pid,
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

/// A guest being recorded: its session with the agent and the recorders of its
/// CPU FIFOs (into the writer's buffer [`BufferKey::Guest`]).
#[derive(Debug)]
pub struct GuestRecording {
    // Recorders first: dropped (stopped) before the session's sockets close.
    recorders: CpuRecorderSet,
    // Its thread holds a copy of the agent's channel: stopped before the session.
    sync: Option<ClockSync>,
    session: GuestSession,
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
        let mut rec = GuestRecording {
            recorders: CpuRecorderSet::new(name),
            sync: None,
            session,
        };
        let key = BufferKey::Guest(name.to_string());
        for (cpu, fd) in fifos.into_iter().enumerate() {
            let cpu_err = |source| RecordError::GuestCpu {
                guest: name.to_string(),
                cpu,
                source,
            };
            let out = writer.cpu_output(&key, cpu, 0).map_err(cpu_err)?;
            let r =
                CpuRecorder::new(Input::Fd(fd), out, RecordFlags::default()).map_err(cpu_err)?;
            rec.recorders.start(cpu, r, sleep)?;
        }
        // After the recorders: the guest's pages flow while the offer waits.
        let reply = rec.session.reply_time;
        rec.sync = tsync.and_then(|cfg| match ClockSync::start(&rec.session.agent, cfg, reply) {
            Ok(Some(s)) => Some(s),
            Ok(None) => {
                log::info!("guest {name}: the agent does not sync clocks; its timestamps stay on the guest's clock");
                None
            }
            Err(e) => {
                log::warn!("guest {name}: {e}; its timestamps stay on the guest's clock");
                None
            }
        });
        log::info!("guest {name}: recording {} CPUs", rec.session.cpus);
        Ok(rec)
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.session.name
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
            let clock = g.sync.take().map(|s| s.finish(&g.session.agent));
            (g, clock)
        })
        .collect();
    // All guests stop at once; then each confirmation is awaited.
    let asked = Instant::now();
    let requested: Vec<_> = guests
        .iter()
        .map(|(g, _)| g.session.request_stop())
        .collect();
    for ((g, clock), req) in guests.drain(..).zip(requested) {
        let name = g.session.name.clone();
        let key = BufferKey::Guest(name.clone());
        let mut problem = req
            .and_then(|()| g.session.wait_stopped(wait))
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
            recorders, session, ..
        } = g;
        let cpus = recorders.len();
        if let Err(e) = recorders.finish() {
            problem.get_or_insert(GuestProblem::Cpu(e));
        }
        let meta = match parse_metadata(&session.metadata) {
            Ok(m) => m,
            Err(e) => {
                problem.get_or_insert(GuestProblem::Metadata(e.into()));
                Metadata::default()
            }
        };
        results.push(GuestResult {
            name,
            cpus,
            meta,
            problem,
            clock,
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
