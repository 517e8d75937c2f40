//! The live page at `/`: the snapshot's table of verdicts, per network namespace (pod),
//! from the daemon's own last round: server-rendered HTML, a little JavaScript to sort
//! the columns, expand a group into its sockets (from `/api/v1/sockets`) and refresh in
//! place. No CDN, no framework: it works offline, weighs tens of KiB, and its inline
//! script and style are allowed by hash in the Content-Security-Policy the server sends.

use std::fmt::Write as _;

use crate::kernel::record::TcpState;
use crate::model::diagnosis::{Cause, human_seconds};
use crate::model::evidence::{GroupDiagnosis, Watch, diagnose_groups};
use crate::model::labels::{Direction, PortLabel};
use crate::model::sample::NamespaceSample;
use crate::output::html::{escape, query_value};
use crate::output::published::Published;
use crate::output::snapshot::{peer_line, pid_column};

/// Where each verdict links to: the runbook's section of its cause.
pub const RUNBOOK_URL: &str =
    "https://github.com/tcpstate-exporter/tcpstate-exporter/blob/main/docs/runbook.md";
/// The page lists at most this many groups (most CLOSE_WAIT first); the rest are
/// counted, and `snapshot --all` or the metrics have them.
pub const MAX_ROWS: usize = 500;
/// The page's script and style, inline (one request) and allowed by their hashes.
pub const SCRIPT: &str = include_str!("page.js");
pub const STYLE: &str = include_str!("page.css");

const COLUMNS: [&str; 12] = [
    "Direction",
    "Port",
    "Process",
    "PIDs",
    "CW",
    "Oldest",
    "Unread B",
    "Unaccepted",
    "Estab",
    "FDs",
    "Peers",
    "Verdict",
];

/// The page of one published round.
pub fn render(published: &Published) -> String {
    let watch = published.baseline.as_ref().map(|b| Watch {
        first: &b.samples,
        seconds: published.taken_at - b.taken_at,
    });
    let diagnoses = diagnose_groups(
        &published.samples,
        watch.as_ref(),
        published.thresholds,
        false,
    );
    let mut out = String::with_capacity(16 * 1024 + diagnoses.len() * 600);
    head(&mut out, published);
    let _ = write!(out, "<main id=\"live\">");
    meta(&mut out, published, watch.as_ref().map(|w| w.seconds));
    let mut shown = 0;
    for namespace in &published.samples {
        let rows: Vec<&GroupDiagnosis> = diagnoses
            .iter()
            .filter(|d| std::ptr::eq(d.labels, &namespace.info.labels))
            .collect();
        let room = MAX_ROWS.saturating_sub(shown);
        section(
            &mut out,
            published,
            namespace,
            &rows[..rows.len().min(room)],
        );
        shown += rows.len().min(room);
    }
    if diagnoses.len() > shown {
        let _ = write!(
            out,
            "<p class=\"note\">{} more groups not shown (the page lists {MAX_ROWS}): \
             <code>tcpstate-exporter snapshot --all</code> or the metrics have them.</p>",
            diagnoses.len() - shown
        );
    }
    let _ = writeln!(out, "</main><script>{SCRIPT}</script></body></html>");
    out
}

fn head(out: &mut String, published: &Published) {
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>tcpstate-exporter: CLOSE_WAIT</title><style>{STYLE}</style></head>\
         <body data-refresh=\"{:.0}\"><header><h1>CLOSE_WAIT, live</h1>\
         <nav><a href=\"{}\">Metrics</a> <a href=\"/api/v1/sockets?state=close_wait\">Sockets \
         (JSON)</a> <a href=\"{RUNBOOK_URL}\">Runbook</a> <span>tcpstate-exporter {}</span>\
         </nav></header>",
        published.interval_seconds.clamp(5.0, 300.0),
        escape(&published.telemetry_path),
        env!("CARGO_PKG_VERSION")
    );
}

fn meta(out: &mut String, published: &Published, window: Option<f64>) {
    let taken = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(published.taken_at);
    let taken = humantime::format_rfc3339_seconds(taken);
    let watched = match window {
        Some(seconds) => format!("closes watched over the last {}", human_seconds(seconds)),
        None => "closes not watched yet (the next sample compares)".into(),
    };
    let _ = write!(
        out,
        "<p class=\"meta\">Sample of <time id=\"taken\" datetime=\"{taken}\">{taken}</time>, \
         every {}; {watched}; stuck after {}. Click a column to sort, <em>sockets</em> to see \
         a group's sockets.</p>",
        human_seconds(published.interval_seconds),
        human_seconds(published.thresholds.stuck_after)
    );
}

