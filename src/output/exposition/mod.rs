//! Exposition: a `Sample` and the exporter's own counters, encoded once per sample into
//! the Prometheus text format (0.0.4), plus its gzip form, ready to be served as bytes.
//!
//! Families are built directly from the sample (no `*Vec` metrics reset and refilled,
//! which would race a concurrent scrape and cost more). No timestamps are set: the
//! values are those of the last sample, and `tcpstate_last_sample_timestamp_seconds`
//! says when it was taken.
//!
//! `proto` holds the data-model pieces, `labels` the typed label sets, and one file per
//! source of families: `sample_families` (a namespace's sample), `self_families` (the
//! exporter's health).

use std::io::Write;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use prometheus::core::Collector;
use prometheus::proto::MetricFamily;

use crate::config::{NamespaceMode, Settings};
use crate::model::sample::NamespaceSample;
use crate::model::self_metrics::SelfMetrics;

mod labels;
mod process_cpu;
mod proto;
mod sample_families;
mod self_families;
mod text;

pub use labels::LabelOptions;
use labels::{namespace_info, namespace_prefix};
use proto::FamilySpec;
pub use sample_families::sample_families;
pub use self_families::self_families;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The encoded bytes one scrape is served.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    pub text: Bytes,
    pub gzip: Bytes,
}

const NETNS_INFO: FamilySpec = FamilySpec::gauge(
    "tcpstate_netns_info",
    "Sampled network namespaces and what is known of them (always 1).",
);

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
        merged.push(
            NETNS_INFO.with_values(
                samples
                    .iter()
                    .map(|namespace| (namespace_info(&namespace.info), 1.0)),
            ),
        );
    }
    merged
}

impl LabelOptions {
    /// The label names the running settings ask for.
    pub fn of(settings: &Settings) -> Self {
        LabelOptions {
            pid_label: settings.pid_label,
            namespace_labels: settings.namespaces == NamespaceMode::All,
            peers_per_group: settings.peers_per_group,
        }
    }
}

/// Encodes one round: every namespace's last good sample, then the exporter's own
/// families, with the round's duration (`started` to the end of the namespaces'
/// families) set in `metrics` first.
pub fn encode_round(
    samples: &[NamespaceSample],
    metrics: &mut SelfMetrics,
    started: std::time::Instant,
    options: LabelOptions,
    process: &prometheus::process_collector::ProcessCollector,
) -> Result<Exposition, prometheus::Error> {
    let mut families = namespace_families(samples, options);
    metrics.last_sample_duration_seconds = started.elapsed().as_secs_f64();
    families.extend(self_families(metrics));
    encode(families, Some(process))
}

