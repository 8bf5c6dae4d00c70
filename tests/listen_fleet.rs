//! The listener under many clients and at its end (issues 15 and 18): the accept
//! queue is as large as the system allows, clients over `max_clients` wait in it
//! instead of being closed, a stop ends sessions in progress into finished files,
//! and our client gives up on a listener that never sends its banner.

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use testkit::dat::PAGE;
use testkit::listen::v2_client;
use testkit::TempDir;
use tracecmd_rs::listen::{somaxconn, ListenConfig, ListenError, Listener, Outcome, SessionReport};
use tracecmd_rs::msg::{session as msess, Channel, MsgError, Wait};
use tracecmd_rs::netrecord::{NetError, NetParams, NetSession, Proto};
use tracecmd_rs::output::reader::TraceDat;

fn serve(
    cfg: ListenConfig,
) -> (
    u16,
    tracecmd_rs::listen::StopHandle,
    mpsc::Receiver<SessionReport>,
    std::thread::JoinHandle<()>,
) {
    let l = Listener::bind(cfg).unwrap();
    let port = l.port();
    let stop = l.stop_handle();
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || l.serve_to(tx).expect("serve until stopped"));
    (port, stop, rx, h)
}

fn pages_in(r: &SessionReport) -> u64 {
    let path = r.output.as_ref().expect("a file");
    let bytes = std::fs::read(path).unwrap();
    let dat = TraceDat::parse(&bytes).expect("a finished trace.dat");
    dat.buffers[0].cpu_data.iter().map(|c| c.1).sum::<u64>() / PAGE as u64
}

#[test]
fn the_accept_queue_is_as_large_as_the_system_allows() {
    let dir = TempDir::new("listen-backlog");
    let l = Listener::bind(ListenConfig {
        dir: dir.path().to_path_buf(),
        ..ListenConfig::default()
    })
    .unwrap();
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", l.port())])
        .output()
        .expect("run ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    // LISTEN  Recv-Q  Send-Q(= the queue's size)  Local  Peer
    let sizes: Vec<u32> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
        .collect();
    assert!(!sizes.is_empty(), "ss shows no listening socket: {text}");
    assert!(
        sizes.iter().all(|&s| s == somaxconn()),
        "queue sizes {sizes:?}, somaxconn {}",
        somaxconn()
    );
}

#[test]
fn clients_over_the_limit_wait_for_a_free_session() {
    let dir = TempDir::new("listen-limit");
    let (port, stop, rx, h) = serve(ListenConfig {
        dir: dir.path().to_path_buf(),
        max_clients: 1,
        drain_quiet: Duration::from_millis(100),
        ..ListenConfig::default()
    });
    // The first client holds the only session.
    let (first, first_port) = v2_client(port, 1, false);
    // The second one is queued: no banner yet, and no close either.
    let second = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let second_port = second.local_addr().unwrap().port();
    let ch = Channel::new(second.as_fd()).with_timeout(Some(Duration::from_millis(700)));
    let mut b = [0u8; 8];
    match ch.recv_exact(&mut b, Wait::Timed) {
        Err(MsgError::TimedOut(_)) => {}
        other => panic!("a client over the limit got {other:?} instead of waiting"),
    }
    // The first session ends; the second is served and completes.
    let ch1 = Channel::new(first.as_fd());
    msess::send_close(&ch1).unwrap();
    drop(first);
    let r1 = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(r1.peer.port(), first_port);
    assert!(
        matches!(r1.result, Ok(Outcome::Complete)),
        "{:?}",
        r1.result
    );
    let ch = Channel::new(second.as_fd()).with_timeout(Some(Duration::from_secs(20)));
    ch.recv_exact(&mut b, Wait::Timed)
        .expect("the banner once a session is free");
    assert_eq!(&b, b"tracecmd");
    drop(second);
    let r2 = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(r2.peer.port(), second_port);
    stop.stop();
    h.join().unwrap();
}

#[test]
fn a_stop_ends_sessions_in_progress_into_finished_partial_files() {
    let dir = TempDir::new("listen-stop-lib");
    let (port, stop, rx, h) = serve(ListenConfig {
        dir: dir.path().to_path_buf(),
        drain_quiet: Duration::from_millis(200),
        ..ListenConfig::default()
    });
    let (held, local) = v2_client(port, 3, false);
    // Wait until the pages are in the per-CPU file.
    let cpu0 = |d: &std::path::Path| {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.file_name().to_string_lossy().ends_with(".cpu0"))
            .map_or(0, |e| e.metadata().unwrap().len())
    };
    let end = Instant::now() + Duration::from_secs(10);
    while cpu0(dir.path()) < 3 * PAGE as u64 {
        assert!(Instant::now() < end, "the pages did not arrive");
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    stop.stop();
    h.join().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "the stop took {:?}",
        t.elapsed()
    );
    let r = rx.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!(r.peer.port(), local);
    assert!(matches!(r.result, Ok(Outcome::Partial)), "{:?}", r.result);
    assert!(r
        .output
        .as_ref()
        .unwrap()
        .to_string_lossy()
        .ends_with(".dat"));
    assert_eq!(pages_in(&r), 3);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".dat"))
        .collect();
    assert!(left.is_empty(), "files left besides the .dat: {left:?}");
    // The listener no longer accepts.
    assert!(TcpStream::connect(("127.0.0.1", port))
        .and_then(|s| {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            std::io::Read::read(&mut &s, &mut [0u8; 8])
        })
        .map_or(true, |n| n == 0));
    drop(held);
}

