//! The manager side of `record -A GUEST` moved to the recording engine
//! ([`crate::record::guest`]); these names stay for existing callers.

pub use crate::record::guest::{
    parse_guest_spec, GuestLink, GuestSession, AGENT_WAIT, MAX_GUEST_METADATA,
};
