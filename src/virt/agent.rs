//! `agent --virt` in the guest (spec §3.5, completed as the README documents):
//! handshake with the listener, then serve one manager after another. For each:
//! CONNECT{argc} + argv, TINIT/RINIT (virt: no ports), metadata as
//! SENDMETA…FINMETA, per-CPU pages into `trace-path-cpuN`, and on CLOSE: stop,
//! flush, ACK.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{io_err, Result, VirtError};
use crate::msg::session;
use crate::msg::v2::{self, Msg};
use crate::msg::{Channel, MsgError, Wait, CONNECTION_MSG, MAX_CPUS};
use crate::output::Metadata;
use crate::recorder::{CpuRecorder, Input, Output, RecordFlags};
use crate::tracefs::{self, Instance, TracefsState};

/// The guest's virtio ports: the control port and one port per CPU.
#[derive(Debug)]
pub struct GuestPorts {
    pub ctl: File,
    pub cpus: Vec<File>,
}

fn open_port(p: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(p)
        .map_err(io_err(format!(
            "cannot open the virtio port {}",
            p.display()
        )))
}

/// Opens `<dir>/agent-ctl-path` and `<dir>/trace-path-cpu0…` (consecutive).
pub fn open_ports(dir: &Path) -> Result<GuestPorts> {
    let ctl = open_port(&dir.join("agent-ctl-path"))?;
    let mut cpus = Vec::new();
    loop {
        let p: PathBuf = dir.join(format!("trace-path-cpu{}", cpus.len()));
        if !p.exists() || cpus.len() >= MAX_CPUS as usize {
            break;
        }
        cpus.push(open_port(&p)?);
    }
    if cpus.is_empty() {
        return Err(VirtError::Invalid(format!(
            "no {}/trace-path-cpu0: the guest needs one virtio port per CPU to send data",
            dir.display()
        )));
    }
    Ok(GuestPorts { ctl, cpus })
}

/// What the manager asked the guest to record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestRecordArgs {
    pub events: Vec<String>,
    pub instance: Option<String>,
    pub buffer_kb: Option<u64>,
    pub clock: Option<String>,
    pub sleep_us: Option<u64>,
}

/// Parses the record options the manager forwarded (`-e`, `-B`, `-b`, `-C`, `-s`).
pub fn parse_guest_args(argv: &[String]) -> std::result::Result<GuestRecordArgs, String> {
    let mut a = GuestRecordArgs::default();
    let mut it = argv.iter();
    while let Some(opt) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("option {opt} needs a value"))
        };
        match opt.as_str() {
            "-e" => a.events.push(val()?),
            "-B" => a.instance = Some(val()?),
            "-b" => {
                a.buffer_kb = Some(
                    val()?
                        .parse()
                        .map_err(|_| "-b needs a number of KiB".to_string())?,
                )
            }
            "-C" => a.clock = Some(val()?),
            "-s" => {
                a.sleep_us = Some(
                    val()?
                        .parse()
                        .map_err(|_| "-s needs microseconds".to_string())?,
                )
            }
            o => {
                return Err(format!(
                    "option {o:?} is not supported in a guest (use -e, -B, -b, -C, -s)"
                ))
            }
        }
    }
    if a.events.is_empty() {
        return Err("no events to record in the guest: give -e after -A GUEST".into());
    }
    Ok(a)
}

