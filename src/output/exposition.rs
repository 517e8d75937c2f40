//! Exposition: a `Sample` and the exporter's own counters, encoded once per sample into
//! the Prometheus text format (0.0.4), plus its gzip form, ready to be served as bytes.
//!
//! Families are built directly from the sample (no `*Vec` metrics reset and refilled,
//! which would race a concurrent scrape and cost more). No timestamps are set: the
//! values are those of the last sample, and `tcpstate_last_sample_timestamp_seconds`
//! says when it was taken.

use std::io::Write;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use prometheus::core::Collector;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};

use crate::kernel::record::TcpState;
use crate::model::aggregate::GroupStats;
use crate::model::labels::{AgeGroup, OwnerKey};
use crate::model::sample::{NamespaceInfo, NamespaceSample, Sample};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every reason `tcpstate_sample_errors_total` can carry, exported from the start at 0
/// so that `rate()` and `increase()` see the first error.
pub const SAMPLE_ERROR_REASONS: [&str; 5] = [
    "netlink_io",
    "netlink_refused",
    "decode",
    "dump_interrupted",
    "enobufs",
];

/// The encoded bytes one scrape is served.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    pub text: Bytes,
    pub gzip: Bytes,
}

/// The exporter's view of its own health, encoded beside the sample.
#[derive(Clone, Debug, Default)]
pub struct SelfMetrics {
    pub last_sample_duration_seconds: f64,
    /// Unix time of the last successful sample (0 before the first).
    pub last_success_timestamp_seconds: f64,
    /// Failed samples per reason, in the order of `SAMPLE_ERROR_REASONS`.
    pub sample_errors: [u64; SAMPLE_ERROR_REASONS.len()],
    pub samples_total: u64,
    pub duplicates_dropped: u64,
    pub unknown_states_skipped: u64,
    /// /proc/PID/fd links read to attribute sockets (the cost of attribution).
    pub owner_fds_read: u64,
    /// Detail-state sockets left without an owner in the last sample.
    pub owners_unresolved: u64,
    /// Namespaces that vanished between discovery and their sample.
    pub namespaces_vanished: u64,
    pub namespaces_sampled: u64,
    /// Events mode: attached, events the ring had no room for, and every TCP transition
    /// the kernel made (all namespaces).
    pub events_attached: bool,
    pub events_lost: u64,
    pub transitions: Vec<(TcpState, TcpState, u64)>,
}

/// Label names of per-group series; `pid` only when configured.
#[derive(Clone, Copy, Debug)]
pub struct LabelOptions {
    pub pid_label: bool,
    /// Add `netns`, `pod` and `namespace` to every series ("all" namespaces mode).
    pub namespace_labels: bool,
}

/// Families of every sampled namespace, merged: with `namespace_labels` each series
/// carries `netns`, `pod` and `namespace` first, and `tcpstate_netns_info` maps them.
pub fn namespace_families(samples: &[NamespaceSample], options: LabelOptions) -> Vec<MetricFamily> {
    let mut merged: Vec<MetricFamily> = Vec::new();
    for namespace in samples {
        let prefix = if options.namespace_labels {
            namespace_prefix(&namespace.info)
        } else {
            Vec::new()
        };
        // Merged by name: a family may be absent from one namespace (an unreadable
        // sysctl), so positions cannot be trusted.
        for mut family in sample_families(&namespace.sample, options, &prefix) {
            match merged.iter_mut().find(|f| f.name() == family.name()) {
                Some(target) => target.mut_metric().extend(family.take_metric()),
                None => merged.push(family),
            }
        }
    }
    if options.namespace_labels {
        let mut info = family(
            "tcpstate_netns_info",
            "Sampled network namespaces and what is known of them (always 1).",
            MetricType::GAUGE,
        );
        for namespace in samples {
            let i = &namespace.info;
            let mut labels = namespace_prefix(i);
            labels.push(label("inode", &i.inode.to_string()));
            labels.push(label(
                "pid",
                &i.pid.map(|p| p.to_string()).unwrap_or_default(),
            ));
            labels.push(label("comm", &i.comm));
            labels.push(label("pod_uid", &i.pod_uid));
            labels.push(label("container_id", &i.container_id));
            info.mut_metric().push(gauge(labels, 1.0));
        }
        merged.push(info);
    }
    merged
}

