//! `trace-cmd record` (issue 4 items 3–5), `record -N` (issue 5) and `record -A`
//! (issue 6): the options, the signals, the traced command, the live line and the
//! summary. The recording itself is the engine's (`tracecmd_rs::record`): tracefs,
//! the per-CPU recorders of host and guests, the trace.dat or the listener.

use std::io::IsTerminal;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use tracecmd_rs::netrecord::Proto;
use tracecmd_rs::output::{Compression, CpuRange};
use tracecmd_rs::record::tsync::TsyncConfig;
use tracecmd_rs::record::{
    GuestSpec, HostSetup, NetTarget, RecordError, RecordSession, TraceWriter, V6FileWriter,
    V7FileWriter,
};
use tracecmd_rs::tracefs::{CpuStats, Instance, NotMounted};
use tracecmd_rs::virt::VirtPaths;

/// Longest wait for connecting to a listener when the message timeout is off.
const UNBOUNDED_CONNECT: Duration = Duration::from_secs(60);

/// Options of `trace-cmd record` (trace-cmd's letters).
#[derive(Args, Debug)]
pub struct RecordArgs {
    /// Event to record: `system`, `system:event`, a glob like `sched:sched_sw*`, or `all`.
    #[arg(short = 'e', value_name = "EVENT")]
    events: Vec<String>,
    /// Output file.
    #[arg(short = 'o', value_name = "FILE", default_value = "trace.dat")]
    output: PathBuf,
    /// Per-CPU ring-buffer size in KiB.
    #[arg(short = 'b', value_name = "KB")]
    buffer_kb: Option<u64>,
    /// Keep at most about this many KiB per CPU (the newest data).
    #[arg(short = 'm', value_name = "MAXKB")]
    max_kb: Option<u32>,
    /// Microseconds a recorder sleeps when the buffer has no full page yet.
    #[arg(short = 's', value_name = "USECS", default_value_t = 1000)]
    sleep_us: u64,
    /// Trace clock (one of the kernel's `trace_clock` entries).
    #[arg(short = 'C', value_name = "CLOCK")]
    clock: Option<String>,
    /// Tracer plugin to use (e.g. `function`).
    #[arg(short = 'p', value_name = "TRACER")]
    tracer: Option<String>,
    /// Record into the tracing instance NAME (created, and removed afterwards,
    /// if it does not exist); it is stored as a named buffer.
    #[arg(short = 'B', value_name = "NAME")]
    instance: Option<String>,
    /// trace.dat version to write: 7 (sections, compressed) or 6. Ignored with -N:
    /// the listener builds the file.
    #[arg(long = "file-version", value_name = "6|7", default_value_t = 7,
          value_parser = clap::value_parser!(u8).range(6..=7))]
    file_version: u8,
    /// How version 7 stores the data: `zstd`, `none`, or `any` (the best there is,
    /// zstd).
    #[arg(
        long = "compression",
        value_name = "zstd|none|any",
        default_value = "zstd"
    )]
    compression: String,
    /// Quiet: no live line and no summary.
    #[arg(short = 'q')]
    quiet: bool,
    /// Send the trace to `trace-cmd listen` at HOST:PORT instead of writing a file;
    /// negotiates down from protocol V3 to whatever the listener speaks.
    #[arg(short = 'N', value_name = "HOST:PORT", conflicts_with_all = ["output", "instance", "max_kb"])]
    net: Option<String>,
    /// With -N: send the per-CPU data over TCP instead of UDP.
    #[arg(short = 't', requires = "net")]
    tcp: bool,
    /// With -N: speak only this protocol version (1, 2 or 3) instead of negotiating.
    #[arg(long = "proto", value_name = "N", requires = "net",
          value_parser = clap::value_parser!(u8).range(1..=3))]
    proto: Option<u8>,
    /// With -A: milliseconds between clock-sync rounds with the guests (also one
    /// before and one at the end); 0: only those two; -1: no sync, guest
    /// timestamps stay on the guest's clock.
    #[arg(long = "tsync-interval", value_name = "MS", default_value_t = 1000,
          allow_negative_numbers = true,
          value_parser = clap::value_parser!(i64).range(-1..))]
    tsync_interval: i64,
    /// Show what is being done.
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// Show debugging detail.
    #[arg(long)]
    pub debug: bool,
    /// Command to trace; without one, record until Ctrl-C. Everything from the
    /// first word that is not an option (or after `--`) is the command's, so an
    /// unknown option before it is refused as an option, as trace-cmd does.
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    command: Vec<String>,
    /// Guests given with `-A` (split off the command line before parsing).
    #[arg(skip)]
    pub guests: Vec<GuestSpec>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Blocks SIGINT/SIGTERM in this and every later thread and turns them into a flag
