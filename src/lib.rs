//! tcpstate-exporter: where TCP sockets are stuck in CLOSE_WAIT, who owns them, for how
//! long, and why.
//!
//! The pipeline runs one way, one module per stage:
//! kernel (`sockdiag`, `sysctl`) -> `record` -> `classify` -> `aggregate` -> `exposition`
//! -> `server`. `sampler` drives it on its own thread; `config` turns flags and the file
//! into the `Settings` every stage receives.

pub mod record;
