//! The per-CPU recorder (spec §4): moves ring-buffer pages from `trace_pipe_raw`
//! to a file, socket or pipe.
