//! The families of one namespace's sample, one builder per group of families.

use prometheus::proto::{LabelPair, MetricFamily};

use crate::kernel::record::TcpState;
use std::collections::BTreeMap;

use crate::model::ages::StuckCounts;
use crate::model::aggregate::{GroupStats, ListenerStats};
use crate::model::labels::AgeGroup;
use crate::model::sample::Sample;
use crate::output::exposition::labels::{LabelOptions, SeriesLabels};
use crate::output::exposition::proto::{FamilySpec, histogram};

/// Families derived from one namespace's sample, each series' labels after `prefix`.
pub fn sample_families(
    sample: &Sample,
    options: LabelOptions,
    prefix: &[LabelPair],
) -> Vec<MetricFamily> {
    let labels = SeriesLabels {
        sample,
        options,
        prefix,
    };
    let mut families = vec![socket_family(&labels)];
    families.extend(group_families(&labels));
    families.extend(listener_families(&labels));
    families.extend(age_families(&labels));
    families.extend(evidence_families(&labels));
    families.extend(stuck_families(&labels));
    families.extend(kernel_families(&labels));
    families.extend(tracking_families(&labels));
    families.extend(fd_families(&labels));
    if options.peers_per_group > 0 {
        families.push(peer_family(&labels));
    }
    families
}

const SOCKETS: FamilySpec = FamilySpec::gauge(
    "tcpstate_sockets",
    "TCP sockets of the network namespace per state, as of the last sample (taken on a \
     timer, not at scrape time).",
);

/// `tcpstate_sockets`: every state, zeros included.
fn socket_family(labels: &SeriesLabels) -> MetricFamily {
    SOCKETS.with_values(
        TcpState::ALL
            .into_iter()
            .map(|state| (labels.state(state), labels.sample.state_count(state) as f64)),
    )
}

/// A family whose value per series is one field of the series' statistics.
type FieldFamily<S> = (FamilySpec, fn(&S) -> u64);

const GROUP_FAMILIES: [FieldFamily<GroupStats>; 4] = [
    (
        FamilySpec::gauge(
            "tcpstate_connections",
            "Connections in a detail state by direction, service port and owning process.",
        ),
        |s| s.connections,
    ),
    (
        FamilySpec::gauge(
            "tcpstate_recv_queue_bytes",
            "Unread data in the receive queues of the group's connections (in CLOSE_WAIT the \
             peer's FIN is not counted).",
        ),
        |s| s.recv_queue_bytes,
    ),
    (
        FamilySpec::gauge(
            "tcpstate_send_queue_bytes",
            "Data not yet acknowledged by the peer in the send queues of the group's \
             connections.",
        ),
        |s| s.send_queue_bytes,
    ),
    (
        FamilySpec::gauge(
            "tcpstate_unread_connections",
            "Connections of the group holding unread data: the program stopped reading.",
        ),
        |s| s.unread_connections,
    ),
];

/// Per-group connection counts and queue sums.
fn group_families(labels: &SeriesLabels) -> Vec<MetricFamily> {
    let series: Vec<_> = labels
        .sample
        .groups
        .iter()
        .map(|(key, stats)| (labels.group(key), stats))
        .collect();
    per_field(&GROUP_FAMILIES, &series)
}

/// One family per (spec, field), over the same series: each series' labels are built
/// once, and each family takes its field of the series' stats.
fn per_field<S>(specs: &[FieldFamily<S>], series: &[(Vec<LabelPair>, &S)]) -> Vec<MetricFamily> {
    specs
        .iter()
        .map(|(spec, field)| {
            spec.with_values(
                series
                    .iter()
                    .map(|(labels, stats)| (labels.clone(), field(stats) as f64)),
            )
        })
        .collect()
}

const LISTENER_FAMILIES: [FieldFamily<ListenerStats>; 2] = [
    (
        FamilySpec::gauge(
            "tcpstate_listen_queue_length",
            "Connections waiting in the accept queues of the listeners on the port.",
        ),
        |s| s.queue_length,
    ),
    (
        FamilySpec::gauge(
            "tcpstate_listen_queue_max",
            "Accept-queue limit (backlog) of the listeners on the port, summed.",
        ),
        |s| s.queue_max,
    ),
];

/// Accept queues per port.
fn listener_families(labels: &SeriesLabels) -> Vec<MetricFamily> {
    let series: Vec<_> = labels
        .sample
        .listeners
        .iter()
        .map(|(key, stats)| (labels.listener(key), stats))
        .collect();
    per_field(&LISTENER_FAMILIES, &series)
}

const OLDEST: FamilySpec = FamilySpec::gauge(
    "tcpstate_close_wait_oldest_seconds",
    "Age of the oldest CLOSE_WAIT connection of the group, from the peer's FIN (a lower \
     bound when this side was still sending or keepalive probes were answered).",
);
const DURATIONS: FamilySpec = FamilySpec::histogram(
    "tcpstate_close_wait_duration_seconds",
    "Time CLOSE_WAIT connections spent in CLOSE_WAIT, observed once when they left it \
     (closed by the program, or gone); within half a sample interval.",
);

