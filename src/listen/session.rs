//! One client connection, from the greeting to the finished file (spec §3.1,
//! §3.2, doc §6.3–6.8, §7.2).

use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;

use super::data::DataPorts;
use super::{name, ListenConfig, ListenError, Outcome, Protocol, SessionReport, Ticket};
use crate::msg::negotiate::{self, Hello};
use crate::msg::{v2, v3, Channel, MsgError, Wait};
use crate::output::{self, v7, BufferData};

pub(crate) fn run(
    stream: &TcpStream,
    peer: SocketAddr,
    cfg: &ListenConfig,
    ticket: &Ticket,
) -> SessionReport {
    let mut report = SessionReport {
        peer: name::unmapped(peer),
        protocol: None,
        output: None,
        cpu_bytes: vec![],
        result: Ok(Outcome::Complete),
    };
    report.result = session(stream, cfg, ticket, &mut report);
    report
}

fn session(
    stream: &TcpStream,
    cfg: &ListenConfig,
    ticket: &Ticket,
    report: &mut SessionReport,
) -> Result<Outcome, ListenError> {
    let peer = report.peer;
    let label = peer.to_string();
    let _ = stream.set_nodelay(true);
    let ch = Channel::new(stream.as_fd()).with_timeout(cfg.timeout);
    let hello = negotiate::server_negotiate_any(&ch)?;
    let proto = hello.proto();
    let init = match hello {
        Hello::V1(i) => i,
        Hello::V2 => negotiate::initial_setting(&ch)?.record().ok_or_else(|| {
            ListenError::Unsupported("a guest-agent session (CINIT) on the network port".into())
        })?,
        Hello::V3 => {
            let req = negotiate::v3_initial_setting(&ch)?;
            if req.vsock {
                return Err(ListenError::Unsupported("per-CPU data over vsock".into()));
            }
            for other in &req.unknown {
                log::info!("{label}: ignoring unknown TINIT option {other:?}");
            }
            req.init
        }
    };
    report.protocol = Some(proto);
    if init.cpus > cfg.max_cpus {
        return Err(ListenError::Limit {
            what: "CPU count",
            value: init.cpus.into(),
            max: cfg.max_cpus.into(),
        });
    }
    if init.page_size > cfg.max_page_size {
        return Err(ListenError::Limit {
            what: "page size",
            value: init.page_size.into(),
            max: cfg.max_page_size.into(),
        });
    }
    log::info!(
        "{label}: protocol {proto:?}, {} CPUs, page size {}, data over {}",
        init.cpus,
        init.page_size,
        if init.use_tcp { "TCP" } else { "UDP" }
    );

    let host = name::sanitise_host(&name::peer_host(peer));
    // The file is built under a name that says it is not finished, and gets its
    // final name only once it is complete: a listener that dies mid-session (or
    // an assembly that fails) never leaves a `.dat` that looks finished. The
    // name is claimed exclusively: a client port can come back while an earlier
    // session of that host and port is still being assembled.
    let (base, mut dat) = name::claim(&cfg.dir, &format!("{}.{host}:{}", cfg.prefix, peer.port()))
        .map_err(|source| ListenError::Io {
            what: format!("creating a trace file in {}", cfg.dir.display()),
            source,
        })?;
    let dat_path = cfg.dir.join(format!("{base}.dat"));
    let work_path = cfg.dir.join(format!("{base}.dat.partial"));
    let cpu_paths: Vec<PathBuf> = (0..init.cpus)
        .map(|i| cfg.dir.join(format!("{base}.cpu{i}")))
        .collect();
    report.output = Some(work_path.clone());
    // A session that fails before its file can be built leaves nothing behind.
    let discard = |report: &mut SessionReport| {
        remove_files(&cpu_paths);
        let _ = std::fs::remove_file(&work_path);
        report.output = None;
    };
    let ports = match DataPorts::bind(
        init.use_tcp,
        init.page_size,
        cfg.first_data_port,
        cpu_paths.clone(),
    ) {
        Ok(p) => p,
        Err(e) => {
            discard(report);
            return Err(e);
        }
    };
    let port_list: Vec<u32> = ports.ports.iter().map(|&p| u32::from(p)).collect();
    let sent = negotiate::send_ports(&ch, proto, &port_list);
    let data = match sent
        .map_err(ListenError::from)
        .and_then(|_| ports.start(label.clone()))
    {
        Ok(d) => d,
        Err(e) => {
            discard(report);
            return Err(e);
        }
    };

    let ended = receive_metadata(&ch, proto, &mut dat, cfg, ticket, &label);
    // Data still in flight matters only when a file will be built.
    let quiet = if ended.is_ok() {
        cfg.drain_quiet
    } else {
        std::time::Duration::ZERO
    };
    let drained = data.finish(quiet);
    report.cpu_bytes = drained.bytes;
    let mut outcome = match ended {
        Ok(o) => o,
        Err(e) => {
            discard(report);
            return Err(e);
        }
    };
    if ticket.stopped() {
        log::warn!(
            "{label}: the listener is stopping; the trace file holds what arrived until now"
        );
        outcome = Outcome::Partial;
    }
    if !drained.complete && outcome == Outcome::Complete {
        outcome = Outcome::Partial;
    }
    let files: Vec<Option<PathBuf>> = cpu_paths
        .iter()
        .zip(&report.cpu_bytes)
        .map(|(p, &n)| (n > 0).then(|| p.clone()))
        .collect();
    let built = assemble(&mut dat, proto, init.cpus, &files).and_then(|()| {
        name::publish(&work_path, &dat_path).map_err(|source| ListenError::Io {
            what: format!("renaming {} to {}", work_path.display(), dat_path.display()),
            source,
        })
    });
    match built {
        Ok(()) => {
            report.output = Some(dat_path);
            remove_files(&cpu_paths);
            Ok(outcome)
        }
        Err(e) => {
            log::error!(
                "{label}: {e}; keeping the metadata in {} and the raw per-CPU data in {}.cpuN",
                work_path.display(),
                cfg.dir.join(&base).display()
            );
            Err(e)
        }
    }
}

