//! The whole virt-server flow with a simulated guest (issue 6 item 7, root):
//! `listen --virt`, `connect`, `agent --virt` whose ports directory holds PTYs
//! (raw mode) bridged to the domain's FIFOs the way QEMU's pipe chardev does
//! (`<name>.in` host→guest, `<name>.out` guest→host), and `record -A`. Host and
//! "guest" share this kernel, so each records its own private instance and writes
//! its own marker; Debian's `trace-cmd report` must show both, each in its buffer.
//! Also the failure cases of item 6: the agent dying mid-recording, and a manager
//! that disappears.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::termios;
use std::os::unix::process::CommandExt;
use testkit::debian::report;
use testkit::{instance_name, open_rw, wait_until, Killed, TempDir};
use tracecmd_rs::tracefs::Instance;

const BIN: &str = env!("CARGO_BIN_EXE_trace-cmd");
const PORTS: [&str; 3] = ["agent-ctl-path", "trace-path-cpu0", "trace-path-cpu1"];

/// A listener, a registered domain `vm` with 2 CPUs, the PTY bridge and an agent.
struct Sim {
    dir: TempDir,
    agent: Option<Killed>,
    _listener: Killed,
    _slaves: Vec<OwnedFd>,
}

fn tc(sim: &Sim) -> Command {
    let mut c = Command::new(BIN);
    c.env("TRACE_CMD_RUN_DIR", sim.dir.path().join("run"))
        .env("TRACE_CMD_VIRT_DIR", sim.dir.path().join("virt"));
    c
}

/// Copies `from` to `to` until either side fails (a PTY master reads EIO once
/// no slave is open any more).
fn pump(mut from: File, mut to: File) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16384];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
}

impl Sim {
    fn new(tag: &str) -> Sim {
        let dir = TempDir::new(tag);
        let ports = dir.path().join("ports");
        std::fs::create_dir_all(&ports).unwrap();
        let mut listener = Command::new(BIN);
        listener
            .args(["listen", "--virt", "--debug", "--dom", "vm", "-c", "2"])
            .env("TRACE_CMD_RUN_DIR", dir.path().join("run"))
            .env("TRACE_CMD_VIRT_DIR", dir.path().join("virt"))
            .stderr(File::create(dir.path().join("listener.log")).unwrap());
        let listener = Killed(listener.spawn().expect("start the listener"));
        let sock = dir.path().join("run/manager-ctl-path");
        wait_until("listener socket", Duration::from_secs(10), || sock.exists());
        let mut sim = Sim {
            dir,
            agent: None,
            _listener: listener,
            _slaves: Vec::new(),
        };
        let out = tc(&sim)
            .args(["connect", "-c", "2", "vm"])
            .output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("registered"),
            "connect: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The PTYs stand for the virtio ports; the bridge for QEMU.
        let vdir = sim.dir.path().join("virt/vm");
        for name in PORTS {
            let pty = nix::pty::openpty(None, None).unwrap();
            let mut t = termios::tcgetattr(&pty.slave).unwrap();
            termios::cfmakeraw(&mut t);
            termios::tcsetattr(&pty.slave, termios::SetArg::TCSANOW, &t).unwrap();
            let path = nix::unistd::ttyname(&pty.slave).unwrap();
            std::os::unix::fs::symlink(&path, ports.join(name)).unwrap();
            let master = File::from(pty.master);
            pump(
                master.try_clone().unwrap(),
                open_rw(&vdir.join(format!("{name}.out"))),
            );
            pump(open_rw(&vdir.join(format!("{name}.in"))), master);
            sim._slaves.push(pty.slave);
        }
        sim.start_agent();
        sim
    }

    fn start_agent(&mut self) {
        self.start_agent_with(|_| {});
    }

    /// Starts the agent, its command adjusted by `adjust` first.
    fn start_agent_with(&mut self, adjust: impl FnOnce(&mut Command)) {
        let mut c = Command::new(BIN);
        c.args(["agent", "--virt", "--debug", "--ports-dir"])
            .arg(self.dir.path().join("ports"))
            .stderr(File::create(self.dir.path().join("agent.log")).unwrap());
        adjust(&mut c);
        let agent = c.spawn().expect("start the agent");
        self.agent = Some(Killed(agent));
        wait_until("agent registered", Duration::from_secs(15), || {
            let o = tc(self).args(["list", "-A"]).output().unwrap();
            String::from_utf8_lossy(&o.stdout).contains("vm with 2 cpus")
        });
    }

