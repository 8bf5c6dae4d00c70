//! One listener against hostile, broken, slow and many clients: it must answer
//! each with an error of that session only, never stall the others, and serve a
//! normal client afterwards (issue 5 items 1 and 4). Scripted clients of all
//! three generations (V1, V2, V3) check the normal paths too. No root needed.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use testkit::dat::{metadata_bytes, PAGE};
use testkit::listen::Running;
use tracecmd_rs::listen::{name, ListenConfig, ListenError, Outcome, Protocol, SessionReport};
use tracecmd_rs::msg::handshake::{self, Negotiated};
use tracecmd_rs::msg::v1::ClientInit;
use tracecmd_rs::msg::{session as msess, v3, Channel, Wait};
use tracecmd_rs::output::reader::TraceDat;
use tracecmd_rs::output::{write_options_block, DatOption};

const TIMEOUT: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(20);

/// Log lines of this test program (the listener's partial-file message is checked).
struct Capture;
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());
impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            LINES.lock().unwrap().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}
static CAPTURE: Capture = Capture;

static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();

/// The one listener all tests of this program share.
fn listener() -> &'static Arc<Running> {
    static L: OnceLock<Arc<Running>> = OnceLock::new();
    L.get_or_init(|| {
        let _ = log::set_logger(&CAPTURE);
        log::set_max_level(log::LevelFilter::Info);
        // Output under target/; directories of earlier runs whose process is gone
        // are removed (the files themselves are removed test by test).
        let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("listen-hostile-") {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = base.join(format!("listen-hostile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        DIR.set(dir.clone()).unwrap();
        Running::start(ListenConfig {
            dir,
            timeout: Some(TIMEOUT),
            drain_quiet: Duration::from_millis(200),
            ..ListenConfig::default()
        })
    })
}

fn connect() -> (TcpStream, u16) {
    let s = TcpStream::connect(("127.0.0.1", listener().port)).expect("connect to the listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let p = s.local_addr().unwrap().port();
    (s, p)
}

/// What a V3 client with `--file-version 6` sends: metadata + CPU count + options.
fn metadata_v3(cpus: u32) -> Vec<u8> {
    metadata_v3_clock(cpus, "[local] global\n")
}

fn metadata_v3_clock(cpus: u32, trace_clock: &str) -> Vec<u8> {
    let mut m = metadata_bytes();
    write_options_block(&mut m, cpus, &[DatOption::trace_clock(trace_clock)]).unwrap();
    m
}

fn page(cpu: usize, n: usize) -> Vec<u8> {
    let mut p = vec![0u8; PAGE];
    p[0..8].copy_from_slice(&(1000 + n as u64).to_le_bytes());
    p[16] = cpu as u8;
    p[17] = n as u8;
    p
}

/// Sends `pages[cpu]` pages to each port, UDP or TCP.
fn send_data(ports: &[u32], tcp: bool, pages: &[usize]) {
    for (cpu, (&port, &n)) in ports.iter().zip(pages).enumerate() {
        if tcp {
            let mut s = TcpStream::connect(("127.0.0.1", port as u16)).expect("data connection");
            for i in 0..n {
                s.write_all(&page(cpu, i)).unwrap();
            }
        } else {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.connect(("127.0.0.1", port as u16)).unwrap();
            for i in 0..n {
                s.send(&page(cpu, i)).unwrap();
            }
        }
    }
}

fn v3_handshake(ch: &Channel<'_>) {
    let mut g = [0u8; 8];
    ch.recv_exact(&mut g, Wait::Timed).unwrap();
    assert_eq!(&g, b"tracecmd");
    ch.send_all(handshake::V3_CPU).unwrap();
    let mut r = [0u8; 3];
    ch.recv_exact(&mut r, Wait::Timed).unwrap();
    assert_eq!(&r, handshake::V3_REPLY);
    ch.send_all(handshake::V3_MAGIC).unwrap();
    let mut ok = [0u8; 2];
    ch.recv_exact(&mut ok, Wait::Timed).unwrap();
    assert_eq!(&ok, b"OK");
}

/// A V3 client (file version 6 metadata); `close` false vanishes before CLOSE.
fn v3_client(tcp: bool, pages: &[usize], close: bool) -> u16 {
    v3_client_with(tcp, pages, close, &metadata_v3(pages.len() as u32))
}

fn v3_client_with(tcp: bool, pages: &[usize], close: bool, meta: &[u8]) -> u16 {
    let (s, port) = connect();
    v3_client_on(s, tcp, pages, close, meta);
    port
}

/// A V3 client session on the connection `s`.
fn v3_client_on(s: TcpStream, tcp: bool, pages: &[usize], close: bool, meta: &[u8]) {
    let ch = Channel::new(s.as_fd()).with_timeout(Some(Duration::from_secs(10)));
    v3_handshake(&ch);
    let cpus = pages.len() as u32;
    let options = if tcp { vec!["tcp".to_string()] } else { vec![] };
    v3::send(
        &ch,
        &v3::Msg::TInit {
            cpus,
            page_size: PAGE as u32,
            options,
        },
    )
    .unwrap();
    let v3::Msg::RInit { ports } = v3::recv(&ch, Wait::Timed).unwrap() else {
        panic!("no RINIT")
    };
    assert_eq!(ports.len(), pages.len());
    for c in meta.chunks(8180) {
        v3::send(&ch, &v3::Msg::SendData(c.to_vec())).unwrap();
    }
    v3::send(&ch, &v3::Msg::FinData).unwrap();
    send_data(&ports, tcp, pages);
    if close {
        v3::send(&ch, &v3::Msg::Close).unwrap();
    }
}

/// Checks a finished session's file: one flyrecord, `pages[cpu]` pages per CPU.
fn check_file(r: &SessionReport, pages: &[usize]) {
    let file = r.output.as_ref().expect("an output file");
    let bytes = std::fs::read(file).unwrap();
    let dat = TraceDat::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(dat.version, 6);
    assert_eq!(dat.cpus as usize, pages.len());
    let sizes: Vec<u64> = dat.buffers[0].cpu_data.iter().map(|c| c.1).collect();
    let want: Vec<u64> = pages.iter().map(|&n| (n * PAGE) as u64).collect();
    assert_eq!(sizes, want, "{}", file.display());
    for (cpu, &(off, size)) in dat.buffers[0].cpu_data.iter().enumerate() {
        assert_eq!(off % PAGE as u64, 0);
        if size > 0 {
            let first = &bytes[off as usize..off as usize + PAGE];
            assert_eq!(first, &page(cpu, 0)[..], "CPU {cpu} data");
        }
    }
    let _ = std::fs::remove_file(file);
}

fn expect_complete(client_port: u16, pages: &[usize], proto: Protocol) {
    let r = listener().report_for(client_port, WAIT);
    assert!(matches!(r.result, Ok(Outcome::Complete)), "{:?}", r.result);
    assert_eq!(r.protocol, Some(proto));
    check_file(&r, pages);
}

/// The files in the listener's directory named after `client_port`.
fn files_of(client_port: u16) -> Vec<std::path::PathBuf> {
    let (a, b) = (format!(":{client_port}."), format!(":{client_port}-"));
    std::fs::read_dir(DIR.get().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.contains(&a) || n.contains(&b)
        })
        .collect()
}

fn expect_error(client_port: u16) -> ListenError {
    let r = listener().report_for(client_port, WAIT);
    if r.output.is_some() {
        // A failed assembly keeps the metadata and the raw data for a person.
        for f in files_of(client_port) {
            let _ = std::fs::remove_file(f);
        }
    } else {
        // Any earlier failure leaves nothing behind.
        assert_eq!(files_of(client_port), Vec::<std::path::PathBuf>::new());
    }
    match r.result {
        Err(e) => e,
        Ok(o) => panic!("session from port {client_port} ended {o:?}, expected an error"),
    }
}

fn normal_client_works() {
    let p = v3_client(false, &[2, 1], true);
    expect_complete(p, &[2, 1], Protocol::V3);
}

#[test]
fn v3_client_udp_and_tcp() {
    let p = v3_client(false, &[3, 0, 2], true);
    expect_complete(p, &[3, 0, 2], Protocol::V3);
    let p = v3_client(true, &[1, 4], true);
    expect_complete(p, &[1, 4], Protocol::V3);
}

#[test]
fn v2_client_vanishing_after_metadata_leaves_a_partial_file() {
    let (s, port) = connect();
    let ch = Channel::new(s.as_fd()).with_timeout(Some(Duration::from_secs(10)));
    assert_eq!(handshake::client_negotiate(&ch).unwrap(), Negotiated::V2);
    let r = msess::send_init(&ch, 2, PAGE as u32, true).unwrap();
    msess::send_metadata(&ch, &metadata_bytes()).unwrap();
    msess::finish_metadata(&ch).unwrap();
    send_data(&r.ports, true, &[0, 2]);
    drop(s);
    let r = listener().report_for(port, WAIT);
    assert!(matches!(r.result, Ok(Outcome::Partial)), "{:?}", r.result);
    check_file(&r, &[0, 2]);
}

#[test]
fn v2_client() {
    for tcp in [false, true] {
        let (s, port) = connect();
        let ch = Channel::new(s.as_fd()).with_timeout(Some(Duration::from_secs(10)));
        assert_eq!(handshake::client_negotiate(&ch).unwrap(), Negotiated::V2);
        let r = msess::send_init(&ch, 2, PAGE as u32, tcp).unwrap();
        msess::send_metadata(&ch, &metadata_bytes()).unwrap();
        msess::finish_metadata(&ch).unwrap();
        send_data(&r.ports, tcp, &[2, 3]);
        msess::send_close(&ch).unwrap();
        expect_complete(port, &[2, 3], Protocol::V2);
    }
}

#[test]
fn v1_client() {
    for tcp in [false, true] {
        let (s, port) = connect();
        let ch = Channel::new(s.as_fd()).with_timeout(Some(Duration::from_secs(10)));
        let init = ClientInit {
            cpus: 2,
            page_size: PAGE as u32,
            use_tcp: tcp,
        };
        let ports = handshake::client_v1(&ch, &init).unwrap();
        ch.send_all(&metadata_bytes()).unwrap();
        send_data(&ports, tcp, &[1, 2]);
        drop(s);
        expect_complete(port, &[1, 2], Protocol::V1);
    }
}

#[test]
fn garbage_then_normal_client() {
    let mut rng = testkit::Rng::new(0x1234_5678_9abc_def1);
    for _ in 0..24 {
        let (mut s, port) = connect();
        let junk = rng.bytes_below(300);
        let _ = s.write_all(&junk);
        let _ = s.shutdown(Shutdown::Write);
        expect_error(port);
    }
    normal_client_works();
}

/// The bytes of each client generation up to the end of the metadata, after the
/// greeting; cutting them anywhere must fail only that session.
fn scripts() -> Vec<Vec<u8>> {
    let mut v3s = Vec::new();
    v3s.extend_from_slice(handshake::V3_CPU);
    v3s.extend_from_slice(handshake::V3_MAGIC);
    v3s.extend(
        v3::Msg::TInit {
            cpus: 2,
            page_size: PAGE as u32,
            options: vec![],
        }
        .encode()
        .unwrap(),
    );
    for c in metadata_v3(2).chunks(100) {
        v3s.extend(v3::Msg::SendData(c.to_vec()).encode().unwrap());
    }
    let mut v2s = Vec::new();
    v2s.extend_from_slice(handshake::V2_CPU);
    v2s.extend_from_slice(handshake::V2_MAGIC);
    v2s.extend(
        tracecmd_rs::msg::v2::Msg::TInit {
            cpus: 2,
            page_size: PAGE as u32,
            use_tcp: false,
        }
        .encode()
        .unwrap(),
    );
    v2s.extend(
        tracecmd_rs::msg::v2::Msg::SendMeta(metadata_bytes()[..50].to_vec())
            .encode()
            .unwrap(),
    );
    let v1s = ClientInit {
        cpus: 2,
        page_size: PAGE as u32,
        use_tcp: true,
    }
    .encode();
    vec![v3s, v2s, v1s]
}

#[test]
fn eof_at_every_step_then_normal_client() {
    for script in scripts() {
        // Every byte of the handshake and TINIT, then every 97th byte.
        let cuts: Vec<usize> = (0..script.len().min(64))
            .chain((64..script.len()).step_by(97))
            .collect();
        for cut in cuts {
            let (mut s, port) = connect();
            s.write_all(&script[..cut]).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let e = expect_error(port);
            let text = e.to_string();
            assert!(!text.is_empty());
        }
    }
    normal_client_works();
}

fn v3_header(size: u32, cmd: u32, cmd_size: u32) -> Vec<u8> {
    [size, cmd, cmd_size]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect()
}

/// Sends the V3 handshake, then `bytes`; expects the session to fail.
fn v3_then(bytes: &[u8]) -> ListenError {
    let (mut s, port) = connect();
    let ch = Channel::new(s.as_fd()).with_timeout(Some(Duration::from_secs(10)));
    v3_handshake(&ch);
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    expect_error(port)
}

#[test]
fn oversized_and_inconsistent_sizes() {
    // V3 header sizes: huge, one over the limit, below the header, bad command.
    for h in [
        v3_header(u32::MAX, 1, 12),
        v3_header(8193, 3, 0),
        v3_header(11, 1, 0),
        v3_header(16, 99, 0),
        // cmd_size larger than the message; TINIT body too short.
        v3_header(24, 1, 1000),
        [v3_header(14, 1, 2), vec![0, 0]].concat(),
        // A SEND_DATA announcing 8192 bytes, then EOF.
        [v3_header(8192, 3, 0), vec![0; 100]].concat(),
    ] {
        v3_then(&h);
    }
    // Valid TINIT, then a metadata message of absurd size.
    let mut b = v3::Msg::TInit {
        cpus: 1,
        page_size: PAGE as u32,
        options: vec![],
    }
    .encode()
    .unwrap();
    b.extend(v3_header(0x7fff_ffff, 3, 0));
    let e = v3_then(&b);
    assert!(e.to_string().contains("size"), "{e}");
    // V2: a message claiming 1 MiB.
    let (mut s, port) = connect();
    let ch = Channel::new(s.as_fd()).with_timeout(Some(Duration::from_secs(10)));
    assert_eq!(handshake::client_negotiate(&ch).unwrap(), Negotiated::V2);
    s.write_all(&[0, 0x10, 0, 0, 0, 0, 0, 4]).unwrap();
    expect_error(port);
    normal_client_works();
}

#[test]
fn absurd_cpu_counts_are_refused() {
    // V1: decimal strings.
    for cpus in [
        "2147483648",
        "5000",
        "-5",
        "99999999999999999999999",
        "2000",
    ] {
        let (mut s, port) = connect();
        let mut g = [0u8; 8];
        s.read_exact(&mut g).unwrap();
        s.write_all(format!("{cpus}\0{PAGE}\x000\0").as_bytes())
            .unwrap();
        let e = expect_error(port);
        assert!(
            matches!(e, ListenError::Protocol(_) | ListenError::Limit { .. }),
            "{cpus}: {e}"
        );
    }
    // V3 TINIT: 2^31, 5000, -1, and 2000 (above this listener's limit of 1024).
    for cpus in [0x8000_0000u32, 5000, u32::MAX, 2000] {
        let mut b = v3_header(24, 1, 12);
        for v in [cpus, PAGE as u32, 0] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        let e = v3_then(&b);
        assert!(
            matches!(e, ListenError::Protocol(_) | ListenError::Limit { .. }),
            "{cpus}: {e}"
        );
    }
    // V3 TINIT with a huge page size.
    let b = v3::Msg::TInit {
        cpus: 1,
        page_size: 1 << 30,
        options: vec![],
    }
    .encode()
    .unwrap();
    assert!(matches!(v3_then(&b), ListenError::Limit { .. }));
    normal_client_works();
}

#[test]
fn unknown_version_offers() {
    // "-1V9" is answered "V3"; offering it again ends the session.
    let (mut s, port) = connect();
    let mut g = [0u8; 8];
    s.read_exact(&mut g).unwrap();
    s.write_all(b"-1V9\0").unwrap();
    let mut r = [0u8; 3];
    s.read_exact(&mut r).unwrap();
    assert_eq!(&r, b"V3\0");
    s.write_all(b"-1V9\0").unwrap();
    expect_error(port);
}

#[test]
fn slow_loris_does_not_delay_a_normal_client() {
    let l = listener();
    let (mut slow, slow_port) = connect();
    let trickle = std::thread::spawn(move || {
        for b in b"-1V3\x00766679\0\0" {
            if slow.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    normal_client_works();
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(1800),
        "a normal client took {took:?} next to a slow one"
    );
    // The slow client runs into the handshake timeout.
    let r = l.report_for(slow_port, WAIT);
    assert!(r.result.is_err(), "{:?}", r.result);
    trickle.join().unwrap();
}

#[test]
fn sixteen_concurrent_clients() {
    let threads: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                let pages = [1 + i % 3, 2];
                let p = v3_client(i % 2 == 1, &pages, true);
                (p, pages)
            })
        })
        .collect();
    for t in threads {
        let (p, pages) = t.join().unwrap();
        expect_complete(p, &pages, Protocol::V3);
    }
}

