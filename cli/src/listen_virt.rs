//! `trace-cmd listen --virt` (issue 6 item 1): serve guests and managers on the
//! unix sockets of spec §3.3 until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::unistd::Gid;
use tracecmd_rs::listen::{ListenConfig, Listener, StopHandle};
use tracecmd_rs::virt::listener::{DomainSetup, VirtListener};
use tracecmd_rs::virt::{group_or_own, VirtPaths};

/// `listen --help`.
pub const USAGE: &str = "usage: trace-cmd listen --virt [-p PORT [-d DIR] [-o PREFIX]] [--run-dir DIR] [--virt-dir DIR] [-g GROUP] [--dom DOMAIN [-m PERMS] [-g GROUP] [-c NCPUS]]... [-v] [--debug]
  -p          also serve `record -N` network clients on this TCP port (-d output dir, -o file prefix)
  --run-dir   directory of agent-ctl-path and manager-ctl-path (default $TRACE_CMD_RUN_DIR or /var/run/trace-cmd)
  --virt-dir  directory of the domain directories (default $TRACE_CMD_VIRT_DIR or /var/lib/trace-cmd/virt)
  -g          group of the sockets and directories (default qemu, else the caller's group)
  --dom       create DOMAIN's directory (-m mode, default 0710) and, with -c, its CPU FIFOs";

/// What the command line asked for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListenOptions {
    pub virt: bool,
    pub run_dir: Option<PathBuf>,
    pub virt_dir: Option<PathBuf>,
    pub group: Option<String>,
    pub domains: Vec<(String, Option<u32>, Option<String>, u32)>,
    pub verbose: bool,
    pub debug: bool,
    /// `-p`: network clients are served on this port at the same time.
    pub port: Option<u16>,
    /// `-d`: output directory of network sessions.
    pub out_dir: Option<PathBuf>,
    /// `-o`: output prefix of network sessions.
    pub prefix: Option<String>,
}

/// Parses `listen` options; `-m`, `-g`, `-c` after `--dom D` belong to D.
pub fn parse(args: &[String]) -> Result<ListenOptions, String> {
    let mut o = ListenOptions::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--virt" => o.virt = true,
            "--run-dir" => o.run_dir = Some(val()?.into()),
            "--virt-dir" => o.virt_dir = Some(val()?.into()),
            "--dom" => {
                let d = val()?;
                tracecmd_rs::virt::validate_domain(&d).map_err(|e| e.to_string())?;
                o.domains.push((d, None, None, 0));
            }
            "-m" => {
                let v = val()?;
                let m = u32::from_str_radix(v.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| format!("-m {v}: give an octal mode like 0710"))?;
                let d = o
                    .domains
                    .last_mut()
                    .ok_or("-m belongs after --dom DOMAIN")?;
                d.1 = Some(m);
            }
            "-g" => {
                let g = val()?;
                match o.domains.last_mut() {
                    Some(d) => d.2 = Some(g),
                    None => o.group = Some(g),
                }
            }
            "-c" => {
                let v = val()?;
                let n: u32 = v
                    .parse()
                    .ok()
                    .filter(|n| *n <= tracecmd_rs::msg::MAX_CPUS)
                    .ok_or_else(|| format!("-c {v}: give a CPU count"))?;
                let d = o
                    .domains
                    .last_mut()
                    .ok_or("-c belongs after --dom DOMAIN")?;
                d.3 = n;
            }
            "-p" => {
                let v = val()?;
                o.port = Some(v.parse().map_err(|_| format!("-p {v}: give a TCP port"))?);
            }
            "-d" => o.out_dir = Some(val()?.into()),
            "-o" => {
                let v = val()?;
                if v.is_empty() || v.contains('/') {
                    return Err(format!("-o {v:?}: a prefix without '/'"));
                }
                o.prefix = Some(v);
            }
            "-v" | "--verbose" => o.verbose = true,
            "--debug" => o.debug = true,
            other => return Err(format!("unknown listen option {other:?}")),
        }
    }
    if !o.virt {
        return Err("only `listen --virt` is implemented here; give --virt".into());
    }
    Ok(o)
}