/// The oldest CLOSE_WAIT per group, and the histogram of times spent there.
fn age_families(labels: &SeriesLabels) -> Vec<MetricFamily> {
    let ages = &labels.sample.ages;
    let oldest = OLDEST.with_values(
        ages.oldest
            .iter()
            .map(|(group, age)| (labels.close_wait(group), *age)),
    );
    let mut durations = DURATIONS.empty();
    for (group, h) in &ages.durations {
        durations.mut_metric().push(histogram(
            labels.close_wait(group),
            &ages.bounds,
            &h.cumulative,
            h.count,
            h.sum,
        ));
    }
    vec![oldest, durations]
}

const EVIDENCE_FAMILIES: [FieldFamily<GroupStats>; 3] = [
    (
        FamilySpec::gauge(
            "tcpstate_close_wait_eof_read_connections",
            "CLOSE_WAIT connections whose program read the EOF (Recv-Q 0) and still did not \
             close: it saw the peer leave and ignored it.",
        ),
        |s| s.eof_read,
    ),
    (
        FamilySpec::gauge(
            "tcpstate_close_wait_unaccepted",
            "CLOSE_WAIT connections still in a listener's accept queue: the peer gave up \
             before the program accepted them.",
        ),
        |s| s.unaccepted,
    ),
    (
        FamilySpec::gauge(
            "tcpstate_close_wait_keepalive_connections",
            "CLOSE_WAIT connections with a keepalive timer armed.",
        ),
        |s| s.keepalive,
    ),
];

/// What the CLOSE_WAIT groups show of their cause.
fn evidence_families(labels: &SeriesLabels) -> Vec<MetricFamily> {
    let series: Vec<_> = labels
        .sample
        .groups
        .iter()
        .filter(|(key, _)| key.state == TcpState::CloseWait)
        .map(|(key, stats)| (labels.close_wait(&key.close_wait_group()), stats))
        .collect();
    per_field(&EVIDENCE_FAMILIES, &series)
}

const STUCK_FAMILIES: [FieldFamily<StuckCounts>; 2] = [
    (
        FamilySpec::gauge(
            "tcpstate_close_wait_stuck_connections",
            "CLOSE_WAIT connections of the group older than close_wait.stuck_after: \
             evidence of a leak, where a young CLOSE_WAIT proves nothing.",
        ),
        |s| s.sockets,
    ),
    (
        FamilySpec::gauge(
            "tcpstate_close_wait_stuck_eof_read_connections",
            "CLOSE_WAIT connections older than close_wait.stuck_after whose program read the \
             EOF (Recv-Q 0) and still did not close: it saw the peer leave and ignored it.",
        ),
        |s| s.eof_read,
    ),
];

/// Stuck sockets per CLOSE_WAIT group, zeros included (so that every group has a series
/// an alert can match against).
fn stuck_families(labels: &SeriesLabels) -> Vec<MetricFamily> {
    let sample = labels.sample;
    let mut groups: BTreeMap<AgeGroup, StuckCounts> = sample
        .groups
        .iter()
        .filter(|(key, _)| key.state == TcpState::CloseWait)
        .map(|(key, _)| (key.close_wait_group(), StuckCounts::default()))
        .collect();
    groups.extend(sample.ages.stuck.iter().copied());
    let series: Vec<_> = groups
        .iter()
        .map(|(group, stuck)| (labels.close_wait(group), stuck))
        .collect();
    per_field(&STUCK_FAMILIES, &series)
}

const LISTEN_OVERFLOWS: FamilySpec = FamilySpec::counter(
    "tcpstate_listen_overflows_total",
    "Connections refused because an accept queue was full (TcpExt ListenOverflows).",
);
const LISTEN_DROPS: FamilySpec = FamilySpec::counter(
    "tcpstate_listen_drops_total",
    "SYNs dropped at listeners, overflows included (TcpExt ListenDrops).",
);
const SYSCTLS: [FamilySpec; 6] = [
    FamilySpec::gauge(
        "tcpstate_tcp_fin_timeout_seconds",
        "net.ipv4.tcp_fin_timeout: how long an orphaned FIN_WAIT2 lasts (CLOSE_WAIT has no \
         such bound).",
    ),
    FamilySpec::gauge(
        "tcpstate_tcp_keepalive_time_seconds",
        "net.ipv4.tcp_keepalive_time: idle time before keepalive probes start.",
    ),
    FamilySpec::gauge(
        "tcpstate_tcp_keepalive_interval_seconds",
        "net.ipv4.tcp_keepalive_intvl: time between keepalive probes.",
    ),
    FamilySpec::gauge(
        "tcpstate_tcp_keepalive_probes",
        "net.ipv4.tcp_keepalive_probes: unanswered probes before a connection is dropped.",
    ),
    FamilySpec::gauge(
        "tcpstate_somaxconn",
        "net.core.somaxconn: the cap on any listener's accept-queue limit.",
    ),
    FamilySpec::gauge(
        "tcpstate_tcp_ehash_entries",
        "net.ipv4.tcp_ehash_entries: buckets of the namespace's TCP established hash; \
         negative when it shares the host-wide hash, so each sample of it walks every TCP \
         socket of the host (set net.ipv4.tcp_child_ehash_entries on the host).",
    ),
];