fn namespace_prefix(info: &NamespaceInfo) -> Vec<LabelPair> {
    vec![
        label("netns", &info.labels.netns),
        label("pod", &info.labels.pod),
        label("namespace", &info.labels.namespace),
    ]
}

fn prefixed(prefix: &[LabelPair], labels: Vec<LabelPair>) -> Vec<LabelPair> {
    if prefix.is_empty() {
        return labels;
    }
    let mut all = prefix.to_vec();
    all.extend(labels);
    all
}

/// Families derived from one namespace's sample, each series' labels after `prefix`.
pub fn sample_families(
    sample: &Sample,
    options: LabelOptions,
    prefix: &[LabelPair],
) -> Vec<MetricFamily> {
    let mut families = Vec::new();

    let mut sockets = family(
        "tcpstate_sockets",
        "TCP sockets of the network namespace per state, as of the last sample (taken on \
         a timer, not at scrape time).",
        MetricType::GAUGE,
    );
    for state in TcpState::ALL {
        sockets.mut_metric().push(gauge(
            prefixed(prefix, vec![label("state", state.name())]),
            sample.state_count(state) as f64,
        ));
    }
    families.push(sockets);

    type Field = fn(&GroupStats) -> u64;
    let group_families: [(&str, &str, Field); 4] = [
        (
            "tcpstate_connections",
            "Connections in a detail state by direction, service port and owning process.",
            |s| s.connections,
        ),
        (
            "tcpstate_recv_queue_bytes",
            "Unread data in the receive queues of the group's connections (in CLOSE_WAIT the \
             peer's FIN is not counted).",
            |s| s.recv_queue_bytes,
        ),
        (
            "tcpstate_send_queue_bytes",
            "Data not yet acknowledged by the peer in the send queues of the group's connections.",
            |s| s.send_queue_bytes,
        ),
        (
            "tcpstate_unread_connections",
            "Connections of the group holding unread data: the program stopped reading.",
            |s| s.unread_connections,
        ),
    ];
    for (name, help, field) in group_families {
        let mut f = family(name, help, MetricType::GAUGE);
        for (key, stats) in &sample.groups {
            let mut labels = vec![
                label("state", key.state.name()),
                label("direction", key.direction.name()),
                label("port", &key.port.to_string()),
            ];
            owner_labels(&mut labels, sample, key.owner, options);
            f.mut_metric()
                .push(gauge(prefixed(prefix, labels), field(stats) as f64));
        }
        families.push(f);
    }

    type ListenerField = fn(&crate::model::aggregate::ListenerStats) -> u64;
    let listener_families: [(&str, &str, ListenerField); 2] = [
        (
            "tcpstate_listen_queue_length",
            "Connections waiting in the accept queues of the listeners on the port.",
            |s| s.queue_length,
        ),
        (
            "tcpstate_listen_queue_max",
            "Accept-queue limit (backlog) of the listeners on the port, summed.",
            |s| s.queue_max,
        ),
    ];
    for (name, help, field) in listener_families {
        let mut f = family(name, help, MetricType::GAUGE);
        for (key, stats) in &sample.listeners {
            let mut labels = vec![label("port", &key.port.to_string())];
            owner_labels(&mut labels, sample, key.owner, options);
            f.mut_metric()
                .push(gauge(prefixed(prefix, labels), field(stats) as f64));
        }
        families.push(f);
    }

    let mut oldest = family(
        "tcpstate_close_wait_oldest_seconds",
        "Age of the oldest CLOSE_WAIT connection of the group, from the peer's FIN (a lower \
         bound when this side was still sending or keepalive probes were answered).",
        MetricType::GAUGE,
    );
    for (group, age) in &sample.ages.oldest {
        oldest.mut_metric().push(gauge(
            prefixed(prefix, age_labels(sample, group, options)),
            *age,
        ));
    }
    families.push(oldest);

    let mut durations = family(
        "tcpstate_close_wait_duration_seconds",
        "Time CLOSE_WAIT connections spent in CLOSE_WAIT, observed once when they left it \
         (closed by the program, or gone); within half a sample interval.",
        MetricType::HISTOGRAM,
    );
    for (group, h) in &sample.ages.durations {
        durations.mut_metric().push(histogram(
            prefixed(prefix, age_labels(sample, group, options)),
            &sample.ages.bounds,
            &h.cumulative,
            h.count,
            h.sum,
        ));
    }
    families.push(durations);

    type CloseWaitField = fn(&GroupStats) -> u64;
    let evidence: [(&str, &str, CloseWaitField); 3] = [
        (
            "tcpstate_close_wait_eof_read_connections",
            "CLOSE_WAIT connections whose program read the EOF (Recv-Q 0) and still did not \
             close: it saw the peer leave and ignored it.",
            |s| s.eof_read,
        ),
        (
            "tcpstate_close_wait_unaccepted",
            "CLOSE_WAIT connections still in a listener's accept queue: the peer gave up \
             before the program accepted them.",
            |s| s.unaccepted,
        ),
        (
            "tcpstate_close_wait_keepalive_connections",
            "CLOSE_WAIT connections with a keepalive timer armed.",
            |s| s.keepalive,
        ),
    ];
    for (name, help, field) in evidence {
        let mut f = family(name, help, MetricType::GAUGE);
        for (key, stats) in sample
            .groups
            .iter()
            .filter(|(key, _)| key.state == TcpState::CloseWait)
        {
            let group = AgeGroup {
                direction: key.direction,
                port: key.port,
                owner: key.owner,
            };
            f.mut_metric().push(gauge(
                prefixed(prefix, age_labels(sample, &group, options)),
                field(stats) as f64,
            ));
        }
        families.push(f);
    }

    if let Some(counters) = sample.listen_counters {
        for (name, help, value) in [
            (
                "tcpstate_listen_overflows_total",
                "Connections refused because an accept queue was full (TcpExt ListenOverflows).",
                counters.overflows,
            ),
            (
                "tcpstate_listen_drops_total",
                "SYNs dropped at listeners, overflows included (TcpExt ListenDrops).",
                counters.drops,
            ),
        ] {
            let mut f = family(name, help, MetricType::COUNTER);
            f.mut_metric()
                .push(counter(prefixed(prefix, vec![]), value as f64));
            families.push(f);
        }
    }
    let settings = sample.tcp_settings;
    for (name, help, value) in [
        (
            "tcpstate_tcp_fin_timeout_seconds",
            "net.ipv4.tcp_fin_timeout: how long an orphaned FIN_WAIT2 lasts (CLOSE_WAIT has no such bound).",
            settings.fin_timeout_seconds,
        ),
        (
            "tcpstate_tcp_keepalive_time_seconds",
            "net.ipv4.tcp_keepalive_time: idle time before keepalive probes start.",
            settings.keepalive_time_seconds,
        ),
        (
            "tcpstate_tcp_keepalive_interval_seconds",
            "net.ipv4.tcp_keepalive_intvl: time between keepalive probes.",
            settings.keepalive_interval_seconds,
        ),
        (
            "tcpstate_tcp_keepalive_probes",
            "net.ipv4.tcp_keepalive_probes: unanswered probes before a connection is dropped.",
            settings.keepalive_probes,
        ),
        (
            "tcpstate_somaxconn",
            "net.core.somaxconn: the cap on any listener's accept-queue limit.",
            settings.somaxconn,
        ),
    ] {
        if let Some(value) = value {
            let mut f = family(name, help, MetricType::GAUGE);
            f.mut_metric().push(gauge(prefixed(prefix, vec![]), value));
            families.push(f);
        }
    }

    let mut entered = family(
        "tcpstate_close_wait_entered_total",
        "Connections that entered CLOSE_WAIT, from kernel events (events mode only): the \
         rate to alert on, visible before the gauge moves.",
        MetricType::COUNTER,
    );
    for (group, n) in &sample.ages.entered {
        entered.mut_metric().push(counter(
            prefixed(prefix, age_labels(sample, group, options)),
            *n as f64,
        ));
    }
    families.push(entered);

    let mut tracked = family(
        "tcpstate_close_wait_tracked",
        "CLOSE_WAIT connections whose age is tracked.",
        MetricType::GAUGE,
    );
    tracked.mut_metric().push(gauge(
        prefixed(prefix, vec![]),
        sample.close_wait_tracked as f64,
    ));
    families.push(tracked);
    let mut untracked = family(
        "tcpstate_close_wait_untracked",
        "CLOSE_WAIT connections not aged because close_wait.max_tracked_sockets was reached.",
        MetricType::GAUGE,
    );
    untracked.mut_metric().push(gauge(
        prefixed(prefix, vec![]),
        sample.ages.untracked as f64,
    ));
    families.push(untracked);

    let mut folded = family(
        "tcpstate_groups_folded",
        "Groups folded into port=\"other\" because max_groups was reached.",
        MetricType::GAUGE,
    );
    folded
        .mut_metric()
        .push(gauge(prefixed(prefix, vec![]), sample.groups_folded as f64));
    families.push(folded);

    families
}

