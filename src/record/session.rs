//! [`RecordSession`]: one recording, from tracefs preparation to the finished
//! trace.dat (or the CLOSE sent to a listener).

use std::time::Duration;

use super::guest::{finish_guests, GuestResult};
use super::remote::AgentAddr;
use super::tsync::{
    Exchange, GuestClock, GuestSync, TsyncConfig, TsyncSummary, OPTION_GUEST_CLOCK,
};
use super::{
    Assembly, BufferKey, CpuRecorderSet, FileBuffer, GuestIssue, GuestLink, GuestProblem,
    GuestRecording, GuestSpec, RecordError, TraceWriter,
};
use crate::netrecord::{NetParams, NetSession, Proto};
use crate::output::merge::merge_guest as merge_guest_meta;
use crate::output::{
    bracketed_clock, page_size_of, standard_options, CpuRange, DatOption, Metadata,
};
use crate::recorder::{CpuRecorder, Input, Output, RecordFlags};
use crate::tracefs::{self, CpuStats, EventName, Instance, RecordingSetup, TracefsState};
use crate::virt::VirtPaths;

/// Largest sub-buffer one UDP datagram carries (trace-cmd's `UDP_MAX_PACKET` bound).
const MAX_UDP_PAGE: usize = 65515;

/// What to record on the host (`-e`, `-p`, `-b`, `-C`, `-m`).
#[derive(Debug, Clone, Default)]
pub struct HostSetup {
    /// The buffer's name in the file: `""` for the top-level buffer, else the
    /// instance's name (`-B`).
    pub buffer_name: String,
    /// Exactly these events are enabled (sorted, as `resolve_events` gives them).
    pub events: Vec<EventName>,
    /// Tracer plugin.
    pub tracer: Option<String>,
    /// Per-CPU ring-buffer size in KiB.
    pub buffer_kb: Option<u64>,
    /// Trace clock.
    pub clock: Option<String>,
    /// Keep about the newest this many KiB per CPU (0: everything).
    pub max_kb: u32,
}

/// The listener of `record -N` and how to talk to it.
#[derive(Debug, Clone)]
pub struct NetTarget {
    /// `host:port`.
    pub target: String,
    /// Per-CPU data over TCP instead of UDP.
    pub use_tcp: bool,
    /// Only this protocol; `None` negotiates down from V3.
    pub force: Option<Proto>,
    /// Longest wait for any answer of the listener, and for connecting.
    pub timeout: Duration,
}

#[derive(Debug)]
enum Sink {
    File(Box<dyn TraceWriter>),
    Net(NetTarget, Option<NetSession>),
}

/// The host's part of a running recording. Field order is drop order: recorders
/// stop before tracefs is put back and before a created instance goes.
#[derive(Debug)]
struct HostRecording {
    recorders: CpuRecorderSet,
    guard: TracefsState,
    inst: Instance,
    setup: HostSetup,
}

/// What the host recording read at its end.
struct HostResult {
    /// The buffer's name in the file (`""`: the top buffer).
    name: String,
    stats: Vec<CpuStats>,
    clock_text: String,
    clock: String,
    meta: Metadata,
}

/// What a finished recording reports.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Where the host buffer's CPU data landed in the file (empty for a listener).
    pub host_ranges: Vec<CpuRange>,
    /// The host buffer's per-CPU stats at the end.
    pub stats: Vec<CpuStats>,
    /// Per guest whose clock was synced: its name and the sync's figures.
    pub guest_clocks: Vec<(String, TsyncSummary)>,
    /// Per guest, in order: its name and the clock alignment it got.
    pub guest_sync: Vec<(String, GuestSync)>,
}

/// One recording; see the module documentation of [`crate::record`].
#[derive(Debug)]
pub struct RecordSession {
    // Field order is drop order: recorders stop before the sink goes.
    host: Option<HostRecording>,
    guests: Vec<GuestRecording>,
    sink: Sink,
    sleep: Duration,
    interrupted: fn() -> bool,
    tsync: Option<TsyncConfig>,
}

impl RecordSession {
    /// A recording into the trace.dat that `writer` assembles. `sleep` is the
    /// recorders' back-off (`-s`); `interrupted` says whether the user asked to stop
    /// (checked while tracefs is being prepared).
    pub fn to_file(
        writer: Box<dyn TraceWriter>,
        sleep: Duration,
        interrupted: fn() -> bool,
    ) -> RecordSession {
        RecordSession {
            host: None,
            guests: Vec::new(),
            sink: Sink::File(writer),
            sleep,
            interrupted,
            tsync: None,
        }
    }

