//! One client connection, from the greeting to the finished file (spec §3.1,
//! §3.2, doc §6.3–6.8, §7.2).

use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::data::DataPorts;
use super::{name, ListenConfig, ListenError, Outcome, Protocol, SessionReport, Ticket};
use crate::msg::handshake::{self, AnyHello};
use crate::msg::{session as msess, v2, v3, Channel, MsgError, Wait};
use crate::output::{self, v7, BufferData, MAGIC};

/// What TINIT (or the V1 announcement) asked for.
struct Init {
    cpus: u32,
    page_size: u32,
    tcp: bool,
}

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
    let hello = handshake::server_negotiate_any(&ch)?;
    let (proto, init) = match hello {
        AnyHello::V1(i) => (
            Protocol::V1,
            Init {
                cpus: i.cpus,
                page_size: i.page_size,
                tcp: i.use_tcp,
            },
        ),
        AnyHello::V2 => match msess::initial_setting(&ch)? {
            msess::Initial::Record {
                cpus,
                page_size,
                use_tcp,
            } => (
                Protocol::V2,
                Init {
                    cpus,
                    page_size,
                    tcp: use_tcp,
                },
            ),
            msess::Initial::Agent { .. } => {
                return Err(ListenError::Unsupported(
                    "a guest-agent session (CINIT) on the network port".into(),
                ))
            }
        },
        AnyHello::V3 => match v3::recv(&ch, Wait::Timed)? {
            v3::Msg::TInit {
                cpus,
                page_size,
                options,
            } => {
                let mut tcp = false;
                for o in &options {
                    match o.as_str() {
                        "tcp" => tcp = true,
                        "vsock" => {
                            return Err(ListenError::Unsupported("per-CPU data over vsock".into()))
                        }
                        other => log::info!("{label}: ignoring unknown TINIT option {other:?}"),
                    }
                }
                (
                    Protocol::V3,
                    Init {
                        cpus,
                        page_size,
                        tcp,
                    },
                )
            }
            m => {
                let _ = v3::send(&ch, &v3::Msg::NotSupp);
                return Err(MsgError::Unexpected {
                    expected: "TINIT",
                    got: v3_name(&m),
                }
                .into());
            }
        },
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
        if init.tcp { "TCP" } else { "UDP" }
    );

    let host = name::sanitise_host(&name::peer_host(peer));
    let base = format!("{}.{host}:{}", cfg.prefix, peer.port());
    // The file is built under a name that says it is not finished, and gets its
    // final name only once it is complete: a listener that dies mid-session (or
    // an assembly that fails) never leaves a `.dat` that looks finished.
    let dat_path = cfg.dir.join(format!("{base}.dat"));
    let work_path = cfg.dir.join(format!("{base}.dat.partial"));
    let cpu_paths: Vec<PathBuf> = (0..init.cpus)
        .map(|i| cfg.dir.join(format!("{base}.cpu{i}")))
        .collect();
    let mut dat = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&work_path)
        .map_err(|source| ListenError::Io {
            what: format!("creating {}", work_path.display()),
            source,
        })?;
    report.output = Some(work_path.clone());
    let ports = match DataPorts::bind(
        init.tcp,
        init.page_size,
        cfg.first_data_port,
        cpu_paths.clone(),
    ) {
        Ok(p) => p,
        Err(e) => {
            remove_files(&cpu_paths);
            return Err(e);
        }
    };
    let port_list: Vec<u32> = ports.ports.iter().map(|&p| u32::from(p)).collect();
    let sent = match proto {
        Protocol::V1 => handshake::server_send_ports_v1(&ch, &port_list),
        Protocol::V2 => msess::send_port_array(&ch, init.cpus, Some(&port_list)),
        Protocol::V3 => v3::send(&ch, &v3::Msg::RInit { ports: port_list }),
    };
    let data = match sent
        .map_err(ListenError::from)
        .and_then(|_| ports.start(label.clone()))
    {
        Ok(d) => d,
        Err(e) => {
            remove_files(&cpu_paths);
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
            remove_files(&cpu_paths);
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
        std::fs::rename(&work_path, &dat_path).map_err(|source| ListenError::Io {
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

fn v3_name(m: &v3::Msg) -> &'static str {
    match m {
        v3::Msg::Close => "CLOSE",
        v3::Msg::TInit { .. } => "TINIT",
        v3::Msg::RInit { .. } => "RINIT",
        v3::Msg::SendData(_) => "SEND_DATA",
        v3::Msg::FinData => "FIN_DATA",
        v3::Msg::NotSupp => "NOT_SUPP",
        v3::Msg::Unsupported { .. } => "an agent or proxy command",
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
                            v3_name(&m)
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
                            v3_name(&m)
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

/// Version, endian byte and page size of the metadata at the start of `dat`.
fn file_header(dat: &File) -> Result<(String, u32), ListenError> {
    let mut h = [0u8; 32];
    let n = dat.read_at(&mut h, 0).map_err(|source| ListenError::Io {
        what: "reading the metadata back".into(),
        source,
    })?;
    let h = &h[..n];
    let bad = |d: &str| ListenError::MetadataIncomplete(format!("the metadata header {d}"));
    if !h.starts_with(MAGIC) {
        return Err(bad("does not start with the trace.dat magic"));
    }
    let rest = &h[MAGIC.len()..];
    let nul = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| bad("has no version string"))?;
    let version = String::from_utf8_lossy(&rest[..nul]).into_owned();
    let fields = rest
        .get(nul + 1..nul + 7)
        .ok_or_else(|| bad("is truncated"))?;
    if fields[0] != 0 {
        return Err(ListenError::Unsupported(
            "big-endian metadata (this listener appends little-endian data)".into(),
        ));
    }
    let page = u32::from_le_bytes([fields[2], fields[3], fields[4], fields[5]]);
    if page == 0 || page > 1 << 20 {
        return Err(bad(&format!("gives page size {page}")));
    }
    Ok((version, page))
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
    let (version, page) = file_header(dat)?;
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