fn section(
    out: &mut String,
    published: &Published,
    namespace: &NamespaceSample,
    rows: &[&GroupDiagnosis],
) {
    let labels = &namespace.info.labels;
    let _ = write!(out, "<section class=\"netns\">");
    if published.namespace_labels {
        let _ = write!(out, "<h2>netns {}", escape(&labels.netns));
        if !labels.pod.is_empty() {
            let _ = write!(
                out,
                " <small>pod {}/{}</small>",
                escape(&labels.namespace),
                escape(&labels.pod)
            );
        }
        out.push_str("</h2>");
    }
    let totals: Vec<String> = TcpState::ALL
        .iter()
        .map(|s| format!("{} {}", s.name(), namespace.sample.state_count(*s)))
        .collect();
    let _ = write!(
        out,
        "<p class=\"states\">Sockets per state: {}</p>",
        totals.join(", ")
    );
    if rows.is_empty() {
        out.push_str("<p class=\"none\">No connection in CLOSE_WAIT.</p></section>");
        return;
    }
    out.push_str("<table class=\"groups\"><thead><tr>");
    for name in COLUMNS {
        let _ = write!(out, "<th>{name}</th>");
    }
    out.push_str("<th></th></tr></thead>");
    for d in rows {
        group_row(out, d);
    }
    out.push_str("</table></section>");
}

/// One group: its cells (with `data-v` sort keys for the numeric ones) in a `tbody` of
/// its own, which the script sorts and expands into its sockets.
fn group_row(out: &mut String, d: &GroupDiagnosis) {
    let e = &d.evidence;
    let port = d.port.to_string();
    let process = if d.process.is_empty() { "-" } else { d.process };
    let query = socket_query(d);
    let _ = write!(
        out,
        "<tbody class=\"group cause-{}\" id=\"{}\" data-query=\"{}\"><tr>",
        cause_class(d.verdict.cause),
        group_id(d),
        escape(query.as_deref().unwrap_or(""))
    );
    let port_key = match d.port {
        PortLabel::Port(p) => u32::from(p),
        PortLabel::Other => 65_536,
    };
    let oldest = e.oldest_seconds;
    let fds = d.fds.map(|f| match f.max {
        Some(max) if max > 0 => f.open as f64 / max as f64,
        _ => 0.0,
    });
    let cells: [(String, Option<f64>); 11] = [
        (d.direction.name().into(), None),
        (port, Some(f64::from(port_key))),
        (process.into(), None),
        (pid_column(d.pids), None),
        (e.close_wait.to_string(), Some(e.close_wait as f64)),
        (
            oldest.map_or("-".into(), human_seconds),
            oldest.or(Some(-1.0)),
        ),
        (e.unread_bytes.to_string(), Some(e.unread_bytes as f64)),
        (e.unaccepted.to_string(), Some(e.unaccepted as f64)),
        (e.established.to_string(), Some(e.established as f64)),
        (d.fds.map_or("-".into(), |f| f.figure()), fds.or(Some(-1.0))),
        (d.peers.map_or(String::new(), peer_line), None),
    ];
    for (text, key) in cells {
        match key {
            Some(v) => {
                let v = (v * 1000.0).round() / 1000.0;
                let _ = write!(out, "<td data-v=\"{v}\">{}</td>", escape(&text));
            }
            None => {
                let _ = write!(out, "<td>{}</td>", escape(&text));
            }
        }
    }
    out.push_str("<td class=\"verdict\">");
    verdict(out, d);
    out.push_str("</td><td>");
    if query.is_some() {
        out.push_str("<button class=\"expand\" type=\"button\">sockets</button>");
    }
    out.push_str("</td></tr></tbody>");
}

/// The verdict's text, its cause linked to the runbook section saying what to do.
fn verdict(out: &mut String, d: &GroupDiagnosis) {
    let cause = d.verdict.cause;
    let summary = &d.verdict.summary;
    let rest = summary.strip_prefix(cause.name()).unwrap_or(summary);
    let _ = write!(
        out,
        "<a href=\"{RUNBOOK_URL}#{}\">{}</a>{}",
        runbook_anchor(cause),
        cause.name(),
        escape(rest)
    );
    if let Some(also) = d.verdict.also {
        let _ = write!(
            out,
            " (also <a href=\"{RUNBOOK_URL}#{}\">{}</a>)",
            runbook_anchor(also),
            also.name()
        );
    }
}

/// The runbook's heading of a verdict (`### never closed` -> `never-closed`).
pub fn runbook_anchor(cause: Cause) -> String {
    cause.name().replace(' ', "-")
}

fn cause_class(cause: Cause) -> &'static str {
    match cause {
        Cause::NeverClosed => "never-closed",
        Cause::ClosedLate => "closed-late",
        Cause::AcceptBacklog => "accept-backlog",
        Cause::Undetermined => "undetermined",
    }
}

/// The drill-down query of a group's CLOSE_WAIT sockets; none for a folded group, whose
/// sockets span ports and processes.
fn socket_query(d: &GroupDiagnosis) -> Option<String> {
    let PortLabel::Port(port) = d.port else {
        return None;
    };
    let mut query = format!(
        "state=close_wait&direction={}&port={port}&process={}",
        d.direction.name(),
        query_value(d.process)
    );
    if !d.labels.netns.is_empty() {
        let _ = write!(query, "&netns={}", query_value(&d.labels.netns));
    }
    Some(query)
}

/// An element id stable across refreshes (so an expanded group stays expanded): FNV-1a
/// of the group's labels.
fn group_id(d: &GroupDiagnosis) -> String {
    let key = format!(
        "{}\0{}\0{}\0{}",
        d.labels.netns,
        match d.direction {
            Direction::Inbound => "i",
            Direction::Outbound => "o",
        },
        d.port,
        d.process
    );
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("g-{hash:016x}")
}

#[cfg(test)]
mod tests;
