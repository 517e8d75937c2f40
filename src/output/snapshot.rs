//! `tcpstate-exporter snapshot`: what an operator runs instead of `ss` + `lsof`. A few
//! samples (`--watch`, so that ages and closes are real), printed for a person (a table
//! with a verdict per CLOSE_WAIT group: netns, direction, port, process, the way the
//! metrics group them, with the pids holding the sockets as evidence), for Prometheus
//! tooling (the exposition) or for scripts (JSON).

use std::fmt::Write as _;

use serde::Serialize;

use crate::config::cli::SnapshotFormat;
use crate::kernel::record::TcpState;
use crate::model::diagnosis::{self, human_seconds};
pub use crate::model::evidence::{GroupDiagnosis, Watch, diagnose_groups};
use crate::model::sample::{NamespaceLabels, NamespaceSample, Sample};
use crate::model::top::{PeerEvidence, PidEvidence};
use crate::output::exposition::{self, LabelOptions};
use crate::output::terminal::escape_control;

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
    /// The pids holding the most of the group's CLOSE_WAIT sockets, most first.
    pids: Vec<JsonPid>,
    /// Distinct pids holding them.
    pid_count: u64,
    /// Outbound: the peers (host:port) holding the most of its CLOSE_WAIT sockets.
    peers: Vec<JsonPeer>,
    /// Distinct peers.
    peer_count: u64,
    close_wait: u64,
    oldest_seconds: Option<f64>,
    /// Older than --stuck-after; and of those, EOF read / still in the accept queue.
    stuck: u64,
    stuck_eof_read: u64,
    stuck_unaccepted: u64,
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
    /// The fd cliff of the group's program: open descriptors and soft limit (null when
    /// unlimited) of its process nearest the limit.
    fds: Option<JsonFds>,
    cause: diagnosis::Cause,
    /// A second cause the group shows beside the first (late closes beside a leak).
    also: Option<diagnosis::Cause>,
    verdict: String,
}

#[derive(Serialize)]
struct JsonFds {
    pid: u32,
    open: u64,
    max: Option<u64>,
}

#[derive(Serialize)]
struct JsonPeer {
    peer: String,
    close_wait: u64,
}

#[derive(Serialize)]
struct JsonPid {
    pid: u32,
    close_wait: u64,
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
                    format!("== netns {}\n", escape_control(&ns.info.labels.netns))
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
        pids: d
            .pids
            .map(|p| p.top.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|(pid, close_wait)| JsonPid {
                pid: *pid,
                close_wait: *close_wait,
            })
            .collect(),
        pid_count: d.pids.map_or(0, |p| p.distinct),
        peers: d
            .peers
            .map(|p| p.top.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|(peer, close_wait)| JsonPeer {
                peer: peer.to_string(),
                close_wait: *close_wait,
            })
            .collect(),
        peer_count: d.peers.map_or(0, |p| p.distinct),
        close_wait: e.close_wait,
        oldest_seconds: e.oldest_seconds,
        stuck: e.stuck.sockets,
        stuck_eof_read: e.stuck.eof_read,
        stuck_unaccepted: e.stuck.unaccepted,
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
        fds: d.fds.map(|f| JsonFds {
            pid: f.pid,
            open: f.open,
            max: f.max,
        }),
        cause: d.verdict.cause,
        also: d.verdict.also,
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
            "{:<9} {:>6} {:<16} {:<16} {:>6} {:>7} {:>9} {:>10} {:>6} {:>16}  VERDICT",
            "DIRECTION",
            "PORT",
            "PROCESS",
            "PIDS",
            "CW",
            "OLDEST",
            "UNREAD_B",
            "UNACCEPTED",
            "ESTAB",
            "FDS"
        );
        for d in rows.iter().take(options.top) {
            let e = &d.evidence;
            let verdict = if options.color {
                let colour = match d.verdict.cause {
                    diagnosis::Cause::Undetermined => "33",
                    _ => "31",
                };
                format!(
                    "\x1b[{colour}m{}\x1b[0m",
                    escape_control(&d.verdict.summary)
                )
            } else {
                escape_control(&d.verdict.summary).into_owned()
            };
            let _ = writeln!(
                out,
                "{:<9} {:>6} {:<16} {:<16} {:>6} {:>7} {:>9} {:>10} {:>6} {:>16}  {}",
                d.direction.name(),
                d.port.to_string(),
                if d.process.is_empty() {
                    "-".into()
                } else {
                    escape_control(d.process)
                },
                pid_column(d.pids),
                e.close_wait,
                e.oldest_seconds
                    .map(human_seconds)
                    .unwrap_or_else(|| "-".into()),
                e.unread_bytes,
                e.unaccepted,
                e.established,
                d.fds
                    .map(|f| format!("fds {}", f.figure()))
                    .unwrap_or_else(|| "-".into()),
                verdict
            );
            if let Some(peers) = d.peers.filter(|p| !p.top.is_empty()) {
                let _ = writeln!(out, "{:>9} peers {}", "", peer_line(peers));
            }
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

/// The top peers of an outbound group: "10.0.0.5:3306 x1896, 10.0.0.6:3306 x20, 4 more
/// on 3 other peers".
pub fn peer_line(peers: &PeerEvidence) -> String {
    let mut parts: Vec<String> = peers
        .top
        .iter()
        .map(|(peer, n)| format!("{peer} x{n}"))
        .collect();
    let other_peers = peers.distinct.saturating_sub(peers.top.len() as u64);
    if peers.others > 0 {
        parts.push(format!(
            "{} more on {} other peers",
            peers.others,
            other_peers.max(1)
        ));
    }
    parts.join(", ")
}

/// The pids of a group for the table: "4123", "4123,4124", "4123,4124,+4".
pub fn pid_column(pids: Option<&PidEvidence>) -> String {
    let Some(pids) = pids.filter(|p| !p.top.is_empty()) else {
        return "-".into();
    };
    let shown: Vec<String> = pids
        .top
        .iter()
        .take(2)
        .map(|(pid, _)| pid.to_string())
        .collect();
    let more = pids.distinct.saturating_sub(shown.len() as u64);
    if more > 0 {
        format!("{},+{more}", shown.join(","))
    } else {
        shown.join(",")
    }
}
