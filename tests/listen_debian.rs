//! Debian's trace-cmd 3.1.6 as the CLIENT (`record -N`) against our listener, over
//! UDP and TCP, with file version 7 (zstd) and 6; every file must be read by
//! `trace-cmd report` without a warning and hold sched events (issue 5 item 4).
//! Needs root, tracefs, Debian's trace-cmd and shared/tools/ftrace-sandbox.

use std::process::Command;
use std::time::Duration;

use testkit::debian::{report, sandbox, TRACE_CMD};
use testkit::listen::Running;
use testkit::{lock_top_buffer, Settings, TempDir};
use tracecmd_rs::listen::{ListenConfig, Outcome, Protocol};
use tracecmd_rs::output::reader::TraceDat;
use tracecmd_rs::tracefs::Instance;

fn debian_client(tcp: bool, file_version: Option<&str>) {
    let sandbox = sandbox();
    let dir = TempDir::new("listen-debian");
    let l = Running::start(ListenConfig {
        dir: dir.path().to_path_buf(),
        ..ListenConfig::default()
    });
    let _lock = lock_top_buffer();
    let top = Instance::top().expect("tracefs is mounted");
    let before = Settings::read(&top);
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

/// Forwards one control connection to `to`, and cuts it once the client has
/// sent at least `min_bytes` and then gone quiet for `idle`: after FIN_DATA a
/// 3.x client says nothing until CLOSE, so this is a client vanishing mid-data.
fn cutting_proxy(to: u16, min_bytes: usize, idle: Duration) -> u16 {
    use std::io::{Read, Write};
    use std::net::{Ipv6Addr, Shutdown, TcpListener, TcpStream};
    let l = TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut client, _) = l.accept().unwrap();
        let mut server = TcpStream::connect(("127.0.0.1", to)).unwrap();
        let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut b = [0u8; 8192];
            while let Ok(n) = s2.read(&mut b) {
                if n == 0 || c2.write_all(&b[..n]).is_err() {
                    break;
                }
            }
        });
        let mut b = [0u8; 8192];
        let mut total = 0;
        loop {
            client
                .set_read_timeout((total >= min_bytes).then_some(idle))
                .unwrap();
            match client.read(&mut b) {
                Ok(0) => break,
                Ok(n) => {
                    total += n;
                    if server.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = server.shutdown(Shutdown::Both);
        let _ = client.shutdown(Shutdown::Both);
    });
    port
}

#[test]
fn debian_client_vanishing_mid_data_leaves_a_readable_partial_file() {
    let sandbox = sandbox();
    let dir = TempDir::new("listen-debian-cut");
    let l = Running::start(ListenConfig {
        dir: dir.path().to_path_buf(),
        ..ListenConfig::default()
    });
    // Cut 2.5 s after the metadata, in the middle of the recording.
    let proxy = cutting_proxy(l.port, 100_000, Duration::from_millis(2500));
    let _lock = lock_top_buffer();
    let top = Instance::top().expect("tracefs is mounted");
    let before = Settings::read(&top);
    // The client may die of the cut (its CLOSE meets a closed socket): its exit
    // status is not checked, tracefs is put back in any case.
    let _ = Command::new(&sandbox)
        .args([
            TRACE_CMD,
            "record",
            "-N",
            &format!("localhost:{proxy}"),
            "-t",
        ])
        // Thousands of short processes fill pages while the cut happens. A small
        // per-CPU buffer (-b 64) makes Debian's recorders wake and send pages
        // early (they wait for the buffer to be half full), so data has
        // crossed before the cut; the buffer size is put back below.
        .args(["-b", "64", "-e", "sched", "/bin/sh", "-c"])
        .arg("i=0; while [ $i -lt 4000 ]; do /bin/true; i=$((i+1)); done")
        .output()
        .expect("run Debian's trace-cmd record -N");
    before.restore(&top);
    let r = l.any_report(Duration::from_secs(30));
    assert!(
        matches!(r.result, Ok(Outcome::Partial)),
        "session result {:?}",
        r.result
    );
    assert!(
        r.cpu_bytes.iter().sum::<u64>() > 0,
        "no per-CPU data arrived"
    );
    let file = r.output.expect("an output file");
    let rep = report(&file);
    assert!(
        rep.stdout.contains(" sched_"),
        "no sched events in the partial file"
    );
}
