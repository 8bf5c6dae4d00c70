//! The recording engine (`tracecmd_rs::record`) driven directly, without the
//! `trace-cmd` binary (root, tracefs): a private instance recorded into a file and
//! read back by our reader and by Debian's `trace-cmd report`; the abort path; and
//! guests whose agent is a scripted peer on a socket pair, with pipes as the CPU
//! FIFOs.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use testkit::debian::report;
use testkit::tracefs::markers_on_cpu;
use testkit::{instance, TempDir};
use tracecmd_rs::msg::session;
use tracecmd_rs::msg::tsync::{self, TsyncMsg};
use tracecmd_rs::msg::v2::{self, Msg};
use tracecmd_rs::msg::{Channel, Wait};
use tracecmd_rs::output::layout::{parse_fields, walk_page, EventLayout, PageLayout};
use tracecmd_rs::output::reader::TraceDat;
use tracecmd_rs::output::{page_size_of, Metadata};
use tracecmd_rs::record::tsync::TsyncConfig;
use tracecmd_rs::record::{
    GuestLink, HostSetup, RecordError, RecordSession, Recorded, TraceWriter, V6FileWriter,
    V7FileWriter,
};
use tracecmd_rs::tracefs::{self, CpuStats, Instance};

fn never() -> bool {
    false
}

fn name_of(inst: &Instance) -> String {
    let name = inst.path().file_name().and_then(|n| n.to_str());
    name.expect("an instance directory").to_string()
}

fn session(file: &Path) -> RecordSession {
    session_v(file, 6)
}

/// A session writing trace.dat `version` (7: with zstd).
fn session_v(file: &Path, version: u32) -> RecordSession {
    let writer: Box<dyn TraceWriter> = match version {
        6 => Box::new(V6FileWriter::new(file)),
        _ => Box::new(V7FileWriter::new(
            file,
            tracecmd_rs::output::Compression::parse("zstd").unwrap(),
        )),
    };
    RecordSession::to_file(writer, Duration::from_millis(1), never)
}

fn setup(inst: &Instance) -> HostSetup {
    HostSetup {
        buffer_name: name_of(inst),
        events: inst.resolve_events(&["sched:sched_switch"]).unwrap(),
        buffer_kb: Some(1024),
        ..HostSetup::default()
    }
}

/// Events per CPU the kernel saw: what is still in the buffer plus what was read.
fn kernel_counts(stats: &[CpuStats]) -> Vec<u64> {
    stats.iter().map(|s| s.entries + s.read_events).collect()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Checks a buffer of `file` against `want` with our reader and with `report`.
fn check_buffer(file: &Path, buffer: &str, want: &[u64]) -> TraceDat {
    let bytes = std::fs::read(file).unwrap();
    let dat = TraceDat::parse(&bytes).expect("our reader parses the file");
    let idx = dat
        .buffers
        .iter()
        .position(|b| b.name == buffer)
        .unwrap_or_else(|| panic!("no buffer {buffer:?} in the file"));
    let mut ours = dat.count_events(&bytes, idx).unwrap();
    // A v7 BUFFER option may list fewer CPUs than the file has (no data).
    ours.resize(ours.len().max(want.len()), 0);
    assert_eq!(&ours[..want.len()], want, "reader vs kernel, {buffer:?}");
    // testkit's parser: a comm may contain " [" (e.g. "client [::ffff:…").
    assert_eq!(
        report(file).per_cpu(buffer, want.len()),
        want,
        "report vs kernel"
    );
    dat
}

/// The lines of `buffer` in `report`'s output, without the buffer's name. With
/// several named buffers, `report` right-aligns their names.
fn buffer_lines<'a>(stdout: &'a str, buffer: &str) -> impl Iterator<Item = &'a str> {
    let prefix = format!("{buffer}: ");
    stdout
        .lines()
        .filter_map(move |l| l.trim_start().strip_prefix(&prefix))
}

