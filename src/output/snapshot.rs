//! `tcpstate-exporter snapshot`: what an operator runs instead of `ss` + `lsof`. One
//! sample (or a few, with `--watch`, so that ages and closes are real), printed for a
//! person (a table with a verdict per CLOSE_WAIT group), for Prometheus tooling (the
//! exposition) or for scripts (JSON).

use std::fmt::Write as _;

use serde::Serialize;

use crate::config::cli::SnapshotFormat;
use crate::kernel::record::TcpState;
use crate::model::ages::DurationHistogram;
use crate::model::aggregate::GroupStats;
use crate::model::diagnosis::{self, Closes, Evidence, Thresholds, Verdict, human_seconds};
use crate::model::labels::{AgeGroup, Direction, PortLabel};
use crate::model::sample::{NamespaceLabels, NamespaceSample, Sample};
use crate::output::exposition::{self, LabelOptions};

#[derive(Serialize)]
struct JsonSnapshot<'a> {
    namespaces: Vec<JsonNamespace<'a>>,
    diagnosis: Vec<JsonDiagnosis<'a>>,
}

#[derive(Serialize)]
struct JsonDiagnosis<'a> {
    netns: &'a str,
    pod: &'a str,
    namespace: &'a str,
    direction: &'static str,
    port: String,
    process: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    close_wait: u64,
    oldest_seconds: Option<f64>,
    unread_bytes: u64,
    unread_connections: u64,
    eof_read: u64,
    unaccepted: u64,
    keepalive: u64,
    established: u64,
    listen_queue_length: Option<u64>,
    listen_queue_max: Option<u64>,
    closes_seen: Option<u64>,
    mean_close_seconds: Option<f64>,
    watched_seconds: Option<f64>,
    cause: diagnosis::Cause,
    verdict: String,
}

/// The diagnosis of one CLOSE_WAIT group.
pub struct GroupDiagnosis<'a> {
    pub labels: &'a NamespaceLabels,
    pub direction: Direction,
    pub port: PortLabel,
    pub process: &'a str,
    pub pid: Option<u32>,
    pub evidence: Evidence,
    pub verdict: Verdict,
}

/// A watch: the first and the last round, and the time between them.
pub struct Watch<'a> {
    pub first: &'a [NamespaceSample],
    pub seconds: f64,
}

/// Evidence and verdict for every CLOSE_WAIT group of `last` (and for groups whose
/// sockets all closed during the watch), most CLOSE_WAIT first.
pub fn diagnose_groups<'a>(
    last: &'a [NamespaceSample],
    watch: Option<&Watch<'_>>,
    thresholds: Thresholds,
    pid_label: bool,
) -> Vec<GroupDiagnosis<'a>> {
    let mut out = Vec::new();
    for namespace in last {
        let sample = &namespace.sample;
        let before = watch.and_then(|w| {
            w.first
                .iter()
                .find(|ns| ns.info.inode == namespace.info.inode)
                .map(|ns| &ns.sample)
        });
        let mut groups: Vec<AgeGroup> = sample
            .groups
            .iter()
            .filter(|(key, _)| key.state == TcpState::CloseWait)
            .map(|(key, _)| AgeGroup {
                direction: key.direction,
                port: key.port,
                owner: key.owner,
            })
            .collect();
        if let Some(before) = before {
            for (group, histogram) in &sample.ages.durations {
                let earlier = histogram_of(before, group).map_or(0, |h| h.count);
                if histogram.count > earlier && !groups.contains(group) {
                    groups.push(*group);
                }
            }
        }
        for group in groups {
            let evidence = evidence_of(sample, before, watch.map(|w| w.seconds), &group);
            out.push(GroupDiagnosis {
                labels: &namespace.info.labels,
                direction: group.direction,
                port: group.port,
                process: sample.process_name(group.owner.process),
                pid: pid_label.then_some(group.owner.pid).filter(|pid| *pid != 0),
                verdict: diagnosis::diagnose(&evidence, thresholds),
                evidence,
            });
        }
    }
    out.sort_by_key(|d| std::cmp::Reverse(d.evidence.close_wait));
    out
}

fn histogram_of<'s>(sample: &'s Sample, group: &AgeGroup) -> Option<&'s DurationHistogram> {
    sample
        .ages
        .durations
        .iter()
        .find(|(g, _)| g == group)
        .map(|(_, h)| h)
}