fn remove_files(paths: &[PathBuf]) {
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}

fn write_meta(
    dat: &mut File,
    d: &[u8],
    total: &mut u64,
    cfg: &ListenConfig,
) -> Result<(), ListenError> {
    *total += d.len() as u64;
    if *total > cfg.max_metadata {
        return Err(ListenError::Limit {
            what: "metadata size",
            value: *total,
            max: cfg.max_metadata,
        });
    }
    dat.write_all(d).map_err(|source| ListenError::Io {
        what: "writing the metadata".into(),
        source,
    })
}

/// Copies the metadata into `dat` and waits for the end of the session.
fn receive_metadata(
    ch: &Channel<'_>,
    proto: Protocol,
    dat: &mut File,
    cfg: &ListenConfig,
    ticket: &Ticket,
    label: &str,
) -> Result<Outcome, ListenError> {
    let mut total = 0u64;
    // Entering the wait for the end; a stopping listener ends the session here.
    let stopping = || {
        ticket
            .enter_wait()
            .then(|| log::info!("{label}: the listener is stopping"))
            .is_some()
    };
    let incomplete = |e: MsgError, total: u64| match e {
        MsgError::Closed | MsgError::TimedOut(_) | MsgError::Io(_) => {
            ListenError::MetadataIncomplete(format!("{e}, after {total} bytes"))
        }
        e => ListenError::Protocol(e),
    };
    match proto {
        // V1: raw metadata until the client closes (spec §3.1); there is no CLOSE.
        Protocol::V1 => {
            let mut buf = vec![0u8; 64 * 1024];
            if stopping() {
                return Ok(Outcome::Partial);
            }
            loop {
                match ch.recv_some(&mut buf, Wait::Blocking) {
                    Ok(0) => return Ok(Outcome::Complete),
                    Ok(n) => write_meta(dat, &buf[..n], &mut total, cfg)?,
                    Err(MsgError::Interrupted) => {}
                    Err(e) => return Err(incomplete(e, total)),
                }
            }
        }
        Protocol::V2 => {
            loop {
                match v2::recv(ch, Wait::Timed) {
                    Ok(v2::Msg::SendMeta(d)) => write_meta(dat, &d, &mut total, cfg)?,
                    Ok(v2::Msg::FinMeta) => break,
                    Ok(m) => {
                        return Err(ListenError::Protocol(MsgError::Unexpected {
                            expected: "SENDMETA or FINMETA",
                            got: m.cmd().name(),
                        }))
                    }
                    Err(e) => return Err(incomplete(e, total)),
                }
            }
            if stopping() {
                return Ok(Outcome::Partial);
            }
            loop {
                match v2::recv(ch, Wait::Blocking) {
                    Ok(v2::Msg::Close) => return Ok(Outcome::Complete),
                    Ok(m) => log::info!(
                        "{label}: ignoring {} while waiting for CLOSE",
                        m.cmd().name()
                    ),
                    Err(MsgError::Interrupted) => {}
                    Err(e) => return partial(label, e),
                }
            }
        }
        Protocol::V3 => {
            loop {
                match v3::recv(ch, Wait::Timed) {
                    Ok(v3::Msg::SendData(d)) => write_meta(dat, &d, &mut total, cfg)?,
                    Ok(v3::Msg::FinData) => break,
                    Ok(v3::Msg::Close) => {
                        return Err(ListenError::MetadataIncomplete(format!(
                            "CLOSE after {total} bytes, before FIN_DATA"
                        )))
                    }
                    Ok(v3::Msg::NotSupp) => {}
                    Ok(m) => {
                        log::info!(
                            "{label}: {} during the metadata; answered NOT_SUPP",
                            m.name()
                        );
                        v3::send(ch, &v3::Msg::NotSupp)?;
                    }
                    Err(e) => return Err(incomplete(e, total)),
                }
            }
            if stopping() {
                return Ok(Outcome::Partial);
            }
            loop {
                match v3::recv(ch, Wait::Blocking) {
                    Ok(v3::Msg::Close) => return Ok(Outcome::Complete),
                    Ok(v3::Msg::NotSupp) => {}
                    Ok(m) => {
                        log::info!(
                            "{label}: {} while waiting for CLOSE; answered NOT_SUPP",
                            m.name()
                        );
                        if let Err(e) = v3::send(ch, &v3::Msg::NotSupp) {
                            return partial(label, e);
                        }
                    }
                    Err(MsgError::Interrupted) => {}
                    Err(e) => return partial(label, e),
                }
            }
        }
    }
}

