//! `trace-cmd`: the command line on top of the tracecmd-rs core.

mod listen;
mod logger;
mod record;

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
    /// Record trace events into a trace.dat file (version 6).
    Record(record::RecordArgs),
    /// Receive traces from `record -N` clients (protocols V1, V2 and V3).
    Listen(listen::ListenArgs),
    /// Print the version.
    Version,
    /// Internal: unblock SIGINT/SIGTERM, then exec the command (used by record).
    #[command(name = "__exec", hide = true)]
    Exec {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Record(args) => {
            logger::init(args.verbose, args.debug);
            record::run(args)
        }
        Cmd::Listen(args) => {
            logger::init(true, args.debug);
            listen::run(args)
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
