//! The network client ([`NetSession`]) against listeners written here with the
//! crate's codecs: a V3 listener (exact handshake, TINIT and metadata bytes), a
//! V2-era listener that answers "V2" to the V3 offer and waits for another CPU string
//! (same-connection downgrade), a V1-only listener that closes on any versioned offer
//! (reconnect as V1), and broken or hostile listeners that must end in a clear error,
//! never a hang or a panic. No tracefs needed: the metadata is built by hand.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use testkit::dat::PAGE;
use testkit::udp_ports;
use tracecmd_rs::msg::handshake::{OK, V2_CPU, V2_MAGIC, V2_REPLY};
use tracecmd_rs::msg::v1::{self, ChannelSource, TextSource};
use tracecmd_rs::msg::{session, v3, Channel, MsgError, Wait};
use tracecmd_rs::netrecord::negotiate::{V3_CPU, V3_MAGIC};
use tracecmd_rs::netrecord::{NetError, NetParams, NetSession, Proto};
use tracecmd_rs::output::{write_options_block, DatOption, Metadata};

/// Metadata with kallsyms large enough to need several 8180-byte chunks.
fn meta() -> Metadata {
    Metadata {
        kallsyms: (0..3000)
            .flat_map(|i| format!("ffffffff8100{i:04x} T sym{i}\n").into_bytes())
            .collect(),
        ..testkit::dat::metadata_with_formats()
    }
}

fn options() -> Vec<DatOption> {
    vec![
        DatOption::trace_clock("[local] global\n"),
        DatOption::version("test"),
    ]
}

fn params(cpus: u32, use_tcp: bool, force: Option<Proto>) -> NetParams {
    NetParams {
        cpus,
        page_size: PAGE as u32,
        use_tcp,
        force,
        timeout: Duration::from_secs(5),
    }
}

/// A listener thread that runs `serve` on each of its first `conns` connections and
/// returns what the last one returned; counts the connections it accepted.
fn listener<T: Send + 'static>(
    conns: usize,
    serve: impl Fn(usize, TcpStream) -> T + Send + 'static,
) -> (String, Arc<AtomicUsize>, JoinHandle<T>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&count);
    let h = std::thread::spawn(move || {
        let mut last = None;
        for i in 0..conns {
            let (s, _) = l.accept().unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            last = Some(serve(i, s));
        }
        last.unwrap()
    });
    (addr, count, h)
}

fn read_string(ch: &Channel<'_>) -> Vec<u8> {
    ChannelSource::new(ch).string("test string", 64).unwrap()
}

fn recv_exact<const N: usize>(ch: &Channel<'_>) -> [u8; N] {
    let mut b = [0u8; N];
    ch.recv_exact(&mut b, Wait::Timed).unwrap();
    b
}

fn page(cpu: usize) -> Vec<u8> {
    (0..PAGE).map(|i| (i as u8) ^ (cpu as u8 * 31)).collect()
}

