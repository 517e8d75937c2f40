//! The exporter's view of its own health, encoded beside the samples.

use prometheus::proto::MetricFamily;

use crate::kernel::sockdiag::SampleErrorReason;
use crate::model::self_metrics::SelfMetrics;
use crate::model::socket_table::DumpReason;
use crate::output::exposition::proto::{FamilySpec, counter, label};

/// Families about the exporter itself.
pub fn self_families(metrics: &SelfMetrics) -> Vec<MetricFamily> {
    let mut families = sampling_families(metrics);
    families.extend(attribution_families(metrics));
    families.extend(namespace_families(metrics));
    families.extend(events_families(metrics));
    families.extend(identity_families(metrics));
    families
}

const SAMPLE_DURATION: FamilySpec = FamilySpec::gauge(
    "tcpstate_sample_duration_seconds",
    "Wall time the last sample took (dump, attribution, aggregation, encoding).",
);
const SAMPLE_ERRORS: FamilySpec = FamilySpec::counter(
    "tcpstate_sample_errors_total",
    "Samples that failed, by reason; the last good sample keeps being served.",
);
const SAMPLES: FamilySpec =
    FamilySpec::counter("tcpstate_samples_total", "Samples attempted since start.");
const SOCKETS_SKIPPED: FamilySpec = FamilySpec::counter(
    "tcpstate_sockets_skipped_total",
    "Sockets left out of samples: reported twice by a non-atomic dump, or in a state this \
     build does not know.",
);
const TABLE_WALKS: FamilySpec = FamilySpec::counter(
    "tcpstate_table_walks_total",
    "Walks of a namespace's TCP table (every state but LISTEN), by how: bpf_iterator (one \
     pass of a BPF tcp iterator: the exporter's own namespace, where BPF is allowed), \
     sock_diag (a netlink dump).",
);

/// How sampling went: its time, its errors (every reason from the start, at 0, so that
/// `rate()` sees the first one), and the sockets it had to leave out.
fn sampling_families(metrics: &SelfMetrics) -> Vec<MetricFamily> {
    vec![
        SAMPLE_DURATION.with_value(vec![], metrics.last_sample_duration_seconds),
        SAMPLE_ERRORS.with_values(SampleErrorReason::ALL.iter().map(|reason| {
            (
                vec![label("reason", reason.name())],
                metrics.sample_errors[*reason as usize] as f64,
            )
        })),
        SAMPLES.with_value(vec![], metrics.samples_total as f64),
        SOCKETS_SKIPPED.with_values([
            (
                vec![label("reason", "duplicate")],
                metrics.duplicates_dropped as f64,
            ),
            (
                vec![label("reason", "unknown_state")],
                metrics.unknown_states_skipped as f64,
            ),
        ]),
        TABLE_WALKS.with_values([
            (
                vec![label("via", "bpf_iterator")],
                metrics.walks_by_iterator as f64,
            ),
            (
                vec![label("via", "sock_diag")],
                metrics.walks_by_sock_diag as f64,
            ),
        ]),
    ]
}

const FD_READS: FamilySpec = FamilySpec::counter(
    "tcpstate_attribution_fd_reads_total",
    "Links under /proc/PID/fd read (or descriptors listed by the BPF iterator) to find \
     socket owners; flat in a steady state, because owners are cached across samples.",
);
const UNRESOLVED: FamilySpec = FamilySpec::gauge(
    "tcpstate_attribution_unresolved_sockets",
    "Sockets of the last sample whose owning process could not be seen (other pid \
     namespace, missing privileges); they carry process=\"\".",
);

fn attribution_families(metrics: &SelfMetrics) -> Vec<MetricFamily> {
    vec![
        FD_READS.with_value(vec![], metrics.owner_fds_read as f64),
        UNRESOLVED.with_value(vec![], metrics.owners_unresolved as f64),
    ]
}

const NAMESPACES_SAMPLED: FamilySpec = FamilySpec::gauge(
    "tcpstate_namespaces_sampled",
    "Network namespaces whose sockets are served.",
);
const NAMESPACES_VANISHED: FamilySpec = FamilySpec::counter(
    "tcpstate_namespaces_vanished_total",
    "Network namespaces that vanished between discovery and their sample (skipped, not an \
     error).",
);

