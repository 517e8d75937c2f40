//! The per-socket drill-down: which sockets exactly are behind a group, served from the
//! last round's per-socket view (`GET /api/v1/sockets`, JSON) and printed by `snapshot
//! --sockets` (a table, or the same JSON). One query type for both, so a bad parameter
//! gets the same one-line reason on either.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::kernel::record::TcpState;
use crate::model::diagnosis::human_seconds;
use crate::model::labels::Direction;
use crate::model::sample::NamespaceSample;
use crate::model::sockets::{SocketView, oldest_first};
use crate::output::published::Published;
use crate::output::terminal::escape_control;

/// Sockets answered when no `limit` is given.
pub const DEFAULT_LIMIT: usize = 100;
/// The most one answer holds, whatever `limit` asks.
pub const MAX_LIMIT: usize = 1000;

/// Which sockets to answer with; every filter optional.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketQuery {
    pub state: Option<TcpState>,
    /// The group's port: local inbound, remote outbound (as the `port` label).
    pub port: Option<u16>,
    pub process: Option<String>,
    pub netns: Option<String>,
    pub direction: Option<Direction>,
    /// The remote end: an address, or an address and port.
    pub peer: Option<PeerFilter>,
    pub limit: usize,
}

/// A peer to match: every port of an address, or one address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerFilter {
    Address(IpAddr),
    Endpoint(SocketAddr),
}

impl Default for SocketQuery {
    fn default() -> Self {
        SocketQuery {
            state: None,
            port: None,
            process: None,
            netns: None,
            direction: None,
            peer: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

impl SocketQuery {
    /// The query from (name, value) pairs, already percent-decoded; `kept` are the
    /// states the view holds. `Err` is one line saying which parameter is wrong and why.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        kept: &[TcpState],
    ) -> Result<SocketQuery, String> {
        let mut query = SocketQuery::default();
        let mut seen: Vec<&str> = Vec::new();
        for (name, value) in pairs {
            if seen.contains(&name) {
                return Err(format!("parameter {name:?} given twice"));
            }
            seen.push(name);
            match name {
                "state" => query.state = Some(parse_state(value, kept)?),
                "port" => query.port = Some(parse_port(value)?),
                "process" => query.process = Some(value.to_string()),
                "netns" => query.netns = Some(value.to_string()),
                "direction" => query.direction = Some(parse_direction(value)?),
                "peer" => query.peer = Some(parse_peer(value)?),
                "limit" => query.limit = parse_limit(value)?,
                _ => {
                    return Err(format!(
                        "unknown parameter {:?} (known: state, port, process, netns, \
                         direction, peer, limit)",
                        escape_control(name)
                    ));
                }
            }
        }
        Ok(query)
    }

    fn matches(&self, namespace: &NamespaceSample, socket: &SocketView) -> bool {
        self.state.is_none_or(|s| s == socket.state())
            && self.port.is_none_or(|p| p == socket.port)
            && self.direction.is_none_or(|d| d == socket.direction)
            && self.peer.is_none_or(|p| match p {
                PeerFilter::Address(ip) => ip == socket.record.remote_addr,
                PeerFilter::Endpoint(end) => end == socket.peer(),
            })
            && self
                .netns
                .as_ref()
                .is_none_or(|n| *n == namespace.info.labels.netns)
            && self
                .process
                .as_ref()
                .is_none_or(|p| p == namespace.sample.process_name(socket.owner.process))
    }
}

fn parse_state(value: &str, kept: &[TcpState]) -> Result<TcpState, String> {
    let names = || kept.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ");
    match TcpState::parse(value) {
        Some(state) if kept.contains(&state) => Ok(state),
        Some(state) => Err(format!(
            "state {} is not kept per socket (kept: {}; see sample.detail_states)",
            state.name(),
            names()
        )),
        None => Err(format!(
            "state {:?} is not a TCP state (kept per socket: {})",
            escape_control(value),
            names()
        )),
    }
}

fn parse_port(value: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!(
            "port {:?} is not a port number (1 to 65535)",
            escape_control(value)
        )),
    }
}

fn parse_direction(value: &str) -> Result<Direction, String> {
    match value {
        "inbound" => Ok(Direction::Inbound),
        "outbound" => Ok(Direction::Outbound),
        _ => Err(format!(
            "direction {:?} is neither inbound nor outbound",
            escape_control(value)
        )),
    }
}

