//! Handshakes and message sequences between real peers over socketpairs and TCP
//! loopback; timeouts; fd passing; signals during blocking waits.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};
use testkit::msg::{chan, hex, read_n};
use testkit::{Rng, TempDir};
use tracecmd_rs::msg::handshake::{self, Negotiated, ServerHello};
use tracecmd_rs::msg::session::{self, Initial, ManagerRequest};
use tracecmd_rs::msg::v1::ClientInit;
use tracecmd_rs::msg::v2::{self, Msg};
use tracecmd_rs::msg::{Channel, MsgError, Wait};

fn pair() -> (UnixStream, UnixStream) {
    UnixStream::pair().unwrap()
}

// ---------------------------------------------------------------- handshakes

#[test]
fn v2_client_sends_the_exact_handshake_bytes() {
    let (c, mut s) = pair();
    let server = thread::spawn(move || {
        s.write_all(b"tracecmd").unwrap();
        assert_eq!(read_n(&mut s, 5), hex("2d31563200"));
        s.write_all(&hex("563200")).unwrap();
        assert_eq!(read_n(&mut s, 8), hex("3637373736380000"));
        s.write_all(&hex("4f4b")).unwrap();
    });
    assert_eq!(
        handshake::client_negotiate(&chan(&c)).unwrap(),
        Negotiated::V2
    );
    server.join().unwrap();
}

#[test]
fn v2_server_sends_the_exact_handshake_bytes_even_when_fields_are_split() {
    let (mut c, s) = pair();
    let client = thread::spawn(move || {
        assert_eq!(read_n(&mut c, 8), b"tracecmd");
        c.write_all(b"-1V").unwrap();
        thread::sleep(Duration::from_millis(20));
        c.write_all(b"2\0").unwrap();
        assert_eq!(read_n(&mut c, 3), hex("563200"));
        c.write_all(b"6777").unwrap();
        thread::sleep(Duration::from_millis(20));
        c.write_all(b"68\0\0").unwrap();
        assert_eq!(read_n(&mut c, 2), b"OK");
    });
    assert_eq!(
        handshake::server_negotiate(&chan(&s)).unwrap(),
        ServerHello::V2
    );
    client.join().unwrap();
}

#[test]
fn server_answers_a_v3_offer_with_v2_and_reads_another_cpu_string() {
    let (mut c, s) = pair();
    let client = thread::spawn(move || {
        assert_eq!(read_n(&mut c, 8), b"tracecmd");
        c.write_all(b"-1V3\0").unwrap();
        assert_eq!(read_n(&mut c, 3), b"V2\0");
        c.write_all(b"-1V2\0").unwrap();
        assert_eq!(read_n(&mut c, 3), b"V2\0");
        c.write_all(handshake::V2_MAGIC).unwrap();
        assert_eq!(read_n(&mut c, 2), b"OK");
    });
    assert_eq!(
        handshake::server_negotiate(&chan(&s)).unwrap(),
        ServerHello::V2
    );
    client.join().unwrap();

    // The same unknown version twice ends the negotiation.
    let (mut c, s) = pair();
    let client = thread::spawn(move || {
        read_n(&mut c, 8);
        c.write_all(b"-1V3\0").unwrap();
        read_n(&mut c, 3);
        c.write_all(b"-1V3\0").unwrap();
    });
    let e = handshake::server_negotiate(&chan(&s)).unwrap_err();
    assert!(matches!(e, MsgError::ProtocolMismatch(_)), "{e}");
    client.join().unwrap();
}

#[test]
fn v1_handshake_between_our_client_and_server() {
    let (c, s) = pair();
    let server = thread::spawn(move || {
        let ch = chan(&s);
        let hello = handshake::server_negotiate(&ch).unwrap();
        let ServerHello::V1(init) = hello else {
            panic!("V1 client seen as {hello:?}")
        };
        let ports: Vec<u32> = (0..init.cpus).map(|i| 1500 + i).collect();
        handshake::server_send_ports_v1(&ch, &ports).unwrap();
        init
    });
    let init = ClientInit {
        cpus: 3,
        page_size: 4096,
        use_tcp: true,
    };
    let ports = handshake::client_v1(&chan(&c), &init).unwrap();
    assert_eq!(ports, vec![1500, 1501, 1502]);
    assert_eq!(server.join().unwrap(), init);
}