    /// A recording streamed to a listener (`record -N`); connected in
    /// [`RecordSession::start_host`], once the metadata is known.
    pub fn to_listener(target: NetTarget, sleep: Duration, interrupted: fn() -> bool) -> Self {
        RecordSession {
            host: None,
            guests: Vec::new(),
            sink: Sink::Net(target, None),
            sleep,
            interrupted,
            tsync: None,
        }
    }

    /// Syncs the clocks of the guests started after this (`record -A`,
    /// `--tsync-interval`); `None` (the default) records the raw guest clock.
    pub fn set_clock_sync(&mut self, cfg: Option<TsyncConfig>) {
        self.tsync = cfg;
    }

    fn check_interrupt(&self) -> Result<(), RecordError> {
        if (self.interrupted)() {
            Err(RecordError::Interrupted)
        } else {
            Ok(())
        }
    }

    /// Connects to every guest's agent and starts recording its CPUs: a 3.x agent
    /// directly (its data connections, each message and connection bounded by
    /// `timeout`), a virt-server guest through the listener at `paths` (its FIFOs).
    pub fn start_guests(
        &mut self,
        specs: &[GuestSpec],
        paths: &VirtPaths,
        timeout: Duration,
    ) -> Result<(), RecordError> {
        for g in specs {
            if let Some(addr) = g.agent {
                self.add_agent(&g.name, addr, &g.argv, timeout)?;
                continue;
            }
            let link = GuestLink::from_listener(paths, &g.name, g.pid).map_err(|source| {
                RecordError::Guest {
                    guest: g.name.clone(),
                    source,
                }
            })?;
            self.add_guest(&g.name, link, &g.argv)?;
        }
        Ok(())
    }

    /// Starts recording guest `name` through `link` (see [`GuestLink`]), with the
    /// record options `argv` for its agent.
    pub fn add_guest(
        &mut self,
        name: &str,
        link: GuestLink,
        argv: &[String],
    ) -> Result<(), RecordError> {
        let Sink::File(writer) = &mut self.sink else {
            return Err(RecordError::GuestsOverNetwork);
        };
        let g = GuestRecording::start(
            name,
            link,
            argv,
            writer.as_mut(),
            self.sleep,
            self.tsync.as_ref(),
        )?;
        self.guests.push(g);
        Ok(())
    }

    /// Starts recording guest `name` from the 3.x agent at `addr`, with the record
    /// options `argv` for it.
    pub fn add_agent(
        &mut self,
        name: &str,
        addr: AgentAddr,
        argv: &[String],
        timeout: Duration,
    ) -> Result<(), RecordError> {
        let Sink::File(writer) = &mut self.sink else {
            return Err(RecordError::GuestsOverNetwork);
        };
        let g = GuestRecording::start_agent(
            name,
            addr,
            argv,
            writer.as_mut(),
            self.sleep,
            self.tsync.as_ref(),
            timeout,
        )?;
        self.guests.push(g);
        Ok(())
    }

    /// Prepares `inst` for the recording (tracing off, the setup, exactly the
    /// events, an empty buffer), starts one recorder per CPU and switches tracing
    /// on. For a listener, it first sends the metadata. On an error tracefs is put
    /// back; for a file the error says that nothing was written.
    pub fn start_host(&mut self, inst: Instance, setup: HostSetup) -> Result<(), RecordError> {
        let mut host = HostRecording {
            recorders: CpuRecorderSet::new("record"),
            guard: TracefsState::new(&inst),
            inst,
            setup,
        };
        match self.start_host_on(&mut host) {
            Ok(()) => {
                self.host = Some(host);
                Ok(())
            }
            Err(e) => {
                // Recorders stop, then tracefs is restored, before the error is told.
                drop(host);
                Err(self.not_recorded(e))
            }
        }
    }

    fn not_recorded(&self, cause: RecordError) -> RecordError {
        match &self.sink {
            Sink::File(w) => RecordError::NotRecorded {
                cause: Box::new(cause),
                output: w.path().to_path_buf(),
            },
            Sink::Net(..) => cause,
        }
    }

