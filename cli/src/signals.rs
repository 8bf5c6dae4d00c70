//! SIGINT and SIGTERM for every long-running command (`record`, `listen`,
//! `listen --virt`, `agent`): blocked in this and every later thread and taken by
//! one thread with `sigwait`, so no work is cut short inside a signal handler.
//! The kernel queues a blocked signal even when its disposition is "ignore", so
//! this also works when SIGINT starts out ignored (a background job of a script).

use nix::sys::signal::{SigSet, Signal};

/// The signals that stop a command.
pub fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set
}

/// Blocks the stop signals and calls `on_stop` from a dedicated thread for each
/// one that arrives (the first is logged as the reason to stop).
pub fn on_stop(on_stop: impl Fn() + Send + 'static) -> Result<(), String> {
    let set = stop_signals();
    set.thread_block()
        .map_err(|e| format!("cannot block SIGINT/SIGTERM: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(sig) = set.wait() {
                log::info!("{sig} received: stopping");
                on_stop();
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}
