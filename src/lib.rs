//! tcpstate-exporter: where TCP sockets are stuck in CLOSE_WAIT, who owns them, for how
//! long, and why.
//!
//! The folders are the pipeline, and data flows down it one way:
//!
//! - [`kernel`]: the edges, the only code that does I/O: sock_diag dumps into
//!   [`kernel::record::SocketRecord`]s, sysctls, network namespaces, socket owners from
//!   /proc, pod identities, eBPF state-change events.
//! - [`model`]: plain functions over plain data: classification (direction, port),
//!   aggregation into bounded groups, CLOSE_WAIT ages, the assembled sample, diagnosis.
//! - [`sampling`]: the sampler thread: one sample per namespace in named phases, owners
//!   attributed, events fed to the age tracker, rounds over every namespace on a timer.
//! - [`output`]: the exposition encoded once per sample, and the `snapshot` report.
//! - [`http`]: serves the last encoded exposition, behind TLS and basic auth.
//!
//! [`config`] turns flags and the file into the validated [`config::Settings`] every
//! stage receives (and holds the command line's usage errors and `--version`);
//! [`logging`] writes node_exporter's logfmt (or JSON); [`daemon`] wires the sampler
//! thread to the HTTP server and handles signals.

pub mod config;
pub mod daemon;
pub mod http;
pub mod kernel;
pub mod logging;
pub mod model;
pub mod output;
pub mod sampling;