/// Handshake with the listener (TCONNECT/RCONNECT, CINIT/CRINIT), retried until
/// the listener answers. Every wait checks `stopped()`, so that a signal ends the
/// agent also while no listener answers: `Ok(false)` then.
pub fn handshake(ch: &Channel<'_>, cpus: u32, stopped: &dyn Fn() -> bool) -> Result<bool> {
    let limit = ch.timeout();
    let attempt = || -> Result<Option<()>> {
        v2::send(ch, &Msg::TConnect)?;
        match recv_unless_stopped(ch, stopped, limit)? {
            None => return Ok(None),
            Some(Msg::RConnect(s)) if s.as_slice() == CONNECTION_MSG => {}
            Some(Msg::RConnect(s)) => {
                return Err(MsgError::NotTraceCmd(format!(
                    "RCONNECT says {:?}",
                    String::from_utf8_lossy(&s)
                ))
                .into())
            }
            Some(m) => return Err(unexpected("RCONNECT", &m)),
        }
        v2::send(ch, &Msg::CInit { cpus })?;
        loop {
            match recv_unless_stopped(ch, stopped, limit)? {
                None => return Ok(None),
                Some(Msg::CRInit) => return Ok(Some(())),
                Some(Msg::RConnect(_)) => continue,
                Some(m) => return Err(unexpected("CRINIT", &m)),
            }
        }
    };
    loop {
        if stopped() {
            return Ok(false);
        }
        match attempt() {
            Ok(Some(())) => return Ok(true),
            Ok(None) => return Ok(false),
            Err(_) if stopped() => return Ok(false),
            // Only a host that is not there yet is worth waiting for; a host that
            // answers with the wrong bytes would answer so forever.
            Err(e) if !host_absent(&e) => return Err(e),
            Err(e) => {
                log::info!("no answer from the host listener yet ({e}); retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// Whether a failed handshake means no listener is on the other end yet
/// (nothing read, the port closed, or an I/O error), rather than a bad answer.
fn host_absent(e: &VirtError) -> bool {
    matches!(
        e,
        VirtError::Msg(
            MsgError::TimedOut(_) | MsgError::Closed | MsgError::Io(_) | MsgError::Send(_)
        )
    )
}

fn unexpected(expected: &'static str, m: &Msg) -> VirtError {
    MsgError::Unexpected {
        expected,
        got: m.cmd().name(),
    }
    .into()
}

/// The next message, checking `stopped()` every 300 ms while none has started
/// (`None` once it is true); with a `limit`, a message must start within it.
fn recv_unless_stopped(
    ch: &Channel<'_>,
    stopped: &dyn Fn() -> bool,
    limit: Option<Duration>,
) -> Result<Option<Msg>> {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    let deadline = limit.map(|l| std::time::Instant::now() + l);
    loop {
        if stopped() {
            return Ok(None);
        }
        if let Some(d) = deadline {
            if std::time::Instant::now() >= d {
                let ms = limit.unwrap_or_default().as_millis() as u64;
                return Err(MsgError::TimedOut(ms).into());
            }
        }
        let mut p = [PollFd::new(ch.fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut p, PollTimeout::from(300u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(MsgError::from(e).into()),
        }
        // A message has started: read all of it within the channel's timeout.
        match v2::recv(ch, Wait::Timed) {
            Ok(m) => return Ok(Some(m)),
            Err(MsgError::Interrupted) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits for a manager's CONNECT{argc} (stray CLOSE/ACK are skipped); `None`
/// once `stopped()`.
pub fn wait_for_manager(ch: &Channel<'_>, stopped: &dyn Fn() -> bool) -> Result<Option<u32>> {
    while let Some(m) = recv_unless_stopped(ch, stopped, None)? {
        match m {
            Msg::Connect { cpus } => return Ok(Some(cpus)),
            m => log::debug!("waiting for a manager: ignoring {}", m.cmd().name()),
        }
    }
    Ok(None)
}

/// Serves managers until `stopped()` or the control channel fails.
pub fn serve(ports: &GuestPorts, stopped: &dyn Fn() -> bool) -> Result<()> {
    let ch = Channel::new(ports.ctl.as_fd());
    let cpus = ports.cpus.len() as u32;
    if !handshake(&ch, cpus, stopped)? {
        log::info!("asked to exit before the host listener answered");
        return Ok(());
    }
    log::info!("registered with the host listener ({cpus} CPU ports); waiting for a manager");
    while !stopped() {
        let Some(argc) = wait_for_manager(&ch, stopped)? else {
            break;
        };
        let argv: Vec<String> = session::agent_parameters(&ch, argc)?
            .into_iter()
            .map(|a| String::from_utf8_lossy(&a).into_owned())
            .collect();
        log::info!("manager asks to record: {argv:?}");
        match record_session(&ch, ports, &argv, stopped) {
            Ok(()) => log::info!("recording done; waiting for the next manager"),
            Err(_) if stopped() => log::info!("recording stopped: the agent was asked to exit"),
            Err(e) => log::warn!("recording failed: {e}; waiting for the next manager"),
        }
    }
    Ok(())
}

fn refuse(ch: &Channel<'_>, reason: String) -> Result<()> {
    log::warn!("refusing the manager's request: {reason}");
    session::send_string(ch, reason.as_bytes())?;
    Err(VirtError::Invalid(reason))
}

/// One recording for one manager.
fn record_session(
    ch: &Channel<'_>,
    ports: &GuestPorts,
    argv: &[String],
    stopped: &dyn Fn() -> bool,
) -> Result<()> {
    let args = match parse_guest_args(argv) {
        Ok(a) => a,
        Err(why) => return refuse(ch, why),
    };
    let inst = match &args.instance {
        None => Instance::top().map_err(|e| e.to_string()),
        Some(n) => Instance::open(n)
            .or_else(|_| Instance::create(n))
            .map_err(|e| format!("cannot use tracing instance {n:?}: {e}")),
    };
    let inst = match inst {
        Ok(i) => i,
        Err(why) => return refuse(ch, why),
    };
    let sel: Vec<&str> = args.events.iter().map(String::as_str).collect();
    let events = match inst.resolve_events(&sel) {
        Ok(e) => e,
        Err(e) => return refuse(ch, e.to_string()),
    };
    let cpus = tracefs::cpu_count(&inst)
        .unwrap_or(ports.cpus.len())
        .min(ports.cpus.len());
    let mut guard = TracefsState::new(&inst);
    let setup = (|| -> std::result::Result<Metadata, String> {
        let setup = tracefs::RecordingSetup {
            buffer_kb: args.buffer_kb,
            clock: args.clock.as_deref(),
            ..Default::default()
        };
        guard
            .prepare_recording(&setup, &events)
            .map_err(|e| e.to_string())?;
        log::info!(
            "tracefs prepared ({} events); reading the metadata",
            events.len()
        );
        Metadata::from_tracefs(&inst, &events).map_err(|e| e.to_string())
    })();
    let meta = match setup {
        Ok(m) => m,
        Err(why) => {
            let _ = guard.restore();
            return refuse(ch, why);
        }
    };
    let bytes = meta
        .to_bytes()
        .map_err(|e| VirtError::Invalid(e.to_string()))?;
    // Recorders first: what cannot start is refused before TINIT.
    let mut recs = Vec::new();
    for (cpu, port) in ports.cpus.iter().take(cpus).enumerate() {
        let rec = port
            .try_clone()
            .map_err(|e| format!("cannot duplicate the CPU {cpu} port: {e}"))
            .and_then(|out| {
                let input = Input::Buffer {
                    dir: inst.path().to_path_buf(),
                    cpu,
                };
                let flags = RecordFlags {
                    nosplice: true,
                    ..RecordFlags::default()
                };
                CpuRecorder::new(input, Output::Stream(OwnedFd::from(out)), flags)
                    .map_err(|e| format!("cannot start the CPU {cpu} recorder: {e}"))
            });
        match rec {
            Ok(r) => recs.push(r),
            Err(why) => {
                let _ = guard.restore();
                return refuse(ch, why);
            }
        }
    }
    log::info!(
        "set up: {cpus} CPU recorders, {} bytes of metadata; telling the manager",
        bytes.len()
    );
    session::send_init(ch, cpus as u32, meta.page_size, false)?;
    let sleep = Duration::from_micros(args.sleep_us.unwrap_or(1000));
    let stops: Vec<_> = recs.iter().map(CpuRecorder::stop_handle).collect();
    let threads: Vec<_> = recs
        .into_iter()
        .map(|mut rec| {
            std::thread::spawn(move || {
                let r = rec.record(sleep);
                (rec, r)
            })
        })
        .collect();
    let _ = guard.set_tracing_on(true);
    // Tracing is on before the manager gets the metadata: the manager starts
    // the traced command only after FINMETA, so the guest sees all of it.
    let sent = session::send_metadata(ch, &bytes).and_then(|()| session::finish_metadata(ch));
    // Clock sync, answered only when the manager offers it (README).
    let clock = match &args.clock {
        Some(c) => c.clone(),
        None => inst.trace_clock().map(|c| c.0).unwrap_or_default(),
    };
    let mut tsync = crate::record::tsync::AgentClock::new(&clock);
    // Wait for the manager's CLOSE; a lost channel or a signal to the agent
    // stops the recording as well.
    let lost = match sent {
        Err(e) => Some(VirtError::from(e)),
        Ok(()) => loop {
            match recv_unless_stopped(ch, stopped, None) {
                Ok(Some(Msg::Close)) => break None,
                Ok(Some(Msg::SendMeta(p))) if crate::msg::tsync::is_tsync(&p) => {
                    if let Err(e) = tsync.handle(ch, &p) {
                        log::warn!("clock sync: {e}");
                    }
                }
                Ok(Some(m)) => log::debug!("while recording: ignoring {}", m.cmd().name()),
                Ok(None) => break Some(VirtError::Invalid("the agent was asked to exit".into())),
                Err(e) => break Some(e),
            }
        },
    };
    log::info!(
        "{}; stopping the recorders",
        match &lost {
            None => "the manager asked to stop".to_string(),
            Some(e) => e.to_string(),
        }
    );
    let _ = inst.set_tracing_on(false);
    for s in &stops {
        s.stop();
    }
    for (cpu, t) in threads.into_iter().enumerate() {
        match t.join() {
            Ok((rec, r)) => {
                if let Err(e) = r.and_then(|()| rec.finish()) {
                    log::warn!("CPU {cpu} recorder: {e}");
                }
            }
            Err(_) => log::warn!("CPU {cpu} recorder thread panicked"),
        }
    }
    let _ = guard.restore();
    match lost {
        None => {
            log::info!("every CPU flushed; confirming the stop");
            v2::send(ch, &Msg::Ack)?;
            Ok(())
        }
        Some(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn guest_args() {
        let a = parse_guest_args(&s(&["-e", "sched", "-B", "x", "-b", "64", "-e", "irq"])).unwrap();
        assert_eq!(a.events, s(&["sched", "irq"]));
        assert_eq!(a.instance.as_deref(), Some("x"));
        assert_eq!(a.buffer_kb, Some(64));
        assert!(parse_guest_args(&s(&["-e"])).is_err());
        assert!(parse_guest_args(&s(&["-z", "1"])).is_err());
        assert!(parse_guest_args(&s(&["-b", "x", "-e", "a"])).is_err());
        assert!(parse_guest_args(&s(&[])).is_err());
    }
}