fn evidence_of(
    sample: &Sample,
    before: Option<&Sample>,
    window: Option<f64>,
    group: &AgeGroup,
) -> Evidence {
    let mut close_wait = GroupStats::default();
    let mut established = 0;
    for (key, stats) in &sample.groups {
        let same_group =
            key.direction == group.direction && key.port == group.port && key.owner == group.owner;
        match key.state {
            TcpState::CloseWait if same_group => close_wait.merge(stats),
            TcpState::Established if same_group => established += stats.connections,
            _ => {}
        }
    }
    let mut evidence = Evidence {
        close_wait: close_wait.connections,
        unread_bytes: close_wait.recv_queue_bytes,
        unread_connections: close_wait.unread_connections,
        eof_read: close_wait.eof_read,
        unaccepted: close_wait.unaccepted,
        keepalive: close_wait.keepalive,
        established,
        ..Evidence::default()
    };
    evidence.oldest_seconds = sample
        .ages
        .oldest
        .iter()
        .find(|(g, _)| g == group)
        .map(|(_, age)| *age);
    if group.direction == Direction::Inbound {
        // The group's own listeners (SO_REUSEPORT: each program has its own queue); all
        // the port's when none is the group's (its owner could not be told).
        let port: Vec<_> = sample
            .listeners
            .iter()
            .filter(|(key, _)| key.port == group.port)
            .collect();
        let own: Vec<_> = port
            .iter()
            .filter(|(key, _)| key.owner == group.owner)
            .collect();
        let chosen = if own.is_empty() {
            port.iter().collect()
        } else {
            own
        };
        let queues: Vec<(u64, u64)> = chosen
            .iter()
            .map(|(_, s)| (s.queue_length, s.queue_max))
            .collect();
        if !queues.is_empty() {
            evidence.listen_queue = Some(queues.iter().fold((0, 0), |a, q| (a.0 + q.0, a.1 + q.1)));
        }
    }
    if let (Some(before), Some(window)) = (before, window) {
        let now = histogram_of(sample, group);
        let then = histogram_of(before, group);
        let count = now.map_or(0, |h| h.count)
            - then.map_or(0, |h| h.count).min(now.map_or(0, |h| h.count));
        let seconds_total = (now.map_or(0.0, |h| h.sum) - then.map_or(0.0, |h| h.sum)).max(0.0);
        let overflows = match (sample.listen_counters, before.listen_counters) {
            (Some(now), Some(then)) => now.overflows.saturating_sub(then.overflows),
            _ => 0,
        };
        evidence.closes = Some(Closes {
            count,
            seconds_total,
            window_seconds: window,
            listen_overflows: overflows,
        });
    }
    evidence
}

#[derive(Serialize)]
struct JsonNamespace<'a> {
    /// The `netns` label ("" in "own" mode).
    netns: &'a str,
    pod: &'a str,
    namespace: &'a str,
    states: Vec<JsonState>,
    groups: Vec<JsonGroup<'a>>,
    listeners: Vec<JsonListener<'a>>,
    groups_folded: u64,
}

#[derive(Serialize)]
struct JsonState {
    state: &'static str,
    sockets: u64,
}

#[derive(Serialize)]
struct JsonGroup<'a> {
    state: &'static str,
    direction: &'static str,
    port: String,
    process: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    connections: u64,
    unread_bytes: u64,
    send_queue_bytes: u64,
    unread_connections: u64,
    eof_read: u64,
    unaccepted: u64,
    keepalive: u64,
}

#[derive(Serialize)]
struct JsonListener<'a> {
    port: String,
    process: &'a str,
    queue_length: u64,
    queue_max: u64,
    listeners: u64,
}

/// How to print.
#[derive(Clone, Copy, Debug)]
pub struct RenderOptions {
    pub format: SnapshotFormat,
    pub top: usize,
    pub labels: LabelOptions,
    /// ANSI colours (a terminal, not a pipe).
    pub color: bool,
}