/// from a dedicated thread, so no work is cut short inside a signal handler.
/// A blocked mask survives exec, so the traced command is started through
/// `trace-cmd __exec` ([`exec_unblocked`]), which unblocks them first.
fn watch_signals() -> Result<(), String> {
    crate::signals::on_stop(|| INTERRUPTED.store(true, Ordering::SeqCst))
}

/// `trace-cmd __exec COMMAND...`: unblocks SIGINT/SIGTERM and replaces itself with
/// the command, so the command sees Ctrl-C as usual. Returns only on failure.
pub fn exec_unblocked(command: &[String]) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    crate::signals::stop_signals()
        .thread_unblock()
        .map_err(|e| format!("cannot unblock signals: {e}"))?;
    let (prog, rest) = command
        .split_first()
        .ok_or_else(|| "no command given".to_string())?;
    let err = Command::new(prog).args(rest).exec();
    Err(format!("cannot run {prog:?}: {err}"))
}

/// Whether `prog` names an executable file, directly or through `$PATH`.
fn program_exists(prog: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if prog.contains('/') {
        return is_exec(std::path::Path::new(prog));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| is_exec(&d.join(prog))))
}

/// Runs `trace-cmd record`.
pub fn run(args: RecordArgs) -> Result<(), String> {
    watch_signals()?;
    let has_host = !args.events.is_empty() || args.tracer.is_some() || args.guests.is_empty();
    if has_host && !nix::unistd::geteuid().is_root() {
        return Err("trace-cmd record needs root: the tracefs control files are writable by root only (try sudo)".into());
    }
    let top = Instance::top().map_err(|e| e.to_string())?;
    if !top.path().join("per_cpu").is_dir() {
        return Err(NotMounted.to_string());
    }
    if args.events.is_empty() && args.tracer.is_none() && args.guests.is_empty() {
        return Err(
            "nothing to record: give events with -e (e.g. -e sched) or a tracer with -p".into(),
        );
    }
    let inst = match &args.instance {
        None => top,
        Some(name) => Instance::open(name)
            .or_else(|_| Instance::create(name))
            .map_err(|e| format!("cannot use tracing instance {name:?}: {e}"))?,
    };
    if let Some(prog) = args.command.first() {
        if !program_exists(prog) {
            return Err(format!(
                "cannot run {prog:?}: no such program (not found in PATH)"
            ));
        }
    }
    let selectors: Vec<&str> = args.events.iter().map(String::as_str).collect();
    // Resolve every selector before changing anything: a typo leaves tracefs as is.
    let events = if selectors.is_empty() {
        Vec::new()
    } else {
        inst.resolve_events(&selectors).map_err(|e| e.to_string())?
    };
    if interrupted() {
        return Err(RecordError::Interrupted.to_string());
    }
    let compression = Compression::parse(&args.compression).map_err(|e| e.to_string())?;
    if args.net.is_some() && (args.file_version != 7 || args.compression != "zstd") {
        log::warn!(
            "--file-version and --compression are ignored with -N: the listener writes the file"
        );
    }
    let sleep = Duration::from_micros(args.sleep_us);
    let mut session = match &args.net {
        Some(target) => RecordSession::to_listener(
            NetTarget {
                target: target.clone(),
                use_tcp: args.tcp,
                force: args.proto.and_then(Proto::from_number),
                timeout: tracecmd_rs::msg::default_timeout().unwrap_or(UNBOUNDED_CONNECT),
            },
            sleep,
            interrupted,
        ),
        None => {
            let writer: Box<dyn TraceWriter> = if args.file_version == 6 {
                Box::new(V6FileWriter::new(&args.output))
            } else {
                Box::new(V7FileWriter::new(&args.output, compression))
            };
            let mut s = RecordSession::to_file(writer, sleep, interrupted);
            s.set_clock_sync(tsync_config(&args, &inst));
            s.start_guests(
                &args.guests,
                &VirtPaths::new(None, None),
                tracecmd_rs::msg::default_timeout().unwrap_or(UNBOUNDED_CONNECT),
            )
            .map_err(|e| e.to_string())?;
            s
        }
    };
    // -N sends the host buffer only (guests are recorded into files).
    if has_host || args.net.is_some() {
        let setup = HostSetup {
            buffer_name: args.instance.clone().unwrap_or_default(),
            events,
            tracer: args.tracer.clone(),
            buffer_kb: args.buffer_kb,
            clock: args.clock.clone(),
            max_kb: args.max_kb.unwrap_or(0),
        };
        session.start_host(inst, setup).map_err(|e| e.to_string())?;
    }
    let mut child = match start_command(&args) {
        Ok(c) => c,
        Err(e) => return Err(session.abort(e).to_string()),
    };
    wait_for_end(&args, &mut child, &session);
    let recorded = session.finish().map_err(|e| e.to_string())?;
    if !args.quiet {
        print_summary(&recorded.host_ranges, &recorded.stats);
        for (guest, sync) in &recorded.guest_sync {
            println!("Guest {guest} clock: {sync}");
        }
    }
    Ok(())
}