#[test]
fn v1_server_bytes_match_spec() {
    let (mut c, s) = pair();
    let client = thread::spawn(move || {
        assert_eq!(read_n(&mut c, 8), b"tracecmd");
        c.write_all(b"2\x004096\x001\x004\x00TCP\x00").unwrap();
        assert_eq!(read_n(&mut c, 10), b"1500,1501\0");
    });
    let ch = chan(&s);
    let ServerHello::V1(init) = handshake::server_negotiate(&ch).unwrap() else {
        panic!("not V1")
    };
    assert!(init.use_tcp && init.cpus == 2 && init.page_size == 4096);
    handshake::server_send_ports_v1(&ch, &[1500, 1501]).unwrap();
    client.join().unwrap();
}

#[test]
fn v2_client_falls_back_to_v1_when_the_server_closes_on_the_offer() {
    let (c, mut s) = pair();
    let server = thread::spawn(move || {
        s.write_all(b"tracecmd").unwrap();
        read_n(&mut s, 5);
        // An old V1 listener rejects cpus = -1 and closes.
    });
    assert_eq!(
        handshake::client_negotiate(&chan(&c)).unwrap(),
        Negotiated::V1Fallback
    );
    server.join().unwrap();
}

#[test]
fn v2_client_refuses_a_v3_server() {
    let (c, mut s) = pair();
    let server = thread::spawn(move || {
        s.write_all(b"tracecmd").unwrap();
        read_n(&mut s, 5);
        s.write_all(b"V3\0").unwrap();
        s
    });
    let e = handshake::client_negotiate(&chan(&c)).unwrap_err();
    assert!(
        matches!(e, MsgError::ProtocolMismatch(ref v) if v == "V3"),
        "{e}"
    );
    server.join().unwrap();
}

// ------------------------------------------------------------- full sessions

fn metadata(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 8191) as u8).collect()
}

/// Listener side of a V2 network session; returns the metadata it wrote.
fn v2_listener(ch: &Channel<'_>) -> (Initial, Vec<u8>) {
    assert_eq!(handshake::server_negotiate(ch).unwrap(), ServerHello::V2);
    let init = session::initial_setting(ch).unwrap();
    let Initial::Record { cpus, .. } = init else {
        panic!("{init:?}")
    };
    let ports: Vec<u32> = (0..cpus).map(|i| 1500 + i).collect();
    session::send_port_array(ch, cpus, Some(&ports)).unwrap();
    let mut out = Vec::new();
    session::collect_metadata(ch, &mut out, &|| false).unwrap();
    (init, out)
}

fn v2_client(ch: &Channel<'_>, meta: &[u8]) -> session::RInit {
    assert_eq!(handshake::client_negotiate(ch).unwrap(), Negotiated::V2);
    let rinit = session::send_init(ch, 4, 4096, true).unwrap();
    // Uneven pieces, as trace-output.c's individual writes.
    for piece in meta.chunks(10_000) {
        session::send_metadata(ch, piece).unwrap();
    }
    session::finish_metadata(ch).unwrap();
    session::send_close(ch).unwrap();
    rinit
}

#[test]
fn v2_session_over_a_socketpair_moves_1_mib_of_metadata() {
    let meta = metadata(1 << 20);
    let (c, s) = pair();
    let listener = thread::spawn(move || v2_listener(&chan(&s)));
    let rinit = v2_client(&chan(&c), &meta);
    assert_eq!(rinit.ports, vec![1500, 1501, 1502, 1503]);
    let (init, out) = listener.join().unwrap();
    assert_eq!(
        init,
        Initial::Record {
            cpus: 4,
            page_size: 4096,
            use_tcp: true
        }
    );
    assert!(
        out == meta,
        "metadata differs ({} vs {} bytes)",
        out.len(),
        meta.len()
    );
}

