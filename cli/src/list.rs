//! `trace-cmd list -G` / `list -A` (spec §3.8): the listener's guests and agents.

use std::os::fd::AsFd;
use std::path::PathBuf;

use clap::Args;
use tracecmd_rs::msg::{session, Channel};
use tracecmd_rs::transport::connect_unix;
use tracecmd_rs::virt::VirtPaths;

/// Options of `trace-cmd list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// List the guests registered with `connect`.
    #[arg(short = 'G', conflicts_with = "agents")]
    guests: bool,
    /// List the agents connected to the listener.
    #[arg(short = 'A')]
    agents: bool,
    /// Run directory of the listener's sockets.
    #[arg(long)]
    run_dir: Option<PathBuf>,
}

/// Runs `trace-cmd list`.
pub fn run(a: ListArgs) -> Result<(), String> {
    if !a.guests && !a.agents {
        return Err("give -G (guests) or -A (agents)".into());
    }
    let paths = VirtPaths::new(a.run_dir, None);
    let sock = connect_unix(&paths.manager_socket()).map_err(|e| e.to_string())?;
    let ch = Channel::new(sock.as_fd());
    let mut print = |name: &[u8], cpus: u32| {
        println!("{} with {cpus} cpus", String::from_utf8_lossy(name));
    };
    let n = if a.guests {
        session::list_guests(&ch, &mut print)
    } else {
        session::list_agents(&ch, &mut print)
    }
    .map_err(|e| format!("listing from the listener: {e}"))?;
    if n == 0 {
        println!(
            "No {} registered",
            if a.guests { "guests" } else { "agents" }
        );
    }
    Ok(())
}