#[test]
fn private_instance_into_a_file() {
    let inst = instance("eng");
    let name = name_of(&inst);
    let cpus = tracefs::cpu_count(&inst).unwrap();
    let dir = TempDir::new("eng");
    let file = dir.path().join("t.dat");
    let mut s = session(&file);
    assert_eq!(s.recorded_bytes(), None, "no host recording yet");
    s.start_host(Instance::open(&name).unwrap(), setup(&inst))
        .unwrap();
    assert!(inst.tracing_on().unwrap(), "tracing is on while recording");
    assert_eq!(
        inst.enabled_events().unwrap(),
        inst.resolve_events(&["sched:sched_switch"]).unwrap()
    );
    let mut temp: Vec<String> = (0..cpus).map(|c| format!("t.dat.cpu{c}")).collect();
    temp.sort();
    assert_eq!(files_in(dir.path()), temp, "one temporary file per CPU");
    for cpu in 0..cpus {
        markers_on_cpu(&inst, cpu, 300);
    }
    assert!(!s.finished_early());
    assert!(!s.peer_gone());
    let Recorded {
        host_ranges, stats, ..
    } = s.finish().unwrap();
    assert_eq!(files_in(dir.path()), vec!["t.dat".to_string()]);
    assert!(inst.enabled_events().unwrap().is_empty(), "events put back");
    assert_eq!(stats.len(), cpus);
    let want = kernel_counts(&stats);
    assert!(want.iter().all(|&n| n >= 300), "markers missing: {want:?}");
    let dat = check_buffer(&file, &name, &want);
    // What finish reports is where the data is.
    let idx = dat.buffers.iter().position(|b| b.name == name).unwrap();
    let ranges: Vec<(u64, u64)> = host_ranges.iter().map(|r| (r.offset, r.size)).collect();
    assert_eq!(ranges, dat.buffers[idx].cpu_data);
    assert!(report(&file).stdout.contains("tcrs marker 299 on cpu 0"));
}

#[test]
fn a_dropped_or_aborted_session_leaves_nothing() {
    let inst = instance("engdrop");
    let name = name_of(&inst);
    let dir = TempDir::new("engdrop");
    let file = dir.path().join("t.dat");
    for (version, abort) in [(6, false), (6, true), (7, false), (7, true)] {
        let mut s = session_v(&file, version);
        s.start_host(Instance::open(&name).unwrap(), setup(&inst))
            .unwrap();
        markers_on_cpu(&inst, 0, 10);
        // v7 keeps its data in unnamed files (O_TMPFILE): nothing to see.
        assert_eq!(files_in(dir.path()).is_empty(), version == 7);
        if abort {
            let e = s.abort("cannot run \"x\": gone".into());
            assert!(matches!(e, RecordError::NotRecorded { .. }), "{e}");
            assert!(e.to_string().contains("nothing was written to"), "{e}");
        } else {
            drop(s);
        }
        assert!(files_in(dir.path()).is_empty(), "left behind after abort");
        assert!(inst.enabled_events().unwrap().is_empty(), "events put back");
        // A fresh instance has tracing on; the recording put that back.
        assert!(inst.tracing_on().unwrap());
    }
}

/// The agent's end of a guest: control socket, the manager socket's far end, and
/// the write ends of its CPU "FIFOs".
struct ScriptedAgent {
    control: UnixStream,
    manager: UnixStream,
    cpus: Vec<File>,
}

fn guest_link(cpus: usize) -> (GuestLink, ScriptedAgent) {
    let (a_ours, a_theirs) = UnixStream::pair().unwrap();
    let (m_ours, m_theirs) = UnixStream::pair().unwrap();
    let mut fifos = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..cpus {
        let (r, w) = nix::unistd::pipe().unwrap();
        fifos.push(r);
        writers.push(File::from(w));
    }
    (
        GuestLink {
            manager: OwnedFd::from(m_ours),
            agent: OwnedFd::from(a_ours),
            cpu_fifos: fifos,
        },
        ScriptedAgent {
            control: a_theirs,
            manager: m_theirs,
            cpus: writers,
        },
    )
}

/// A guest's recording made beforehand on a private instance: metadata, the
/// pages of each CPU, how many events each holds, and for each marker (all on
/// CPU 0) its raw timestamp and the timestamp of its page: `marks[k]` is
/// marker k's (timestamp, page timestamp).
struct GuestData {
    meta: Vec<u8>,
    page_size: usize,
    pages: Vec<Vec<u8>>,
    counts: Vec<u64>,
    marks: Vec<(u64, u64)>,
}

const GUEST_MARKERS: usize = 400;

fn guest_data() -> GuestData {
    guest_data_with(&[], |_| {})
}

