//! `trace-cmd record` (issue 4 items 3–5): set up tracefs, run one recorder
//! thread per CPU into `<output>.cpuN`, then write a version 6 trace.dat and put
//! tracefs back as it was, also on errors and Ctrl-C.

use std::io::IsTerminal;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Args;

use crate::record_guest;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use tracecmd_rs::output::{
    bracketed_clock, standard_options, write_trace_dat, BufferData, CpuRange, DatOption, Metadata,
};
use tracecmd_rs::recorder::{CpuRecorder, Input, RecordFlags, RecorderError, StopHandle};
use tracecmd_rs::tracefs::{self, CpuStats, EventName, Instance, NotMounted, TracefsState};

#[path = "record_net.rs"]
mod net;

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
    /// Show what is being done.
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// Show debugging detail.
    #[arg(long)]
    pub debug: bool,
    /// Command to trace; without one, record until Ctrl-C.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<String>,
    /// Guests given with `-A` (split off the command line before parsing).
    #[arg(skip)]
    pub guests: Vec<crate::record_guest::GuestSpec>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn check_interrupt() -> Result<(), String> {
    if interrupted() {
        Err("interrupted before recording started; tracefs was restored".into())
    } else {
        Ok(())
    }
}

fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set
}

/// Blocks SIGINT/SIGTERM in this and every later thread and turns them into a flag
/// from a dedicated thread, so no work is cut short inside a signal handler.
/// A blocked mask survives exec, so the traced command is started through
/// `trace-cmd __exec` ([`exec_unblocked`]), which unblocks them first.
fn watch_signals() -> Result<(), String> {
    let set = stop_signals();
    set.thread_block()
        .map_err(|e| format!("cannot block SIGINT: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(sig) = set.wait() {
                log::info!("{sig} received: stopping");
                INTERRUPTED.store(true, Ordering::SeqCst);
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}

/// The per-CPU files `<output>.cpuN`, removed on drop.
struct CpuFiles(Vec<PathBuf>);

impl Drop for CpuFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            if let Err(e) = std::fs::remove_file(p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("could not remove {}: {e}", p.display());
                }
            }
        }
    }
}

type RecorderThread = JoinHandle<(CpuRecorder, Result<(), RecorderError>)>;

/// The running recorder threads; dropping stops and joins them.
struct Running {
    stops: Vec<StopHandle>,
    threads: Vec<RecorderThread>,
}

impl Running {
    fn new() -> Running {
        Running {
            stops: Vec::new(),
            threads: Vec::new(),
        }
    }

    /// Starts `rec` in its own thread, recording until stopped.
    fn spawn(&mut self, cpu: usize, mut rec: CpuRecorder, sleep: Duration) -> Result<(), String> {
        self.stops.push(rec.stop_handle());
        let t = std::thread::Builder::new()
            .name(format!("record-cpu{cpu}"))
            .spawn(move || {
                let res = rec.record(sleep);
                (rec, res)
            })
            .map_err(|e| format!("cannot start a recorder thread: {e}"))?;
        self.threads.push(t);
        Ok(())
    }
}

impl Running {
    fn any_finished(&self) -> bool {
        self.threads.iter().any(|t| t.is_finished())
    }