#[test]
fn v2_and_v1_sessions_over_tcp_loopback() {
    let meta = metadata(300_000);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let v2 = v2_listener(&Channel::new(s.as_fd()));
        // Second connection: a V1 client.
        let (s, _) = l.accept().unwrap();
        let ch = Channel::new(s.as_fd());
        let ServerHello::V1(init) = handshake::server_negotiate(&ch).unwrap() else {
            panic!("not V1")
        };
        handshake::server_send_ports_v1(&ch, &vec![2000; init.cpus as usize]).unwrap();
        let mut raw = Vec::new();
        session::collect_raw(&ch, &mut raw, &|| false).unwrap();
        (v2.1, init, raw)
    });
    let c = TcpStream::connect(addr).unwrap();
    v2_client(&Channel::new(c.as_fd()), &meta);
    drop(c);
    let mut c = TcpStream::connect(addr).unwrap();
    let init = ClientInit {
        cpus: 2,
        page_size: 4096,
        use_tcp: false,
    };
    let ports = handshake::client_v1(&Channel::new(c.as_fd()), &init).unwrap();
    assert_eq!(ports, vec![2000, 2000]);
    c.write_all(&meta).unwrap();
    drop(c);
    let (v2_meta, v1_init, v1_meta) = server.join().unwrap();
    assert!(v2_meta == meta);
    assert_eq!(v1_init, init);
    assert!(v1_meta == meta);
}

#[test]
fn virtio_session_tconnect_rconnect_tinit_virt_rinit() {
    let (c, s) = pair();
    let listener = thread::spawn(move || {
        let ch = chan(&s);
        session::set_connection(&ch).unwrap();
        let init = session::initial_setting(&ch).unwrap();
        session::send_port_array(&ch, 2, None).unwrap();
        init
    });
    let ch = chan(&c);
    session::connect_to_server(&ch).unwrap();
    let rinit = session::send_init(&ch, 2, 4096, false).unwrap();
    assert_eq!(rinit.cpus, 2);
    assert!(rinit.ports.is_empty());
    assert_eq!(
        listener.join().unwrap(),
        Initial::Record {
            cpus: 2,
            page_size: 4096,
            use_tcp: false
        }
    );
}

