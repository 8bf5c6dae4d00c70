//! `trace-cmd`: the command line on top of the tracecmd-rs core.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--version") | Some("version") => {
            println!("trace-cmd (tracecmd-rs) {}", env!("CARGO_PKG_VERSION"));
        }
        _ => {
            eprintln!("usage: trace-cmd COMMAND [OPTIONS]");
            std::process::exit(2);
        }
    }
}
