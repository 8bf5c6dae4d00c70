//! tracecmd-rs: the network, guest and recording core of trace-cmd.
//!
//! The modules under `src/` are the safe core: no `extern "C"`, no raw pointers in
//! their API. The C ABI of trace-cmd's virt-server branch lives in `capi/` and only
//! converts between C types and the core (see ARCHITECTURE in the shared docs).

pub mod listen;
pub mod msg;
pub mod netrecord;
pub mod output;
pub mod record;
pub mod recorder;
pub mod tracefs;
pub mod transport;
pub mod virt;

#[cfg(test)]
mod testutil;

#[doc(hidden)]
#[allow(non_camel_case_types, non_upper_case_globals)]
#[path = "../capi/mod.rs"]
pub mod capi;
