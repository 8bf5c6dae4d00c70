//! trace-cmd 3.x guests over loopback TCP, in both directions and ours against
//! ours:
//!
//! * Debian's trace-cmd 3.1.6 `record -A ADDR:PORT --tsync-interval -1` against our
//!   `agent -N`, and against hostile hosts; Debian's `report` must read both files
//!   it writes, the guest's holding sched_switch events.
//! * Our `record -A ADDR:PORT` against Debian's `agent -N` and against ours: one
//!   trace.dat with the guest as a named buffer, which Debian's `report` reads with
//!   the guest's events in the guest's buffer, per CPU as our reader counts them.
//!
//! Host and agent share this machine's tracefs: the agents record the top-level
//! buffer (the tests take the top-buffer lock), our host records a private
//! instance. vsock: see [`vsock_agent_listens_recording_needs_a_vsock_transport`].

use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use testkit::debian::{sandbox, try_report, DebianAgent};
use testkit::vsock::{self, Side, GUEST_CID};
use testkit::{free_port, lock_top_buffer, Settings, TempDir};
use tracecmd_rs::msg::{v3, Channel, Wait};
use tracecmd_rs::output::reader::TraceDat;
use tracecmd_rs::tracefs::Instance;

const BIN: &str = env!("CARGO_BIN_EXE_trace-cmd");

struct Agent(Child);