/// The clock sync of `-A` guests: `--tsync-interval`, against the host buffer's
/// trace clock (`-C`, else the buffer's current one).
fn tsync_config(args: &RecordArgs, inst: &Instance) -> Option<TsyncConfig> {
    if args.guests.is_empty() || args.tsync_interval < 0 {
        return None;
    }
    let host_clock = match &args.clock {
        Some(c) => c.clone(),
        None => inst
            .trace_clock()
            .map(|c| c.0)
            .unwrap_or_else(|_| "local".into()),
    };
    Some(TsyncConfig {
        interval: (args.tsync_interval > 0)
            .then(|| Duration::from_millis(args.tsync_interval as u64)),
        host_clock,
    })
}

/// Starts the command to trace (through `__exec`), or says how to stop.
fn start_command(args: &RecordArgs) -> Result<Option<Child>, String> {
    Ok(match args.command.first() {
        Some(prog) => {
            let me = std::env::current_exe()
                .map_err(|e| format!("cannot find the trace-cmd executable: {e}"))?;
            Some(
                Command::new(me)
                    .arg("__exec")
                    .arg("--")
                    .args(&args.command)
                    .spawn()
                    .map_err(|e| format!("cannot run {prog:?}: {e}"))?,
            )
        }
        None => {
            if !args.quiet {
                eprintln!("Hit Ctrl^C to stop recording");
            }
            None
        }
    })
}

/// How often the recording's end is checked for what nothing wakes the main thread
/// for (a recorder that stopped, a listener that went away, the live line). The
/// command's exit (a pidfd) and Ctrl-C (the signal ends `poll`) wake it at once.
/// Polling every 20 ms put about 250 wake-ups, and 1000 sched events of our own, into
/// a 5 s `record -e sched` of an idle machine.
const END_CHECK: u16 = 250;

