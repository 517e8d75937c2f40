//! The exporter's own counters: what the sampler thread counts about itself, encoded
//! beside the samples.

use crate::kernel::record::TcpState;
use crate::kernel::sockdiag::SampleErrorReason;
use crate::model::socket_table::DumpReason;

/// What the sampler thread counts about itself.
#[derive(Clone, Debug, Default)]
pub struct SelfMetrics {
    pub last_sample_duration_seconds: f64,
    /// Unix time of the last successful sample (0 before the first).
    pub last_success_timestamp_seconds: f64,
    /// Failed samples per reason, indexed by `SampleErrorReason as usize`.
    pub sample_errors: [u64; SampleErrorReason::ALL.len()],
    pub samples_total: u64,
    pub duplicates_dropped: u64,
    pub unknown_states_skipped: u64,
    /// Walks of namespaces' tables (every state but LISTEN) by a BPF iterator pass, and
    /// by a sock_diag dump, since start.
    pub walks_by_iterator: u64,
    pub walks_by_sock_diag: u64,
    /// /proc/PID/fd links read to attribute sockets (the cost of attribution).
    pub owner_fds_read: u64,
    /// Detail-state sockets left without an owner in the last sample.
    pub owners_unresolved: u64,
    /// Namespaces that vanished between discovery and their sample.
    pub namespaces_vanished: u64,
    pub namespaces_sampled: u64,
    /// Namespaces served from their event-fed tables in the last round.
    pub namespaces_followed: u64,
    /// Full dumps of followed namespaces, indexed by `DumpReason as usize`.
    pub followed_dumps: [u64; DumpReason::ALL.len()],
    /// Sockets of followed namespaces refreshed by an exact lookup, and from their
    /// holders' descriptors, since start.
    pub followed_lookups: u64,
    pub followed_held: u64,
    /// Events mode: attached, events lost (full ring or queue), and every TCP transition
    /// the kernel counted in the namespaces sampled.
    pub events_attached: bool,
    pub events_lost: u64,
    pub transitions: Vec<(TcpState, TcpState, u64)>,
}