/// [`guest_data`] with `selectors` enabled too, and the metadata changed by `edit`
/// (as a guest with another kernel would have it).
fn guest_data_with(selectors: &[&str], edit: impl FnOnce(&mut Metadata)) -> GuestData {
    let inst = instance("engguest");
    let cpus = tracefs::cpu_count(&inst).unwrap();
    let dir = TempDir::new("engguest");
    let rec = testkit::kernel::record(&inst, selectors, dir.path(), "guest", |i| {
        markers_on_cpu(i, 0, GUEST_MARKERS)
    });
    let mut meta = Metadata::from_tracefs(&inst, &rec.events).unwrap();
    edit(&mut meta);
    assert_eq!(meta.page_size, page_size_of(&meta.header_page));
    let pages: Vec<Vec<u8>> = (0..cpus)
        .map(|c| std::fs::read(&rec.cpu_files[c]).unwrap())
        .collect();
    let pl = PageLayout::parse(&meta.header_page).unwrap();
    let el = EventLayout::parse(&meta.header_event).unwrap();
    let mut marks = Vec::new();
    for page in pages[0].chunks(meta.page_size as usize) {
        let page_ts = u64::from_le_bytes(page[pl.timestamp.0..][..8].try_into().unwrap());
        walk_page(page, &pl, &el, false, |r| {
            let text = String::from_utf8_lossy(r.payload);
            if text.contains(&format!("tcrs marker {} on cpu 0", marks.len())) {
                marks.push((r.ts, page_ts));
            }
        })
        .unwrap();
    }
    assert_eq!(
        marks.len(),
        GUEST_MARKERS,
        "the guest's markers in its pages"
    );
    GuestData {
        meta: meta.to_bytes().unwrap(),
        page_size: meta.page_size as usize,
        pages,
        counts: rec.stats.iter().map(|s| s.entries).collect(),
        marks,
    }
}

/// The clock of a scripted agent that takes part in clock sync and whose clock
/// steps: every probe of the first round reads `first`; before the second round
/// the guest is "suspended" for `pause`, and every later probe reads `second`.
/// (A clock that stands still during a round puts the rounds' guest times
/// exactly where the test wants them.)
struct SteppingClock {
    first: u64,
    second: u64,
    pause: Duration,
    rounds: usize,
    /// How long the agent takes to accept the offer.
    accept_after: Duration,
}

impl SteppingClock {
    /// Answers one tsync message from the manager.
    fn answer(&mut self, ch: &Channel<'_>, m: TsyncMsg) {
        let reply = match m {
            TsyncMsg::Offer => {
                std::thread::sleep(self.accept_after);
                TsyncMsg::Accept {
                    clock: "stepping".into(),
                }
            }
            TsyncMsg::Round => {
                self.rounds += 1;
                if self.rounds == 2 {
                    std::thread::sleep(self.pause);
                }
                TsyncMsg::Ready
            }
            TsyncMsg::Probe { seq } => TsyncMsg::Time {
                seq,
                ns: if self.rounds <= 1 {
                    self.first
                } else {
                    self.second
                },
            },
            m => panic!("the manager sent {m:?}"),
        };
        tsync::send(ch, &reply).unwrap();
    }
}

/// Plays the agent: reads CONNECT and the arguments, answers TINIT, reads RINIT,
/// sends the metadata, half of each CPU's pages, then on CLOSE the rest and ACK
/// (unless `dies`: then it closes instead). Like a C agent of the virt-server
/// branch (and released V2's close wait), it skips whatever comes before CLOSE;
/// returns the arguments it got, then `skipped:<CMD>` for each skipped message
/// (and `tsync:<msg>` for each clock-sync message but probes it answered).
fn play_agent(agent: ScriptedAgent, data: GuestData, dies: bool) -> JoinHandle<Vec<String>> {
    play_agent_with(agent, data, dies, None)
}