fn age_labels(sample: &Sample, group: &AgeGroup, options: LabelOptions) -> Vec<LabelPair> {
    let mut labels = vec![
        label("direction", group.direction.name()),
        label("port", &group.port.to_string()),
    ];
    owner_labels(&mut labels, sample, group.owner, options);
    labels
}

fn owner_labels(
    labels: &mut Vec<LabelPair>,
    sample: &Sample,
    owner: OwnerKey,
    options: LabelOptions,
) {
    labels.push(label("process", sample.process_name(owner.process)));
    if options.namespace_labels {
        labels.push(label("container", sample.process_name(owner.container)));
    }
    if options.pid_label {
        let pid = if owner.pid == 0 {
            String::new()
        } else {
            owner.pid.to_string()
        };
        labels.push(label("pid", &pid));
    }
}

/// Families about the exporter itself.
pub fn self_families(metrics: &SelfMetrics) -> Vec<MetricFamily> {
    let mut families = Vec::new();
    let mut duration = family(
        "tcpstate_sample_duration_seconds",
        "Wall time the last sample took (dump, attribution, aggregation, encoding).",
        MetricType::GAUGE,
    );
    duration
        .mut_metric()
        .push(gauge(vec![], metrics.last_sample_duration_seconds));
    families.push(duration);

    let mut errors = family(
        "tcpstate_sample_errors_total",
        "Samples that failed, by reason; the last good sample keeps being served.",
        MetricType::COUNTER,
    );
    for (reason, count) in SAMPLE_ERROR_REASONS.iter().zip(metrics.sample_errors) {
        errors
            .mut_metric()
            .push(counter(vec![label("reason", reason)], count as f64));
    }
    families.push(errors);

    let mut samples = family(
        "tcpstate_samples_total",
        "Samples attempted since start.",
        MetricType::COUNTER,
    );
    samples
        .mut_metric()
        .push(counter(vec![], metrics.samples_total as f64));
    families.push(samples);

    let mut skipped = family(
        "tcpstate_sockets_skipped_total",
        "Sockets left out of samples: reported twice by a non-atomic dump, or in a state \
         this build does not know.",
        MetricType::COUNTER,
    );
    skipped.mut_metric().push(counter(
        vec![label("reason", "duplicate")],
        metrics.duplicates_dropped as f64,
    ));
    skipped.mut_metric().push(counter(
        vec![label("reason", "unknown_state")],
        metrics.unknown_states_skipped as f64,
    ));
    families.push(skipped);

    let mut fds_read = family(
        "tcpstate_attribution_fd_reads_total",
        "Links under /proc/PID/fd read to find socket owners; flat in a steady state, \
         because owners are cached across samples.",
        MetricType::COUNTER,
    );
    fds_read
        .mut_metric()
        .push(counter(vec![], metrics.owner_fds_read as f64));
    families.push(fds_read);
    let mut unresolved = family(
        "tcpstate_attribution_unresolved_sockets",
        "Sockets of the last sample whose owning process could not be seen (other pid \
         namespace, missing privileges); they carry process=\"\".",
        MetricType::GAUGE,
    );
    unresolved
        .mut_metric()
        .push(gauge(vec![], metrics.owners_unresolved as f64));
    families.push(unresolved);

    let mut sampled = family(
        "tcpstate_namespaces_sampled",
        "Network namespaces whose sockets are served.",
        MetricType::GAUGE,
    );
    sampled
        .mut_metric()
        .push(gauge(vec![], metrics.namespaces_sampled as f64));
    families.push(sampled);
    let mut vanished = family(
        "tcpstate_namespaces_vanished_total",
        "Network namespaces that vanished between discovery and their sample (skipped, \
         not an error).",
        MetricType::COUNTER,
    );
    vanished
        .mut_metric()
        .push(counter(vec![], metrics.namespaces_vanished as f64));
    families.push(vanished);

    let mut attached = family(
        "tcpstate_events_attached",
        "1 when CLOSE_WAIT lifetimes come from kernel events (eBPF), exact; 0 when from \
         polling alone (ages are then lower bounds).",
        MetricType::GAUGE,
    );
    attached
        .mut_metric()
        .push(gauge(vec![], f64::from(u8::from(metrics.events_attached))));
    families.push(attached);
    if metrics.events_attached {
        let mut lost = family(
            "tcpstate_events_lost_total",
            "Kernel events the ring buffer had no room for; the sockets concerned fall back \
             to polled (bounded) times.",
            MetricType::COUNTER,
        );
        lost.mut_metric()
            .push(counter(vec![], metrics.events_lost as f64));
        families.push(lost);
        let mut transitions = family(
            "tcpstate_transitions_total",
            "TCP state changes seen by the kernel, in every network namespace of the host.",
            MetricType::COUNTER,
        );
        for (from, to, n) in &metrics.transitions {
            transitions.mut_metric().push(counter(
                vec![label("from", from.name()), label("to", to.name())],
                *n as f64,
            ));
        }
        families.push(transitions);
    }

    let mut last = family(
        "tcpstate_last_sample_timestamp_seconds",
        "Unix time of the last successful sample; the served values are from then.",
        MetricType::GAUGE,
    );
    last.mut_metric()
        .push(gauge(vec![], metrics.last_success_timestamp_seconds));
    families.push(last);

    let mut build = family(
        "tcpstate_build_info",
        "Build of the running exporter.",
        MetricType::GAUGE,
    );
    build.mut_metric().push(gauge(
        vec![label("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    ));
    families.push(build);
    families
}

/// Encodes families (text and gzip). The process collector adds the standard
/// `process_*` metrics, read now. An error leaves nothing half-encoded: the caller keeps
/// serving what it had.
pub fn encode(
    mut families: Vec<MetricFamily>,
    process: Option<&prometheus::process_collector::ProcessCollector>,
) -> Result<Exposition, prometheus::Error> {
    if let Some(collector) = process {
        families.extend(collector.collect());
    }
    // The text encoder rejects a family without members (e.g. no histogram observed
    // yet); such a family has nothing to say, so it is left out.
    families.retain(|f| !f.get_metric().is_empty());
    let mut text = Vec::with_capacity(64 * 1024);
    TextEncoder::new().encode(&families, &mut text)?;
    let mut gzip = GzEncoder::new(Vec::with_capacity(text.len() / 4), Compression::fast());
    gzip.write_all(&text)?;
    let gzip = gzip.finish()?;
    Ok(Exposition {
        text: Bytes::from(text),
        gzip: Bytes::from(gzip),
    })
}

/// A histogram family member, from cumulative bucket counts.
pub fn histogram(
    labels: Vec<LabelPair>,
    bounds: &[f64],
    cumulative: &[u64],
    count: u64,
    sum: f64,
) -> Metric {
    let mut histogram = Histogram::default();
    histogram.set_sample_count(count);
    histogram.set_sample_sum(sum);
    histogram.set_bucket(
        bounds
            .iter()
            .zip(cumulative)
            .map(|(bound, count)| {
                let mut bucket = Bucket::default();
                bucket.set_upper_bound(*bound);
                bucket.set_cumulative_count(*count);
                bucket
            })
            .collect(),
    );
    let mut metric = Metric::from_label(labels);
    metric.set_histogram(histogram);
    metric
}

pub fn family(name: &str, help: &str, kind: MetricType) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(kind);
    family
}

pub fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_string());
    pair.set_value(value.to_string());
    pair
}

pub fn gauge(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut gauge = Gauge::default();
    gauge.set_value(value);
    let mut metric = Metric::from_label(labels);
    metric.set_gauge(gauge);
    metric
}

pub fn counter(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut counter = Counter::default();
    counter.set_value(value);
    let mut metric = Metric::from_label(labels);
    metric.set_counter(counter);
    metric
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::aggregate::GroupKey;
    use crate::model::labels::{Direction, PortLabel, ProcessId};

    fn sample() -> Sample {
        let mut sample = Sample {
            processes: vec![String::new(), "server".into(), "api".into()],
            ..Sample::default()
        };
        sample.state_counts[TcpState::CloseWait.index()] = 2;
        sample.groups.push((
            GroupKey {
                state: TcpState::CloseWait,
                direction: Direction::Inbound,
                port: PortLabel::Port(8080),
                owner: OwnerKey {
                    process: ProcessId(1),
                    pid: 42,
                    container: ProcessId(2),
                },
            },
            GroupStats {
                connections: 2,
                recv_queue_bytes: 5,
                unread_connections: 1,
                ..GroupStats::default()
            },
        ));
        sample
    }

    fn text(families: Vec<MetricFamily>) -> String {
        String::from_utf8(encode(families, None).expect("encodes").text.to_vec()).expect("utf-8")
    }

    #[test]
    fn every_state_is_present_and_groups_carry_their_labels() {
        let options = LabelOptions {
            pid_label: false,
            namespace_labels: false,
        };
        let out = text(sample_families(&sample(), options, &[]));
        for state in TcpState::ALL {
            assert!(out.contains(&format!("tcpstate_sockets{{state=\"{}\"}}", state.name())));
        }
        assert!(
            out.contains("tcpstate_sockets{state=\"close_wait\"} 2\n"),
            "{out}"
        );
        assert!(out.contains(
            "tcpstate_connections{state=\"close_wait\",direction=\"inbound\",port=\"8080\",process=\"server\"} 2\n"
        ), "{out}");
        assert!(out.contains(
            "tcpstate_recv_queue_bytes{state=\"close_wait\",direction=\"inbound\",port=\"8080\",process=\"server\"} 5\n"
        ), "{out}");
        assert!(!out.contains("pid="), "{out}");
        assert!(out.contains("# TYPE tcpstate_connections gauge"));
    }

    #[test]
    fn namespaces_prefix_every_series_and_get_an_info_metric() {
        let namespace = |netns: &str| NamespaceSample {
            info: NamespaceInfo {
                labels: crate::model::sample::NamespaceLabels {
                    netns: netns.into(),
                    pod: String::new(),
                    namespace: String::new(),
                },
                inode: 7,
                ..NamespaceInfo::default()
            },
            sample: sample(),
        };
        let options = LabelOptions {
            pid_label: false,
            namespace_labels: true,
        };
        let out = text(namespace_families(
            &[namespace("blue"), namespace("red")],
            options,
        ));
        for netns in ["blue", "red"] {
            assert!(out.contains(&format!(
                "tcpstate_sockets{{netns=\"{netns}\",pod=\"\",namespace=\"\",state=\"close_wait\"}} 2\n"
            )), "{out}");
            assert!(
                out.contains(&format!(
                    "tcpstate_netns_info{{netns=\"{netns}\",pod=\"\",namespace=\"\",inode=\"7\""
                )),
                "{out}"
            );
        }
        assert_eq!(
            out.matches("# TYPE tcpstate_sockets gauge").count(),
            1,
            "one family"
        );
    }

    #[test]
    fn pid_label_only_when_asked() {
        let options = LabelOptions {
            pid_label: true,
            namespace_labels: false,
        };
        let out = text(sample_families(&sample(), options, &[]));
        assert!(out.contains("process=\"server\",pid=\"42\"} 2\n"), "{out}");
    }

    #[test]
    fn errors_start_at_zero_for_every_reason_and_gzip_round_trips() {
        let exposition = encode(self_families(&SelfMetrics::default()), None).expect("encodes");
        let out = String::from_utf8(exposition.text.to_vec()).expect("utf-8");
        for reason in SAMPLE_ERROR_REASONS {
            assert!(out.contains(&format!(
                "tcpstate_sample_errors_total{{reason=\"{reason}\"}} 0\n"
            )));
        }
        assert!(out.contains("# TYPE tcpstate_sample_errors_total counter"));
        let mut decoded = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(&exposition.gzip[..]),
            &mut decoded,
        )
        .expect("valid gzip");
        assert_eq!(decoded, out);
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inf() {
        let mut f = family("h_seconds", "help", MetricType::HISTOGRAM);
        f.mut_metric().push(histogram(
            vec![label("a", "b")],
            &[1.0, 5.0],
            &[1, 3],
            4,
            20.5,
        ));
        let out = text(vec![f]);
        assert!(
            out.contains("h_seconds_bucket{a=\"b\",le=\"1\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("h_seconds_bucket{a=\"b\",le=\"5\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("h_seconds_bucket{a=\"b\",le=\"+Inf\"} 4\n"),
            "{out}"
        );
        assert!(out.contains("h_seconds_sum{a=\"b\"} 20.5\n"), "{out}");
        assert!(out.contains("h_seconds_count{a=\"b\"} 4\n"), "{out}");
    }
}
