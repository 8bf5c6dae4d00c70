//! `record -A GUEST[:pid] <guest options>` (issue 6 item 4): split the command line,
//! start each guest's recording through the listener, record its per-CPU FIFOs
//! into `<output>.<guest>.cpuN`, and stop it at the end.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracecmd_rs::output::Metadata;
use tracecmd_rs::recorder::{CpuRecorder, Input, RecordFlags, RecorderError, StopHandle};
use tracecmd_rs::virt::guest::{parse_guest_spec, GuestSession};
use tracecmd_rs::virt::meta::{merge_remapped, parse_metadata, remap_file_ids};
use tracecmd_rs::virt::VirtPaths;

/// One `-A GUEST[:pid]` and the options that followed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSpec {
    pub name: String,
    pub pid: u32,
    pub argv: Vec<String>,
}

/// Options of `record` that take a value (so the value is not the command).
const VALUE_OPTS: &[&str] = &[
    "-e", "-o", "-b", "-m", "-s", "-C", "-p", "-B", "-f", "-P", "-O",
];

/// Options that concern the whole run, wherever they stand.
const HOST_OPTS: &[&str] = &["-o", "-q", "-v", "--verbose", "--debug"];

/// Splits `trace-cmd record ...` into the host's arguments and the guests': the
/// options after `-A GUEST` (up to the next `-A` or the command) go to that guest,
/// except the run-wide `-o`, `-q`, `-v` and `--debug`.
pub fn split_guest_args(args: Vec<String>) -> Result<(Vec<String>, Vec<GuestSpec>), String> {
    let mut host = Vec::new();
    let mut guests: Vec<GuestSpec> = Vec::new();
    let mut it = args.into_iter().peekable();
    // argv[0] and "record"
    host.extend(it.by_ref().take(2));
    while let Some(a) = it.next() {
        if a == "-A" {
            let spec = it
                .next()
                .ok_or_else(|| "-A needs a guest name".to_string())?;
            let (name, pid) = parse_guest_spec(&spec).map_err(|e| e.to_string())?;
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
        return Err(
            "no options for the guest: give events after -A GUEST, e.g. -A vm1 -e sched".into(),
        );
    }
    Ok((host, guests))
}

type Thread = JoinHandle<(CpuRecorder, Result<(), RecorderError>)>;

/// A guest being recorded.
pub struct GuestRecording {
    session: GuestSession,
    files: Vec<PathBuf>,
    stops: Vec<StopHandle>,
    threads: Vec<Thread>,
}

/// What a finished guest leaves for the file.
pub struct GuestResult {
    pub name: String,
    pub files: Vec<PathBuf>,
    pub meta: Metadata,
    /// Why the guest's data may be incomplete.
    pub error: Option<String>,
}

impl Drop for GuestRecording {
    fn drop(&mut self) {
        for s in &self.stops {
            s.stop();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Removes per-CPU files of guests (on drop).
pub struct GuestFiles(pub Vec<PathBuf>);

impl Drop for GuestFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn cpu_file(output: &std::path::Path, guest: &str, cpu: usize) -> PathBuf {
    let mut p = output.as_os_str().to_owned();
    p.push(format!(".{guest}.cpu{cpu}"));
    PathBuf::from(p)
}

/// Connects to every guest's agent and starts recording its FIFOs.
pub fn start_guests(
    specs: &[GuestSpec],
    output: &std::path::Path,
    sleep: Duration,
    files: &mut GuestFiles,
) -> Result<Vec<GuestRecording>, String> {
    let paths = VirtPaths::new(None, None);
    let mut out = Vec::new();
    for g in specs {
        let mut session = GuestSession::start(&paths, &g.name, g.pid, &g.argv)
            .map_err(|e| format!("guest {}: {e}", g.name))?;
        let fifos: Vec<OwnedFd> = std::mem::take(&mut session.cpu_fifos);
        let mut rec = GuestRecording {
            session,
            files: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for (cpu, fd) in fifos.into_iter().enumerate() {
            let path = cpu_file(output, &g.name, cpu);
            files.0.push(path.clone());
            let mut r = CpuRecorder::to_file(Input::Fd(fd), &path, 0, RecordFlags::default())
                .map_err(|e| format!("guest {}: cannot record CPU {cpu}: {e}", g.name))?;
            rec.stops.push(r.stop_handle());
            rec.files.push(path);
            rec.threads.push(
                std::thread::Builder::new()
                    .name(format!("{}-cpu{cpu}", g.name))
                    .spawn(move || {
                        let res = r.record(sleep);
                        (r, res)
                    })
                    .map_err(|e| format!("cannot start a recorder thread: {e}"))?,
            );
        }
        log::info!("guest {}: recording {} CPUs", g.name, rec.session.cpus);
        out.push(rec);
    }
    Ok(out)
}

fn total_size(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Stops every guest (CLOSE, wait for the agent's ACK), lets the data still in
/// flight arrive, and stops the recorders.
pub fn finish_guests(guests: Vec<GuestRecording>) -> Vec<GuestResult> {
    // A slow guest (TCG under load) may need a while to flush every CPU through
    // its ports: six message timeouts (30 s by default) before calling it dead.
    let wait = tracecmd_rs::msg::default_timeout().unwrap_or(Duration::from_secs(5)) * 6;
    let mut results = Vec::new();
    // All guests stop at once; then each confirmation is awaited.
    let asked = Instant::now();
    let requested: Vec<_> = guests.iter().map(|g| g.session.request_stop()).collect();
    for (mut g, req) in guests.into_iter().zip(requested) {
        let name = g.session.name.clone();
        let mut error = req
            .and_then(|()| g.session.wait_stopped(wait))
            .err()
            .map(|e| format!("the agent did not confirm the stop ({e}); it may have died"));
        if error.is_none() {
            log::info!("guest {name}: stop confirmed after {:?}", asked.elapsed());
        }
        // The pages travel on other channels than the ACK: wait until the files
        // stop growing (at most 10 s).
        let start = Instant::now();
        let mut last = total_size(&g.files);
        let mut quiet_since = Instant::now();
        while start.elapsed() < Duration::from_secs(10)
            && quiet_since.elapsed() < Duration::from_millis(400)
        {
            std::thread::sleep(Duration::from_millis(50));
            let now = total_size(&g.files);
            if now != last {
                last = now;
                quiet_since = Instant::now();
            }
        }
        for s in &g.stops {
            s.stop();
        }
        for (cpu, t) in g.threads.drain(..).enumerate() {
            match t.join() {
                Ok((rec, res)) => {
                    if let Err(e) = res.and_then(|()| rec.finish()) {
                        error.get_or_insert(format!("recording its CPU {cpu} failed: {e}"));
                    }
                }
                Err(_) => {
                    error.get_or_insert(format!("its CPU {cpu} recorder panicked"));
                }
            }
        }
        let meta = match parse_metadata(&g.session.metadata) {
            Ok(m) => m,
            Err(e) => {
                error.get_or_insert(e.to_string());
                Metadata::default()
            }
        };
        results.push(GuestResult {
            name,
            files: std::mem::take(&mut g.files),
            meta,
            error,
        });
    }
    results
}

/// Merges a guest's formats into the file's `meta` and moves the guest's events
/// whose IDs clash with the host's to free IDs, in its recorded pages too.
pub fn merge_guest(meta: &mut Metadata, g: &GuestResult) -> Result<(), String> {
    let (map, lost) = merge_remapped(meta, &g.meta);
    if lost > 0 {
        log::warn!(
            "guest {}: {lost} events found no free event ID; report cannot decode them",
            g.name
        );
    }
    if map.is_empty() {
        return Ok(());
    }
    let mut changed = 0;
    for f in &g.files {
        changed += remap_file_ids(
            f,
            g.meta.page_size as usize,
            &g.meta.header_page,
            &g.meta.header_event,
            &map,
        )
        .map_err(|e| format!("guest {}: {e}", g.name))?;
    }
    log::info!(
        "guest {}: {} event types clash with the host's; moved them to free IDs ({changed} records)",
        g.name,
        map.len()
    );
    Ok(())
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
        assert!(split_guest_args(s(&["tc", "record", "-A"])).is_err());
        assert!(split_guest_args(s(&["tc", "record", "-A", "a/b", "-e", "x"])).is_err());
        assert!(split_guest_args(s(&["tc", "record", "-A", "a", "ls"])).is_err());
    }
}
