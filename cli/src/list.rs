//! `trace-cmd list -G` / `list -A` (spec §3.8): the listener's guests and agents.

use std::path::PathBuf;

use clap::Args;
use tracecmd_rs::virt::guest::{self, Listing};
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
    let what = if a.guests {
        Listing::Guests
    } else {
        Listing::Agents
    };
    let list = guest::list(&paths, what).map_err(|e| format!("listing from the listener: {e}"))?;
    for (name, cpus) in &list {
        println!("{name} with {cpus} cpus");
    }
    if list.is_empty() {
        println!(
            "No {} registered",
            if a.guests { "guests" } else { "agents" }
        );
    }
    Ok(())
}