/// [`play_agent`], answering clock sync with `clock` when there is one.
fn play_agent_with(
    agent: ScriptedAgent,
    data: GuestData,
    dies: bool,
    mut clock: Option<SteppingClock>,
) -> JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let ch = Channel::new(agent.control.as_fd());
        let Msg::Connect { cpus: argc } = v2::recv(&ch, Wait::Timed).unwrap() else {
            panic!("no CONNECT");
        };
        let argv = session::agent_parameters(&ch, argc).unwrap();
        let page_size = data.page_size;
        let rinit =
            session::send_init(&ch, data.pages.len() as u32, page_size as u32, false).unwrap();
        assert!(rinit.ports.is_empty(), "virt RINIT has no ports");
        session::send_metadata(&ch, &data.meta).unwrap();
        session::finish_metadata(&ch).unwrap();
        let mut cpus = agent.cpus;
        let halves: Vec<usize> = data
            .pages
            .iter()
            .map(|p| (p.len() / page_size / 2) * page_size)
            .collect();
        for ((w, p), h) in cpus.iter_mut().zip(&data.pages).zip(&halves) {
            w.write_all(&p[..*h]).unwrap();
        }
        let untimed = Channel::new(agent.control.as_fd()).with_timeout(None);
        let mut argv = argv_strings(argv);
        loop {
            match v2::recv(&untimed, Wait::Timed).unwrap() {
                Msg::Close => break,
                Msg::SendMeta(p) if tsync::is_tsync(&p) && clock.is_some() => {
                    let m = TsyncMsg::decode(&p).unwrap();
                    if !matches!(m, TsyncMsg::Probe { .. }) {
                        argv.push(format!("tsync:{m:?}"));
                    }
                    if let Some(c) = clock.as_mut() {
                        c.answer(&ch, m);
                    }
                }
                m => argv.push(format!("skipped:{}", m.cmd().name())),
            }
        }
        if dies {
            return argv;
        }
        for ((w, p), h) in cpus.iter_mut().zip(&data.pages).zip(&halves) {
            w.write_all(&p[*h..]).unwrap();
        }
        v2::send(&ch, &Msg::Ack).unwrap();
        // The manager frees the agent at the listener.
        let mch = Channel::new(agent.manager.as_fd());
        assert_eq!(v2::recv(&mch, Wait::Timed).unwrap(), Msg::Finish);
        argv
    })
}

/// The guest's name (its buffer in the file).
const VM: &str = "vm1";

fn argv_strings(v: Vec<Vec<u8>>) -> Vec<String> {
    v.into_iter()
        .map(|a| String::from_utf8(a).unwrap())
        .collect()
}

/// Records a private host instance (`tag`, 100 markers) and the scripted agent
/// playing `data` (with `clock` for clock sync) into `file`; returns the host
/// buffer's name, the guest's options, the result and what the agent got.
fn host_and_guest(
    file: &Path,
    tag: &str,
    data: GuestData,
    tsync: Option<TsyncConfig>,
    clock: Option<SteppingClock>,
    version: u32,
) -> (String, Vec<String>, Recorded, Vec<String>) {
    let inst = instance(tag);
    let name = name_of(&inst);
    let cpus = tracefs::cpu_count(&inst).unwrap();
    let mut s = session_v(file, version);
    s.set_clock_sync(tsync);
    let (link, agent) = guest_link(cpus);
    let peer = play_agent_with(agent, data, false, clock);
    let argv = vec!["-e".to_string(), "sched".to_string()];
    s.add_guest(VM, link, &argv).unwrap();
    s.start_host(Instance::open(&name).unwrap(), setup(&inst))
        .unwrap();
    markers_on_cpu(&inst, 0, 100);
    let rec = s.finish().unwrap();
    (name, argv, rec, peer.join().unwrap())
}

#[test]
fn host_and_scripted_guest_into_one_file() {
    host_and_scripted_guest_into_one_file_v(6);
}

#[test]
fn host_and_scripted_guest_into_one_v7_file() {
    host_and_scripted_guest_into_one_file_v(7);
}

fn host_and_scripted_guest_into_one_file_v(version: u32) {
    let dir = TempDir::new("engvm");
    let data = guest_data();
    let guest_counts = data.counts.clone();
    assert_eq!(guest_counts[0], GUEST_MARKERS as u64);
    let file = dir.path().join("t.dat");
    let (name, argv, Recorded { stats, .. }, got) =
        host_and_guest(&file, "enghost", data, None, None, version);
    assert_eq!(got, argv, "the agent got the guest's options");
    check_buffer(&file, &name, &kernel_counts(&stats));
    let dat = check_buffer(&file, VM, &guest_counts);
    assert_eq!(dat.version, version);
    let rep = report(&file);
    assert!(rep.stdout.contains("tcrs marker 399 on cpu 0"));
    assert!(rep.stdout.contains("tcrs marker 99 on cpu 0"));
    assert_eq!(files_in(dir.path()), vec!["t.dat".to_string()]);
}