    fn start_host_on(&mut self, host: &mut HostRecording) -> Result<(), RecordError> {
        let cpus = tracefs::cpu_count(&host.inst).map_err(RecordError::CpuCount)?;
        let s = &host.setup;
        let rs = RecordingSetup {
            tracer: s.tracer.as_deref(),
            buffer_kb: s.buffer_kb,
            clock: s.clock.as_deref(),
        };
        host.guard.prepare_recording(&rs, &s.events)?;
        self.check_interrupt()?;
        let dir = host.inst.path().to_path_buf();
        let input = |cpu| Input::Buffer {
            dir: dir.clone(),
            cpu,
        };
        let start_err = |cpu| move |source| RecordError::StartRecorder { cpu, source };
        match &mut self.sink {
            Sink::File(writer) => {
                writer.host_buffer(&s.buffer_name, page_size_of(&host.inst.header_page()?));
                for cpu in 0..cpus {
                    let out = writer
                        .cpu_output(&BufferKey::Host, cpu, s.max_kb)
                        .map_err(start_err(cpu))?;
                    let rec = CpuRecorder::new(input(cpu), out, RecordFlags::default())
                        .map_err(start_err(cpu))?;
                    host.recorders.start(cpu, rec, self.sleep)?;
                }
                host.guard.set_tracing_on(true)?;
                log::info!("recording {} on {cpus} CPUs", event_types(&s.events));
            }
            Sink::Net(target, session) => {
                let (net, use_tcp) = connect_listener(&host.inst, &s.events, target, cpus)?;
                if (self.interrupted)() {
                    return Err(RecordError::Interrupted);
                }
                let flags = RecordFlags {
                    // UDP: one page per datagram, which only the read/write path gives.
                    nosplice: !use_tcp,
                    ..RecordFlags::default()
                };
                let net = session.insert(net);
                for cpu in 0..cpus {
                    let sock = net.connect_data(cpu)?;
                    let rec = CpuRecorder::new(input(cpu), Output::Stream(sock), flags)
                        .map_err(start_err(cpu))?;
                    host.recorders.start(cpu, rec, self.sleep)?;
                }
                host.guard.set_tracing_on(true)?;
                log::info!(
                    "recording {} on {cpus} CPUs to {} ({})",
                    event_types(&s.events),
                    net.label(),
                    net.proto()
                );
            }
        }
        Ok(())
    }

    /// Whether a host recorder stopped on its own (only an error does that).
    pub fn finished_early(&self) -> bool {
        self.host
            .as_ref()
            .is_some_and(|h| h.recorders.finished_early())
    }

    /// Whether the listener went away (`record -N`).
    pub fn peer_gone(&self) -> bool {
        matches!(&self.sink, Sink::Net(_, Some(s)) if s.listener_gone())
    }

    /// Bytes of host data recorded so far, where that is known (a file recording
    /// with a host part).
    pub fn recorded_bytes(&self) -> Option<u64> {
        match (&self.sink, &self.host) {
            (Sink::File(w), Some(_)) => Some(w.recorded_bytes(&BufferKey::Host)),
            _ => None,
        }
    }

    /// Ends the recording because the caller's part failed (e.g. the traced command
    /// could not be started): everything is stopped and put back, nothing written.
    pub fn abort(self, cause: String) -> RecordError {
        let e = RecordError::Caller(cause);
        let has_host = self.host.is_some();
        let e = if has_host { self.not_recorded(e) } else { e };
        drop(self);
        e
    }

    /// Stops the recording: tracing off, recorders flushed and joined, tracefs put
    /// back, guests stopped; then the file is assembled (or the listener gets its
    /// CLOSE).
    pub fn finish(self) -> Result<Recorded, RecordError> {
        let RecordSession {
            host, guests, sink, ..
        } = self;
        match sink {
            Sink::Net(_, session) => finish_net(host, session),
            Sink::File(writer) => {
                let host = match host.map(finish_host) {
                    Some(Err(e @ RecordError::Restore(_))) => return Err(e),
                    Some(Err(e)) => {
                        let output = writer.path().to_path_buf();
                        return Err(RecordError::NotRecorded {
                            cause: Box::new(writer.abandon(e)),
                            output,
                        });
                    }
                    Some(Ok(h)) => Some(h),
                    None => None,
                };
                let guests = finish_guests(guests, writer.as_ref());
                assemble(writer, host, guests)
            }
        }
    }
}

