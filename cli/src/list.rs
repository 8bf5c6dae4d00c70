//! `trace-cmd list`: the kernel's events (-e [REGEX]), tracers (-t) and options
//! (-o), as trace-cmd lists them (issue 15 item 6); and the listener's guests
//! (-G) and agents (-A) of spec §3.8.

use std::path::PathBuf;

use clap::Args;
use tracecmd_rs::tracefs::Instance;
use tracecmd_rs::virt::guest::{self, Listing};
use tracecmd_rs::virt::VirtPaths;

/// Options of `trace-cmd list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// List the events (`system:event`), those matching REGEX if given.
    #[arg(short = 'e', value_name = "REGEX", num_args = 0..=1)]
    events: Option<Option<String>>,
    /// List the available tracers.
    #[arg(short = 't')]
    tracers: bool,
    /// List the trace options.
    #[arg(short = 'o')]
    options: bool,
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
    if a.events.is_none() && !a.tracers && !a.options && !a.guests && !a.agents {
        return Err(
            "give -e [REGEX] (events), -t (tracers), -o (options), -G (guests) or -A (agents)"
                .into(),
        );
    }
    if a.events.is_some() || a.tracers || a.options {
        let top = Instance::top().map_err(|e| e.to_string())?;
        if let Some(re) = &a.events {
            for line in top.list_events(re.as_deref()).map_err(|e| e.to_string())? {
                println!("{line}");
            }
        }
        if a.tracers {
            print!(
                "{}",
                top.available_tracers_text().map_err(|e| e.to_string())?
            );
        }
        if a.options {
            for line in top.trace_options_listing().map_err(|e| e.to_string())? {
                println!("{line}");
            }
        }
    }
    if a.guests || a.agents {
        let paths = VirtPaths::new(a.run_dir, None);
        let what = if a.guests {
            Listing::Guests
        } else {
            Listing::Agents
        };
        let list =
            guest::list(&paths, what).map_err(|e| format!("listing from the listener: {e}"))?;
        for (name, cpus) in &list {
            println!("{name} with {cpus} cpus");
        }
        if list.is_empty() {
            println!(
                "No {} registered",
                if a.guests { "guests" } else { "agents" }
            );
        }
    }
    Ok(())
}