    fn agent_pid(&self) -> u32 {
        self.agent.as_ref().unwrap().0.id()
    }
}

/// A private instance, not tracing until a recording turns it on.
fn quiet_instance(tag: &str) -> Instance {
    let inst = testkit::instance(tag);
    inst.set_tracing_on(false).unwrap();
    inst.set_buffer_size_kb(512).unwrap();
    inst
}

/// A simulated guest plus a private instance for the host and one for the guest.
/// Fields drop in order: the agent is gone before its instance is removed.
struct Setup {
    sim: Sim,
    host: Instance,
    guest: Instance,
}

fn setup(tag: &str) -> Setup {
    let sim = Sim::new(tag);
    let host = quiet_instance(&format!("{tag}-host"));
    let guest = quiet_instance(&format!("{tag}-guest"));
    Setup { sim, host, guest }
}

fn marker_script(host: &Instance, guest: &Instance, extra: &str) -> String {
    format!(
        "echo tcrs-HOST-MARK > {h}; i=0; while [ $i -lt 300 ]; do echo tcrs-GUEST-MARK-$i > {g}; i=$((i+1)); done; {extra}",
        h = host.path().join("trace_marker").display(),
        g = guest.path().join("trace_marker").display(),
    )
}

fn record_a(sim: &Sim, host: &Instance, guest: &Instance, file: &Path, script: &str) -> Command {
    record_a_as("vm", sim, host, guest, file, script)
}

/// [`record_a`] with the guest given as `spec` (`vm` or `vm:PID`).
fn record_a_as(
    spec: &str,
    sim: &Sim,
    host: &Instance,
    guest: &Instance,
    file: &Path,
    script: &str,
) -> Command {
    let mut c = tc(sim);
    c.args(["record", "-q", "-B", &instance_name(host)])
        .args(["-e", "sched:sched_kthread_stop", "-o"])
        .arg(file)
        .args(["-A", spec, "-B", &instance_name(guest)])
        .args(["-e", "sched:sched_kthread_stop", "/bin/sh", "-c", script]);
    c
}