fn parse_peer(value: &str) -> Result<PeerFilter, String> {
    if let Ok(end) = value.parse::<SocketAddr>() {
        return Ok(PeerFilter::Endpoint(end));
    }
    value
        .parse::<IpAddr>()
        .map(PeerFilter::Address)
        .map_err(|_| {
            format!(
                "peer {:?} is neither an address nor address:port ([v6]:port)",
                escape_control(value)
            )
        })
}

fn parse_limit(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
        Ok(limit) if limit > MAX_LIMIT => {
            Err(format!("limit {limit} is over the cap of {MAX_LIMIT}"))
        }
        _ => Err(format!(
            "limit {:?} is not a number from 1 to {MAX_LIMIT}",
            escape_control(value)
        )),
    }
}

/// The sockets a query selects: the first `limit` in order (CLOSE_WAIT first, oldest
/// first, across namespaces), and how many matched in all.
pub struct Selection<'a> {
    pub rows: Vec<(&'a NamespaceSample, &'a SocketView)>,
    pub matched: usize,
    /// Sockets of the table the per-socket view had no room for (the answer may miss
    /// some of them).
    pub left_out: u64,
}

pub fn select<'a>(samples: &'a [NamespaceSample], query: &SocketQuery) -> Selection<'a> {
    let mut rows: Vec<(&NamespaceSample, &SocketView)> = samples
        .iter()
        .flat_map(|ns| ns.sample.sockets.sockets.iter().map(move |s| (ns, s)))
        .filter(|(ns, s)| query.matches(ns, s))
        .collect();
    let matched = rows.len();
    oldest_first(&mut rows, |(_, s)| s);
    rows.truncate(query.limit);
    Selection {
        rows,
        matched,
        left_out: samples.iter().map(|ns| ns.sample.sockets.left_out).sum(),
    }
}

#[derive(Serialize)]
struct JsonAnswer<'a> {
    /// Unix time of the sample the sockets come from.
    taken_at: f64,
    matched: usize,
    returned: usize,
    limit: usize,
    /// Sockets the bounded view left out this round: the answer may miss some.
    left_out_of_view: u64,
    sockets: Vec<JsonSocket<'a>>,
}

#[derive(Serialize)]
struct JsonSocket<'a> {
    netns: &'a str,
    pod: &'a str,
    namespace: &'a str,
    state: &'static str,
    direction: &'static str,
    port: u16,
    local: String,
    peer: String,
    process: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    container: &'a str,
    pid: Option<u32>,
    fd: Option<u32>,
    inode: u32,
    cookie: u64,
    /// Recv-Q as `ss` shows it, and the unread bytes (without the FIN in CLOSE_WAIT).
    recv_q: u32,
    unread_bytes: u64,
    send_q: u32,
    age_seconds: Option<f64>,
    /// The age is exact (a kernel event dated it); else it is a lower bound.
    age_exact: Option<bool>,
    in_accept_queue: bool,
    keepalive: bool,
}

fn json_socket<'a>(namespace: &'a NamespaceSample, s: &SocketView) -> JsonSocket<'a> {
    let sample = &namespace.sample;
    let labels = &namespace.info.labels;
    JsonSocket {
        netns: &labels.netns,
        pod: &labels.pod,
        namespace: &labels.namespace,
        state: s.state().name(),
        direction: s.direction.name(),
        port: s.port,
        local: s.local().to_string(),
        peer: s.peer().to_string(),
        process: sample.process_name(s.owner.process),
        container: sample.process_name(s.owner.container),
        pid: s.holder.map(|(pid, _)| pid),
        fd: s.holder.map(|(_, fd)| fd),
        inode: s.record.inode,
        cookie: s.record.cookie,
        recv_q: s.record.recv_queue,
        unread_bytes: s.record.unread_bytes(),
        send_q: s.record.send_queue,
        age_seconds: s.age.map(|a| (a.seconds * 1000.0).round() / 1000.0),
        age_exact: s.age.map(|a| a.exact),
        in_accept_queue: s.unaccepted,
        keepalive: s.record.keepalive_armed,
    }
}

/// The answer to `query` as JSON (one line).
pub fn json(published: &Published, query: &SocketQuery) -> String {
    let selection = select(&published.samples, query);
    let answer = JsonAnswer {
        taken_at: published.taken_at,
        matched: selection.matched,
        returned: selection.rows.len(),
        limit: query.limit,
        left_out_of_view: selection.left_out,
        sockets: selection
            .rows
            .iter()
            .map(|(ns, s)| json_socket(ns, s))
            .collect(),
    };
    serde_json::to_string(&answer).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")) + "\n"
}