/// Runs the listener until SIGINT or SIGTERM.
pub fn run(o: ListenOptions) -> Result<(), String> {
    let paths = VirtPaths::new(o.run_dir.clone(), o.virt_dir.clone());
    let group: Gid = group_or_own(o.group.as_deref().unwrap_or("qemu"));
    let domains: Vec<DomainSetup> = o
        .domains
        .iter()
        .map(|(name, perms, g, cpus)| DomainSetup {
            name: name.clone(),
            perms: perms.unwrap_or(0o710),
            group: g.as_deref().map(group_or_own),
            cpus: *cpus,
        })
        .collect();
    // Before any thread starts, so that every thread has the signals blocked.
    let stopped = Arc::new(AtomicBool::new(false));
    let s2 = stopped.clone();
    crate::signals::on_stop(move || s2.store(true, Ordering::SeqCst))?;
    let listener = VirtListener::bind(&paths, Some(group), &domains).map_err(|e| e.to_string())?;
    let net = match o.port {
        Some(port) => Some(spawn_network_listener(port, &o)?),
        None => None,
    };
    eprintln!(
        "listening on {} (agents) and {} (managers)",
        paths.agent_socket().display(),
        paths.manager_socket().display()
    );
    let served = listener
        .run(&|| stopped.load(Ordering::SeqCst))
        .map_err(|e| e.to_string());
    // Network sessions in progress end into finished files, as with `listen -p`.
    if let Some((stop, thread)) = net {
        stop.stop();
        let _ = thread.join();
    }
    served
}

/// `listen --virt -p PORT`: the network listener of `listen -p` runs beside the
/// virt sockets in the same process, on its own threads.
fn spawn_network_listener(
    port: u16,
    o: &ListenOptions,
) -> Result<(StopHandle, std::thread::JoinHandle<()>), String> {
    let dir = o.out_dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("output directory {}: {e}", dir.display()))?;
    let cfg = ListenConfig {
        port,
        dir,
        prefix: o.prefix.clone().unwrap_or_else(|| "trace".into()),
        ..ListenConfig::default()
    };
    let net = Listener::bind(cfg).map_err(|e| e.to_string())?;
    eprintln!("listening on port {} (network clients)", net.port());
    let stop = net.stop_handle();
    let thread = std::thread::Builder::new()
        .name("net-listener".into())
        .spawn(move || {
            if let Err(e) = net.serve() {
                log::error!("network listener stopped: {e}");
            }
        })
        .map_err(|e| format!("cannot start the network listener: {e}"))?;
    Ok((stop, thread))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn per_domain_options() {
        let o = parse(&s(&[
            "--virt", "-g", "kvm", "--dom", "a", "-m", "0750", "-c", "2", "--dom", "b", "-g", "x",
        ]))
        .unwrap();
        assert_eq!(o.group.as_deref(), Some("kvm"));
        assert_eq!(o.domains[0], ("a".into(), Some(0o750), None, 2));
        assert_eq!(o.domains[1], ("b".into(), None, Some("x".into()), 0));
        assert!(parse(&s(&["--virt", "-c", "2"])).is_err());
        assert!(parse(&s(&["--virt", "--dom", "../x"])).is_err());
        assert!(parse(&s(&["--dom", "a"])).is_err());
        assert!(parse(&s(&["--virt", "--dom", "a", "-m", "9"])).is_err());
        let o = parse(&s(&["--virt", "-p", "1234", "-d", "/tmp", "-o", "x"])).unwrap();
        assert_eq!(o.port, Some(1234));
        assert_eq!(o.prefix.as_deref(), Some("x"));
        assert!(parse(&s(&["--virt", "-p", "port"])).is_err());
        assert!(parse(&s(&["--virt", "-o", "a/b"])).is_err());
    }
}
