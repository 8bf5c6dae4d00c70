//! `trace-cmd listen -p port [-d dir] [-o prefix] [-l logfile] [-D]` (issue 5):
//! serve `record -N` clients of every protocol generation.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};
use tracecmd_rs::listen::{ListenConfig, Listener, DEFAULT_MAX_CLIENTS};

/// `trace-cmd listen` without `--virt`: the network listener alone.
#[derive(Parser, Debug)]
#[command(
    name = "trace-cmd listen",
    after_help = "With --virt it serves guests too: see `trace-cmd listen --virt --help`."
)]
pub struct NetListenCli {
    #[command(flatten)]
    pub args: ListenArgs,
}

/// Options of `trace-cmd listen` (trace-cmd's letters).
#[derive(Args, Debug)]
pub struct ListenArgs {
    /// TCP port clients connect to.
    #[arg(short = 'p', value_name = "PORT")]
    port: u16,
    /// Directory for the output files.
    #[arg(short = 'd', value_name = "DIR", default_value = ".")]
    dir: PathBuf,
    /// Output name prefix: files are `<prefix>.<host>:<port>.dat`.
    #[arg(short = 'o', value_name = "PREFIX", default_value = "trace")]
    prefix: String,
    /// Append log messages to this file instead of stderr.
    #[arg(short = 'l', value_name = "LOGFILE")]
    pub logfile: Option<PathBuf>,
    /// Run as a daemon (detach; the pid goes to trace-cmd-net.pid in the output directory).
    #[arg(short = 'D')]
    daemon: bool,
    /// Seconds to wait for each handshake step and metadata message (0: forever).
    #[arg(long = "timeout", value_name = "SECS", default_value_t = 5)]
    timeout: u64,
    /// First port tried for per-CPU data sockets.
    #[arg(long = "data-port", value_name = "PORT", default_value_t = 1500)]
    data_port: u16,
    /// Most sessions served at once; further clients wait in the accept queue
    /// until a session ends.
    #[arg(long = "max-clients", value_name = "N", default_value_t = DEFAULT_MAX_CLIENTS as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_clients: u32,
    /// Show what is being done.
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// Show debugging detail.
    #[arg(long)]
    pub debug: bool,
}

/// Runs the listener until SIGINT or SIGTERM; sessions in progress then end in
/// files of what arrived, and the listener exits 0.
pub fn run(args: ListenArgs) -> Result<(), String> {
    let dir = args
        .dir
        .canonicalize()
        .map_err(|e| format!("output directory {}: {e}", args.dir.display()))?;
    if args.prefix.contains('/') {
        return Err(format!("prefix {:?} must not contain '/'", args.prefix));
    }
    let cfg = ListenConfig {
        port: args.port,
        dir: dir.clone(),
        prefix: args.prefix,
        timeout: (args.timeout > 0).then(|| Duration::from_secs(args.timeout)),
        first_data_port: args.data_port,
        max_clients: args.max_clients as usize,
        ..ListenConfig::default()
    };
    warn_if_fd_limit_short(cfg.max_clients);
    // Bind before detaching, so that a busy port is reported to the caller.
    let listener = Listener::bind(cfg).map_err(|e| e.to_string())?;
    let log = match &args.logfile {
        Some(p) => Some(
            OpenOptions::new()
                .append(true)
                .create(true)
                .open(p)
                .map_err(|e| format!("log file {}: {e}", p.display()))?,
        ),
        None => None,
    };
    if args.daemon {
        nix::unistd::daemon(true, false).map_err(|e| format!("cannot become a daemon: {e}"))?;
        let pid_path = dir.join("trace-cmd-net.pid");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&pid_path)
            .map_err(|e| format!("pid file {}: {e}", pid_path.display()))?;
        writeln!(f, "{}", std::process::id()).map_err(|e| format!("pid file: {e}"))?;
    }
    if let Some(f) = log {
        // The logger writes to stderr: point stderr at the log file.
        nix::unistd::dup2(f.as_raw_fd(), 2).map_err(|e| format!("log file: {e}"))?;
    }
    let stop = listener.stop_handle();
    crate::signals::on_stop(move || stop.stop())?;
    log::info!("listening on port {}", listener.port());
    listener.serve().map_err(|e| e.to_string())?;
    log::info!("all sessions ended; listener stopped");
    Ok(())
}

/// Every session holds a dozen descriptors; the usual soft limit of 1024 would
/// stop a fleet at about 80 clients. main() has raised it to the hard limit
/// (for every command); say so when even that is short of `max_clients`
/// sessions of clients like this machine.
fn warn_if_fd_limit_short(max_clients: usize) {
    use nix::sys::resource::{getrlimit, Resource};
    let Ok((have, _)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let need = max_clients as u64 * tracecmd_rs::listen::fds_per_session(cpus) + 64;
    if have < need {
        log::warn!(
            "the open-file limit ({have}) is short of the {need} that {max_clients} sessions of {cpus}-CPU clients need; raise it (ulimit -n) or lower --max-clients"
        );
    }
}
