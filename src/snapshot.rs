//! `tcpstate-exporter snapshot`: one sample, printed for a person (a table), for
//! Prometheus tooling (the exposition) or for scripts (JSON).

use std::fmt::Write as _;

use serde::Serialize;

use crate::aggregate::Sample;
use crate::cli::SnapshotFormat;
use crate::exposition::{self, LabelOptions};
use crate::namespace_set::{NamespaceLabels, NamespaceSample};
use crate::record::TcpState;

#[derive(Serialize)]
struct JsonSnapshot<'a> {
    namespaces: Vec<JsonNamespace<'a>>,
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

/// Renders one round's samples in the requested format.
pub fn render(
    samples: &[NamespaceSample],
    format: SnapshotFormat,
    top: usize,
    options: LabelOptions,
) -> String {
    match format {
        SnapshotFormat::Prometheus => {
            match exposition::encode(exposition::namespace_families(samples, options), None) {
                Ok(encoded) => String::from_utf8_lossy(&encoded.text).into_owned(),
                Err(e) => format!("# encoding failed: {e}\n"),
            }
        }
        SnapshotFormat::Json => {
            let snapshot = JsonSnapshot {
                namespaces: samples
                    .iter()
                    .map(|ns| json_view(&ns.info.labels, &ns.sample, options))
                    .collect(),
            };
            serde_json::to_string_pretty(&snapshot)
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
                + "\n"
        }
        SnapshotFormat::Table => samples
            .iter()
            .map(|ns| {
                let heading = if options.namespace_labels {
                    format!("== netns {}\n", ns.info.labels.netns)
                } else {
                    String::new()
                };
                heading + &table(&ns.sample, top)
            })
            .collect::<Vec<_>>()
            .join("\n"),
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

fn table(sample: &Sample, top: usize) -> String {
    let mut out = String::new();
    let close_wait: Vec<_> = sample
        .groups
        .iter()
        .filter(|(key, _)| key.state == TcpState::CloseWait)
        .collect();
    if close_wait.is_empty() {
        out.push_str("No connection in CLOSE_WAIT.\n");
    } else {
        let _ = writeln!(
            out,
            "{:<9} {:>6} {:<16} {:>8} {:>12} {:>8}",
            "DIRECTION", "PORT", "PROCESS", "COUNT", "UNREAD_BYTES", "UNREAD"
        );
        for (key, stats) in close_wait.iter().take(top) {
            let process = sample.process_name(key.owner.process);
            let _ = writeln!(
                out,
                "{:<9} {:>6} {:<16} {:>8} {:>12} {:>8}",
                key.direction.name(),
                key.port.to_string(),
                if process.is_empty() { "-" } else { process },
                stats.connections,
                stats.recv_queue_bytes,
                stats.unread_connections
            );
        }
        if close_wait.len() > top {
            let _ = writeln!(out, "... {} more groups", close_wait.len() - top);
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