#[test]
fn guest_events_that_clash_with_the_hosts_are_moved_in_its_pages() {
    clash_moved_v(6);
}

#[test]
fn guest_events_that_clash_are_moved_before_v7_compresses_them() {
    clash_moved_v(7);
}

fn clash_moved_v(version: u32) {
    // The guest's sched_switch has the host's ID but another format (another
    // kernel): it must get a free ID, in the formats and in the guest's pages.
    let data = guest_data_with(&["sched:sched_switch"], |m| {
        let sched = m.systems.iter_mut().find(|(s, _)| s == "sched").unwrap();
        for f in &mut sched.1 {
            let text = String::from_utf8(f.clone()).unwrap();
            *f = text
                .replace("name: sched_switch", "name: guest_switch")
                .into_bytes();
        }
    });
    let guest_counts = data.counts.clone();
    let dir = TempDir::new("engclash");
    let inst = instance("engclash");
    let name = name_of(&inst);
    let file = dir.path().join("t.dat");
    let mut s = session_v(&file, version);
    let (link, agent) = guest_link(data.pages.len());
    let peer = play_agent(agent, data, false);
    s.add_guest(VM, link, &["-e".into(), "sched".into()])
        .unwrap();
    s.start_host(Instance::open(&name).unwrap(), setup(&inst))
        .unwrap();
    // Sleeping switches this thread out: the host records a sched_switch.
    std::thread::sleep(Duration::from_millis(20));
    let Recorded { stats, .. } = s.finish().unwrap();
    peer.join().unwrap();
    check_buffer(&file, &name, &kernel_counts(&stats));
    check_buffer(&file, VM, &guest_counts);
    let rep = report(&file);
    let switches = |buffer: &str, event: &str| {
        buffer_lines(&rep.stdout, buffer)
            .filter(|l| l.contains(&format!(" {event}:")))
            .count() as u64
    };
    let guest_switches = switches(VM, "guest_switch");
    assert!(guest_switches > 0, "the guest recorded no sched_switch");
    assert_eq!(
        guest_switches,
        guest_counts.iter().sum::<u64>() - GUEST_MARKERS as u64,
        "every guest sched_switch decodes with the guest's format"
    );
    assert_eq!(switches(VM, "sched_switch"), 0);
    assert_eq!(switches(&name, "guest_switch"), 0);
    assert!(switches(&name, "sched_switch") > 0);
}

/// A pid no process of the host has (beyond any pid_max): the guest's writer.
const GUEST_PID: u32 = 4_000_000;

#[test]
fn guest_events_name_the_guests_symbols_and_processes() {
    guest_symbols_v(6, false);
}

#[test]
fn guest_events_name_the_guests_symbols_and_processes_v7() {
    guest_symbols_v(7, false);
}

#[test]
fn guest_process_names_missing_from_its_saved_cmdlines_come_from_its_sched_switch() {
    guest_symbols_v(7, true);
}