/// Reads the metadata (before connecting: the listener waits only a few seconds
/// for each message), connects and sends it. Returns the session and whether the
/// data goes over TCP.
fn connect_listener(
    inst: &Instance,
    events: &[EventName],
    target: &NetTarget,
    cpus: usize,
) -> Result<(NetSession, bool), RecordError> {
    let meta = Metadata::from_tracefs(inst, events)?;
    let options = standard_options(&inst.trace_clock_text()?, &[]);
    // The recorders send whole ring-buffer sub-buffers (one per UDP datagram), so
    // the listener must read in that unit; it is the page size unless the kernel
    // was told otherwise (buffer_subbuf_size_kb).
    let mut params = NetParams {
        cpus: u32::try_from(cpus).map_err(|_| RecordError::TooManyCpus)?,
        page_size: meta.page_size,
        use_tcp: target.use_tcp,
        force: target.force,
        timeout: target.timeout,
    };
    if !params.use_tcp && meta.page_size as usize > MAX_UDP_PAGE {
        log::info!(
            "{}-byte sub-buffers do not fit a UDP datagram; sending the data over TCP",
            meta.page_size
        );
        params.use_tcp = true;
    }
    let session = NetSession::connect(&target.target, &params)?;
    if session.proto() != Proto::V3 && params.force.is_none() {
        log::warn!(
            "recording to {} with protocol {}",
            session.label(),
            session.proto()
        );
    }
    session.send_metadata(&meta, &options)?;
    Ok((session, params.use_tcp))
}

/// What a recording of `events` records, in words that say what they count:
/// "26 event types of 1 system" (each selector expands to event types).
pub fn event_types(events: &[EventName]) -> String {
    let mut systems: Vec<&str> = events.iter().map(|e| e.system.as_str()).collect();
    systems.sort_unstable();
    systems.dedup();
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    format!(
        "{} of {}",
        plural(events.len(), "event type", "event types"),
        plural(systems.len(), "system", "systems")
    )
}

fn read_stats(inst: &Instance, cpus: usize) -> Result<Vec<CpuStats>, RecordError> {
    Ok((0..cpus)
        .map(|c| inst.cpu_stats(c))
        .collect::<Result<Vec<_>, _>>()?)
}

/// Tracing off, recorders finished, then what the file needs from tracefs; tracefs
/// is put back either way.
fn finish_host(h: HostRecording) -> Result<HostResult, RecordError> {
    let HostRecording {
        recorders,
        mut guard,
        inst,
        setup,
    } = h;
    let res = (|| -> Result<HostResult, RecordError> {
        inst.set_tracing_on(false)?;
        let cpus = recorders.len();
        recorders.finish()?;
        let stats = read_stats(&inst, cpus)?;
        let clock_text = inst.trace_clock_text()?;
        let clock = tracefs::parse_trace_clock(&clock_text)
            .map(|c| c.0)
            .unwrap_or_else(|| "local".into());
        let meta = Metadata::from_tracefs(&inst, &setup.events)?;
        Ok(HostResult {
            name: setup.buffer_name.clone(),
            stats,
            clock_text,
            clock,
            meta,
        })
    })();
    let restored = guard.restore();
    let res = res?;
    restored.map_err(RecordError::Restore)?;
    Ok(res)
}

fn finish_net(
    host: Option<HostRecording>,
    session: Option<NetSession>,
) -> Result<Recorded, RecordError> {
    let (Some(h), Some(session)) = (host, session) else {
        return Err(RecordError::NothingRecorded);
    };
    let HostRecording {
        recorders,
        mut guard,
        inst,
        ..
    } = h;
    let res = (|| -> Result<Vec<CpuStats>, RecordError> {
        inst.set_tracing_on(false)?;
        let cpus = recorders.len();
        let flushed = recorders.finish();
        if session.listener_gone() {
            return Err(RecordError::ListenerGone(session.label().to_string()));
        }
        // CLOSE even when a recorder failed: the listener then keeps what arrived.
        let closed = session.finish();
        flushed?;
        closed?;
        read_stats(&inst, cpus)
    })();
    let restored = guard.restore();
    let stats = res?;
    restored.map_err(RecordError::Restore)?;
    Ok(Recorded {
        host_ranges: Vec::new(),
        stats,
        guest_clocks: Vec::new(),
        guest_sync: Vec::new(),
    })
}