/// A listener whose queue completed the connection but that never accepts (a
/// SYN cookie, an overloaded or hung server): every protocol's client gives up
/// after its message timeout instead of waiting for the banner forever.
#[test]
fn our_client_times_out_on_a_listener_that_never_speaks() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = silent.local_addr().unwrap().to_string();
    for force in [Some(Proto::V1), Some(Proto::V2), Some(Proto::V3), None] {
        let t = Instant::now();
        let params = NetParams {
            cpus: 1,
            page_size: PAGE as u32,
            use_tcp: true,
            force,
            timeout: Duration::from_millis(400),
        };
        let e = match NetSession::connect(&target, &params) {
            Err(e) => e,
            Ok(_) => panic!("{force:?}: connected to a listener that never spoke"),
        };
        assert!(
            matches!(
                e,
                NetError::Protocol {
                    source: MsgError::TimedOut(_),
                    ..
                }
            ),
            "{force:?}: {e}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{force:?}: {:?}",
            t.elapsed()
        );
    }
}

/// A listener that took the client's announcement and then stops reading (hung,
/// or a machine short of CPU): with a send timeout, our client fails with an
/// error that says so instead of blocking in its metadata forever (the replay
/// client of the fleet bench sets one).
#[test]
fn our_client_with_a_send_timeout_gives_up_on_a_listener_that_stops_reading() {
    use tracecmd_rs::msg::negotiate::{self, Hello};
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = server.local_addr().unwrap().to_string();
    let data = TcpListener::bind("127.0.0.1:0").unwrap();
    let data_port = u32::from(data.local_addr().unwrap().port());
    let (held_tx, held_rx) = mpsc::channel();
    let fake = std::thread::spawn(move || {
        let (s, _) = server.accept().unwrap();
        let ch = Channel::new(s.as_fd()).with_timeout(Some(Duration::from_secs(10)));
        let Hello::V1(_) = negotiate::server_negotiate_any(&ch).unwrap() else {
            panic!("not the V1 client asked for")
        };
        negotiate::send_ports(&ch, Proto::V1, &[data_port]).unwrap();
        // Keep the connection open, unread, until the client has given up.
        held_rx.recv().unwrap();
        drop(s);
    });
    let params = NetParams {
        cpus: 1,
        page_size: PAGE as u32,
        use_tcp: true,
        force: Some(Proto::V1),
        timeout: Duration::from_secs(10),
    };
    let s = NetSession::connect(&target, &params).unwrap();
    s.set_send_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    // Far more than the socket buffers on both ends hold.
    let meta = tracecmd_rs::output::Metadata {
        kallsyms: vec![b'x'; 64 << 20],
        ..testkit::dat::metadata()
    };
    let t = Instant::now();
    let e = s.send_metadata(&meta, &[]).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(&e, NetError::Protocol { source: MsgError::Send(io), .. }
            if io.kind() == std::io::ErrorKind::TimedOut),
        "{msg}"
    );
    assert!(msg.contains("stopped reading"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    held_tx.send(()).unwrap();
    fake.join().unwrap();
}

/// A client the listener turns away mid-session (here: silent for longer than
/// the listener's message timeout, as a client starved of CPU) gets an error
/// that says the listener ended the session and where to look, not only
/// "Broken pipe"; and the listener leaves no file for it.
#[test]
fn a_client_the_listener_times_out_is_told_so() {
    let dir = TempDir::new("listen-turned-away");
    let (port, stop, rx, h) = serve(ListenConfig {
        dir: dir.path().to_path_buf(),
        timeout: Some(Duration::from_millis(300)),
        ..ListenConfig::default()
    });
    let params = NetParams {
        cpus: 1,
        page_size: PAGE as u32,
        use_tcp: true,
        force: Some(Proto::V3),
        timeout: Duration::from_secs(10),
    };
    let s = NetSession::connect(&format!("127.0.0.1:{port}"), &params).unwrap();
    let local = s.local_port().unwrap();
    let _data = s.connect_data(0).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    // More than the socket buffers hold, so that a send meets the closed end.
    let meta = tracecmd_rs::output::Metadata {
        kallsyms: vec![b'x'; 16 << 20],
        ..testkit::dat::metadata()
    };
    let msg = s.send_metadata(&meta, &[]).unwrap_err().to_string();
    assert!(msg.contains("the listener ended this session"), "{msg}");
    let r = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(r.peer.port(), local);
    assert!(
        matches!(r.result, Err(ListenError::MetadataIncomplete(_))),
        "{:?}",
        r.result
    );
    assert_eq!(r.output, None);
    stop.stop();
    h.join().unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// The drain after a session reads everything already queued in the data
/// sockets, even with no quiet period at all: quiet is what `poll` sees, not
/// time on the clock (a data thread kept waiting for a CPU under load once
/// called its sockets quiet with pages still in them, and the file was short).
#[test]
fn the_drain_takes_every_queued_page_even_with_no_quiet_period() {
    let dir = TempDir::new("listen-drain");
    let (port, stop, rx, h) = serve(ListenConfig {
        dir: dir.path().to_path_buf(),
        drain_quiet: Duration::ZERO,
        ..ListenConfig::default()
    });
    for _ in 0..3 {
        let (s, local) = v2_client(port, 400, true);
        drop(s);
        let r = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(r.peer.port(), local);
        assert!(matches!(r.result, Ok(Outcome::Complete)), "{:?}", r.result);
        assert_eq!(pages_in(&r), 400);
    }
    stop.stop();
    h.join().unwrap();
}