/// A client's port comes back while an earlier session of that host and port
/// is still being assembled (a V1 client frees it when it closes; a fleet on
/// one host reuses it at once), or days after its file was finished: the new
/// session gets a name of its own and neither file is touched by the other.
#[test]
fn a_client_port_that_comes_back_gets_a_file_of_its_own() {
    listener();
    let dir = DIR.get().unwrap();
    let host = name::sanitise_host(&name::peer_host("127.0.0.1:1".parse().unwrap()));
    for taken in [".dat.partial", ".dat"] {
        let earlier = |p: u16| dir.join(format!("trace.{host}:{p}{taken}"));
        // The listener names the file once the client announced its CPUs.
        let (s, port) = connect();
        std::fs::write(earlier(port), b"earlier session").unwrap();
        v3_client_on(s, false, &[2, 1], true, &metadata_v3(2));
        let r = listener().report_for(port, WAIT);
        assert!(matches!(r.result, Ok(Outcome::Complete)), "{:?}", r.result);
        assert_eq!(
            r.output.as_deref(),
            Some(dir.join(format!("trace.{host}:{port}-2.dat")).as_path()),
            "with trace.{host}:{port}{taken} taken"
        );
        assert_eq!(std::fs::read(earlier(port)).unwrap(), b"earlier session");
        check_file(&r, &[2, 1]);
        std::fs::remove_file(earlier(port)).unwrap();
    }
}