    /// Stops every recorder, waits for its final flush, merges max-kb rings.
    fn finish(mut self) -> Result<(), String> {
        for s in &self.stops {
            s.stop();
        }
        let mut first_err = None;
        for (cpu, t) in std::mem::take(&mut self.threads).into_iter().enumerate() {
            let res = match t.join() {
                Ok((rec, res)) => res.and_then(|()| rec.finish()),
                Err(_) => {
                    first_err.get_or_insert(format!("the CPU {cpu} recorder thread panicked"));
                    continue;
                }
            };
            if let Err(e) = res {
                first_err.get_or_insert(format!("recording CPU {cpu} failed: {e}"));
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for s in &self.stops {
            s.stop();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What a finished recording leaves for the file writer.
struct Recorded {
    stats: Vec<CpuStats>,
    clock_text: String,
    clock: String,
    meta: Metadata,
}

/// `trace-cmd __exec COMMAND...`: unblocks SIGINT/SIGTERM and replaces itself with
/// the command, so the command sees Ctrl-C as usual. Returns only on failure.
pub fn exec_unblocked(command: &[String]) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    stop_signals()
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
    check_interrupt()?;
    let cpus = tracefs::cpu_count(&inst).map_err(|e| format!("cannot count CPUs: {e}"))?;
    if let Some(target) = &args.net {
        return net::run(&args, &inst, &events, cpus, target);
    }
    let cpu_files = CpuFiles(
        (0..cpus)
            .map(|c| {
                let mut p = args.output.clone().into_os_string();
                p.push(format!(".cpu{c}"));
                PathBuf::from(p)
            })
            .collect(),
    );
    let mut guest_files = record_guest::GuestFiles(Vec::new());
    let guests = record_guest::start_guests(
        &args.guests,
        &args.output,
        Duration::from_micros(args.sleep_us),
        &mut guest_files,
    )?;
    let recorded = if has_host {
        let mut guard = TracefsState::new(&inst);
        let recorded = record_with(&args, &inst, &mut guard, &events, &cpu_files.0);
        let restored = guard.restore();
        let recorded = recorded.map_err(|e| {
            format!(
                "{e}; removed the per-CPU files, nothing was written to {}",
                args.output.display()
            )
        })?;
        restored.map_err(|e| format!("recording done, but restoring tracefs failed: {e}"))?;
        Some(recorded)
    } else {
        run_command_only(&args)?;
        None
    };
    let guest_results = record_guest::finish_guests(guests);
    let (recorded, cpus) = match recorded {
        Some(r) => (r, cpus),
        None => {
            let first = guest_results
                .first()
                .ok_or_else(|| "nothing was recorded".to_string())?;
            (
                Recorded {
                    stats: vec![],
                    clock_text: "[local]".into(),
                    clock: "local".into(),
                    meta: first.meta.clone(),
                },
                0,
            )
        }
    };
    let mut recorded = recorded;

    let name = args.instance.clone().unwrap_or_default();
    let files: Vec<Option<PathBuf>> = if has_host {
        cpu_files.0.iter().cloned().map(Some).collect()
    } else {
        vec![]
    };
    let trailing = Some(bracketed_clock(&recorded.clock));
    let stats_texts: Vec<String> = recorded.stats.iter().map(|s| s.text.clone()).collect();
    let (options, top_buf, mut named) = if name.is_empty() {
        let top_buf = BufferData {
            name: String::new(),
            trailing_clock: trailing,
            cpu_files: files,
        };
        (
            standard_options(&recorded.clock_text, &stats_texts),
            top_buf,
            vec![],
        )
    } else {
        let mut options = standard_options(&recorded.clock_text, &[]);
        options.push(DatOption::buffer_stat_header(&name));
        options.extend(
            stats_texts
                .iter()
                .enumerate()
                .map(|(i, s)| DatOption::cpu_stat(i, s)),
        );
        let top_buf = BufferData {
            name: String::new(),
            trailing_clock: trailing.clone(),
            cpu_files: vec![],
        };
        let named = BufferData {
            name: name.clone(),
            trailing_clock: trailing,
            cpu_files: files,
        };
        (options, top_buf, vec![named])
    };
    let mut guest_errors = Vec::new();
    let mut cpus = cpus;
    for (i, g) in guest_results.iter().enumerate() {
        if g.meta.page_size != 0 && g.meta.page_size != recorded.meta.page_size {
            guest_errors.push(format!(
                "guest {}: its page size {} differs from {}; its data is left out",
                g.name, g.meta.page_size, recorded.meta.page_size
            ));
            continue;
        }
        if has_host || i > 0 {
            if let Err(e) = record_guest::merge_guest(&mut recorded.meta, g) {
                guest_errors.push(e);
            }
        }
        cpus = cpus.max(g.files.len());
        named.push(BufferData {
            name: g.name.clone(),
            trailing_clock: Some(bracketed_clock("local")),
            cpu_files: g.files.iter().cloned().map(Some).collect(),
        });
        if let Some(e) = &g.error {
            guest_errors.push(format!("guest {}: {e}", g.name));
        }
    }
    let cpus32 = u32::try_from(cpus).map_err(|_| "too many CPUs".to_string())?;
    let ranges = match write_trace_dat(
        &args.output,
        &recorded.meta,
        cpus32,
        &options,
        &top_buf,
        &named,
    ) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&args.output);
            return Err(format!(
                "{e}; removed the incomplete {}",
                args.output.display()
            ));
        }
    };
    drop(cpu_files);
    drop(guest_files);
    if !guest_errors.is_empty() {
        return Err(format!(
            "{} was written with the host data and the guest data received so far, but: {}",
            args.output.display(),
            guest_errors.join("; ")
        ));
    }
    if !args.quiet {
        print_summary(
            ranges
                .get(usize::from(!name.is_empty()))
                .map(Vec::as_slice)
                .unwrap_or(&[]),
            &recorded.stats,
        );
    }
    Ok(())
}

/// Switches tracing off and sets up tracefs for the recording (tracer, buffer size,
/// clock, exactly the requested events), with an empty buffer. `guard` undoes it.
fn prepare_tracefs(
    args: &RecordArgs,
    guard: &mut TracefsState,
    events: &[EventName],
) -> Result<(), String> {
    let setup = tracefs::RecordingSetup {
        tracer: args.tracer.as_deref(),
        buffer_kb: args.buffer_kb,
        clock: args.clock.as_deref(),
    };
    guard
        .prepare_recording(&setup, events)
        .map_err(|e| e.to_string())?;
    check_interrupt()?;
    Ok(())
}

fn record_with(
    args: &RecordArgs,
    inst: &Instance,
    guard: &mut TracefsState,
    events: &[EventName],
    cpu_files: &[PathBuf],
) -> Result<Recorded, String> {
    let s = |e: tracefs::TracefsError| e.to_string();
    prepare_tracefs(args, guard, events)?;

    let sleep = Duration::from_micros(args.sleep_us);
    let mut running = Running::new();
    for (cpu, path) in cpu_files.iter().enumerate() {
        let input = Input::Buffer {
            dir: inst.path().to_path_buf(),
            cpu,
        };
        let rec = CpuRecorder::to_file(
            input,
            path,
            args.max_kb.unwrap_or(0),
            RecordFlags::default(),
        )
        .map_err(|e| format!("cannot start the CPU {cpu} recorder: {e}"))?;
        running.spawn(cpu, rec, sleep)?;
    }
    guard.set_tracing_on(true).map_err(s)?;
    log::info!(
        "recording {} events on {} CPUs",
        events.len(),
        cpu_files.len()
    );

    let mut child = start_command(args)?;
    wait_for_end(args, &mut child, &running, cpu_files, &|| false);
    inst.set_tracing_on(false).map_err(s)?;
    running.finish()?;

    let stats = (0..cpu_files.len())
        .map(|c| inst.cpu_stats(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(s)?;
    let clock_text = inst.trace_clock_text().map_err(s)?;
    let clock = tracefs::parse_trace_clock(&clock_text)
        .map(|c| c.0)
        .unwrap_or_else(|| "local".into());
    let meta = Metadata::from_tracefs(inst, events).map_err(|e| e.to_string())?;
    Ok(Recorded {
        stats,
        clock_text,
        clock,
        meta,
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

/// Runs the command (or waits for Ctrl-C) without tracing the host: `record -A`
/// with no host events.
fn run_command_only(args: &RecordArgs) -> Result<(), String> {
    let mut child = start_command(args)?;
    let running = Running {
        stops: Vec::new(),
        threads: Vec::new(),
    };
    wait_for_end(args, &mut child, &running, &[], &|| false);
    Ok(())
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
/// or `peer_gone` says the receiving end went away (network recording).
fn wait_for_end(
    args: &RecordArgs,
    child: &mut Option<Child>,
    running: &Running,
    cpu_files: &[PathBuf],
    peer_gone: &dyn Fn() -> bool,
) {
    let live = !args.quiet && !cpu_files.is_empty() && std::io::stderr().is_terminal();
    let mut last = Instant::now();
    // Ends the command as Ctrl-C would (on a terminal it got the signal too).
    let interrupt_child = |child: &mut Option<Child>| {
        if let Some(c) = child {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, Signal::SIGINT);
        }
    };
    let exited = child.as_ref().and_then(|c| pidfd_of(c.id()));
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
        if running.any_finished() {
            // A recorder only stops on its own on an error (e.g. disk full):
            // the recording is over, so is the command.
            log::warn!("a recorder stopped early; ending the recording");
            interrupt_child(child);
            break;
        }
        if peer_gone() {
            log::warn!("the listener closed the connection; ending the recording");
            interrupt_child(child);
            break;
        }
        if live && last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            let bytes: u64 = cpu_files
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
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
        if let Err(e) = c.wait() {
            log::warn!("waiting for the command failed: {e}");
        }
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