#[test]
fn agent_and_manager_sequences() {
    // agent: CINIT (native order) → CRINIT → CONNECT{argc} → argc strings
    let (a, l) = pair();
    let listener = thread::spawn(move || {
        let ch = chan(&l);
        let init = session::initial_setting(&ch).unwrap();
        v2::send(&ch, &Msg::Connect { cpus: 2 }).unwrap();
        session::send_string(&ch, b"record").unwrap();
        session::send_string(&ch, b"-e sched").unwrap();
        init
    });
    let ch = chan(&a);
    assert_eq!(session::agent_connect(&ch, 3).unwrap(), 2);
    assert_eq!(
        session::agent_parameters(&ch, 2).unwrap(),
        vec![b"record".to_vec(), b"-e sched".to_vec()]
    );
    assert_eq!(listener.join().unwrap(), Initial::Agent { cpus: 3 });

    // connect: CONNECT{n} → ACK → domain, agent, n cpu paths
    let (m, l) = pair();
    let listener = thread::spawn(move || {
        let ch = chan(&l);
        let ManagerRequest::Connect { cpus } = session::read_manager(&ch).unwrap() else {
            panic!("not CONNECT")
        };
        session::get_connect(&ch, cpus).unwrap()
    });
    let paths: [&[u8]; 2] = [b"/v/d/trace-path-cpu0", b"/v/d/trace-path-cpu1"];
    session::connect_guest(&chan(&m), b"dom", b"/v/d/agent-ctl-path", &paths).unwrap();
    let gc = listener.join().unwrap();
    assert_eq!(gc.domain, b"dom");
    assert_eq!(gc.agent, b"/v/d/agent-ctl-path");
    assert_eq!(gc.cpus, paths.map(<[u8]>::to_vec).to_vec());

    // list -G: GLIST → DOMAIN+name × 2 → FINISH
    let (m, l) = pair();
    let listener = thread::spawn(move || {
        let ch = chan(&l);
        assert_eq!(
            session::read_manager(&ch).unwrap(),
            ManagerRequest::GuestList
        );
        session::send_domain(&ch, b"guest-a", 2).unwrap();
        session::send_domain(&ch, b"", 4).unwrap();
        session::send_finish(&ch).unwrap();
    });
    let mut seen = Vec::new();
    let n = session::list_guests(&chan(&m), &mut |name, cpus| {
        seen.push((name.to_vec(), cpus))
    })
    .unwrap();
    assert_eq!(n, 2);
    assert_eq!(seen, vec![(b"guest-a".to_vec(), 2), (vec![], 4)]);
    listener.join().unwrap();

    // record -A by name: TRACE{0} → ACK → name → DOMAIN{cpus}
    let (m, l) = pair();
    let listener = thread::spawn(move || {
        let ch = chan(&l);
        assert_eq!(
            session::read_manager(&ch).unwrap(),
            ManagerRequest::Trace { pid: 0 }
        );
        let name = session::get_domain(&ch).unwrap();
        session::send_cpus(&ch, 4).unwrap();
        // ... and an unknown pid gets FINISH.
        assert_eq!(
            session::read_manager(&ch).unwrap(),
            ManagerRequest::Trace { pid: 77 }
        );
        session::send_finish(&ch).unwrap();
        name
    });
    let ch = chan(&m);
    assert_eq!(session::connect_agent(&ch, b"guest-a", 0).unwrap(), 4);
    let e = session::connect_agent(&ch, b"", 77).unwrap_err();
    assert_eq!(e.errno(), libc::ENODEV);
    assert_eq!(listener.join().unwrap(), b"guest-a");
}

#[test]
fn strings_are_chunked_bounded_and_an_empty_sequence_is_refused() {
    let (a, b) = pair();
    let long = vec![b'x'; 9000];
    let l2 = long.clone();
    let sender = thread::spawn(move || {
        let ch = chan(&a);
        session::send_string(&ch, &l2).unwrap();
        session::send_string(&ch, b"").unwrap();
        session::finish_metadata(&ch).unwrap(); // FINMETA alone
        for _ in 0..9 {
            session::send_metadata(&ch, &[b'y'; 8000]).unwrap(); // 72,000 bytes
        }
        session::finish_metadata(&ch).unwrap();
        assert!(matches!(
            session::send_string(&ch, &vec![0; 70_000]),
            Err(MsgError::StringTooLong(_))
        ));
    });
    let ch = chan(&b);
    assert_eq!(session::recv_string(&ch).unwrap(), long);
    assert_eq!(session::recv_string(&ch).unwrap(), b"");
    assert!(matches!(
        session::recv_string(&ch),
        Err(MsgError::Unexpected { .. })
    ));
    assert!(matches!(
        session::recv_string(&ch),
        Err(MsgError::StringTooLong(_))
    ));
    sender.join().unwrap();
}

#[test]
fn cinit_from_a_peer_of_either_byte_order() {
    for bytes in ["0000000c 0000000d 04000000", "0000000c 0000000d 00000004"] {
        let (mut a, b) = pair();
        a.write_all(&hex(bytes)).unwrap();
        assert_eq!(
            session::initial_setting(&chan(&b)).unwrap(),
            Initial::Agent { cpus: 4 }
        );
        assert_eq!(read_n(&mut a, 8), hex("00000008 0000000e"), "CRINIT answer");
    }
}

#[test]
fn close_instead_of_an_answer_is_aborted() {
    let (mut a, b) = pair();
    a.write_all(&hex("00000008 00000001")).unwrap();
    let e = session::send_init(&chan(&b), 1, 4096, false).unwrap_err();
    assert!(matches!(e, MsgError::Aborted));
    assert_eq!(e.errno(), libc::ECONNABORTED);
}

