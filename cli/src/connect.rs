//! `trace-cmd connect` (spec §3.4, issue 6 item 2): register a guest's FIFOs with
//! the listener and report what it did (issue 15 item 3: also with the
//! virt-server C listener, which answers nothing).

use std::path::PathBuf;

use clap::Args;
use tracecmd_rs::virt::{
    group_or_own, guest, is_fifo, make_dir, make_fifo_pair, validate_domain, with_suffix, VirtPaths,
};

/// Options of `trace-cmd connect`.
#[derive(Args, Debug)]
pub struct ConnectArgs {
    /// Create the domain directory and missing FIFOs.
    #[arg(short = 'f')]
    create: bool,
    /// Number of guest CPUs (FIFOs trace-path-cpu0..N-1).
    #[arg(short = 'c', value_name = "N", conflicts_with = "cpu_paths")]
    cpus: Option<u32>,
    /// CPU FIFO base paths, comma separated (without .in/.out).
    #[arg(short = 'C', value_name = "P1,P2", value_delimiter = ',')]
    cpu_paths: Vec<PathBuf>,
    /// Permissions (octal) of created FIFOs; directories also get x where w is set.
    #[arg(short = 'p', value_name = "PERM", default_value = "0640")]
    perm: String,
    /// Group of created files.
    #[arg(short = 'g', value_name = "GROUP", default_value = "qemu")]
    group: String,
    /// Agent FIFO base path (without .in/.out).
    #[arg(short = 'a', value_name = "AGENT")]
    agent: Option<PathBuf>,
    /// Run directory of the listener's sockets (default $TRACE_CMD_RUN_DIR or /var/run/trace-cmd).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Directory of the domain directories (default $TRACE_CMD_VIRT_DIR or /var/lib/trace-cmd/virt).
    #[arg(long)]
    virt_dir: Option<PathBuf>,
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    #[arg(long)]
    pub debug: bool,
    /// The guest's domain name.
    domain: String,
}

fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
    }
}

/// Runs `trace-cmd connect`.
pub fn run(a: ConnectArgs) -> Result<(), String> {
    validate_domain(&a.domain).map_err(|e| e.to_string())?;
    let paths = VirtPaths::new(a.run_dir.clone(), a.virt_dir.clone());
    let perm = u32::from_str_radix(a.perm.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("-p {}: give an octal mode like 0640", a.perm))?;
    let agent = absolute(
        a.agent
            .clone()
            .unwrap_or_else(|| paths.agent_fifo(&a.domain)),
    );
    let cpus: Vec<PathBuf> = if !a.cpu_paths.is_empty() {
        a.cpu_paths.iter().cloned().map(absolute).collect()
    } else if let Some(n) = a.cpus {
        (0..n).map(|i| paths.cpu_fifo(&a.domain, i)).collect()
    } else {
        (0..)
            .map(|i| paths.cpu_fifo(&a.domain, i))
            .take_while(|p| is_fifo(&with_suffix(p, ".in")))
            .collect()
    };
    if a.create {
        let group = Some(group_or_own(&a.group));
        let dir_mode = perm | ((perm & 0o222) >> 1);
        for base in std::iter::once(&agent).chain(cpus.iter()) {
            if let Some(parent) = base.parent() {
                if !parent.is_dir() {
                    make_dir(parent, dir_mode, group).map_err(|e| e.to_string())?;
                }
            }
            make_fifo_pair(base, perm, group).map_err(|e| e.to_string())?;
        }
    }
    for base in std::iter::once(&agent).chain(cpus.iter()) {
        for sfx in [".in", ".out"] {
            let p = with_suffix(base, sfx);
            if !is_fifo(&p) {
                return Err(format!(
                    "{} is not a FIFO (use -f to create it)",
                    p.display()
                ));
            }
        }
    }
    if cpus.is_empty() {
        return Err(format!(
            "no CPU FIFOs for {}: give -c N or -C paths (and -f to create them)",
            a.domain
        ));
    }
    let bytes = |p: &PathBuf| p.as_os_str().as_encoded_bytes().to_vec();
    let cpu_bytes: Vec<Vec<u8>> = cpus.iter().map(bytes).collect();
    let cpu_refs: Vec<&[u8]> = cpu_bytes.iter().map(Vec::as_slice).collect();
    guest::connect(&paths, &a.domain, &bytes(&agent), &cpu_refs)
        .map_err(|e| format!("registering {}: {e}", a.domain))?;
    println!("guest {} registered with {} CPUs", a.domain, cpus.len());
    Ok(())
}
