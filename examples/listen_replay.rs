//! Replays a captured `record -N` session from N concurrent clients (issue 18),
//! for `cli/bench/listen-fleet.py`:
//!
//!     listen_replay CAPTURE.dat HOST:PORT N [v1|v3|mixed] [TIMEOUT_SECS]
//!
//! CAPTURE.dat is a v6 file that `trace-cmd listen` built for a
//! `record -N --proto 1 -t` client. All clients are released together; one line
//! per failed client and a summary line (`completed=… failed=… wall_s=…`) go to
//! stdout; the exit status is 0 only when every client completed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::replay;
use tracecmd_rs::netrecord::Proto;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: listen_replay CAPTURE.dat HOST:PORT N [v1|v3|mixed] [TIMEOUT_SECS]");
        std::process::exit(2);
    }
    let bytes = std::fs::read(&args[1]).unwrap_or_else(|e| {
        eprintln!("{}: {e}", args[1]);
        std::process::exit(2)
    });
    let cap = replay::Capture::from_dat(&bytes).unwrap_or_else(|e| {
        eprintln!("{}: {e}", args[1]);
        std::process::exit(2)
    });
    let n: usize = args[3].parse().expect("N is a number");
    let mode = args.get(4).map_or("mixed", String::as_str);
    let timeout = Duration::from_secs(args.get(5).map_or(180, |s| s.parse().expect("seconds")));
    let protos: Vec<Proto> = (0..n)
        .map(|i| match mode {
            "v1" => Proto::V1,
            "v3" => Proto::V3,
            _ if i % 2 == 0 => Proto::V1,
            _ => Proto::V3,
        })
        .collect();
    println!(
        "capture: {} CPUs, {} events, {} metadata bytes",
        cap.cpu_data.len(),
        cap.total_events(),
        cap.meta.to_bytes().map_or(0, |m| m.len())
    );
    let start = Instant::now();
    let results = replay::replay_many(Arc::new(cap), &args[2], &protos, timeout);
    let wall = start.elapsed();
    let mut failed = 0;
    for (i, r) in results.iter().enumerate() {
        if let Err(e) = r {
            failed += 1;
            println!("client {i}: {e}");
        }
    }
    let slowest = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| r.took)
        .max()
        .unwrap_or_default();
    println!(
        "completed={} failed={failed} wall_s={:.3} slowest_client_s={:.3}",
        n - failed,
        wall.as_secs_f64(),
        slowest.as_secs_f64()
    );
    std::process::exit(i32::from(failed > 0));
}
