//! `trace-cmd record -N host:port [-t] [--proto N]` (issue 5 item 2): the same
//! tracefs setup as a local recording, but the metadata goes to a listener and each
//! CPU's recorder writes `trace_pipe_raw` pages into a connected UDP socket (one page
//! per datagram) or TCP socket (spliced). Like trace-cmd, it records the top-level
//! buffer, and puts tracefs back as it was, also on errors and Ctrl-C.

use std::time::Duration;

use tracecmd_rs::msg;
use tracecmd_rs::netrecord::{NetParams, NetSession, Proto};
use tracecmd_rs::output::{standard_options, Metadata};
use tracecmd_rs::recorder::{CpuRecorder, Input, RecordFlags};
use tracecmd_rs::tracefs::{self, EventName, Instance, TracefsState};

use super::{
    check_interrupt, prepare_tracefs, print_summary, start_command, wait_for_end, RecordArgs,
    Running,
};

/// Largest sub-buffer one UDP datagram carries (trace-cmd's `UDP_MAX_PACKET` bound).
const MAX_UDP_PAGE: usize = 65515;

/// Longest wait for connecting when the message timeout is switched off.
const UNBOUNDED_CONNECT: Duration = Duration::from_secs(60);

fn system_page_size() -> u32 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => n as u32,
        _ => 4096,
    }
}

/// Runs a network recording of `events` on `inst` (the top-level buffer).
pub(super) fn run(
    args: &RecordArgs,
    inst: &Instance,
    events: &[EventName],
    cpus: usize,
    target: &str,
) -> Result<(), String> {
    let cpus32 = u32::try_from(cpus).map_err(|_| "too many CPUs".to_string())?;
    let params = NetParams {
        cpus: cpus32,
        page_size: system_page_size(),
        use_tcp: args.tcp,
        force: args.proto.and_then(Proto::from_number),
        timeout: msg::default_timeout().unwrap_or(UNBOUNDED_CONNECT),
    };
    let mut guard = TracefsState::new(inst);
    let res = record_to(args, inst, &mut guard, events, target, &params);
    let restored = guard.restore();
    let stats = res?;
    restored.map_err(|e| format!("recording done, but restoring tracefs failed: {e}"))?;
    if !args.quiet {
        print_summary(&[], &stats);
    }
    Ok(())
}

fn record_to(
    args: &RecordArgs,
    inst: &Instance,
    guard: &mut TracefsState,
    events: &[EventName],
    target: &str,
    params: &NetParams,
) -> Result<Vec<tracefs::CpuStats>, String> {
    let s = |e: tracefs::TracefsError| e.to_string();
    prepare_tracefs(args, guard, events)?;

    // Everything the metadata needs is read before connecting: the listener waits
    // only a few seconds for each message.
    let meta = Metadata::from_tracefs(inst, events).map_err(|e| e.to_string())?;
    let clock_text = inst.trace_clock_text().map_err(s)?;
    let options = standard_options(&clock_text, &[]);
    // The recorders send whole ring-buffer sub-buffers (one per UDP datagram), so
    // the listener must read in that unit; it is the page size unless the kernel
    // was told otherwise (buffer_subbuf_size_kb).
    let mut params = NetParams {
        page_size: meta.page_size,
        ..params.clone()
    };
    if !params.use_tcp && meta.page_size as usize > MAX_UDP_PAGE {
        log::info!(
            "{}-byte sub-buffers do not fit a UDP datagram; sending the data over TCP",
            meta.page_size
        );
        params.use_tcp = true;
    }
    let params = &params;
    let session = NetSession::connect(target, params).map_err(|e| e.to_string())?;
    if session.proto() != Proto::V3 && params.force.is_none() {
        log::warn!(
            "recording to {} with protocol {}",
            session.label(),
            session.proto()
        );
    }
    session
        .send_metadata(&meta, &options)
        .map_err(|e| e.to_string())?;
    check_interrupt()?;

    let flags = RecordFlags {
        // UDP: one page per datagram, which only the read/write path gives.
        nosplice: !params.use_tcp,
        ..RecordFlags::default()
    };
    let sleep = Duration::from_micros(args.sleep_us);
    let mut running = Running::new();
    for cpu in 0..params.cpus as usize {
        let sock = session.connect_data(cpu).map_err(|e| e.to_string())?;
        let input = Input::Buffer {
            dir: inst.path().to_path_buf(),
            cpu,
        };
        let rec = CpuRecorder::new(input, tracecmd_rs::recorder::Output::Stream(sock), flags)
            .map_err(|e| format!("cannot start the CPU {cpu} recorder: {e}"))?;
        running.spawn(cpu, rec, sleep)?;
    }
    guard.set_tracing_on(true).map_err(s)?;
    log::info!(
        "recording {} events on {} CPUs to {} ({})",
        events.len(),
        params.cpus,
        session.label(),
        session.proto()
    );
    let mut child = start_command(args)?;
    wait_for_end(args, &mut child, &running, &[], &|| session.listener_gone());
    inst.set_tracing_on(false).map_err(s)?;
    let flushed = running.finish();
    if session.listener_gone() {
        return Err(format!(
            "the listener at {} closed the connection during the recording; \
             its file holds only what arrived before",
            session.label()
        ));
    }
    // CLOSE even when a recorder failed: the listener then keeps what arrived.
    let closed = session.finish().map_err(|e| e.to_string());
    flushed?;
    closed?;
    (0..params.cpus as usize)
        .map(|c| inst.cpu_stats(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(s)
}