/// Encodes families (text and gzip). The process collector adds the standard
/// `process_*` metrics, read now (its CPU time to the microsecond, `process_cpu`). An error leaves nothing half-encoded: the caller keeps
/// serving what it had.
pub fn encode(
    mut families: Vec<MetricFamily>,
    process: Option<&prometheus::process_collector::ProcessCollector>,
) -> Result<Exposition, prometheus::Error> {
    if let Some(collector) = process {
        let mut process_families = collector.collect();
        process_cpu::refine(&mut process_families);
        families.extend(process_families);
    }
    // A family without members (e.g. no histogram observed yet) has nothing to say:
    // the writer leaves it out.
    let mut text = Vec::with_capacity(64 * 1024);
    text::write_families(&families, &mut text);
    let mut gzip = GzEncoder::new(Vec::with_capacity(text.len() / 4), Compression::fast());
    gzip.write_all(&text)?;
    let gzip = gzip.finish()?;
    Ok(Exposition {
        text: Bytes::from(text),
        gzip: Bytes::from(gzip),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::record::TcpState;
    use crate::kernel::sockdiag::SampleErrorReason;
    use crate::model::aggregate::{GroupKey, GroupStats};
    use crate::model::labels::OwnerKey;
    use crate::model::labels::{Direction, PortLabel, ProcessId};
    use crate::model::sample::{NamespaceInfo, Sample};
    use crate::model::self_metrics::SelfMetrics;
    use crate::output::exposition::proto::{family, histogram, label};
    use prometheus::proto::MetricType;

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
            peers_per_group: 0,
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
            peers_per_group: 0,
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
            peers_per_group: 0,
        };
        let out = text(sample_families(&sample(), options, &[]));
        assert!(out.contains("process=\"server\",pid=\"42\"} 2\n"), "{out}");
    }

    #[test]
    fn peer_series_are_opt_in_with_the_rest_as_other() {
        let group = crate::model::labels::AgeGroup {
            direction: Direction::Outbound,
            port: PortLabel::Port(3306),
            owner: OwnerKey {
                process: ProcessId(1),
                ..OwnerKey::default()
            },
        };
        let mut sample = sample();
        sample.close_wait_peers = vec![(
            group,
            crate::model::top::Top {
                top: vec![
                    (std::net::SocketAddr::from(([10, 0, 0, 5], 3306)), 1896),
                    (std::net::SocketAddr::from(([10, 0, 0, 6], 3306)), 20),
                ],
                others: 4,
                distinct: 5,
            },
        )];
        let options = |peers_per_group| LabelOptions {
            pid_label: false,
            namespace_labels: false,
            peers_per_group,
        };
        let off = text(sample_families(&sample, options(0), &[]));
        assert!(
            !off.contains("tcpstate_close_wait_peer_connections"),
            "{off}"
        );
        let on = text(sample_families(&sample, options(1), &[]));
        let series: Vec<&str> = on
            .lines()
            .filter(|l| l.starts_with("tcpstate_close_wait_peer_connections{"))
            .collect();
        assert_eq!(
            series,
            [
                "tcpstate_close_wait_peer_connections{direction=\"outbound\",port=\"3306\",process=\"server\",peer=\"10.0.0.5:3306\"} 1896",
                "tcpstate_close_wait_peer_connections{direction=\"outbound\",port=\"3306\",process=\"server\",peer=\"other\"} 24",
            ]
        );
    }

    #[test]
    fn errors_start_at_zero_for_every_reason_and_gzip_round_trips() {
        let exposition = encode(self_families(&SelfMetrics::default()), None).expect("encodes");
        let out = String::from_utf8(exposition.text.to_vec()).expect("utf-8");
        for reason in SampleErrorReason::ALL {
            assert!(out.contains(&format!(
                "tcpstate_sample_errors_total{{reason=\"{}\"}} 0\n",
                reason.name()
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

    /// A sample with something in every family, in namespaces mode, and the exporter's
    /// own families with events attached: every family the exporter can export.
    pub(super) fn every_family() -> Vec<MetricFamily> {
        use crate::kernel::sysctl::{ListenCounters, TcpSettings};
        use crate::model::ages::{AgesReport, DurationHistogram};
        use crate::model::aggregate::{ListenerKey, ListenerStats};
        let mut sample = sample();
        let group = sample.groups[0].0.close_wait_group();
        sample.listeners.push((
            ListenerKey {
                port: PortLabel::Port(8080),
                owner: OwnerKey::default(),
            },
            ListenerStats::default(),
        ));
        let histogram = DurationHistogram {
            cumulative: vec![1],
            count: 1,
            sum: 1.0,
        };
        sample.ages = AgesReport {
            oldest: vec![(group, 3.0)],
            durations: vec![(group, histogram)],
            bounds: vec![1.0],
            entered: vec![(group, 1)],
            ..AgesReport::default()
        };
        sample.listen_counters = Some(ListenCounters::default());
        let outbound = crate::model::labels::AgeGroup {
            direction: Direction::Outbound,
            port: PortLabel::Port(3306),
            owner: OwnerKey::default(),
        };
        sample.close_wait_peers = vec![(
            outbound,
            crate::model::top::Top {
                top: vec![(std::net::SocketAddr::from(([10, 0, 0, 5], 3306)), 3)],
                others: 1,
                distinct: 2,
            },
        )];
        sample.process_fds = vec![(
            OwnerKey::default(),
            crate::model::fds::ProcessFds {
                pid: 1,
                open: 950,
                max: Some(1024),
            },
        )];
        sample.tcp_settings = TcpSettings {
            fin_timeout_seconds: Some(60.0),
            keepalive_time_seconds: Some(7200.0),
            keepalive_interval_seconds: Some(75.0),
            keepalive_probes: Some(9.0),
            somaxconn: Some(4096.0),
            ehash_entries: Some(-262144.0),
        };
        let namespace = NamespaceSample {
            info: NamespaceInfo::default(),
            sample,
        };
        let options = LabelOptions {
            pid_label: true,
            namespace_labels: true,
            peers_per_group: 2,
        };
        let mut families = namespace_families(&[namespace], options);
        let own = SelfMetrics {
            events_attached: true,
            transitions: vec![(TcpState::Established, TcpState::CloseWait, 1)],
            ..SelfMetrics::default()
        };
        families.extend(self_families(&own));
        families
    }

    /// The README's metric table is the contract operators read: it names exactly the
    /// families the exporter exports.
    #[test]
    fn the_readme_metric_table_lists_every_exported_family() {
        let readme = include_str!("../../../README.md");
        let table = readme
            .split("\n## Metrics\n")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("README has a ## Metrics section");
        let mut documented: Vec<&str> = table
            .lines()
            .filter(|line| line.starts_with("| `"))
            .filter_map(|line| line.split('|').nth(1))
            .flat_map(|cell| cell.split('`').skip(1).step_by(2))
            .filter(|name| name.starts_with("tcpstate_"))
            .collect();
        documented.sort_unstable();
        let mut exported: Vec<String> = every_family()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        exported.sort_unstable();
        assert_eq!(
            documented, exported,
            "README metric table vs exported families"
        );
        for family in every_family() {
            assert!(
                !family.get_metric().is_empty(),
                "{} has a member",
                family.name()
            );
        }
    }
}