#[test]
fn v3_listener_gets_the_exact_handshake_tinit_and_v6_metadata() {
    let (addr, count, h) = listener(1, |_, s| {
        let ch = Channel::new(s.as_fd());
        ch.send_all(b"tracecmd").unwrap();
        assert_eq!(recv_exact::<5>(&ch), *V3_CPU);
        ch.send_all(b"V3\0").unwrap();
        assert_eq!(recv_exact::<8>(&ch), *V3_MAGIC);
        ch.send_all(OK).unwrap();
        // TINIT with "tcp", byte for byte (doc §6.4).
        let tinit = recv_exact::<28>(&ch);
        assert_eq!(
            tinit.to_vec(),
            [
                &[0, 0, 0, 0x1c, 0, 0, 0, 1, 0, 0, 0, 0x0c, 0, 0, 0, 2][..],
                &[0, 0, 0x10, 0, 0, 0, 0, 1][..],
                b"tcp\0"
            ]
            .concat()
        );
        let data: Vec<TcpListener> = (0..2)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports = data
            .iter()
            .map(|l| u32::from(l.local_addr().unwrap().port()))
            .collect();
        v3::send(&ch, &v3::Msg::RInit { ports }).unwrap();
        let mut metadata = Vec::new();
        loop {
            match v3::recv(&ch, Wait::Timed).unwrap() {
                v3::Msg::SendData(d) => metadata.extend(d),
                v3::Msg::FinData => break,
                m => panic!("unexpected {m:?}"),
            }
        }
        let mut pages = Vec::new();
        for l in &data {
            let (mut s, _) = l.accept().unwrap();
            let mut v = Vec::new();
            s.read_to_end(&mut v).unwrap();
            pages.push(v);
        }
        assert_eq!(v3::recv(&ch, Wait::Timed).unwrap(), v3::Msg::Close);
        (metadata, pages)
    });
    let sess = NetSession::connect(&addr, &params(2, true, None)).unwrap();
    assert_eq!(sess.proto(), Proto::V3);
    sess.send_metadata(&meta(), &options()).unwrap();
    for cpu in 0..2 {
        let mut s = TcpStream::from(sess.connect_data(cpu).unwrap());
        s.write_all(&page(cpu)).unwrap();
    }
    sess.finish().unwrap();
    let (metadata, pages) = h.join().unwrap();
    let mut want = meta().to_bytes().unwrap();
    write_options_block(&mut want, 2, &options()).unwrap();
    assert_eq!(
        metadata, want,
        "V3 metadata = v6 header through the options block"
    );
    assert_eq!(pages, vec![page(0), page(1)]);
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

/// A V2-era listener: "V2" to any versioned offer, then another CPU string.
fn v2_listener_handshake(ch: &Channel<'_>) {
    ch.send_all(b"tracecmd").unwrap();
    assert_eq!(read_string(ch), b"-1V3");
    ch.send_all(V2_REPLY).unwrap();
    assert_eq!(read_string(ch), &V2_CPU[..4]);
    ch.send_all(V2_REPLY).unwrap();
    assert_eq!(recv_exact::<8>(ch), *V2_MAGIC);
    ch.send_all(OK).unwrap();
}

#[test]
fn v2_listener_is_followed_down_on_the_same_connection() {
    let (addr, count, h) = listener(1, |_, s| {
        let ch = Channel::new(s.as_fd());
        v2_listener_handshake(&ch);
        match session::initial_setting(&ch).unwrap() {
            session::Initial::Record {
                cpus: 2,
                page_size: 4096,
                use_tcp: false,
            } => {}
            other => panic!("TINIT was {other:?}"),
        }
        let (socks, ports) = udp_ports(2);
        session::send_port_array(&ch, 2, Some(&ports)).unwrap();
        let mut metadata = Vec::new();
        session::collect_metadata(&ch, &mut metadata, &|| false).unwrap();
        let mut got = Vec::new();
        for s in &socks {
            let mut buf = vec![0u8; 2 * PAGE];
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let n = s.recv(&mut buf).unwrap();
            got.push(buf[..n].to_vec());
        }
        (metadata, got)
    });
    let sess = NetSession::connect(&addr, &params(2, false, None)).unwrap();
    assert_eq!(sess.proto(), Proto::V2);
    sess.send_metadata(&meta(), &options()).unwrap();
    for cpu in 0..2 {
        let s = UdpSocket::from(sess.connect_data(cpu).unwrap());
        s.send(&page(cpu)).unwrap();
    }
    sess.finish().unwrap();
    let (metadata, got) = h.join().unwrap();
    assert_eq!(
        metadata,
        meta().to_bytes().unwrap(),
        "V2 metadata = header through cmdlines only"
    );
    assert_eq!(got, vec![page(0), page(1)]);
    assert_eq!(count.load(Ordering::SeqCst), 1, "no reconnect for V2");
}

/// A V1-only listener: closes on "-1V..."; on a V1 announcement sends the ports and
/// collects the raw metadata until EOF.
fn v1_listener(i: usize, s: TcpStream) -> Option<(v1::ClientInit, Vec<u8>, Vec<Vec<u8>>)> {
    let ch = Channel::new(s.as_fd());
    ch.send_all(b"tracecmd").unwrap();
    let mut src = ChannelSource::new(&ch);
    let cpus = src.string("cpus", 64).unwrap();
    if cpus.starts_with(b"-1") {
        assert_eq!(i, 0, "only the first connection offers a version");
        return None;
    }
    let n = v1::parse_decimal("cpus", &cpus).unwrap() as u32;
    let init = v1::read_client_init_after_cpus(&mut src, n).unwrap();
    let (socks, ports) = udp_ports(n as usize);
    ch.send_all(&v1::encode_ports(&ports)).unwrap();
    let mut metadata = Vec::new();
    session::collect_raw(&ch, &mut metadata, &|| false).unwrap();
    let got = socks
        .iter()
        .map(|s| {
            let mut buf = vec![0u8; 2 * PAGE];
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let n = s.recv(&mut buf).unwrap();
            buf[..n].to_vec()
        })
        .collect();
    Some((init, metadata, got))
}

fn run_v1(conns: usize, force: Option<Proto>) {
    let (addr, count, h) = listener(conns, v1_listener);
    let sess = NetSession::connect(&addr, &params(2, false, force)).unwrap();
    assert_eq!(sess.proto(), Proto::V1);
    sess.send_metadata(&meta(), &options()).unwrap();
    for cpu in 0..2 {
        let s = UdpSocket::from(sess.connect_data(cpu).unwrap());
        s.send(&page(cpu)).unwrap();
    }
    sess.finish().unwrap();
    let (init, metadata, got) = h.join().unwrap().expect("a V1 session");
    assert_eq!(
        init,
        v1::ClientInit {
            cpus: 2,
            page_size: 4096,
            use_tcp: false
        }
    );
    assert_eq!(metadata, meta().to_bytes().unwrap());
    assert_eq!(got, vec![page(0), page(1)]);
    assert_eq!(count.load(Ordering::SeqCst), conns);
}

#[test]
fn v1_only_listener_makes_the_client_reconnect_as_v1() {
    run_v1(2, None);
}

#[test]
fn forced_v1_uses_one_connection() {
    run_v1(1, Some(Proto::V1));
}

#[test]
fn forced_v3_does_not_follow_a_v2_listener() {
    let (addr, _, h) = listener(1, |_, s| {
        let ch = Channel::new(s.as_fd());
        ch.send_all(b"tracecmd").unwrap();
        assert_eq!(read_string(&ch), b"-1V3");
        ch.send_all(V2_REPLY).unwrap();
        // The client must give up, not offer V2.
        let mut rest = Vec::new();
        let _ = (&s).read_to_end(&mut rest);
        rest
    });
    let e = NetSession::connect(&addr, &params(2, false, Some(Proto::V3))).unwrap_err();
    assert!(
        matches!(
            e,
            NetError::Protocol {
                source: MsgError::ProtocolMismatch(_),
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("V2"), "{e}");
    assert!(h.join().unwrap().is_empty());
}

#[test]
fn forced_v2_against_a_v1_listener_is_an_error_not_a_fallback() {
    let (addr, count, h) = listener(1, v1_listener);
    let e = NetSession::connect(&addr, &params(2, false, Some(Proto::V2))).unwrap_err();
    assert!(
        matches!(
            e,
            NetError::NotSpoken {
                wanted: Proto::V2,
                ..
            }
        ),
        "{e}"
    );
    assert!(h.join().unwrap().is_none());
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

/// Runs the client against a listener that sends `script` and then holds the
/// connection for `hold` (zero: ends its side at once); returns the client's error.
fn against_script(script: Vec<u8>, hold: Duration, timeout: Duration) -> NetError {
    let (addr, _, h) = listener(1, move |_, mut s| {
        let _ = s.write_all(&script);
        if hold.is_zero() {
            // End of the script is end of stream; what the client sends is read,
            // so the close is a clean EOF and not a reset.
            let _ = s.shutdown(std::net::Shutdown::Write);
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut sink = [0u8; 256];
            while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
        } else {
            std::thread::sleep(hold);
        }
    });
    let mut p = params(2, false, None);
    p.timeout = timeout;
    let e = NetSession::connect(&addr, &p).unwrap_err();
    h.join().unwrap();
    e
}

#[test]
fn broken_listeners_end_in_clear_errors() {
    let t = Duration::from_secs(3);
    // The script, then EOF.
    let hold = Duration::ZERO;
    let e = against_script(b"HTTP/1.1 400 Bad".to_vec(), hold, t);
    assert!(e.to_string().contains("not a trace-cmd server"), "{e}");

    let e = against_script(b"tracecmdV9\0".to_vec(), hold, t);
    assert!(e.to_string().contains("V9"), "{e}");

    // A version answer that never ends.
    let e = against_script([&b"tracecmd"[..], &[b'V'; 500]].concat(), hold, t);
    assert!(e.to_string().contains("longer than"), "{e}");

    // RINIT for 4096 CPUs when 2 were announced.
    let mut rinit = v3::Msg::RInit {
        ports: vec![1500; 4096],
    };
    let big = rinit.encode();
    assert!(big.is_err(), "4096 ports do not fit one message");
    rinit = v3::Msg::RInit {
        ports: vec![1500; 3],
    };
    let script = [&b"tracecmdV3\0OK"[..], &rinit.encode().unwrap()].concat();
    let e = against_script(script, hold, t);
    assert!(
        matches!(
            e,
            NetError::PortCount {
                got: 3,
                cpus: 2,
                ..
            }
        ),
        "{e}"
    );

    // An RINIT header that claims a huge message.
    let script = [
        &b"tracecmdV3\0OK"[..],
        &[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 2, 0, 0, 0, 4][..],
    ]
    .concat();
    let e = against_script(script, hold, t);
    assert!(e.to_string().contains("outside"), "{e}");

    // Port 0 for a CPU.
    let rinit = v3::Msg::RInit { ports: vec![0, 1] }.encode().unwrap();
    let script = [&b"tracecmdV3\0OK"[..], &rinit].concat();
    let e = against_script(script, hold, t);
    assert!(matches!(e, NetError::BadPort { port: 0, .. }), "{e}");

    // EOF after "OK": the listener went away before RINIT.
    let e = against_script(b"tracecmdV3\0OK".to_vec(), hold, t);
    assert!(e.to_string().contains("closed"), "{e}");

    // Nothing refuses to listen: a connection refused is an error naming the address.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    let e = NetSession::connect(&addr, &params(1, false, None)).unwrap_err();
    assert!(e.to_string().contains(&addr), "{e}");
}

#[test]
fn a_silent_listener_times_out() {
    for script in [Vec::new(), b"tracecmd".to_vec(), b"tracecmdV3\0OK".to_vec()] {
        let start = Instant::now();
        let e = against_script(
            script,
            Duration::from_millis(1500),
            Duration::from_millis(300),
        );
        assert!(
            matches!(
                e,
                NetError::Protocol {
                    source: MsgError::TimedOut(_),
                    ..
                }
            ),
            "{e}"
        );
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}

#[test]
fn random_listener_streams_never_panic_or_hang() {
    let good = [
        &b"tracecmdV3\0OK"[..],
        &v3::Msg::RInit {
            ports: vec![1500, 1501],
        }
        .encode()
        .unwrap(),
    ]
    .concat();
    let v2ish = b"tracecmdV2\0V2\0OK".to_vec();
    let mut rng = testkit::Rng::new(0x9e37_79b9_7f4a_7c15);
    for i in 0..300 {
        let base = if i % 2 == 0 { &good } else { &v2ish };
        let keep = (rng.next() as usize) % (base.len() + 1);
        let mut script = base[..keep].to_vec();
        let extra = (rng.next() % 40) as usize;
        script.extend((0..extra).map(|_| rng.next() as u8));
        if rng.next() % 4 == 0 && !script.is_empty() {
            let at = (rng.next() as usize) % script.len();
            script[at] ^= 1 << (rng.next() % 8);
        }
        let (addr, _, h) = listener(2, move |_, mut s| {
            let _ = s.write_all(&script);
        });
        let mut p = params(2, i % 3 == 0, None);
        p.timeout = Duration::from_millis(200);
        let start = Instant::now();
        // Success is possible (the unchanged good script); the point is no panic.
        let r = NetSession::connect(&addr, &p);
        assert!(start.elapsed() < Duration::from_secs(3), "case {i} hung");
        drop(r);
        // The listener may wait for a reconnect that never comes: poke it.
        let _ = TcpStream::connect(&addr);
        h.join().unwrap();
    }
}

#[test]
fn recorder_sends_one_page_per_datagram() {
    use tracecmd_rs::recorder::{CpuRecorder, Input, Output, RecordFlags};
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    tx.connect(rx.local_addr().unwrap()).unwrap();
    let (r, w) = nix::unistd::pipe().unwrap();
    // Splice flags asked for: a datagram output must still get whole pages.
    let mut rec = CpuRecorder::new(
        Input::Fd(r),
        Output::Stream(tx.into()),
        RecordFlags::default(),
    )
    .unwrap();
    let page_size = rec.page_size();
    let data: Vec<u8> = (0..3 * page_size).map(|i| (i / 7) as u8).collect();
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::File::from(w);
        // Odd-sized writes, so pages are only whole if the recorder makes them so.
        for chunk in data.chunks(1000) {
            f.write_all(chunk).unwrap();
        }
        data
    });
    let stop = rec.stop_handle();
    let recording = std::thread::spawn(move || rec.record(Duration::from_millis(1)));
    let data = writer.join().unwrap();
    stop.stop();
    recording.join().unwrap().unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    for _ in 0..3 {
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(n, page_size, "one datagram = one page");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, data);
}