/// Builds the file's layout from the host's and the guests' results (guest formats
/// merged into the host's, clashing event IDs moved) and has the writer write it.
fn assemble(
    mut writer: Box<dyn TraceWriter>,
    host: Option<HostResult>,
    guests: Vec<GuestResult>,
) -> Result<Recorded, RecordError> {
    let has_host = host.is_some();
    // Without a host, the guest whose formats the file starts from.
    let mut base = None;
    let (mut rec, host_cpus) = match host {
        Some(r) => {
            let cpus = r.stats.len();
            (r, cpus)
        }
        None => {
            if guests.is_empty() {
                return Err(RecordError::NothingRecorded);
            }
            // The file's formats start from the first guest whose metadata was read.
            let Some(first) = guests.iter().find(|g| g.meta.page_size != 0) else {
                return Err(RecordError::NoUsableGuest(
                    guests
                        .into_iter()
                        .filter_map(|g| {
                            g.problem.map(|problem| GuestIssue {
                                guest: g.name,
                                problem,
                            })
                        })
                        .collect(),
                ));
            };
            base = Some(first.name.clone());
            (
                HostResult {
                    name: String::new(),
                    stats: vec![],
                    clock_text: "[local]".into(),
                    clock: "local".into(),
                    meta: first.meta.clone(),
                },
                0,
            )
        }
    };
    let name = rec.name.clone();
    let trailing = Some(bracketed_clock(&rec.clock));
    let stats_texts: Vec<String> = rec.stats.iter().map(|s| s.text.clone()).collect();
    let host_data = has_host.then_some(BufferKey::Host);
    let (options, top, mut named) = if name.is_empty() {
        let top = FileBuffer {
            name: String::new(),
            trailing_clock: trailing,
            data: host_data,
        };
        (standard_options(&rec.clock_text, &stats_texts), top, vec![])
    } else {
        let mut options = standard_options(&rec.clock_text, &[]);
        options.push(DatOption::buffer_stat_header(&name));
        options.extend(
            stats_texts
                .iter()
                .enumerate()
                .map(|(i, s)| DatOption::cpu_stat(i, s)),
        );
        let top = FileBuffer {
            name: String::new(),
            trailing_clock: trailing.clone(),
            data: None,
        };
        let named = FileBuffer {
            name: name.clone(),
            trailing_clock: trailing,
            data: host_data,
        };
        (options, top, vec![named])
    };
    let mut issues = Vec::new();
    let mut guest_clocks = Vec::new();
    let mut guest_sync = Vec::new();
    let mut options = options;
    let mut cpus = host_cpus;
    for g in guests {
        let issue = |problem| GuestIssue {
            guest: g.name.clone(),
            problem,
        };
        if g.meta.page_size != 0 && g.meta.page_size != rec.meta.page_size {
            issues.push(issue(GuestProblem::PageSize {
                guest: g.meta.page_size,
                file: rec.meta.page_size,
            }));
            continue;
        }
        let key = BufferKey::Guest(g.name.clone());
        if base.as_ref() != Some(&g.name) {
            if let Err(e) = merge_guest(&mut rec.meta, &g, &key, writer.as_mut()) {
                issues.push(issue(GuestProblem::Remap(e)));
            }
        }
        let sync = match &g.clock {
            Some(clock) => match shift_guest(&g, clock, &key, writer.as_mut()) {
                Ok((option, summary)) => {
                    options.push(option);
                    guest_clocks.push((g.name.clone(), summary.clone()));
                    match clock.exchange {
                        Exchange::Virt => GuestSync::Synced(summary),
                        Exchange::Ptp => GuestSync::SyncedPtp(summary),
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    issues.push(issue(GuestProblem::ClockShift(e)));
                    GuestSync::Failed(format!("its timestamps could not be moved: {text}"))
                }
            },
            None => g.unsynced.clone(),
        };
        guest_sync.push((g.name.clone(), sync));
        cpus = cpus.max(g.cpus);
        named.push(FileBuffer {
            name: g.name.clone(),
            // The clock the guest recorded with, when its sync told us (a
            // known name only: it came from the guest), else trace-cmd's default.
            trailing_clock: Some(bracketed_clock(
                g.clock
                    .as_ref()
                    .map(|c| c.guest_clock.as_str())
                    .filter(|c| super::tsync::is_ns_clock(c))
                    .unwrap_or("local"),
            )),
            data: Some(key),
        });
        if let Some(p) = g.problem {
            issues.push(GuestIssue {
                guest: g.name,
                problem: p,
            });
        }
    }
    let path = writer.path().to_path_buf();
    let assembly = Assembly {
        meta: rec.meta,
        cpus: u32::try_from(cpus).map_err(|_| RecordError::TooManyCpus)?,
        options,
        top,
        named,
    };
    let ranges = writer.finish(&assembly)?;
    if !issues.is_empty() {
        return Err(RecordError::GuestsIncomplete { path, issues });
    }
    Ok(Recorded {
        host_ranges: ranges
            .get(usize::from(!name.is_empty()))
            .cloned()
            .unwrap_or_default(),
        stats: rec.stats,
        guest_clocks,
        guest_sync,
    })
}

/// Moves a synced guest's recorded pages onto the host's clock; returns the
/// option that keeps the correction and the summary's figures.
fn shift_guest(
    g: &GuestResult,
    clock: &GuestClock,
    key: &BufferKey,
    writer: &mut dyn TraceWriter,
) -> Result<(DatOption, TsyncSummary), super::BoxError> {
    let c = &clock.correction;
    let summary = c.summary().ok_or("no clock sync round succeeded")?;
    if let Some(e) = &clock.failed {
        log::warn!(
            "guest {}: a clock sync round failed ({e}); the rounds before it are used",
            g.name
        );
    }
    let skipped = writer.shift_timestamps(key, &g.meta, c)?;
    if skipped > 0 {
        log::warn!(
            "guest {}: {skipped} pages could not be read and keep the guest's clock",
            g.name
        );
    }
    log::info!(
        "guest {}: clock {} → host {}: {summary}",
        g.name,
        clock.guest_clock,
        clock.host_clock
    );
    let mut text = c
        .option_text(&g.name, &clock.guest_clock, &clock.host_clock)
        .into_bytes();
    text.push(0);
    Ok((
        DatOption {
            id: OPTION_GUEST_CLOCK,
            data: text,
        },
        summary,
    ))
}

/// Merges a guest's metadata into the file's `meta` (formats, symbols, process
/// names) and rewrites its recorded pages to match: events whose IDs clash with the
/// host's move to free IDs, kernel addresses into the guest's symbol window.
fn merge_guest(
    meta: &mut Metadata,
    g: &GuestResult,
    key: &BufferKey,
    writer: &mut dyn TraceWriter,
) -> Result<(), super::BoxError> {
    let m = merge_guest_meta(meta, &g.meta);
    if m.lost > 0 {
        log::warn!(
            "guest {}: {} events found no free event ID; report cannot decode them",
            g.name,
            m.lost
        );
    }
    if m.cmdline_clashes > 0 {
        log::info!(
            "guest {}: {} of its pids are the host's too; report names those after the host's process",
            g.name,
            m.cmdline_clashes
        );
    }
    match &m.rewrite.symbols {
        Some(s) => log::info!(
            "guest {}: its kernel symbols are at +{:#x} in the file's kallsyms",
            g.name,
            s.delta
        ),
        None if !g.meta.kallsyms.is_empty() && g.meta.kallsyms != meta.kallsyms => log::warn!(
            "guest {}: its kernel symbols could not be added; report names its functions after the host's",
            g.name
        ),
        None => {}
    }
    if m.rewrite.is_empty() {
        return Ok(());
    }
    let changed = writer.remap_event_ids(key, &g.meta, &m.rewrite)?;
    log::info!(
        "guest {}: {} event types moved to free IDs; {changed} records rewritten",
        g.name,
        m.rewrite.ids.len()
    );
    Ok(())
}

#[cfg(test)]
mod event_words {
    use super::*;

    #[test]
    fn counts_say_what_they_count() {
        let ev = |s: &str, e: &str| EventName {
            system: s.into(),
            event: e.into(),
        };
        assert_eq!(event_types(&[]), "0 event types of 0 systems");
        assert_eq!(
            event_types(&[ev("sched", "sched_switch")]),
            "1 event type of 1 system"
        );
        assert_eq!(
            event_types(&[ev("sched", "a"), ev("irq", "b"), ev("sched", "c")]),
            "3 event types of 2 systems"
        );
    }
}