/// The answer to `query` as a table for a terminal, names escaped.
pub fn table(published: &Published, query: &SocketQuery) -> String {
    let selection = select(&published.samples, query);
    let mut out = String::new();
    let netns = published.namespace_labels;
    if netns {
        out.push_str("NETNS            ");
    }
    let _ = writeln!(
        out,
        "{:<11} {:<22} {:<22} {:<16} {:>7} {:>5} {:>10} {:>6} {:>6} {:>6} {:>7}  QUEUE",
        "STATE",
        "LOCAL",
        "PEER",
        "PROCESS",
        "PID",
        "FD",
        "INODE",
        "RECV-Q",
        "UNREAD",
        "SEND-Q",
        "AGE"
    );
    for (ns, s) in &selection.rows {
        if netns {
            let _ = write!(out, "{:<16} ", escape_control(&ns.info.labels.netns));
        }
        let process = ns.sample.process_name(s.owner.process);
        let dash = || "-".to_string();
        let _ = writeln!(
            out,
            "{:<11} {:<22} {:<22} {:<16} {:>7} {:>5} {:>10} {:>6} {:>6} {:>6} {:>7}  {}",
            s.state().name(),
            s.local().to_string(),
            s.peer().to_string(),
            if process.is_empty() {
                "-".into()
            } else {
                escape_control(process)
            },
            s.holder.map_or_else(dash, |(pid, _)| pid.to_string()),
            s.holder.map_or_else(dash, |(_, fd)| fd.to_string()),
            s.record.inode,
            s.record.recv_queue,
            s.record.unread_bytes(),
            s.record.send_queue,
            s.age.map_or_else(dash, |a| {
                let bound = if a.exact { "" } else { ">" };
                format!("{bound}{}", human_seconds(a.seconds))
            }),
            if s.unaccepted { "accept" } else { "-" }
        );
    }
    let _ = writeln!(
        out,
        "\n{} of {} matching sockets (limit {}); ages with > are lower bounds",
        selection.rows.len(),
        selection.matched,
        query.limit
    );
    if selection.left_out > 0 {
        let _ = writeln!(
            out,
            "{} sockets were left out of the per-socket view (its cap was reached)",
            selection.left_out
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEPT: [TcpState; 2] = [TcpState::Established, TcpState::CloseWait];

    fn parse(pairs: &[(&str, &str)]) -> Result<SocketQuery, String> {
        SocketQuery::from_pairs(pairs.iter().copied(), &KEPT)
    }

    #[test]
    fn parameters_parse_and_bad_ones_say_why_in_one_line() {
        let query = parse(&[
            ("state", "close_wait"),
            ("port", "8080"),
            ("process", "api server"),
            ("limit", "5"),
        ])
        .expect("valid");
        assert_eq!(query.state, Some(TcpState::CloseWait));
        assert_eq!(query.port, Some(8080));
        assert_eq!(query.process.as_deref(), Some("api server"));
        assert_eq!(query.limit, 5);
        assert_eq!(parse(&[]).expect("valid").limit, DEFAULT_LIMIT);
        for (pairs, reason) in [
            (
                &[("port", "0")][..],
                "port \"0\" is not a port number (1 to 65535)",
            ),
            (
                &[("port", "70000")],
                "port \"70000\" is not a port number (1 to 65535)",
            ),
            (
                &[("limit", "0")],
                "limit \"0\" is not a number from 1 to 1000",
            ),
            (&[("limit", "1001")], "limit 1001 is over the cap of 1000"),
            (
                &[("limit", "-1")],
                "limit \"-1\" is not a number from 1 to 1000",
            ),
            (
                &[("state", "listen")],
                "state listen is not kept per socket (kept: established, close_wait; see sample.detail_states)",
            ),
            (
                &[("state", "bogus")],
                "state \"bogus\" is not a TCP state (kept per socket: established, close_wait)",
            ),
            (
                &[("direction", "up")],
                "direction \"up\" is neither inbound nor outbound",
            ),
            (
                &[("peer", "db:3306")],
                "peer \"db:3306\" is neither an address nor address:port ([v6]:port)",
            ),
            (
                &[("pid", "1")],
                "unknown parameter \"pid\" (known: state, port, process, netns, direction, peer, limit)",
            ),
            (
                &[("port", "1"), ("port", "2")],
                "parameter \"port\" given twice",
            ),
            (
                &[("x\n\x1b", "")],
                "unknown parameter \"x\\\\x0a\\\\x1b\" (known: state, port, process, netns, direction, peer, limit)",
            ),
        ] {
            let error = parse(pairs).expect_err("refused");
            assert_eq!(error, reason, "{pairs:?}");
            assert!(!error.contains('\n'));
        }
    }
}