// ---------------------------------------------------------------- timeouts

fn assert_times_out(partial: &[u8], timeout_ms: u64) {
    let (mut a, b) = pair();
    a.write_all(partial).unwrap();
    let ch = Channel::new(b.as_fd()).with_timeout(Some(Duration::from_millis(timeout_ms)));
    let t = Instant::now();
    let e = v2::recv(&ch, Wait::Timed).unwrap_err();
    let took = t.elapsed();
    assert!(matches!(e, MsgError::TimedOut(_)), "{e}");
    assert_eq!(e.errno(), libc::ETIMEDOUT);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    drop(a); // the peer stayed connected the whole time
}

#[test]
fn a_peer_that_stops_mid_message_times_out() {
    assert_times_out(&[], 200);
    assert_times_out(&hex("0000"), 200);
    assert_times_out(&hex("0000000f 00000006"), 200);
    assert_times_out(&hex("0000000f 00000006 00000003 61"), 200);
}

#[test]
fn the_deadline_covers_the_whole_message_not_each_read() {
    let (mut a, b) = pair();
    let trickle = thread::spawn(move || {
        // 20 bytes, one every 60 ms: 1.2 s in all, never 300 ms of silence.
        for byte in hex("00000014 00000004 00000001 00001000 00000000") {
            if a.write_all(&[byte]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(60));
        }
    });
    let ch = Channel::new(b.as_fd()).with_timeout(Some(Duration::from_millis(300)));
    let t = Instant::now();
    let e = v2::recv(&ch, Wait::Timed).unwrap_err();
    assert!(matches!(e, MsgError::TimedOut(_)), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
    drop(b);
    trickle.join().unwrap();
}

#[test]
fn a_silent_server_during_the_text_handshake_times_out() {
    let (c, _s) = pair();
    let ch = Channel::new(c.as_fd()).with_timeout(Some(Duration::from_millis(200)));
    let e = handshake::client_negotiate(&ch).unwrap_err();
    assert!(matches!(e, MsgError::TimedOut(_)), "{e}");
}

/// An empty SIGUSR2 handler without SA_RESTART, as trace-listen.c installs its
/// handlers: a blocking wait sees EINTR.
fn install_sigusr2() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    extern "C" fn nothing(_: libc::c_int) {}
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let act = SigAction::new(
            SigHandler::Handler(nothing),
            SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: an empty handler for a signal nothing else in this binary uses.
        unsafe { sigaction(Signal::SIGUSR2, &act) }.unwrap();
    });
}

/// Runs `f` on a thread; after `settle`, calls `before` and then signals the thread
/// with SIGUSR2 until it returns.
fn signal_until_done<T: Send + 'static>(
    settle: Duration,
    before: impl FnOnce(),
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    install_sigusr2();
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = thread::spawn(move || {
        // SAFETY: plain libc call on the current thread.
        tx.send(unsafe { libc::pthread_self() }).unwrap();
        f()
    });
    let tid = rx.recv().unwrap();
    thread::sleep(settle);
    before();
    let t = Instant::now();
    while !worker.is_finished() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "blocking wait ignored signals"
        );
        // SAFETY: `tid` is alive: its JoinHandle is not joined yet.
        assert_eq!(unsafe { libc::pthread_kill(tid, libc::SIGUSR2) }, 0);
        thread::sleep(Duration::from_millis(50));
    }
    worker.join().unwrap()
}

#[test]
fn a_signal_ends_a_blocking_wait() {
    let (_a, b) = pair();
    let r = signal_until_done(
        Duration::ZERO,
        || {},
        move || {
            let ch = Channel::new(b.as_fd()).with_timeout(None);
            v2::recv(&ch, Wait::Blocking)
        },
    );
    let e = r.unwrap_err();
    assert!(matches!(e, MsgError::Interrupted), "{e}");
    assert_eq!(e.errno(), libc::EINTR);
}