#[test]
fn client_dies_mid_metadata() {
    let (s, port) = connect();
    let ch = Channel::new(s.as_fd()).with_timeout(Some(Duration::from_secs(10)));
    v3_handshake(&ch);
    v3::send(
        &ch,
        &v3::Msg::TInit {
            cpus: 2,
            page_size: PAGE as u32,
            options: vec![],
        },
    )
    .unwrap();
    let _ = v3::recv(&ch, Wait::Timed).unwrap();
    let meta = metadata_v3(2);
    v3::send(&ch, &v3::Msg::SendData(meta[..meta.len() / 2].to_vec())).unwrap();
    drop(s);
    let r = listener().report_for(port, WAIT);
    assert!(
        matches!(r.result, Err(ListenError::MetadataIncomplete(_))),
        "{:?}",
        r.result
    );
    // No file can be built: neither a `.dat.partial` nor raw data stays behind
    // (a bench waiting for the directory to settle waited for them in vain).
    assert_eq!(r.output, None);
    assert_eq!(files_of(port), Vec::<std::path::PathBuf>::new());
    normal_client_works();
}

#[test]
fn client_dies_mid_data_leaves_a_partial_file() {
    let port = v3_client(false, &[3, 1], false);
    let r = listener().report_for(port, WAIT);
    assert!(matches!(r.result, Ok(Outcome::Partial)), "{:?}", r.result);
    let name = r.output.as_ref().unwrap().display().to_string();
    check_file(&r, &[3, 1]);
    let lines = LINES.lock().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&name) && l.contains("partial")),
        "no log line calls {name} partial: {lines:?}"
    );
    drop(lines);
    normal_client_works();
}