fn partial(label: &str, e: MsgError) -> Result<Outcome, ListenError> {
    log::info!("{label}: the control connection ended without CLOSE ({e})");
    Ok(Outcome::Partial)
}

/// The listener's own clock, as 3.x listeners use it (doc §6.8).
fn listener_clock() -> Option<String> {
    let top = crate::tracefs::Instance::top().ok()?;
    let text = top.read("trace_clock").ok()?;
    crate::tracefs::parse_trace_clock(&text).map(|(c, _)| c)
}

/// Builds the final file from the metadata in `dat` and the per-CPU files.
fn assemble(
    dat: &mut File,
    proto: Protocol,
    cpus: u32,
    files: &[Option<PathBuf>],
) -> Result<(), ListenError> {
    let (version, page) = super::meta6::file_header(&*dat)?;
    let clock = listener_clock();
    let buffer = BufferData {
        name: String::new(),
        trailing_clock: clock.as_deref().map(output::bracketed_clock),
        cpu_files: files.to_vec(),
    };
    match (proto, version.as_str()) {
        (Protocol::V1 | Protocol::V2, "6") => {
            output::attach_cpu_data(dat, cpus, &[], &buffer, &[], page)?;
        }
        (Protocol::V3, "6") => {
            // The client's own clock, where 3.x listeners write theirs (doc P6).
            let buffer = BufferData {
                trailing_clock: super::meta6::client_clock(&*dat)
                    .or(clock)
                    .as_deref()
                    .map(output::bracketed_clock),
                ..buffer
            };
            output::append_flyrecord(dat, cpus, page, &buffer)?;
        }
        (Protocol::V3, "7") => {
            let meta = v7::parse_metadata(&*dat)?;
            let clock = meta.trace_clock.clone().or(clock).unwrap_or_else(|| {
                log::warn!(
                    "cannot read this machine's trace clock; the BUFFER option says \"local\""
                );
                "local".into()
            });
            v7::append_buffer(dat, &meta, &clock, files)?;
        }
        (p, v) => {
            return Err(ListenError::Unsupported(format!(
                "trace.dat version {v:?} metadata from a {p:?} client"
            )))
        }
    }
    dat.sync_data().map_err(|source| ListenError::Io {
        what: "flushing the trace file".into(),
        source,
    })
}