/// A pidfd of process `pid` (Linux 5.3 and later): readable once it has exited.
fn pidfd_of(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: on success the fd is new and ours alone.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until the command exits, Ctrl-C, a recorder stops on its own (an error),
/// or the receiving end went away (network recording).
fn wait_for_end(args: &RecordArgs, child: &mut Option<Child>, session: &RecordSession) {
    let live = !args.quiet && session.recorded_bytes().is_some() && std::io::stderr().is_terminal();
    let mut last = Instant::now();
    // Ends the command as Ctrl-C would (on a terminal it got the signal too).
    let interrupt_child = |child: &mut Option<Child>| {
        if let Some(c) = child {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, Signal::SIGINT);
        }
    };
    let exited = child.as_ref().and_then(|c| pidfd_of(c.id()));
    // Set when the recording ended on an error while the command still ran.
    let mut ended_early = false;
    loop {
        if interrupted() {
            interrupt_child(child);
            break;
        }
        if let Some(c) = child {
            if !matches!(c.try_wait(), Ok(None)) {
                break;
            }
        }
        if session.finished_early() {
            // A recorder only stops on its own on an error (e.g. disk full):
            // the recording is over, so is the command.
            log::warn!("a recorder stopped early; ending the recording");
            interrupt_child(child);
            ended_early = true;
            break;
        }
        if session.peer_gone() {
            log::warn!("the listener closed the connection; ending the recording");
            interrupt_child(child);
            ended_early = true;
            break;
        }
        if live && last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            let bytes = session.recorded_bytes().unwrap_or(0);
            eprint!("\r{} KiB recorded   ", bytes / 1024);
        }
        let mut fds: Vec<PollFd> = exited
            .iter()
            .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        // Without a pidfd (an old kernel), the command's exit is seen at the next check.
        let _ = poll(&mut fds, PollTimeout::from(END_CHECK));
    }
    if live {
        eprintln!();
    }
    if let Some(c) = child {
        if ended_early {
            end_command(c);
        }
        if let Err(e) = c.wait() {
            log::warn!("waiting for the command failed: {e}");
        }
    }
}

/// How long a command gets to exit after each signal once the recording has ended
/// on an error.
const END_GRACE: Duration = Duration::from_secs(3);

/// The recording ended on an error and the command got SIGINT. A command that
/// ignores it (one started from a background job inherits SIGINT ignored, or one
/// that catches it) would hold the recording's end for as long as it runs: after
/// [`END_GRACE`] it gets SIGTERM, then SIGKILL, each said in a warning.
fn end_command(c: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(c.id() as i32);
    for sig in [Signal::SIGTERM, Signal::SIGKILL] {
        let until = Instant::now() + END_GRACE;
        while Instant::now() < until {
            if !matches!(c.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        log::warn!(
            "the command (pid {pid}) is still running {} s after {}; sending {sig}",
            END_GRACE.as_secs(),
            if sig == Signal::SIGTERM {
                "SIGINT"
            } else {
                "SIGTERM"
            }
        );
        let _ = nix::sys::signal::kill(pid, sig);
    }
}

/// Per-CPU summary as trace-cmd prints it.
fn print_summary(ranges: &[CpuRange], stats: &[CpuStats]) {
    for (cpu, r) in ranges.iter().enumerate() {
        println!("CPU{cpu} data recorded at offset=0x{:x}", r.offset);
        println!("    {} bytes in size", r.size);
    }
    for (cpu, s) in stats.iter().enumerate() {
        println!("CPU: {cpu}");
        println!("entries: {}", s.entries);
        println!("overrun: {}", s.overrun);
        println!("commit overrun: {}", s.commit_overrun);
        println!("bytes: {}", s.bytes);
        println!("oldest event ts: {}", s.oldest_event_ts);
        println!("now ts: {}", s.now_ts);
        println!("dropped events: {}", s.dropped_events);
        println!("read events: {}", s.read_events);
        println!();
    }
}