#[test]
fn output_stays_in_the_directory() {
    // Loopback peers cannot choose their host name; the sanitiser has unit tests.
    // Here: every file a session made lies directly in the output directory.
    let p = v3_client(false, &[1], true);
    let r = listener().report_for(p, WAIT);
    let f = r.output.clone().unwrap();
    assert_eq!(f.parent().unwrap(), DIR.get().unwrap().as_path());
    check_file(&r, &[1]);
}

/// What a 3.x client sends with file version 7 (zstd): header, one options
/// section {CPUCOUNT, DONE(0)}; the sections 16–21 do not matter to the listener.
fn metadata_v7(cpus: u32) -> Vec<u8> {
    let mut m = b"\x17\x08\x44tracing7\0\0\x08".to_vec();
    m.extend_from_slice(&(PAGE as u32).to_le_bytes());
    m.extend_from_slice(b"zstd\x001.5.4\0");
    let opts = m.len() as u64 + 8;
    m.extend_from_slice(&opts.to_le_bytes());
    let mut body = vec![8, 0, 4, 0, 0, 0];
    body.extend_from_slice(&cpus.to_le_bytes());
    body.extend_from_slice(&[0, 0, 8, 0, 0, 0]);
    body.extend_from_slice(&0u64.to_le_bytes());
    m.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    m.extend_from_slice(&(body.len() as u64).to_le_bytes());
    m.extend(body);
    m
}