/// collect_metadata with SENDMETA "abc" + FINMETA sent and no CLOSE: the CLOSE wait
/// blocks until a signal; `set_done` says whether done is set before it.
fn collect_then_signal(set_done: bool) -> (Result<u64, MsgError>, Vec<u8>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let (mut a, b) = pair();
    a.write_all(&hex("0000000f 00000006 00000003 616263 00000008 00000007"))
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let r = signal_until_done(
        Duration::from_millis(150),
        || done.store(set_done, Ordering::SeqCst),
        move || {
            let mut out = Vec::new();
            let r =
                session::collect_metadata(&chan(&b), &mut out, &move || d.load(Ordering::SeqCst));
            (r, out)
        },
    );
    drop(a);
    r
}

#[test]
fn collect_metadata_honours_done_during_the_close_wait() {
    let (r, out) = collect_then_signal(true);
    assert_eq!(out, b"abc");
    assert_eq!(r.unwrap(), 3);
    let (r, out) = collect_then_signal(false);
    assert_eq!(out, b"abc");
    assert!(matches!(r, Err(MsgError::Interrupted)), "{r:?}");
}

// ---------------------------------------------------------------- fd passing

#[test]
fn fd_passing_uses_two_data_bytes_and_one_scm_rights_fd() {
    let (a, b) = pair();
    let (r, mut w) = std::io::pipe().unwrap();
    tracecmd_rs::transport::send_fd(a.as_fd(), r.as_fd()).unwrap();
    drop(r);
    // Read it back with a plain recvmsg: 2 bytes, 00 00, one fd.
    let mut data = [0xffu8; 4];
    let mut iov = [std::io::IoSliceMut::new(&mut data)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 2]);
    let msg = nix::sys::socket::recvmsg::<()>(
        std::os::fd::AsRawFd::as_raw_fd(&b),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    assert_eq!(msg.bytes, 2);
    let fds: Vec<_> = msg
        .cmsgs()
        .unwrap()
        .flat_map(|c| match c {
            nix::sys::socket::ControlMessageOwned::ScmRights(v) => v,
            _ => vec![],
        })
        .collect();
    assert_eq!(fds.len(), 1);
    assert_eq!(&data[..2], &[0, 0]);
    // The received fd is the pipe's read end.
    w.write_all(b"hi").unwrap();
    let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
    assert_eq!(read_n(&mut f, 2), b"hi");
}

#[test]
fn listener_passes_the_agent_channel_and_cpu_fifos_to_the_manager() {
    let (m, l) = pair();
    let (agent_near, mut agent_far) = pair();
    let pipes: Vec<_> = (0..3).map(|_| std::io::pipe().unwrap()).collect();
    let readers: Vec<_> = pipes.iter().map(|(r, _)| r.try_clone().unwrap()).collect();
    let listener = thread::spawn(move || {
        let ch = chan(&l);
        assert_eq!(
            session::transfer_fd(&ch, agent_near.as_fd(), 3).unwrap(),
            2,
            "sendmsg sends 2 data bytes"
        );
        for (i, r) in readers.iter().enumerate() {
            session::transfer_fd(&ch, r.as_fd(), 3 - i as u32).unwrap();
        }
    });
    let (main, fds) = session::get_fds(&chan(&m)).unwrap();
    listener.join().unwrap();
    assert_eq!(fds.len(), 3);
    // The main fd talks to the agent; each cpu fd reads its pipe.
    let mut main = UnixStream::from(main);
    main.write_all(b"ping").unwrap();
    assert_eq!(read_n(&mut agent_far, 4), b"ping");
    for (i, ((_, mut w), fd)) in pipes.into_iter().zip(fds).enumerate() {
        w.write_all(&[i as u8]).unwrap();
        let mut f = std::fs::File::from(fd);
        assert_eq!(read_n(&mut f, 1), vec![i as u8]);
    }
}

