//! A minimal `log` backend for the command line: `trace-cmd: level: message` on
//! stderr. `-v` shows info, `--debug` debug; `RUST_LOG=<level>` overrides both.

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record) {
        if self.enabled(r.metadata()) {
            eprintln!(
                "trace-cmd: {}: {}",
                r.level().as_str().to_lowercase(),
                r.args()
            );
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// Installs the logger; `verbose` selects info, `debug` selects debug.
pub fn init(verbose: bool, debug: bool) {
    let mut level = if debug {
        LevelFilter::Debug
    } else if verbose {
        LevelFilter::Info
    } else {
        LevelFilter::Warn
    };
    if let Some(l) = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
    {
        level = l;
    }
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