#[test]
fn v7_client_complete_and_partial() {
    for close in [true, false] {
        let (s, port) = connect();
        let ch = Channel::new(s.as_fd()).with_timeout(Some(Duration::from_secs(10)));
        v3_handshake(&ch);
        v3::send(
            &ch,
            &v3::Msg::TInit {
                cpus: 2,
                page_size: PAGE as u32,
                options: vec![],
            },
        )
        .unwrap();
        let v3::Msg::RInit { ports } = v3::recv(&ch, Wait::Timed).unwrap() else {
            panic!("no RINIT")
        };
        v3::send(&ch, &v3::Msg::SendData(metadata_v7(2))).unwrap();
        v3::send(&ch, &v3::Msg::FinData).unwrap();
        send_data(&ports, false, &[12, 0]);
        if close {
            v3::send(&ch, &v3::Msg::Close).unwrap();
        }
        drop(s);
        let r = listener().report_for(port, WAIT);
        let want = if close {
            Outcome::Complete
        } else {
            Outcome::Partial
        };
        assert!(matches!(r.result, Ok(o) if o == want), "{:?}", r.result);
        let file = r.output.unwrap();
        let b = std::fs::read(&file).unwrap();
        let dat = TraceDat::parse(&b).unwrap();
        assert_eq!(dat.version, 7);
        assert_eq!(dat.buffers.len(), 1);
        let (off, size) = dat.buffers[0].cpu_data[0];
        assert_eq!(
            dat.buffers[0].cpu_data.len(),
            1,
            "the empty CPU is not listed"
        );
        assert_eq!(off % PAGE as u64, 0);
        // 12 pages, in chunks of the writer's size.
        let per = tracecmd_rs::output::v7::pages_in_chunk(PAGE);
        let at = off as usize;
        let chunks = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        assert_eq!(chunks, 12usize.div_ceil(per));
        let z = u32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize;
        let raw = u32::from_le_bytes(b[at + 8..at + 12].try_into().unwrap()) as usize;
        assert_eq!(raw, per.min(12) * PAGE);
        let pages = zstd_decode(&b[at + 12..at + 12 + z], raw);
        assert_eq!(&pages[..PAGE], &page(0, 0)[..]);
        assert!(size > z as u64);
        let _ = std::fs::remove_file(file);
    }
}

fn zstd_decode(frame: &[u8], raw: usize) -> Vec<u8> {
    zstd::bulk::decompress(frame, raw).expect("a valid zstd frame")
}

#[test]
fn v6_file_of_a_v3_client_names_the_clients_clock() {
    // 3.x listeners write their own clock here (doc P6); the client's is right.
    let meta = metadata_v3_clock(1, "local global [mono] x86-tsc\n");
    let p = v3_client_with(false, &[1], true, &meta);
    let r = listener().report_for(p, WAIT);
    assert!(matches!(r.result, Ok(Outcome::Complete)), "{:?}", r.result);
    let b = std::fs::read(r.output.as_ref().unwrap()).unwrap();
    let dat = TraceDat::parse(&b).unwrap();
    assert_eq!(dat.buffers[0].clock.as_deref(), Some("mono"));
    check_file(&r, &[1]);
}
