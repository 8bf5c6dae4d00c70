//! `trace-cmd agent`: for trace-cmd 3.x hosts on vsock, or with `-N CLIENT` on TCP
//! (issue 14), and `--virt` for virt-server hosts (spec §3.5, issue 6 item 3).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args;
use tracecmd_rs::record::agent3;
use tracecmd_rs::virt::{agent, DEFAULT_PORTS_DIR};

/// Options of `trace-cmd agent`.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Talk to the host over virtio-serial ports (a virt-server host).
    #[arg(long)]
    virt: bool,
    /// Serve 3.x hosts over TCP, accepting only this client address.
    #[arg(short = 'N', value_name = "CLIENT", conflicts_with = "virt")]
    client: Option<std::net::IpAddr>,
    /// Port to listen on, vsock or with -N TCP (3.x hosts).
    #[arg(short = 'p', value_name = "PORT", default_value_t = agent3::DEFAULT_AGENT_PORT.into())]
    port: u32,
    /// Directory of the virtio ports (agent-ctl-path, trace-path-cpuN).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PORTS_DIR)]
    ports_dir: PathBuf,
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    #[arg(long)]
    pub debug: bool,
}

/// Runs the agent until SIGINT/SIGTERM or the control port fails.
pub fn run(a: AgentArgs) -> Result<(), String> {
    let stopped = Arc::new(AtomicBool::new(false));
    let s2 = stopped.clone();
    // SIGINT/SIGTERM: a recording in progress is stopped and tracefs restored.
    crate::signals::on_stop(move || s2.store(true, Ordering::SeqCst))?;
    let stop = || stopped.load(Ordering::SeqCst);
    let params = agent3::AgentParams::default();
    if let Some(client) = a.client {
        let port = u16::try_from(a.port)
            .map_err(|_| format!("TCP port {} is out of range (0 to 65535)", a.port))?;
        eprintln!("agent: listening on TCP port {port} for {client}");
        return agent3::run_tcp(client, port, &params, &stop).map_err(|e| e.to_string());
    }
    if !a.virt {
        eprintln!("agent: listening on vsock port {}", a.port);
        return agent3::run_vsock(a.port, &params, &stop)
            .map_err(|e| format!("cannot listen on vsock port {}: {e}", a.port));
    }
    let ports = agent::open_ports(&a.ports_dir).map_err(|e| e.to_string())?;
    eprintln!("agent: ports in {}", a.ports_dir.display());
    agent::serve(&ports, &|| stopped.load(Ordering::SeqCst)).map_err(|e| e.to_string())
}
