//! tcpstate-exporter: where TCP sockets are stuck in CLOSE_WAIT, who owns them, for how
//! long, and why.
//!
//! The pipeline runs one way, one module per stage:
//! kernel edges (`sockdiag`, `sysctl`) -> `record` -> `classify` -> `aggregate` ->
//! `exposition` -> `server`. `sampler` runs one sample through it; `daemon` drives the
//! sampler on a timer and serves the result; `config` (with `cli`) turns flags and the
//! file into the `Settings` every stage receives.

pub mod ages;
pub mod aggregate;
pub mod auth;
pub mod classify;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod diagnosis;
pub mod event_feed;
#[cfg(feature = "events")]
pub mod events;
pub mod exposition;
pub mod listen;
pub mod logging;
pub mod namespace_set;
pub mod netns;
pub mod owners;
pub mod pods;
pub mod record;
pub mod sampler;
pub mod server;
pub mod snapshot;
pub mod sockdiag;
pub mod sysctl;
pub mod tls;
pub mod usage;
pub mod version;
pub mod webconfig;