/// The guest runs "another kernel": every symbol of its kallsyms has another name
/// (`guest_` + the host's) at the host's address, and its markers were written by
/// a pid only the guest knows: named in its saved_cmdlines, or (`from_events`) only
/// in its sched_switch events, its saved_cmdlines being empty (read before the
/// process started; report's sched_switch plugin registers the names those events
/// give pids its table lacks). In Debian's report the guest's markers name the
/// guest's `tracing_mark_write` and process, the host's the host's. Without the
/// guest's own symbol window its markers would resolve through the host's table.
fn guest_symbols_v(version: u32, from_events: bool) {
    let selectors: &[&str] = if from_events {
        &["sched:sched_switch"]
    } else {
        &[]
    };
    let mut data = guest_data_with(selectors, |m| {
        let text = String::from_utf8(m.kallsyms.clone()).unwrap();
        assert!(
            text.lines().any(|l| l.ends_with(" tracing_mark_write")),
            "the host's kallsyms has tracing_mark_write with its address"
        );
        let renamed: String = text
            .lines()
            .map(|l| {
                let mut f = l.splitn(3, ' ');
                let (a, t, rest) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
                format!("{a} {t} guest_{rest}\n")
            })
            .collect();
        m.kallsyms = renamed.into_bytes();
        m.cmdlines = if from_events {
            Vec::new()
        } else {
            format!("{GUEST_PID} guest-writer\n").into_bytes()
        };
    });
    let meta = Metadata::parse(&data.meta).unwrap();
    let pl = PageLayout::parse(&meta.header_page).unwrap();
    let el = EventLayout::parse(&meta.header_event).unwrap();
    // sched_switch's ID and its (pid, comm) fields.
    let switch = meta
        .systems
        .iter()
        .flat_map(|(_, f)| f.iter())
        .find(|f| f.starts_with(b"name: sched_switch\n"));
    let switch = switch.map(|f| {
        let text = String::from_utf8_lossy(f);
        let id: u16 = text
            .lines()
            .find_map(|l| l.strip_prefix("ID:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let fields = parse_fields(f);
        let pairs: Vec<(usize, usize)> = ["prev", "next"]
            .iter()
            .map(|side| {
                (
                    fields[&format!("{side}_pid")].0,
                    fields[&format!("{side}_comm")].0,
                )
            })
            .collect();
        (id, pairs)
    });
    assert_eq!(switch.is_some(), from_events);
    // Every guest record's pid becomes GUEST_PID; sched_switch's naming the marker
    // writer name GUEST_PID "guest-writer".
    let mut records = Vec::new();
    for (c, cpu) in data.pages.iter().enumerate() {
        for (p, page) in cpu.chunks(data.page_size).enumerate() {
            walk_page(page, &pl, &el, false, |r| {
                let o = r.payload.as_ptr() as usize - page.as_ptr() as usize;
                let marker = String::from_utf8_lossy(r.payload).contains("tcrs marker");
                let pid = u32::from_le_bytes(r.payload[4..8].try_into().unwrap());
                records.push((c, p * data.page_size + o, marker.then_some(pid)));
            })
            .unwrap();
        }
    }
    let writer = records.iter().find_map(|r| r.2).unwrap();
    let mut renamed = 0;
    for (c, o, _) in records {
        let rec = &mut data.pages[c][o..];
        rec[4..8].copy_from_slice(&GUEST_PID.to_le_bytes());
        let Some((id, pairs)) = &switch else { continue };
        if u16::from_le_bytes([rec[0], rec[1]]) != *id {
            continue;
        }
        for &(pid, comm) in pairs {
            if rec[pid..pid + 4] == writer.to_le_bytes() {
                rec[pid..pid + 4].copy_from_slice(&GUEST_PID.to_le_bytes());
                rec[comm..comm + 16].copy_from_slice(b"guest-writer\0\0\0\0");
                renamed += 1;
            }
        }
    }
    assert!(
        !from_events || renamed > 0,
        "the marker writer switched in or out on the guest"
    );
    let dir = TempDir::new("engsyms");
    let file = dir.path().join("t.dat");
    let (name, ..) = host_and_guest(&file, "engsyms", data, None, None, version);
    let rep = report(&file);
    let marks = |buffer: &str| -> Vec<String> {
        buffer_lines(&rep.stdout, buffer)
            .filter(|l| l.contains("tcrs marker"))
            .map(str::to_string)
            .collect()
    };
    let (host, guest) = (marks(&name), marks(VM));
    assert_eq!((host.len(), guest.len()), (100, GUEST_MARKERS));
    if from_events {
        let names = buffer_lines(&rep.stdout, VM)
            .filter(|l| l.contains("sched_switch:") && l.contains("guest-writer"))
            .count();
        assert!(names > 0, "the guest's sched_switch name its writer");
    }
    for l in &guest {
        assert!(
            l.contains(" guest_tracing_mark_write: ")
                && l.contains(&format!("guest-writer-{GUEST_PID} ")),
            "a guest marker in report: {l}"
        );
    }
    for l in &host {
        assert!(
            l.contains(" tracing_mark_write: ") && !l.contains("guest-writer"),
            "a host marker in report: {l}"
        );
    }
}

#[test]
fn a_guest_that_dies_still_gives_a_file_with_what_arrived() {
    let dir = TempDir::new("engdead");
    let data = guest_data();
    let cpus = data.pages.len();
    let file = dir.path().join("t.dat");
    let mut s = session(&file);
    let (link, agent) = guest_link(cpus);
    let peer = play_agent(agent, data, true);
    s.add_guest(VM, link, &["-e".into(), "sched".into()])
        .unwrap();
    assert_eq!(s.recorded_bytes(), None, "guest-only: no live line");
    let e = s.finish().unwrap_err();
    peer.join().unwrap();
    let text = e.to_string();
    assert!(matches!(e, RecordError::GuestsIncomplete { .. }), "{text}");
    assert!(
        text.contains(&format!("guest {VM}: the agent did not confirm the stop")),
        "{text}"
    );
    assert!(text.contains("was written with the host data"), "{text}");
    // The file holds the guest's first half, readable.
    let bytes = std::fs::read(&file).unwrap();
    let dat = TraceDat::parse(&bytes).unwrap();
    let vm = dat.buffers.iter().position(|b| b.name == VM).unwrap();
    let got: u64 = dat.count_events(&bytes, vm).unwrap().iter().sum();
    assert!(
        got > 0 && got < GUEST_MARKERS as u64,
        "{got} events: the first half only"
    );
    report(&file);
}

#[test]
fn an_agent_that_refuses_is_an_error_and_is_freed() {
    let dir = TempDir::new("engref");
    let file = dir.path().join("t.dat");
    let mut s = session(&file);
    let (link, agent) = guest_link(1);
    let peer = std::thread::spawn(move || {
        let ch = Channel::new(agent.control.as_fd());
        let Msg::Connect { cpus: argc } = v2::recv(&ch, Wait::Timed).unwrap() else {
            panic!("no CONNECT");
        };
        session::agent_parameters(&ch, argc).unwrap();
        session::send_metadata(&ch, b"no such event: bogus").unwrap();
        session::finish_metadata(&ch).unwrap();
        let mch = Channel::new(agent.manager.as_fd());
        v2::recv(&mch, Wait::Timed).unwrap()
    });
    let e = s
        .add_guest("vm", link, &["-e".into(), "bogus".into()])
        .unwrap_err();
    assert_eq!(peer.join().unwrap(), Msg::Finish, "agent freed");
    assert!(
        e.to_string().contains(
            "guest vm: the guest agent of \"vm\" refused to record: no such event: bogus"
        ),
        "{e}"
    );
    drop(s);
    assert!(files_in(dir.path()).is_empty());
}

/// Issue 12, mixed peers: with clock sync on, an agent that does not know the
/// exchange (it skips the offer, as a C agent of the branch would) gets exactly
/// one SENDMETA more than before, never answers, and the recording is what it
/// was: every guest event in its buffer, on the guest's own clock, no clock
/// summary.
#[test]
fn an_agent_that_ignores_the_clock_sync_offer_records_as_before() {
    recorded_unsynced("engoffer", None, "skipped:SENDMETA");
}

/// Records the scripted agent (with `clock`, if any) with clock sync on, and
/// checks that the agent saw its arguments and then only `saw`, and that the
/// recording is whole and unsynced: no clock summary, no stored correction.
fn recorded_unsynced(tag: &str, clock: Option<SteppingClock>, saw: &str) {
    let dir = TempDir::new(tag);
    let data = guest_data();
    let guest_counts = data.counts.clone();
    let file = dir.path().join("t.dat");
    let tsync = TsyncConfig {
        interval: Some(Duration::from_millis(100)),
        host_clock: "local".into(),
    };
    let (_, argv, Recorded { guest_clocks, .. }, got) =
        host_and_guest(&file, &format!("{tag}host"), data, Some(tsync), clock, 6);
    let mut want = argv;
    want.push(saw.into());
    assert_eq!(got, want, "the offer, nothing else");
    assert!(guest_clocks.is_empty());
    check_buffer(&file, VM, &guest_counts);
    let bytes = std::fs::read(&file).unwrap();
    assert!(!bytes
        .windows(26)
        .any(|w| w == b"tracecmd-rs guest clock v1"));
}

/// Issue 12: a guest clock that steps between two sync rounds (the guest is
/// "suspended" for 300 ms and its clock does not count that time) is reported in
/// the summary, stored in the file, and not smeared over the interval: every
/// guest event keeps exactly the first round's offset or gets exactly the
/// second's, in Debian's report of the file. The second's from the second
/// round's guest time on, and from the start of the page that holds it (a
/// page's events cannot carry the jump in their middle).
#[test]
fn a_guest_clock_step_is_reported_and_not_smeared() {
    let dir = TempDir::new("engstep");
    let data = guest_data();
    let marks: Vec<u64> = data.marks.iter().map(|m| m.0).collect();
    let step_page = data.marks[200].1;
    // The first round reads just before the first marker, the second at marker
    // 200: in guest time the rounds are only as far apart as the markers.
    let clock = SteppingClock {
        first: marks[0] - 1_000,
        second: marks[200],
        pause: Duration::from_millis(300),
        rounds: 0,
        accept_after: Duration::ZERO,
    };
    let tsync = TsyncConfig {
        interval: None,
        host_clock: "local".into(),
    };
    let file = dir.path().join("t.dat");
    let data_page: Vec<u64> = data.marks.iter().map(|m| m.1).collect();
    let (_, _, Recorded { guest_clocks, .. }, _) =
        host_and_guest(&file, "engstephost", data, Some(tsync), Some(clock), 7);
    let [(guest, summary)] = &guest_clocks[..] else {
        panic!("one synced guest expected: {guest_clocks:?}");
    };
    assert_eq!(guest, VM);
    println!("Guest {guest} clock: {summary}");
    assert_eq!(summary.rounds, 2);
    let [step] = &summary.steps[..] else {
        panic!("the step is not reported: {summary}");
    };
    assert!(summary.to_string().contains("stepped by"), "{summary}");
    // The guest lost the 300 ms it was suspended: host - guest grew by about that.
    assert!(
        step.jump_ns > 250_000_000 && step.jump_ns < 5_000_000_000,
        "jump {} ns",
        step.jump_ns
    );
    assert_eq!(
        (step.from_guest_ns, step.to_guest_ns),
        (marks[0] - 1_000, marks[200])
    );
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        bytes.windows(6).any(|w| w == b"\nstep "),
        "the step is not stored in the file"
    );
    // Each marker's shift in the report (ns timestamps) against its raw time.
    let before = summary.offset_ns;
    let after = before + step.jump_ns;
    let out = std::process::Command::new("/usr/bin/trace-cmd")
        .args(["report", "-t"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "Debian's report -t failed");
    let rep = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut seen = 0;
    let mut sides = [0; 2];
    for line in buffer_lines(&rep, VM) {
        let Some(k) = line
            .split("tcrs marker ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|k| k.parse::<usize>().ok())
        else {
            continue;
        };
        let shown = line
            .split_whitespace()
            .find_map(|w| w.strip_suffix(':').filter(|w| w.contains('.')))
            .and_then(|w| w.split_once('.'))
            .map(|(s, n)| s.parse::<u64>().unwrap() * 1_000_000_000 + n.parse::<u64>().unwrap())
            .unwrap_or_else(|| panic!("no timestamp in {line:?}"));
        let late = data_page[k] == step_page && step_page < marks[200];
        let want = if k >= 200 || late { after } else { before };
        sides[usize::from(want == after)] += 1;
        assert_eq!(
            shown as i64 - marks[k] as i64,
            want,
            "marker {k}: shifted by another offset than its side of the step's"
        );
        seen += 1;
    }
    assert_eq!(seen, GUEST_MARKERS, "guest markers in the report");
    assert!(
        sides[0] > 0 && sides[1] > 0,
        "{sides:?} before/after the step"
    );
}

/// Issue 12: the manager waits for the answer to its offer only a little longer
/// than the agent's replies took (at most `OFFER_WAIT`). An agent that accepts
/// later than that is recorded as one that does not sync: no round is started,
/// its late answer is ignored, and its recording is whole.
#[test]
fn an_agent_that_accepts_the_offer_too_late_is_recorded_unsynced() {
    let clock = SteppingClock {
        first: 1,
        second: 2,
        pause: Duration::ZERO,
        rounds: 0,
        accept_after: tracecmd_rs::record::tsync::OFFER_WAIT + Duration::from_millis(500),
    };
    recorded_unsynced("englate", Some(clock), "tsync:Offer");
}