#[test]
fn receive_fd_without_a_descriptor_or_at_eof_is_an_error() {
    let (mut a, b) = pair();
    let peer = thread::spawn(move || {
        a.write_all(&hex("0000000c 00000008 00000001")).unwrap();
        assert_eq!(read_n(&mut a, 8), hex("00000008 00000009"), "ACK");
        a.write_all(&[0, 0]).unwrap(); // the 2 bytes, but no SCM_RIGHTS
    });
    let e = session::receive_fd(&chan(&b)).unwrap_err();
    assert!(matches!(e, MsgError::NoFd), "{e}");
    peer.join().unwrap();

    let (a, b) = pair();
    drop(a);
    let e = session::receive_fd(&chan(&b)).unwrap_err();
    assert!(matches!(e, MsgError::Closed), "{e}");
}

#[test]
fn recv_until_eof_over_random_streams_never_panics_or_hangs() {
    let mut rng = Rng::new(0x5eed_0004);
    for _ in 0..2000 {
        let (mut a, b) = pair();
        let mut bytes = rng.bytes_below(64);
        if rng.below(2) == 0 && bytes.len() >= 8 {
            bytes[..4].copy_from_slice(&(rng.below(40) as u32).to_be_bytes());
            bytes[4..8].copy_from_slice(&(rng.below(18) as u32).to_be_bytes());
        }
        a.write_all(&bytes).unwrap();
        drop(a);
        let ch = chan(&b);
        for _ in 0..64 {
            match v2::recv(&ch, Wait::Timed) {
                Ok(_) => continue,
                Err(MsgError::TimedOut(_)) => panic!("EOF must not look like a stall"),
                Err(_) => break,
            }
        }
    }
}

#[test]
fn unix_connect_reaches_a_listening_socket_and_reports_a_missing_one() {
    let dir = TempDir::new("msg");
    let path = dir.join("sock");
    let _ = std::fs::remove_file(&path);
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let fd = tracecmd_rs::transport::connect_unix(&path).unwrap();
    let (mut peer, _) = l.accept().unwrap();
    UnixStream::from(fd).write_all(b"x").unwrap();
    let mut one = [0u8];
    peer.read_exact(&mut one).unwrap();
    assert_eq!(&one, b"x");
    let e = tracecmd_rs::transport::connect_unix(&dir.join("missing")).unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT);
    let long = dir.join("x".repeat(200));
    assert!(tracecmd_rs::transport::connect_unix(&long).is_err());
}

#[test]
fn string_lists_share_a_1_mib_budget() {
    let (a, b) = pair();
    let sender = thread::spawn(move || {
        let ch = chan(&a);
        // 20 × 60,000 bytes: each string is fine, the list is not.
        for _ in 0..20 {
            if session::send_string(&ch, &vec![b'a'; 60_000]).is_err() {
                break;
            }
        }
    });
    let e = session::agent_parameters(&chan(&b), 20).unwrap_err();
    assert!(matches!(e, MsgError::StringTooLong(_)), "{e}");
    drop(b);
    sender.join().unwrap();
}

#[test]
fn handshakes_over_random_streams_never_panic_or_hang() {
    let mut rng = Rng::new(0x5eed_0005);
    let pieces: [&[u8]; 8] = [
        b"tracecmd",
        b"-1V2\0",
        b"-1V3\0",
        b"V2\0",
        b"677768\0\0",
        b"OK",
        b"8\0",
        b"4\0TCP\0",
    ];
    for _ in 0..3000 {
        let mut bytes = Vec::new();
        for _ in 0..rng.below(5) {
            if rng.below(3) == 0 {
                bytes.extend(rng.bytes_below(12));
            } else {
                bytes.extend_from_slice(pieces[rng.below(pieces.len())]);
            }
        }
        for server in [true, false] {
            let (mut a, b) = pair();
            // The peer's bytes, then EOF; our side's writes may fail (EPIPE): fine.
            a.write_all(&bytes).unwrap();
            a.shutdown(std::net::Shutdown::Write).unwrap();
            let ch = chan(&b);
            let t = Instant::now();
            if server {
                let _ = handshake::server_negotiate(&ch);
            } else {
                let _ = handshake::client_negotiate(&ch);
            }
            assert!(t.elapsed() < Duration::from_secs(2), "{bytes:02x?}");
        }
    }
}
