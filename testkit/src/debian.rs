//! Debian's trace-cmd 3.1.6 as the reference: its `report` reads our files, its
//! `record` runs inside the ftrace sandbox.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian's trace-cmd.
pub const TRACE_CMD: &str = "/usr/bin/trace-cmd";

/// Panics with the install command if Debian's trace-cmd is missing.
pub fn require_trace_cmd() {
    assert!(
        Path::new(TRACE_CMD).exists(),
        "{TRACE_CMD} is missing: install Debian's trace-cmd 3.1.6 (apt-get install trace-cmd)"
    );
}

/// The absolute path of `shared/tools/ftrace-sandbox`, which masks the
/// function-tracer files this kernel refuses so that Debian's `trace-cmd record`
/// and `agent` can run: `sandbox() trace-cmd record ...`. Checks that Debian's
/// trace-cmd is installed and that we are root.
pub fn sandbox() -> PathBuf {
    require_trace_cmd();
    assert!(
        nix::unistd::geteuid().is_root(),
        "Debian's trace-cmd record needs root"
    );
    // shared/ lies beside the repository (in CI and for a developer alike).
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/ftrace-sandbox");
    assert!(
        p.exists(),
        "{} is missing: it runs Debian's trace-cmd record here",
        p.display()
    );
    std::fs::canonicalize(p).unwrap()
}

/// What `trace-cmd report -i FILE` printed, and its event counts per
/// (buffer name, CPU); the top buffer's name is "".
pub struct Report {
    pub counts: BTreeMap<(String, usize), u64>,
    pub stdout: String,
    pub stderr: String,
}

impl Report {
    /// Counts of one buffer as a per-CPU vector of length `cpus`.
    pub fn per_cpu(&self, buffer: &str, cpus: usize) -> Vec<u64> {
        (0..cpus)
            .map(|c| *self.counts.get(&(buffer.to_string(), c)).unwrap_or(&0))
            .collect()
    }
}

/// Runs `trace-cmd report -i file`; an error (its output) if it did not exit 0.
pub fn try_report(file: &Path) -> Result<Report, String> {
    require_trace_cmd();
    let out = Command::new(TRACE_CMD)
        .arg("report")
        .arg("-i")
        .arg(file)
        .output()
        .expect("run trace-cmd report");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(format!(
            "trace-cmd report -i {} failed ({}): {stdout}{stderr}",
            file.display(),
            out.status
        ));
    }
    let mut counts = BTreeMap::new();
    for line in stdout.lines() {
        if let Some((buffer, cpu)) = parse_event_line(line) {
            *counts.entry((buffer, cpu)).or_insert(0) += 1;
        }
    }
    Ok(Report {
        counts,
        stdout,
        stderr,
    })
}

/// Runs `trace-cmd report -i file`; asserts exit 0 and an empty stderr.
pub fn report(file: &Path) -> Report {
    let r = try_report(file).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        r.stderr.trim().is_empty(),
        "trace-cmd report warned on {}:\n{}",
        file.display(),
        r.stderr
    );
    r
}

/// `[name:]  comm-pid [CPU] ts: event: ...` → (buffer name, CPU).
fn parse_event_line(line: &str) -> Option<(String, usize)> {
    // The CPU field is the first " [N]" followed by a timestamp: a comm may
    // contain " [" too (threads named "client [::ffff:…" exist on this machine).
    let (open, cpu) = line.match_indices(" [").find_map(|(open, _)| {
        let rest = &line[open + 2..];
        let close = rest.find(']')?;
        let cpu: usize = rest[..close].parse().ok()?;
        let ts = rest[close + 1..].trim_start();
        let ts = ts.split(':').next()?;
        let is_ts = !ts.is_empty() && ts.chars().all(|c| c.is_ascii_digit() || c == '.');
        is_ts.then_some((open, cpu))
    })?;
    // Named-buffer lines start with "name: ", the names right-aligned to the
    // longest; top-buffer lines with the comm.
    let head = line[..open].trim_start();
    let buffer = match head.split_once(": ") {
        Some((name, _)) if !name.starts_with(' ') && !name.contains(' ') => name.to_string(),
        _ => String::new(),
    };
    Some((buffer, cpu))
}

#[test]
fn event_lines_with_brackets_in_the_comm() {
    let l = "        client [::ffff:-27978 [001]  7259.756723: sched_stat_runtime: comm=x";
    assert_eq!(parse_event_line(l), Some((String::new(), 1)));
    let l = "guest:            <...>-28013 [001]  7259.921787: print: tracing_mark_write: x";
    assert_eq!(parse_event_line(l), Some(("guest".into(), 1)));
    let l = "      vm:     sh-20456 [001] 10077.403641: print: tracing_mark_write: x";
    assert_eq!(parse_event_line(l), Some(("vm".into(), 1)));
    assert_eq!(parse_event_line("CPU 1 is empty"), None);
    assert_eq!(parse_event_line("cpus=2"), None);
}

/// Debian's `trace-cmd agent -N CLIENT -p PORT` running inside the sandbox; on
/// drop the agent (the sandbox's child, by its pid) gets SIGTERM and the sandbox
/// is reaped.
pub struct DebianAgent {
    sandbox: std::process::Child,
}

impl DebianAgent {
    /// Starts it and waits (up to 10 s) until it listens on `port`.
    pub fn start_tcp(client: &str, port: u16) -> DebianAgent {
        let mut cmd = Command::new(sandbox());
        cmd.args(["trace-cmd", "agent", "-N", client, "-p", &port.to_string()]);
        Self::spawn_listening(cmd, "Debian's agent", port)
    }

    /// Debian's `trace-cmd agent -p PORT` on vsock, carried over TCP loopback by
    /// the shim ([`crate::vsock`]) as the guest; waits (up to 10 s) until it listens.
    pub fn start_vsock_shim(port: u16) -> DebianAgent {
        let mut cmd = Command::new(sandbox());
        crate::vsock::apply(&mut cmd, crate::vsock::Side::Guest);
        cmd.args(["trace-cmd", "agent", "-p", &port.to_string()]);
        Self::spawn_listening(cmd, "Debian's vsock agent", port)
    }

    /// Spawns the sandboxed agent `cmd` and waits (up to 10 s) until TCP `port`
    /// listens.
    fn spawn_listening(mut cmd: Command, what: &str, port: u16) -> DebianAgent {
        let sandbox = cmd
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what} in the sandbox: {e}"));
        let agent = DebianAgent { sandbox };
        crate::wait_until(
            &format!("{what} listening"),
            std::time::Duration::from_secs(10),
            || crate::tcp_listening(port),
        );
        agent
    }
}

impl Drop for DebianAgent {
    fn drop(&mut self) {
        let pid = self.sandbox.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for child in children
            .split_whitespace()
            .filter_map(|c| c.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.sandbox.wait();
    }
}
