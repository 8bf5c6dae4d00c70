//! A replay client for listener tests and benches (issue 18): a captured real
//! session — a v6 trace.dat our listener built for a `record -N --proto 1 -t`
//! client — is taken apart into what its client sent (the metadata and each
//! CPU's pages) and sent again, over V1 or V3 with TCP data, by N clients at
//! once. The clients are the project's own network client
//! ([`tracecmd_rs::netrecord::NetSession`]), so the handshakes, timeouts and
//! message framing are those of `trace-cmd record -N`.

use std::io::Write;
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use tracecmd_rs::netrecord::{NetParams, NetSession, Proto};
use tracecmd_rs::output::reader::TraceDat;
use tracecmd_rs::output::{DatOption, Metadata};

/// What the client of a captured session sent.
pub struct Capture {
    pub meta: Metadata,
    /// Options for a V3 replay (the V1 capture has none: its listener adds them).
    pub options: Vec<DatOption>,
    /// Each CPU's pages, as they crossed the data connection.
    pub cpu_data: Vec<Vec<u8>>,
    /// Events per CPU, counted by the project's reader.
    pub events: Vec<u64>,
}

impl Capture {
    /// Takes apart a v6 file with uncompressed data.
    pub fn from_dat(b: &[u8]) -> Result<Capture, String> {
        let d = TraceDat::parse(b).map_err(|e| format!("not a trace.dat: {e}"))?;
        if d.version != 6 {
            return Err(format!("a v6 capture is needed, not v{}", d.version));
        }
        let r = |r: &std::ops::Range<usize>| b[r.clone()].to_vec();
        let meta = Metadata {
            page_size: d.page_size,
            long_size: d.long_size,
            header_page: r(&d.header_page),
            header_event: r(&d.header_event),
            ftrace_formats: d.ftrace_formats.iter().map(r).collect(),
            systems: d
                .systems
                .iter()
                .map(|(s, f)| (s.clone(), f.iter().map(r).collect()))
                .collect(),
            kallsyms: r(&d.kallsyms),
            printk_formats: r(&d.printk_formats),
            cmdlines: r(&d.cmdlines),
        };
        let top = d.buffers.first().ok_or("the capture has no buffer")?;
        let cpu_data = top
            .cpu_data
            .iter()
            .map(|&(off, size)| b[off as usize..(off + size) as usize].to_vec())
            .collect();
        let events = d.count_events(b, 0).map_err(|e| e.to_string())?;
        Ok(Capture {
            meta,
            options: vec![],
            cpu_data,
            events,
        })
    }

    pub fn total_events(&self) -> u64 {
        self.events.iter().sum()
    }
}

/// How one replayed client did.
#[derive(Debug)]
pub struct Replayed {
    /// The client's local port (the listener names its file after it).
    pub local_port: u16,
    pub took: Duration,
}

/// Sends the captured session once to `target` (`host:port`) with protocol
/// `proto`: handshake, data connections, metadata, every page, then CLOSE (V3)
/// or the end of the control connection (V1), as `record -N` orders them.
/// Every step (connect, each answer, each send) is bounded by `timeout`.
pub fn replay_one(
    cap: &Capture,
    target: &str,
    proto: Proto,
    timeout: Duration,
) -> Result<Replayed, String> {
    let start = Instant::now();
    let params = NetParams {
        cpus: cap.cpu_data.len() as u32,
        page_size: cap.meta.page_size,
        use_tcp: true,
        force: Some(proto),
        timeout,
    };
    let s = NetSession::connect(target, &params).map_err(|e| e.to_string())?;
    let local_port = s.local_port().map_err(|e| e.to_string())?;
    // Sends are bounded too: a listener that stops reading fails the client
    // after `timeout` instead of holding it (and the bench) forever.
    let bounded = |r: std::io::Result<()>| r.map_err(|e| format!("setting a send timeout: {e}"));
    bounded(s.set_send_timeout(Some(timeout)))?;
    let mut data: Vec<TcpStream> = (0..cap.cpu_data.len())
        .map(|c| s.connect_data(c).map(TcpStream::from))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    for d in &data {
        bounded(d.set_write_timeout(Some(timeout)))?;
    }
    s.send_metadata(&cap.meta, &cap.options)
        .map_err(|e| e.to_string())?;
    for (sock, pages) in data.iter_mut().zip(&cap.cpu_data) {
        sock.write_all(pages).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!("sending CPU data: the listener took none for {timeout:?}")
            }
            _ => format!("sending CPU data: {e}"),
        })?;
    }
    drop(data);
    s.finish().map_err(|e| e.to_string())?;
    Ok(Replayed {
        local_port,
        took: start.elapsed(),
    })
}

/// Runs one client per entry of `protos` on its own thread, all released
/// together, and returns their results in that order.
pub fn replay_many(
    cap: Arc<Capture>,
    target: &str,
    protos: &[Proto],
    timeout: Duration,
) -> Vec<Result<Replayed, String>> {
    let go = Arc::new(Barrier::new(protos.len()));
    let handles: Vec<_> = protos
        .iter()
        .map(|&proto| {
            let (cap, go, target) = (Arc::clone(&cap), Arc::clone(&go), target.to_string());
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    go.wait();
                    replay_one(&cap, &target, proto, timeout)
                })
                .expect("start a replay thread")
        })
        .collect();
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Err("the replay thread panicked".into()))
        })
        .collect()
}