const NAMESPACES_FOLLOWED: FamilySpec = FamilySpec::gauge(
    "tcpstate_namespaces_followed",
    "Network namespaces on the host's shared TCP hash served in the last round from \
     tables kept by kernel events, without a walk of the host's table.",
);
const FOLLOWED_DUMPS: FamilySpec = FamilySpec::counter(
    "tcpstate_followed_namespace_dumps_total",
    "Full dumps of followed namespaces, by reason: first (a table is built, also after \
     lost events), period (sample.reconcile_period), mismatch (the kernel counted sockets \
     the table did not hold), too_large (more sockets than a table keeps).",
);
const FOLLOWED_REFRESHES: FamilySpec = FamilySpec::counter(
    "tcpstate_followed_socket_refreshes_total",
    "Sockets of followed namespaces whose queues and owner were read afresh in a round \
     served from the table, by how: lookup (one exact sock_diag lookup each), descriptor \
     (from their holding process's descriptors, one BPF iterator pass per process).",
);

fn namespace_families(metrics: &SelfMetrics) -> Vec<MetricFamily> {
    vec![
        NAMESPACES_SAMPLED.with_value(vec![], metrics.namespaces_sampled as f64),
        NAMESPACES_VANISHED.with_value(vec![], metrics.namespaces_vanished as f64),
        NAMESPACES_FOLLOWED.with_value(vec![], metrics.namespaces_followed as f64),
        FOLLOWED_DUMPS.with_values(DumpReason::ALL.iter().map(|r| {
            (
                vec![label("reason", r.name())],
                metrics.followed_dumps[*r as usize] as f64,
            )
        })),
        FOLLOWED_REFRESHES.with_values([
            (
                vec![label("via", "lookup")],
                metrics.followed_lookups as f64,
            ),
            (
                vec![label("via", "descriptor")],
                metrics.followed_held as f64,
            ),
        ]),
    ]
}

const EVENTS_ATTACHED: FamilySpec = FamilySpec::gauge(
    "tcpstate_events_attached",
    "1 when CLOSE_WAIT lifetimes come from kernel events (eBPF), exact; 0 when from polling \
     alone (ages are then lower bounds).",
);
const EVENTS_LOST: FamilySpec = FamilySpec::counter(
    "tcpstate_events_lost_total",
    "Kernel events dropped because the ring buffer or the queue to the sampler had no \
     room, or never made because the kernel skipped the program (a softirq interrupting \
     it on the same CPU); the sockets concerned fall back to polled (bounded) times.",
);
const TRANSITIONS: FamilySpec = FamilySpec::counter(
    "tcpstate_transitions_total",
    "TCP state changes counted by the kernel in the network namespaces sampled (other \
     namespaces' are filtered out in the kernel).",
);

/// Events mode: whether it runs, and when it does, its losses and the transitions.
fn events_families(metrics: &SelfMetrics) -> Vec<MetricFamily> {
    let attached = f64::from(u8::from(metrics.events_attached));
    let mut families = vec![EVENTS_ATTACHED.with_value(vec![], attached)];
    if metrics.events_attached {
        families.push(EVENTS_LOST.with_value(vec![], metrics.events_lost as f64));
        let mut transitions = TRANSITIONS.empty();
        for (from, to, n) in &metrics.transitions {
            transitions.mut_metric().push(counter(
                vec![label("from", from.name()), label("to", to.name())],
                *n as f64,
            ));
        }
        families.push(transitions);
    }
    families
}

const LAST_SAMPLE: FamilySpec = FamilySpec::gauge(
    "tcpstate_last_sample_timestamp_seconds",
    "Unix time of the last successful sample; the served values are from then.",
);
const BUILD_INFO: FamilySpec =
    FamilySpec::gauge("tcpstate_build_info", "Build of the running exporter.");

/// When the served values were taken, and which build serves them.
fn identity_families(metrics: &SelfMetrics) -> Vec<MetricFamily> {
    vec![
        LAST_SAMPLE.with_value(vec![], metrics.last_success_timestamp_seconds),
        BUILD_INFO.with_value(vec![label("version", env!("CARGO_PKG_VERSION"))], 1.0),
    ]
}