/// `record -A` around a command that writes both markers and ends.
fn record_markers(sim: &Sim, host: &Instance, guest: &Instance, file: &Path) -> Output {
    record_a(sim, host, guest, file, &marker_script(host, guest, ""))
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The buffer name of the report line holding `needle`.
fn buffer_of(rep: &str, needle: &str) -> Option<String> {
    rep.lines()
        .find(|l| l.contains(needle))
        .map(|l| l.split(':').next().unwrap_or("").trim().to_string())
}

#[test]
fn record_a_simulated_guest_with_the_host() {
    let s = setup("vsim");
    let (sim, host, guest) = (&s.sim, &s.host, &s.guest);
    let file: PathBuf = sim.dir.path().join("t.dat");
    let out = record_a(
        sim,
        host,
        guest,
        &file,
        &marker_script(host, guest, "sleep 0.5"),
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "record -A: {}", stderr(&out));
    // The default file is v7 with zstd, the guest a buffer of it; report's counts
    // per buffer and CPU equal ours.
    let bytes = std::fs::read(&file).unwrap();
    let dat = tracecmd_rs::output::reader::TraceDat::parse(&bytes).unwrap();
    assert_eq!(dat.version, 7);
    assert_eq!(dat.compression.as_ref().map(|c| c.0.as_str()), Some("zstd"));
    let full = report(&file);
    for (i, b) in dat.buffers.iter().enumerate() {
        let ours = dat.count_events(&bytes, i).unwrap();
        assert_eq!(
            full.per_cpu(&b.name, ours.len()),
            ours,
            "{}: {:?}",
            b.name,
            full.stdout.lines().find(|l| l.contains("GUEST-MARK"))
        );
    }
    assert!(
        dat.buffers.iter().any(|b| b.name == "vm"),
        "no guest buffer"
    );
    let rep = full.stdout;
    assert_eq!(
        buffer_of(&rep, "tcrs-HOST-MARK").as_deref(),
        Some(instance_name(host).as_str()),
        "host marker not in the host buffer:\n{rep}"
    );
    assert_eq!(
        buffer_of(&rep, "tcrs-GUEST-MARK-299").as_deref(),
        Some("vm"),
        "guest marker not in the guest buffer"
    );
    // No temporary files are left next to the output.
    let left: Vec<_> = std::fs::read_dir(sim.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("t.dat."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The agent serves the next manager.
    let file2 = sim.dir.path().join("t2.dat");
    let out = record_markers(sim, host, guest, &file2);
    assert!(out.status.success(), "second record -A: {}", stderr(&out));
    assert!(report(&file2).stdout.contains("tcrs-GUEST-MARK-299"));

    // Only the guest (no host events): its own formats, its buffer.
    let file3 = sim.dir.path().join("t3.dat");
    let out = tc(sim)
        .args(["record", "-q", "-o"])
        .arg(&file3)
        .args([
            "-A",
            "vm",
            "-B",
            &instance_name(guest),
            "-e",
            "sched:sched_kthread_stop",
        ])
        .args(["/bin/sh", "-c", &marker_script(host, guest, "")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "guest-only record -A: {}",
        stderr(&out)
    );
    let rep = report(&file3).stdout;
    assert_eq!(
        buffer_of(&rep, "tcrs-GUEST-MARK-299").as_deref(),
        Some("vm")
    );
    assert!(
        !rep.contains("tcrs-HOST-MARK"),
        "host data in a guest-only file"
    );

    // Refusals are reported, and the agent serves the next manager afterwards.
    let out = tc(sim)
        .args(["record", "-o"])
        .arg(sim.dir.path().join("x.dat"))
        .args(["-A", "vm", "-e", "sched", "-z", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refused to record") && stderr(&out).contains("-z"),
        "{}",
        stderr(&out)
    );
    let out = tc(sim)
        .args(["record", "-o"])
        .arg(sim.dir.path().join("x.dat"))
        .args(["-A", "nosuchvm", "-e", "sched", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no free agent for guest \"nosuchvm\""),
        "{}",
        stderr(&out)
    );
    let out = record_markers(sim, host, guest, &file2);
    assert!(
        out.status.success(),
        "record -A after refusals: {}",
        stderr(&out)
    );
}

#[test]
fn guest_by_the_pid_of_the_process_holding_its_fifos() {
    let s = setup("vpid");
    let (sim, host, guest) = (&s.sim, &s.host, &s.guest);
    // The simulated QEMU (the PTY bridge) is this test process.
    let file = sim.dir.path().join("t.dat");
    let spec = format!("vm:{}", std::process::id());
    let out = record_a_as(
        &spec,
        sim,
        host,
        guest,
        &file,
        &marker_script(host, guest, ""),
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "record -A {spec}: {}", stderr(&out));
    let rep = report(&file).stdout;
    assert_eq!(
        buffer_of(&rep, "tcrs-GUEST-MARK-299").as_deref(),
        Some("vm"),
        "guest marker not in the guest buffer"
    );
    // A process that holds no guest's FIFOs is refused at once.
    let file2 = sim.dir.path().join("t2.dat");
    let out = record_a_as("vm:1", sim, host, guest, &file2, "true")
        .output()
        .unwrap();
    assert!(!out.status.success(), "record -A vm:1 must be refused");
    assert!(stderr(&out).contains("vm:1"), "{}", stderr(&out));
}

#[test]
fn agent_dying_mid_recording_keeps_what_arrived() {
    let s = setup("vdie");
    let (sim, host, guest) = (&s.sim, &s.host, &s.guest);
    let file = sim.dir.path().join("t.dat");
    let script = marker_script(
        host,
        guest,
        &format!("sleep 1; kill -9 {}; sleep 0.5", sim.agent_pid()),
    );
    let out = record_a(sim, host, guest, &file, &script)
        .env("TRACECMD_MSG_TIMEOUT_MS", "500")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "record -A must fail when the agent dies"
    );
    let err = stderr(&out);
    assert!(
        err.contains("guest vm") && err.contains("may have died"),
        "{err}"
    );
    let rep = report(&file).stdout;
    assert!(rep.contains("tcrs-HOST-MARK"), "host data lost");
    assert_eq!(
        buffer_of(&rep, "tcrs-GUEST-MARK-0").as_deref(),
        Some("vm"),
        "the guest data received before the death is lost"
    );
    // The killed agent could not remove its clock-reading instance.
    drop(s);
    tracecmd_rs::record::tsync::remove_stale_instances();
}

#[test]
fn a_vanished_manager_frees_the_agent() {
    let s = setup("vgone");
    let (sim, host, guest) = (&s.sim, &s.host, &s.guest);
    let file = sim.dir.path().join("t.dat");
    let mut first = record_a(sim, host, guest, &file, "sleep 60")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the guest records, then kill the manager without a word.
    wait_until("guest recording", Duration::from_secs(15), || {
        guest.tracing_on().unwrap_or(false)
    });
    first.kill().unwrap();
    first.wait().unwrap();
    let file2 = sim.dir.path().join("t2.dat");
    wait_until("agent released", Duration::from_secs(15), || {
        let o = record_markers(sim, host, guest, &file2);
        o.status.success()
    });
    let rep = report(&file2).stdout;
    assert_eq!(
        buffer_of(&rep, "tcrs-GUEST-MARK-299").as_deref(),
        Some("vm")
    );
}

/// `sig` to the agent while it records: it stops tracing, puts the guest's
/// tracefs back and exits 0 (issue 15 item 2). With `sigint_ignored` the agent
/// starts with SIGINT ignored, as a background job of a script does.
fn signal_stops_the_agent(tag: &str, sig: Signal, sigint_ignored: bool) {
    let mut s = setup(tag);
    if sigint_ignored {
        s.sim.agent = None;
        s.sim.start_agent_with(|c| {
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                c.pre_exec(|| {
                    libc::signal(libc::SIGINT, libc::SIG_IGN);
                    Ok(())
                });
            }
        });
    }
    let (host, guest) = (&s.host, &s.guest);
    let file = s.sim.dir.path().join("t.dat");
    let before = guest.enabled_events().unwrap();
    let mut rec = Killed(
        record_a(&s.sim, host, guest, &file, "sleep 60")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("guest recording", Duration::from_secs(15), || {
        guest.tracing_on().unwrap_or(false)
    });
    let mut agent = s.sim.agent.take().unwrap();
    let pid = nix::unistd::Pid::from_raw(agent.0.id() as i32);
    nix::sys::signal::kill(pid, sig).unwrap();
    let mut status = None;
    wait_until("agent exit", Duration::from_secs(10), || {
        status = agent.0.try_wait().unwrap();
        status.is_some()
    });
    let log = std::fs::read_to_string(s.sim.dir.path().join("agent.log")).unwrap();
    assert!(
        status.unwrap().success(),
        "agent exit {status:?} on {sig}:\n{log}"
    );
    assert!(!guest.tracing_on().unwrap(), "tracing left on in the guest");
    assert_eq!(
        guest.enabled_events().unwrap(),
        before,
        "guest events left enabled"
    );
    let _ = rec.0.kill();
    let _ = rec.0.wait();
    // The killed manager could not remove its clock-reading instance.
    tracecmd_rs::record::tsync::remove_stale_instances();
}

/// The report's timestamp (seconds) of the line holding `needle` exactly.
fn stamp_of(rep: &str, needle: &str) -> Option<f64> {
    let line = rep
        .lines()
        .find(|l| l.trim_end().ends_with(&format!(" {needle}")))?;
    line.split_whitespace()
        .filter_map(|w| w.strip_suffix(':'))
        .find_map(|w| w.parse::<f64>().ok().filter(|_| w.contains('.')))
}

/// Host marker H_i, guest marker G_i, host marker H'_i, `n` times, 20 ms apart.
fn ping_script(host: &Instance, guest: &Instance, n: usize) -> String {
    format!(
        "i=0; while [ $i -lt {n} ]; do echo tcrs-H-$i > {h}; sleep 0.02; echo tcrs-G-$i > {g}; sleep 0.02; echo tcrs-HH-$i > {h}; i=$((i+1)); done",
        h = host.path().join("trace_marker").display(),
        g = guest.path().join("trace_marker").display(),
    )
}

/// How many i have H_i < G_i < H'_i in the report of `file` (and how many pings
/// were found at all).
fn causal(file: &Path, n: usize) -> (usize, usize) {
    let rep = report(file).stdout;
    let mut held = 0;
    let mut found = 0;
    for i in 0..n {
        let (Some(h), Some(g), Some(hh)) = (
            stamp_of(&rep, &format!("tcrs-H-{i}")),
            stamp_of(&rep, &format!("tcrs-G-{i}")),
            stamp_of(&rep, &format!("tcrs-HH-{i}")),
        ) else {
            continue;
        };
        found += 1;
        if h < g && g < hh {
            held += 1;
        }
    }
    (held, found)
}

/// Issue 12: the guest records with trace clock `tai` (≈ 1.7·10⁹ s), the host
/// with `local` (seconds since boot), so the raw guest clock is far ahead. With
/// clock sync every host/guest/host ping is in causal order in Debian's report;
/// with `--tsync-interval -1` none is.
#[test]
fn clock_sync_puts_the_guest_on_the_host_timeline() {
    let s = setup("vtsync");
    let (sim, host, guest) = (&s.sim, &s.host, &s.guest);
    const N: usize = 20;
    let run = |file: &Path, interval: &str| {
        let mut c = tc(sim);
        c.args(["record", "-B", &instance_name(host), "-C", "local"])
            .args(["-e", "sched:sched_kthread_stop", "-o"])
            .arg(file)
            .args(["--tsync-interval", interval])
            .args(["-A", "vm", "-B", &instance_name(guest), "-C", "tai"])
            .args(["-e", "sched:sched_kthread_stop"]);
        c.args(["/bin/sh", "-c", &ping_script(host, guest, N)]);
        c.output().unwrap()
    };
    let synced = sim.dir.path().join("sync.dat");
    let out = run(&synced, "200");
    assert!(out.status.success(), "record -A: {}", stderr(&out));
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = summary
        .lines()
        .find(|l| l.starts_with("Guest vm clock:"))
        .unwrap_or_else(|| panic!("no clock summary for the guest:\n{summary}"));
    println!("{line}");
    // tai is ahead of local by more than 10^9 s: the offset is large and negative.
    let offset: i64 = line
        .split("offset ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("offset in the summary");
    assert!(offset < -1_000_000_000_000_000_000, "offset {offset}");
    let (held, found) = causal(&synced, N);
    println!("synced: {held} of {found} pings in causal order");
    assert_eq!(found, N, "pings missing from the report");
    assert_eq!(held, N);
    // The stored correction is in the file.
    let bytes = std::fs::read(&synced).unwrap();
    assert!(bytes
        .windows(26)
        .any(|w| w == b"tracecmd-rs guest clock v1"));

    let raw = sim.dir.path().join("raw.dat");
    let out = run(&raw, "-1");
    assert!(
        out.status.success(),
        "record -A --tsync-interval -1: {}",
        stderr(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Guest vm clock: none: --tsync-interval -1")
    );
    let (held, found) = causal(&raw, N);
    println!("raw guest clock: {held} of {found} pings in causal order");
    assert_eq!(found, N);
    assert_eq!(held, 0);
}

/// Issue 12, mixed peers, the other direction: a manager that behaves like the
/// virt-server branch's C manager (spec §3.6: CONNECT and argv, TINIT, RINIT, the
/// metadata, then CLOSE, ACK, FINISH) never offers clock sync. Our agent gives it
/// exactly that flow: nothing between FINMETA and CLOSE, the ACK as the only
/// answer to CLOSE, nothing after it, and the guest's pages on the CPU ports.
/// Then our own manager (which offers) gets a synced recording from the same agent.
#[test]
fn a_manager_that_never_offers_clock_sync_gets_the_flow_it_knows() {
    use std::os::fd::AsFd;
    use tracecmd_rs::msg::v2::{self, Msg};
    use tracecmd_rs::msg::{session, Channel, MsgError, Wait};

    let s = setup("vcman");
    let (sim, host, guest) = (&s.sim, &s.host, &s.guest);
    let paths = tracecmd_rs::virt::VirtPaths::new(
        Some(sim.dir.path().join("run")),
        Some(sim.dir.path().join("virt")),
    );
    let link = tracecmd_rs::record::guest::GuestLink::from_listener(&paths, "vm", 0).unwrap();
    let ch = Channel::new(link.agent.as_fd());
    let guest_name = instance_name(guest);
    let argv = ["-B", guest_name.as_str(), "-e", "sched:sched_kthread_stop"];
    v2::send(
        &ch,
        &Msg::Connect {
            cpus: argv.len() as u32,
        },
    )
    .unwrap();
    for a in argv {
        session::send_string(&ch, a.as_bytes()).unwrap();
    }
    let cpus = match v2::recv(&ch, Wait::Timed).unwrap() {
        Msg::TInit { cpus, .. } => cpus,
        m => panic!("the agent answered CONNECT with {}", m.cmd().name()),
    };
    session::send_port_array(&ch, cpus, None).unwrap();
    let mut meta = 0;
    loop {
        match v2::recv(&ch, Wait::Timed).unwrap() {
            Msg::SendMeta(d) => meta += d.len(),
            Msg::FinMeta => break,
            m => panic!("{} among the metadata", m.cmd().name()),
        }
    }
    assert!(meta > 0, "no metadata");
    // The guest records: its markers, while a C manager runs its command.
    let mut marker = File::options()
        .write(true)
        .open(guest.path().join("trace_marker"))
        .unwrap();
    for i in 0..300 {
        marker
            .write_all(format!("tcrs-GUEST-MARK-{i}").as_bytes())
            .unwrap();
    }
    let silent = |what: &str| {
        let quiet =
            Channel::new(link.agent.as_fd()).with_timeout(Some(Duration::from_millis(1500)));
        match v2::recv(&quiet, Wait::Timed) {
            Err(MsgError::TimedOut(_)) => {}
            Ok(m) => panic!("{what}: the agent sent {} unasked", m.cmd().name()),
            Err(e) => panic!("{what}: {e}"),
        }
    };
    silent("while recording");
    v2::send(&ch, &Msg::Close).unwrap();
    assert_eq!(v2::recv(&ch, Wait::Timed).unwrap(), Msg::Ack);
    v2::send(&Channel::new(link.manager.as_fd()), &Msg::Finish).unwrap();
    silent("after the ACK");
    // The pages came through the CPU ports (read until the last marker shows).
    let mut pages = Vec::new();
    let mut fifos: Vec<File> = link.cpu_fifos.into_iter().map(File::from).collect();
    for f in &fifos {
        use std::os::fd::AsRawFd;
        nix::fcntl::fcntl(
            f.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
    }
    let last = b"tcrs-GUEST-MARK-299";
    wait_until("the guest's pages", Duration::from_secs(10), || {
        let mut buf = [0u8; 16384];
        for f in &mut fifos {
            while let Ok(n @ 1..) = f.read(&mut buf) {
                pages.extend_from_slice(&buf[..n]);
            }
        }
        pages.windows(last.len()).any(|w| w == last)
    });
    // The same agent, now with a manager that offers clock sync.
    let file = sim.dir.path().join("t.dat");
    let out = record_markers(sim, host, guest, &file);
    assert!(
        out.status.success(),
        "record -A afterwards: {}",
        stderr(&out)
    );
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        bytes
            .windows(26)
            .any(|w| w == b"tracecmd-rs guest clock v1"),
        "the next manager's recording is not synced"
    );
}

#[test]
fn sigterm_stops_the_agent_and_restores_the_guest_tracefs() {
    signal_stops_the_agent("vterm", Signal::SIGTERM, false);
}

#[test]
fn sigint_stops_the_agent_and_restores_the_guest_tracefs() {
    signal_stops_the_agent("vint", Signal::SIGINT, false);
}

#[test]
fn sigint_stops_an_agent_started_with_sigint_ignored() {
    signal_stops_the_agent("vintign", Signal::SIGINT, true);
}

/// A registered agent that waits for a manager exits 0 on either signal.
#[test]
fn signals_stop_an_idle_agent() {
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        let mut sim = Sim::new(&format!("vidle-{sig}"));
        let mut agent = sim.agent.take().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.0.id() as i32), sig).unwrap();
        let mut status = None;
        wait_until("agent exit", Duration::from_secs(10), || {
            status = agent.0.try_wait().unwrap();
            status.is_some()
        });
        assert!(status.unwrap().success(), "agent exit {status:?} on {sig}");
    }
}

/// An agent still waiting for the listener's answer stops cleanly too.
#[test]
fn signals_stop_an_agent_that_waits_for_the_listener() {
    for (i, sig) in [Signal::SIGINT, Signal::SIGTERM].into_iter().enumerate() {
        let dir = TempDir::new(&format!("vwait{i}"));
        let ports = dir.path().join("ports");
        std::fs::create_dir_all(&ports).unwrap();
        // Ports nobody answers on: the agent keeps retrying its handshake.
        let mut slaves = Vec::new();
        for name in PORTS {
            let pty = nix::pty::openpty(None, None).unwrap();
            let path = nix::unistd::ttyname(&pty.slave).unwrap();
            std::os::unix::fs::symlink(&path, ports.join(name)).unwrap();
            slaves.push(pty);
        }
        let log = dir.path().join("agent.log");
        let mut agent = Killed(
            Command::new(BIN)
                .args(["agent", "--virt", "--debug", "--ports-dir"])
                .arg(&ports)
                .stderr(File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        wait_until("agent started", Duration::from_secs(10), || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("ports in"))
        });
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.0.id() as i32), sig).unwrap();
        let mut status = None;
        wait_until("agent exit", Duration::from_secs(10), || {
            status = agent.0.try_wait().unwrap();
            status.is_some()
        });
        assert!(
            status.unwrap().success(),
            "agent exit {status:?} on {sig}:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
    }
}
