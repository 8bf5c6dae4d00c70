//! trace-cmd's message protocol (spec §1, §3, §6): framing, codecs, handshakes.
