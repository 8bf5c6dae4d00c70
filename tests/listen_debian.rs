//! Debian's trace-cmd 3.1.6 as the CLIENT (`record -N`) against our listener, over
//! UDP and TCP, with file version 7 (zstd) and 6; every file must be read by
//! `trace-cmd report` without a warning and hold sched events (issue 5 item 4).
//! Needs root, tracefs, Debian's trace-cmd and shared/tools/ftrace-sandbox.

mod dat_common;
mod listen_common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dat_common::{report, TempDir, TopState, TRACE_CMD};
use listen_common::{lock_top_buffer, Running};
use tracecmd_rs::listen::{ListenConfig, Outcome, Protocol};
use tracecmd_rs::output::reader::TraceDat;
use tracecmd_rs::tracefs::Instance;

const SANDBOX: &str = "/work/shared/tools/ftrace-sandbox";

fn sandbox() -> &'static str {
    // CI lays shared/ beside the clone; a developer has it at /work/shared.
    ["../shared/tools/ftrace-sandbox", SANDBOX]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!(
                "ftrace-sandbox is missing (expected {SANDBOX}); it runs Debian's trace-cmd here"
            )
        })
}

fn debian_client(tcp: bool, file_version: Option<&str>) {
    assert!(
        Path::new(TRACE_CMD).exists(),
        "{TRACE_CMD} is missing: apt-get install trace-cmd"
    );
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests run Debian's trace-cmd and need root"
    );
    let sandbox = std::fs::canonicalize(sandbox()).unwrap();
    let dir = TempDir::new("listen-debian");
    let l = Running::start(ListenConfig {
        dir: dir.path().to_path_buf(),
        ..ListenConfig::default()
    });
    let _lock = lock_top_buffer();
    let top = Instance::top().expect("tracefs is mounted");
    let before = TopState::read(&top);
    let mut cmd = Command::new(&sandbox);
    cmd.args([TRACE_CMD, "record", "-N", &format!("localhost:{}", l.port)]);
    if tcp {
        cmd.arg("-t");
    }
    if let Some(v) = file_version {
        cmd.args(["--file-version", v]);
    }
    cmd.args(["-e", "sched", "/bin/sleep", "1"]);
    let out = cmd.output().expect("run Debian's trace-cmd record -N");
    before.restore(&top);
    assert!(
        out.status.success(),
        "trace-cmd record -N failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = l.any_report(Duration::from_secs(20));
    assert_eq!(r.protocol, Some(Protocol::V3));
    assert!(
        matches!(r.result, Ok(Outcome::Complete)),
        "session result {:?}",
        r.result
    );
    assert!(
        r.cpu_bytes.iter().sum::<u64>() > 0,
        "no per-CPU data arrived"
    );
    let file = r.output.expect("an output file");
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("trace.") && name.ends_with(&format!(":{}.dat", r.peer.port())),
        "{name}"
    );
    // Temporary per-CPU files are gone.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".cpu"))
        .collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
    let bytes = std::fs::read(&file).unwrap();
    let dat = TraceDat::parse(&bytes).expect("our reader parses the file");
    let want = file_version.unwrap_or("7");
    assert_eq!(dat.version.to_string(), want);
    if want == "7" {
        assert_eq!(dat.compression.as_ref().map(|c| c.0.as_str()), Some("zstd"));
    }
    let rep = report(&file);
    let sched = rep.stdout.lines().filter(|l| l.contains(" sched_")).count();
    assert!(
        sched > 0,
        "no sched events in the report:\n{}",
        &rep.stdout[..rep.stdout.len().min(2000)]
    );
}

#[test]
fn debian_client_udp_v7() {
    debian_client(false, None);
}

#[test]
fn debian_client_tcp_v7() {
    debian_client(true, None);
}

#[test]
fn debian_client_udp_v6() {
    debian_client(false, Some("6"));
}

#[test]
fn debian_client_tcp_v6() {
    debian_client(true, Some("6"));
}