/// The namespace's accept-queue counters and the sysctls the article names; a value
/// that could not be read is left out.
fn kernel_families(labels: &SeriesLabels) -> Vec<MetricFamily> {
    let mut families = Vec::new();
    if let Some(counters) = labels.sample.listen_counters {
        families.push(LISTEN_OVERFLOWS.with_value(labels.namespace(), counters.overflows as f64));
        families.push(LISTEN_DROPS.with_value(labels.namespace(), counters.drops as f64));
    }
    let settings = labels.sample.tcp_settings;
    let values = [
        settings.fin_timeout_seconds,
        settings.keepalive_time_seconds,
        settings.keepalive_interval_seconds,
        settings.keepalive_probes,
        settings.somaxconn,
        settings.ehash_entries,
    ];
    for (spec, value) in SYSCTLS.iter().zip(values) {
        if let Some(value) = value {
            families.push(spec.with_value(labels.namespace(), value));
        }
    }
    families
}

const ENTERED: FamilySpec = FamilySpec::counter(
    "tcpstate_close_wait_entered_total",
    "Connections that entered CLOSE_WAIT, from kernel events (events mode only): the rate \
     to alert on, visible before the gauge moves.",
);
const TRACKED: FamilySpec = FamilySpec::gauge(
    "tcpstate_close_wait_tracked",
    "CLOSE_WAIT connections whose age is tracked.",
);
const UNTRACKED: FamilySpec = FamilySpec::gauge(
    "tcpstate_close_wait_untracked",
    "CLOSE_WAIT connections not aged because close_wait.max_tracked_sockets was reached.",
);
const FOLDED: FamilySpec = FamilySpec::gauge(
    "tcpstate_groups_folded",
    "Groups folded into port=\"other\", process=\"other\" because max_groups was reached.",
);

/// Entries counted from events, and what the tracker and the folding left out.
fn tracking_families(labels: &SeriesLabels) -> Vec<MetricFamily> {
    let sample = labels.sample;
    vec![
        ENTERED.with_values(
            sample
                .ages
                .entered
                .iter()
                .map(|(group, n)| (labels.close_wait(group), *n as f64)),
        ),
        TRACKED.with_value(labels.namespace(), sample.close_wait_tracked as f64),
        UNTRACKED.with_value(labels.namespace(), sample.ages.untracked as f64),
        FOLDED.with_value(labels.namespace(), sample.groups_folded as f64),
    ]
}

const PEERS: FamilySpec = FamilySpec::gauge(
    "tcpstate_close_wait_peer_connections",
    "Outbound CLOSE_WAIT connections of the group per peer (remote address:port): the top \
     close_wait.peers_per_group peers, the rest as peer=\"other\" (opt-in).",
);

/// The top peers of each outbound CLOSE_WAIT group, and the rest as `peer="other"`.
fn peer_family(labels: &SeriesLabels) -> MetricFamily {
    let keep = labels.options.peers_per_group;
    let mut series = Vec::new();
    for (group, peers) in &labels.sample.close_wait_peers {
        for (peer, count) in peers.top.iter().take(keep) {
            series.push((labels.peer(group, &peer.to_string()), *count as f64));
        }
        let shown: u64 = peers.top.iter().take(keep).map(|(_, n)| n).sum();
        let rest = peers.top.iter().map(|(_, n)| n).sum::<u64>() + peers.others - shown;
        if rest > 0 {
            series.push((labels.peer(group, "other"), rest as f64));
        }
    }
    PEERS.with_values(series)
}

const OPEN_FDS: FamilySpec = FamilySpec::gauge(
    "tcpstate_process_open_fds",
    "Open file descriptors of the program's process nearest its limit, for programs owning \
     connections in a detail state: every leaked socket is one.",
);
const MAX_FDS: FamilySpec = FamilySpec::gauge(
    "tcpstate_process_max_fds",
    "Soft RLIMIT_NOFILE of that process: past it accept() fails with EMFILE (no series \
     when unlimited).",
);

/// The fd cliff of each program owning detail-state connections.
fn fd_families(labels: &SeriesLabels) -> Vec<MetricFamily> {
    let fds = &labels.sample.process_fds;
    vec![
        OPEN_FDS.with_values(
            fds.iter()
                .map(|(owner, fds)| (labels.process(*owner), fds.open as f64)),
        ),
        MAX_FDS
            .with_values(fds.iter().filter_map(|(owner, fds)| {
                fds.max.map(|max| (labels.process(*owner), max as f64))
            })),
    ]
}