impl Agent {
    fn start(port: u16) -> Agent {
        let agent = Agent(
            Command::new(BIN)
                .args(["agent", "-N", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start our agent"),
        );
        for _ in 0..100 {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                // That probe is a host that leaves at once; the agent must survive it.
                return agent;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("our agent did not listen on port {port}");
    }

    /// Our agent on vsock port `port`, carried over TCP loopback by the shim.
    fn start_vsock_shim(port: u16) -> Agent {
        let mut cmd = Command::new(BIN);
        vsock::apply(&mut cmd, Side::Guest);
        let agent = Agent(
            cmd.args(["agent", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start our vsock agent"),
        );
        testkit::wait_until(
            "our vsock agent listening (shim)",
            Duration::from_secs(10),
            || testkit::tcp_listening(port),
        );
        agent
    }

    /// Stops it with SIGINT as a user would; it must exit 0.
    fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        let st = self.0.wait().unwrap();
        assert!(st.success(), "agent exited with {st}");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn report(dat: &Path) -> String {
    try_report(dat)
        .unwrap_or_else(|e| panic!("report {} failed: {e}", dat.display()))
        .stdout
}

/// Debian's record -A against the agent; returns the guest file's report.
fn debian_host(port: u16, dir: &Path) -> String {
    let out = Command::new(sandbox())
        .current_dir(dir)
        .args([
            "trace-cmd",
            "record",
            "--tsync-interval",
            "-1",
            "-e",
            "sched_switch",
        ])
        .args(["-A", &format!("127.0.0.1:{port}"), "-e", "sched_switch"])
        .args(["sh", "-c", "sleep 0.2; sleep 0.2"])
        .output()
        .expect("run Debian's record -A");
    assert!(
        out.status.success(),
        "Debian's record -A failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    report(&dir.join("trace.dat"));
    report(&dir.join("trace-127.0.0.1.dat"))
}

fn top_state(top: &Instance) -> (bool, String, u64) {
    (
        top.tracing_on().unwrap(),
        top.trace_clock().unwrap().0,
        top.buffer_size_kb().unwrap(),
    )
}

#[test]
fn debian_record_a_reaches_our_agent_and_reads_its_file() {
    let _lock = lock_top_buffer();
    let top = Instance::top().expect("tracefs");
    let before = top_state(&top);
    let port = free_port();
    let agent = Agent::start(port);
    let dir = TempDir::new("agent3-debian");
    let guest = debian_host(port, dir.path());
    assert!(
        guest.contains("sched_switch:"),
        "no sched_switch in the guest file:\n{guest}"
    );
    // One host at a time, then the next.
    let dir2 = TempDir::new("agent3-debian2");
    let guest = debian_host(port, dir2.path());
    assert!(guest.contains("sched_switch:"));
    agent.stop();
    assert_eq!(top_state(&top), before, "the agent left tracefs changed");
}

fn send_raw(port: u16, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    let _ = s.write_all(bytes);
    s
}

fn trace_req(argv: &[&str]) -> Vec<u8> {
    v3::Msg::TraceReq {
        flags: 0,
        trace_id: 1,
        argv: argv.iter().map(|s| s.to_string()).collect(),
        tsync_protos: vec![],
    }
    .encode()
    .unwrap()
}

#[test]
fn hostile_hosts_do_not_stop_the_agent() {
    let _lock = lock_top_buffer();
    let top = Instance::top().expect("tracefs");
    let before = top_state(&top);
    let port = free_port();
    let agent = Agent::start(port);
    // Garbage, then close.
    drop(send_raw(port, b"GET / HTTP/1.0\r\n\r\n"));
    // A TRACE_REQ cut in the middle, then close.
    let req = trace_req(&["-e", "sched_switch"]);
    drop(send_raw(port, &req[..req.len() / 2]));
    // Argument count 2^31 - 1 with a few bytes behind it.
    let mut huge = req.clone();
    huge[36..40].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
    drop(send_raw(port, &huge));
    // Options the agent does not take, and an unknown event.
    drop(send_raw(port, &trace_req(&["-p", "function"])));
    drop(send_raw(port, &trace_req(&["-e", "no_such_event_xyz"])));
    // A valid request, then leaving after TRACE_RESP without opening data ports.
    let s = send_raw(port, &req);
    let ch = Channel::new(std::os::fd::AsFd::as_fd(&s)).with_timeout(Some(Duration::from_secs(10)));
    match v3::recv(&ch, Wait::Timed).expect("TRACE_RESP") {
        v3::Msg::TraceResp { cpus, ports, .. } => assert_eq!(cpus as usize, ports.len()),
        other => panic!("expected TRACE_RESP, got {other:?}"),
    }
    drop(s);
    // A valid request, data ports opened, the metadata never read (the agent's
    // sends time out), then leaving without CLOSE.
    let s = send_raw(port, &req);
    let ch = Channel::new(std::os::fd::AsFd::as_fd(&s)).with_timeout(Some(Duration::from_secs(10)));
    let v3::Msg::TraceResp { ports, .. } = v3::recv(&ch, Wait::Timed).expect("TRACE_RESP") else {
        panic!("expected TRACE_RESP");
    };
    let data: Vec<TcpStream> = ports
        .iter()
        .map(|&p| TcpStream::connect((Ipv4Addr::LOCALHOST, p as u16)).expect("data port"))
        .collect();
    std::thread::sleep(Duration::from_secs(6));
    drop(s);
    drop(data);
    // The agent still serves a normal host.
    let dir = TempDir::new("agent3-after-hostile");
    let guest = debian_host(port, dir.path());
    assert!(guest.contains("sched_switch:"));
    agent.stop();
    assert_eq!(top_state(&top), before, "the agent left tracefs changed");
}

/// Our `record -B INSTANCE -e sched_switch -A 127.0.0.1:PORT -e sched_switch`
/// with `extra` options; returns the file and the summary.
fn our_host(port: u16, dir: &Path, extra: &[&str]) -> (std::path::PathBuf, Instance, String) {
    our_host_at(&format!("127.0.0.1:{port}"), &[], dir, extra, None)
}

/// [`our_host`] with any `-A` target and `guest_opts` before its `-e`, as
/// `shim`'s side of the vsock shim.
fn our_host_at(
    target: &str,
    guest_opts: &[&str],
    dir: &Path,
    extra: &[&str],
    shim: Option<Side>,
) -> (std::path::PathBuf, Instance, String) {
    let host = testkit::instance("agent3-host");
    let file = dir.join("trace.dat");
    let mut cmd = Command::new(BIN);
    if let Some(side) = shim {
        vsock::apply(&mut cmd, side);
    }
    let out = cmd
        .args([
            "record",
            "-B",
            &testkit::instance_name(&host),
            "-e",
            "sched_switch",
        ])
        .args(extra)
        .arg("-o")
        .arg(&file)
        .args(["-A", target])
        .args(guest_opts)
        .args(["-e", "sched_switch"])
        .args(["sh", "-c", "sleep 0.2; sleep 0.2"])
        .output()
        .expect("run our record -A");
    assert!(
        out.status.success(),
        "our record -A failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        file,
        host,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Debian's report reads `file` with the guest's sched_switch events in buffer
/// "127.0.0.1" and the host's in its instance's buffer, per CPU as many as our
/// reader counts.
fn check_merged(file: &Path, host: &Instance, summary: &str) {
    check_merged_as(
        file,
        host,
        summary,
        "127.0.0.1",
        "Guest 127.0.0.1 clock: none: TCP peer",
    );
}

/// [`check_merged`] for guest buffer `guest`, whose summary line starts with
/// `clock_line`.
fn check_merged_as(file: &Path, host: &Instance, summary: &str, guest: &str, clock_line: &str) {
    let r = testkit::debian::report(file);
    let host_name = testkit::instance_name(host);
    let dat = std::fs::read(file).unwrap();
    let d = TraceDat::parse(&dat).expect("our reader parses the file");
    let index = |name: &str| {
        d.buffers
            .iter()
            .position(|b| b.name == name)
            .unwrap_or_else(|| panic!("no buffer {name:?} in the file"))
    };
    let gi = index(guest);
    let ours = d.count_events(&dat, gi).expect("count the guest's events");
    let debian = r.per_cpu(guest, ours.len());
    assert_eq!(
        debian, ours,
        "guest events per CPU: Debian's report vs our reader"
    );
    assert!(
        ours.iter().sum::<u64>() > 0,
        "no guest events in the file:\n{}",
        r.stdout
    );
    let guest_lines: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with(&format!("{guest}:")))
        .collect();
    assert!(
        guest_lines.iter().all(|l| l.contains("sched_switch:")),
        "the guest buffer holds other events"
    );
    let hi = index(&host_name);
    let host_events: u64 = d.count_events(&dat, hi).unwrap().iter().sum();
    assert!(host_events > 0, "no host events");
    assert_eq!(
        r.per_cpu(&host_name, d.cpus as usize).iter().sum::<u64>(),
        host_events
    );
    assert!(
        summary.contains(clock_line),
        "the summary does not say how the guest clock was aligned:\n{summary}"
    );
}

#[test]
fn our_record_a_reaches_debian_agent() {
    let _lock = lock_top_buffer();
    let top = Instance::top().expect("tracefs");
    // Debian's agent is not ours to judge: what it leaves changed is put back.
    let before = Settings::read(&top);
    let port = free_port();
    let dir = TempDir::new("agent3-ours-debian");
    let (file, host, summary) = {
        let _agent = DebianAgent::start_tcp("127.0.0.1", port);
        our_host(port, dir.path(), &[])
    };
    before.restore(&top);
    check_merged(&file, &host, &summary);
}

#[test]
fn our_record_a_reaches_our_agent() {
    let _lock = lock_top_buffer();
    let top = Instance::top().expect("tracefs");
    let before = top_state(&top);
    let port = free_port();
    let agent = Agent::start(port);
    // The default v7 file, then a v6 one from the same agent (the next host).
    let dir = TempDir::new("agent3-ours-ours");
    let (file, host, summary) = our_host(port, dir.path(), &[]);
    check_merged(&file, &host, &summary);
    let dir6 = TempDir::new("agent3-ours-ours6");
    let (file, host, summary) = our_host(port, dir6.path(), &["--file-version", "6"]);
    check_merged(&file, &host, &summary);
    agent.stop();
    assert_eq!(top_state(&top), before, "the agent left tracefs changed");
}

/// A host that asks for a guest whose agent is not there gets a clear error and
/// no file.
#[test]
fn record_a_without_an_agent_says_so() {
    let port = free_port();
    let dir = TempDir::new("agent3-none");
    let file = dir.path().join("trace.dat");
    let out = Command::new(BIN)
        .args(["record", "-o"])
        .arg(&file)
        .args([
            "-A",
            &format!("127.0.0.1:{port}"),
            "-e",
            "sched_switch",
            "true",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the agent at 127.0.0.1"),
        "unclear error: {err}"
    );
    assert!(!file.exists());
}

/// vsock. Our agent without -N listens on vsock: binding its port again must
/// fail. Recording over vsock needs a vsock transport: a QEMU guest with
/// vhost-vsock-pci (/dev/vhost-vsock on the host) or vsock loopback (CID 1).
/// Where neither works, the test says so, and checks that `record -A NAME@1:PORT`
/// fails with an error naming the vsock address; where loopback works, it records
/// through our agent over vsock.
#[test]
fn vsock_agent_listens_recording_needs_a_vsock_transport() {
    use tracecmd_rs::transport::{connect_vsock, listen_vsock};
    if let Err(e) = listen_vsock(tracecmd_rs::transport::VSOCK_PORT_ANY) {
        eprintln!("vsock test did not run: this kernel offers no AF_VSOCK sockets ({e})");
        return;
    }
    let _lock = lock_top_buffer();
    let top = Instance::top().expect("tracefs");
    let before = top_state(&top);
    // A vsock port no one uses: bound and let go.
    let port = {
        let l = listen_vsock(tracecmd_rs::transport::VSOCK_PORT_ANY).unwrap();
        tracecmd_rs::transport::vsock_local_port(std::os::fd::AsFd::as_fd(&l)).unwrap()
    };
    let agent = Agent(
        Command::new(BIN)
            .args(["agent", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start our vsock agent"),
    );
    testkit::wait_until(
        "our agent listening on vsock",
        Duration::from_secs(10),
        || listen_vsock(port).is_err_and(|e| e.raw_os_error() == Some(libc::EADDRINUSE)),
    );
    let loopback = connect_vsock(1, port);
    let dir = TempDir::new("agent3-vsock");
    let file = dir.path().join("trace.dat");
    let out = Command::new(BIN)
        .args(["record", "-o"])
        .arg(&file)
        .args(["-A", &format!("vm@1:{port}"), "-e", "sched_switch"])
        .args(["sh", "-c", "sleep 0.2"])
        .output()
        .unwrap();
    match loopback {
        Ok(_) => {
            // The probe above was a host that left: the agent serves the next.
            assert!(
                out.status.success(),
                "record -A over vsock loopback: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let r = testkit::debian::report(&file);
            assert!(r.counts.keys().any(|(b, _)| b == "vm"), "{}", r.stdout);
            assert!(String::from_utf8_lossy(&out.stdout).contains("Guest vm clock: synced (ptp)"));
        }
        Err(e) => {
            let why = if Path::new("/dev/vhost-vsock").exists() {
                format!("no vsock loopback (connecting to CID 1: {e}); a QEMU guest with vhost-vsock-pci is needed")
            } else {
                format!("no /dev/vhost-vsock for a QEMU guest and no vsock loopback (connecting to CID 1: {e})")
            };
            eprintln!("vsock recording test did not run: {why}");
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(&format!("cannot reach the agent at vsock 1:{port}")),
                "unclear error: {err}"
            );
            assert!(!file.exists());
        }
    }
    agent.stop();
    assert_eq!(top_state(&top), before, "the agent left tracefs changed");
}

/// The offsets of the TIME_SHIFT option of `file`, as Debian's `dump --options`
/// prints them.
fn time_shift_offsets(file: &Path) -> Vec<i64> {
    let out = Command::new("trace-cmd")
        .args(["dump", "--options"])
        .arg(file)
        .output()
        .expect("run Debian's trace-cmd dump");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.ends_with("[offset * scaling >> fraction @ time]"))
        .map(|l| {
            l.split_whitespace()
                .next()
                .and_then(|o| o.parse().ok())
                .unwrap_or_else(|| panic!("unreadable TIME_SHIFT line {l:?}"))
        })
        .collect()
}

/// The offset the summary gives for guest `guest` synced with PTP.
fn ptp_offset(summary: &str, guest: &str) -> i64 {
    let head = format!("Guest {guest} clock: synced (ptp): offset ");
    let at = summary
        .find(&head)
        .unwrap_or_else(|| panic!("no PTP sync for {guest} in the summary:\n{summary}"));
    summary[at + head.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number after 'offset'")
}

/// Host and guest share this machine's clock: a PTP offset beyond this is wrong,
/// whatever the load (3.x's own exchange measures a few hundred ns here).
const SAME_CLOCK_NS: i64 = 1_000_000;

/// vsock through the shim (AF_VSOCK over TCP loopback, testkit::vsock), with
/// clock sync: Debian 3.1.6's `record -A guest@CID:PORT` against our vsock
/// agent. 3.x's PTP runs with our agent leading the rounds; Debian's host writes
/// the offsets into its guest file (TIME_SHIFT), near 0 on one machine, and its
/// report reads both files.
#[test]
fn debian_host_syncs_clocks_with_our_vsock_agent_over_the_shim() {
    let _lock = lock_top_buffer();
    let top = Instance::top().expect("tracefs");
    let before = top_state(&top);
    let port = free_port();
    let synch_before: Vec<String> = std::fs::read_dir(top.path().join("instances"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let agent = Agent::start_vsock_shim(port);
    let dir = TempDir::new("agent3-ptp-debian");
    // Output to a file and the status only: recorder processes that outlive a
    // failed record must not hold the test on an open pipe.
    let log = dir.path().join("record.log");
    let mut cmd = Command::new(sandbox());
    vsock::apply(&mut cmd, Side::Host);
    let st = cmd
        .current_dir(dir.path())
        // The top-level buffer, as debian_host does: the sandbox masks only its
        // function-tracer files, which 3.x's record also writes in an instance.
        .args(["trace-cmd", "record", "-e", "sched_switch"])
        .args(["-A", &format!("guest@{GUEST_CID}:{port}")])
        .args(["-e", "sched_switch", "sh", "-c", "sleep 0.2; sleep 0.2"])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("record.err")).unwrap())
        .status()
        .expect("run Debian's record -A");
    let said = format!(
        "{}{}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        std::fs::read_to_string(dir.path().join("record.err")).unwrap_or_default()
    );
    assert!(st.success(), "Debian's record -A failed ({st}): {said}");
    assert!(said.contains("Negotiated ptp time sync protocol"), "{said}");
    let guest_file = dir.path().join("trace-guest.dat");
    let offsets = time_shift_offsets(&guest_file);
    assert!(
        !offsets.is_empty(),
        "no TIME_SHIFT samples in the guest file"
    );
    assert!(
        offsets.iter().all(|o| o.abs() < SAME_CLOCK_NS),
        "offsets far from 0 on one clock: {offsets:?}"
    );
    report(&dir.path().join("trace.dat"));
    let guest = report(&guest_file);
    assert!(guest.contains("sched_switch:"), "no guest events:\n{guest}");
    agent.stop();
    // 3.1.6's host leaves its clock-sync instance behind: put tracefs back.
    let inst = top.path().join("instances");
    for e in std::fs::read_dir(&inst).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("clock_synch-") && !synch_before.contains(&name) {
            std::fs::remove_dir(e.path()).expect("remove Debian's clock_synch instance");
        }
    }
    assert_eq!(top_state(&top), before, "the agent left tracefs changed");
}

/// Our `record -A vm@CID:PORT` against Debian 3.1.6's vsock agent through the
/// shim: 3.x's PTP with Debian leading the rounds; the summary says
/// "synced (ptp)" with an offset near 0 (one machine), and Debian's report reads
/// the merged file with the guest's events in buffer "vm".
#[test]
fn our_record_a_syncs_clocks_with_debian_vsock_agent_over_the_shim() {
    let _lock = lock_top_buffer();
    let top = Instance::top().expect("tracefs");
    let before = Settings::read(&top);
    let port = free_port();
    let dir = TempDir::new("agent3-ptp-ours-debian");
    let target = format!("vm@{GUEST_CID}:{port}");
    let (file, host, summary) = {
        let _agent = DebianAgent::start_vsock_shim(port);
        our_host_at(&target, &[], dir.path(), &[], Some(Side::Host))
    };
    before.restore(&top);
    check_merged_as(
        &file,
        &host,
        &summary,
        "vm",
        "Guest vm clock: synced (ptp): ",
    );
    let off = ptp_offset(&summary, "vm");
    assert!(off.abs() < SAME_CLOCK_NS, "offset {off} ns on one clock");
}

/// Ours against ours over the shim: PTP, then `--tsync-interval -1` gives no
/// sync and says so. The guest records a private instance (`-B` after `-A`),
/// so the top-level buffer is not touched.
#[test]
fn our_record_a_syncs_clocks_with_our_vsock_agent_over_the_shim() {
    let port = free_port();
    let agent = Agent::start_vsock_shim(port);
    let target = format!("vm@{GUEST_CID}:{port}");
    for (extra, clock_line) in [
        (&[][..], "Guest vm clock: synced (ptp): "),
        (
            &["--tsync-interval", "-1"][..],
            "Guest vm clock: none: --tsync-interval -1",
        ),
    ] {
        let guest = testkit::instance("agent3-ptp-guest");
        let name = testkit::instance_name(&guest);
        let dir = TempDir::new("agent3-ptp-ours");
        let (file, host, summary) =
            our_host_at(&target, &["-B", &name], dir.path(), extra, Some(Side::Host));
        check_merged_as(&file, &host, &summary, "vm", clock_line);
        if extra.is_empty() {
            let off = ptp_offset(&summary, "vm");
            assert!(off.abs() < SAME_CLOCK_NS, "offset {off} ns on one clock");
        }
    }
    agent.stop();
}

/// A one-connection agent on loopback that plays `script` on the host's control
/// connection (after reading its TRACE_REQ).
fn fake_agent(
    script: impl FnOnce(&TcpStream) + Send + 'static,
) -> (u16, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let ch =
            Channel::new(std::os::fd::AsFd::as_fd(&s)).with_timeout(Some(Duration::from_secs(10)));
        assert!(matches!(
            v3::recv(&ch, Wait::Timed),
            Ok(v3::Msg::TraceReq { .. })
        ));
        script(&s);
    });
    (port, t)
}

/// Our guest-only `record -A 127.0.0.1:PORT -e sched_switch` with 1 s message
/// timeouts; returns whether it succeeded, its stderr and whether a file exists.
fn record_from(port: u16) -> (bool, String, bool) {
    let dir = TempDir::new("agent3-hostile-agent");
    let file = dir.path().join("trace.dat");
    let out = Command::new(BIN)
        .env("TRACECMD_MSG_TIMEOUT_MS", "1000")
        .args(["record", "-o"])
        .arg(&file)
        .args(["-A", &format!("127.0.0.1:{port}"), "-e", "sched_switch"])
        .args(["sh", "-c", "sleep 0.3"])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        file.exists(),
    )
}

fn send(s: &TcpStream, m: &v3::Msg) {
    v3::send(&Channel::new(std::os::fd::AsFd::as_fd(s)), m).unwrap();
}

fn resp(ports: Vec<u32>) -> v3::Msg {
    v3::Msg::TraceResp {
        flags: 0,
        cpus: ports.len() as u32,
        page_size: 4096,
        trace_id: 7,
        tsync_proto: String::new(),
        tsync_port: 0,
        ports,
    }
}

/// Hostile or broken agents: our host ends with an error that names the guest and
/// what was wrong, within the timeouts, and leaves no file that looks complete.
#[test]
fn hostile_agents_give_clear_errors() {
    type Script = Box<dyn FnOnce(&TcpStream) + Send>;
    let cases: Vec<(&str, Script, &str)> = vec![
        (
            "garbage",
            Box::new(|s: &TcpStream| {
                let _ = (&*s).write_all(b"HTTP/1.0 200 OK\r\n\r\nhello");
                std::thread::sleep(Duration::from_millis(500));
            }),
            "message size",
        ),
        (
            "silence",
            Box::new(|_: &TcpStream| std::thread::sleep(Duration::from_secs(3))),
            "no complete message within 1000 ms",
        ),
        (
            "a huge CPU count",
            Box::new(|s: &TcpStream| {
                let mut m = resp(vec![1]).encode().unwrap();
                m[16..20].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
                let _ = (&*s).write_all(&m);
                std::thread::sleep(Duration::from_millis(500));
            }),
            "TRACE_RESP cpu count",
        ),
        (
            "port 0",
            Box::new(|s: &TcpStream| {
                send(s, &resp(vec![0]));
                std::thread::sleep(Duration::from_millis(500));
            }),
            "gave port 0 for CPU 0",
        ),
        (
            "a data port nobody listens on",
            Box::new(|s: &TcpStream| {
                send(s, &resp(vec![u32::from(free_port())]));
                std::thread::sleep(Duration::from_millis(500));
            }),
            "cannot connect to CPU 0's data port",
        ),
        (
            "leaving before the metadata",
            Box::new(|s: &TcpStream| {
                let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
                let p = l.local_addr().unwrap().port();
                send(s, &resp(vec![u32::from(p)]));
                let _data = l.accept().unwrap();
            }),
            "the peer closed the connection",
        ),
        (
            "NOT_SUPP",
            Box::new(|s: &TcpStream| {
                send(s, &v3::Msg::NotSupp);
                std::thread::sleep(Duration::from_millis(500));
            }),
            "answered NOT_SUPP",
        ),
    ];
    for (what, script, expected) in cases {
        let (port, agent) = fake_agent(script);
        let (ok, err, file) = record_from(port);
        assert!(!ok, "{what}: record succeeded");
        assert!(
            err.contains("guest 127.0.0.1") && err.contains(expected),
            "{what}: unclear error: {err}"
        );
        assert!(!file, "{what}: a file was left");
        agent.join().unwrap();
    }
}

/// An agent whose metadata is not a trace.dat and that never confirms the stop:
/// the recording ends after the stop wait, and says what is missing.
#[test]
fn agent_with_bad_metadata_and_no_close_resp() {
    let (port, agent) = fake_agent(|s| {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let p = l.local_addr().unwrap().port();
        send(s, &resp(vec![u32::from(p)]));
        let (mut data, _) = l.accept().unwrap();
        send(s, &v3::Msg::SendData(b"not a trace.dat".to_vec()));
        send(s, &v3::Msg::FinData);
        let _ = data.write_all(&[0u8; 4096]);
        // CLOSE comes; no CLOSE_RESP.
        let ch =
            Channel::new(std::os::fd::AsFd::as_fd(s)).with_timeout(Some(Duration::from_secs(10)));
        assert!(matches!(v3::recv(&ch, Wait::Timed), Ok(v3::Msg::Close)));
        std::thread::sleep(Duration::from_secs(8));
    });
    let (ok, err, file) = record_from(port);
    assert!(!ok);
    assert!(!file, "a file was left");
    assert!(
        err.contains("guest 127.0.0.1") && err.contains("did not confirm the stop"),
        "unclear error: {err}"
    );
    agent.join().unwrap();
}
