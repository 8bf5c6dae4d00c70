//! `trace-cmd`: the command line on top of the tracecmd-rs core.

mod agent;
mod connect;
mod list;
mod listen;
mod listen_virt;
mod logger;
mod record;
mod signals;

use clap::{Parser, Subcommand};

/// trace-cmd, reimplemented in Rust on the tracecmd-rs core.
#[derive(Parser, Debug)]
#[command(name = "trace-cmd", version, disable_help_subcommand = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Record trace events into a trace.dat file (version 7 with zstd by default;
    /// `--file-version 6` for the older format).
    Record(record::RecordArgs),
    /// Receive traces: from `record -N` clients (protocols V1, V2 and V3) with
    /// `listen -p PORT`, and from guests with `listen --virt` (both at once with --virt -p).
    #[command(disable_help_flag = true)]
    Listen {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Register a guest's FIFOs with the listener.
    Connect(connect::ConnectArgs),
    /// The guest agent: on vsock for trace-cmd 3.x hosts (`agent [-p PORT]`), on TCP
    /// with `-N CLIENT`, or `--virt [--ports-dir DIR]` for virt-server hosts.
    Agent(agent::AgentArgs),
    /// List events (-e [REGEX]), tracers (-t), options (-o), or the listener's guests (-G) or agents (-A).
    List(list::ListArgs),
    /// Print the version.
    Version,
    /// Internal: unblock SIGINT/SIGTERM, then exec the command (used by record).
    #[command(name = "__exec", hide = true)]
    Exec {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
}

/// Where the soft open-file limit found at start is kept for the traced command.
const NOFILE_ENV: &str = "TRACECMD_RS_NOFILE_SOFT";

/// Raises the soft open-file limit to the hard one: each per-CPU recorder holds a few
/// pipes (more while its file is behind), and the default of 1024 runs out on a
/// machine with a few hundred CPUs. The limit found is kept in [`NOFILE_ENV`], so
/// that `__exec` gives the traced command the limit it would have had.
fn raise_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if std::env::var_os(NOFILE_ENV).is_some() {
        return;
    }
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                Ok(()) => std::env::set_var(NOFILE_ENV, soft.to_string()),
                Err(e) => log::debug!("could not raise the open-file limit from {soft}: {e}"),
            }
        }
    }
}

/// Puts back the soft open-file limit [`raise_file_limit`] found (for `__exec`).
fn restore_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Some(soft) = std::env::var(NOFILE_ENV).ok().and_then(|v| v.parse().ok()) else {
        return;
    };
    std::env::remove_var(NOFILE_ENV);
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, soft, hard);
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("__exec") {
        restore_file_limit();
    } else {
        raise_file_limit();
    }
    // `record -A GUEST <options>`: the options after -A are the guest's.
    let argv: Vec<String> = std::env::args().collect();
    let (argv, guests) = if argv.get(1).map(String::as_str) == Some("record") {
        match tracecmd_rs::record::split_guest_args(argv) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("trace-cmd: error: {e}");
                std::process::exit(1);
            }
        }
    } else {
        (argv, Vec::new())
    };
    let cli = Cli::parse_from(argv);
    let result = match cli.cmd {
        Cmd::Record(mut args) => {
            logger::init(args.verbose, args.debug);
            args.guests = guests;
            record::run(args)
        }
        Cmd::Listen { args } if args.iter().any(|a| a == "--virt") => {
            if args.iter().any(|a| a == "-h" || a == "--help") {
                println!("{}", listen_virt::USAGE);
                Ok(())
            } else {
                listen_virt::parse(&args).and_then(|o| {
                    logger::init(o.verbose, o.debug);
                    listen_virt::run(o)
                })
            }
        }
        Cmd::Listen { args } => {
            let args = listen::NetListenCli::parse_from(
                std::iter::once("trace-cmd listen".to_string()).chain(args),
            )
            .args;
            logger::init(true, args.debug);
            listen::run(args)
        }
        Cmd::Connect(a) => {
            logger::init(a.verbose, a.debug);
            connect::run(a)
        }
        Cmd::Agent(a) => {
            logger::init(a.verbose, a.debug);
            agent::run(a)
        }
        Cmd::List(a) => {
            logger::init(false, false);
            list::run(a)
        }
        Cmd::Exec { command } => record::exec_unblocked(&command),
        Cmd::Version => {
            println!("trace-cmd (tracecmd-rs) {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    if let Err(e) = result {
        eprintln!("trace-cmd: error: {e}");
        std::process::exit(1);
    }
}
