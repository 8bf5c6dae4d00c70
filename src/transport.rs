//! Sockets and channels: unix-socket connect, SCM_RIGHTS fd passing, timeouts.