/// Renders the last round's samples and their diagnoses in the requested format.
pub fn render(
    samples: &[NamespaceSample],
    diagnoses: &[GroupDiagnosis],
    options: RenderOptions,
) -> String {
    match options.format {
        SnapshotFormat::Prometheus => {
            match exposition::encode(
                exposition::namespace_families(samples, options.labels),
                None,
            ) {
                Ok(encoded) => String::from_utf8_lossy(&encoded.text).into_owned(),
                Err(e) => format!("# encoding failed: {e}\n"),
            }
        }
        SnapshotFormat::Json => {
            let snapshot = JsonSnapshot {
                namespaces: samples
                    .iter()
                    .map(|ns| json_view(&ns.info.labels, &ns.sample, options.labels))
                    .collect(),
                diagnosis: diagnoses.iter().map(json_diagnosis).collect(),
            };
            serde_json::to_string_pretty(&snapshot)
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
                + "\n"
        }
        SnapshotFormat::Table => samples
            .iter()
            .map(|ns| {
                let heading = if options.labels.namespace_labels {
                    format!("== netns {}\n", ns.info.labels.netns)
                } else {
                    String::new()
                };
                let rows: Vec<&GroupDiagnosis> = diagnoses
                    .iter()
                    .filter(|d| std::ptr::eq(d.labels, &ns.info.labels))
                    .collect();
                heading + &table(&ns.sample, &rows, options)
            })
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

fn json_diagnosis<'a>(d: &'a GroupDiagnosis<'a>) -> JsonDiagnosis<'a> {
    let e = &d.evidence;
    JsonDiagnosis {
        netns: &d.labels.netns,
        pod: &d.labels.pod,
        namespace: &d.labels.namespace,
        direction: d.direction.name(),
        port: d.port.to_string(),
        process: d.process,
        pid: d.pid,
        close_wait: e.close_wait,
        oldest_seconds: e.oldest_seconds,
        unread_bytes: e.unread_bytes,
        unread_connections: e.unread_connections,
        eof_read: e.eof_read,
        unaccepted: e.unaccepted,
        keepalive: e.keepalive,
        established: e.established,
        listen_queue_length: e.listen_queue.map(|q| q.0),
        listen_queue_max: e.listen_queue.map(|q| q.1),
        closes_seen: e.closes.map(|c| c.count),
        mean_close_seconds: e
            .closes
            .filter(|c| c.count > 0)
            .map(|c| c.seconds_total / c.count as f64),
        watched_seconds: e.closes.map(|c| c.window_seconds),
        cause: d.verdict.cause,
        verdict: d.verdict.summary.clone(),
    }
}

fn json_view<'a>(
    labels: &'a NamespaceLabels,
    sample: &'a Sample,
    options: LabelOptions,
) -> JsonNamespace<'a> {
    JsonNamespace {
        netns: &labels.netns,
        pod: &labels.pod,
        namespace: &labels.namespace,
        states: TcpState::ALL
            .iter()
            .map(|s| JsonState {
                state: s.name(),
                sockets: sample.state_count(*s),
            })
            .collect(),
        groups: sample
            .groups
            .iter()
            .map(|(key, stats)| JsonGroup {
                state: key.state.name(),
                direction: key.direction.name(),
                port: key.port.to_string(),
                process: sample.process_name(key.owner.process),
                pid: options.pid_label.then_some(key.owner.pid),
                connections: stats.connections,
                unread_bytes: stats.recv_queue_bytes,
                send_queue_bytes: stats.send_queue_bytes,
                unread_connections: stats.unread_connections,
                eof_read: stats.eof_read,
                unaccepted: stats.unaccepted,
                keepalive: stats.keepalive,
            })
            .collect(),
        listeners: sample
            .listeners
            .iter()
            .map(|(key, stats)| JsonListener {
                port: key.port.to_string(),
                process: sample.process_name(key.owner.process),
                queue_length: stats.queue_length,
                queue_max: stats.queue_max,
                listeners: stats.listeners,
            })
            .collect(),
        groups_folded: sample.groups_folded,
    }
}

fn table(sample: &Sample, rows: &[&GroupDiagnosis], options: RenderOptions) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("No connection in CLOSE_WAIT.\n");
    } else {
        let _ = writeln!(
            out,
            "{:<9} {:>6} {:<16} {:>8} {:>6} {:>7} {:>9} {:>10} {:>6}  VERDICT",
            "DIRECTION",
            "PORT",
            "PROCESS",
            "PID",
            "CW",
            "OLDEST",
            "UNREAD_B",
            "UNACCEPTED",
            "ESTAB"
        );
        for d in rows.iter().take(options.top) {
            let e = &d.evidence;
            let verdict = if options.color {
                let colour = match d.verdict.cause {
                    diagnosis::Cause::Undetermined => "33",
                    _ => "31",
                };
                format!("\x1b[{colour}m{}\x1b[0m", d.verdict.summary)
            } else {
                d.verdict.summary.clone()
            };
            let _ = writeln!(
                out,
                "{:<9} {:>6} {:<16} {:>8} {:>6} {:>7} {:>9} {:>10} {:>6}  {}",
                d.direction.name(),
                d.port.to_string(),
                if d.process.is_empty() { "-" } else { d.process },
                d.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                e.close_wait,
                e.oldest_seconds
                    .map(human_seconds)
                    .unwrap_or_else(|| "-".into()),
                e.unread_bytes,
                e.unaccepted,
                e.established,
                verdict
            );
        }
        if rows.len() > options.top {
            let _ = writeln!(out, "... {} more groups", rows.len() - options.top);
        }
    }
    out.push('\n');
    let totals: Vec<String> = TcpState::ALL
        .iter()
        .map(|s| format!("{} {}", s.name(), sample.state_count(*s)))
        .collect();
    let _ = writeln!(out, "Sockets per state: {}", totals.join(", "));
    out
}
