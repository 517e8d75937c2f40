//! One parser per kind of value, shared by the file and the flags: each error says what
//! is wrong with the value, and the caller adds where it came from.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::config::{EventsMode, ListenAddress, LogFormat, NamespaceMode};
use crate::kernel::record::TcpState;

pub(super) fn parse_listen_address(text: &str) -> Result<ListenAddress, String> {
    let invalid = |why: &str| format!("invalid listen address {text:?}: {why}");
    if let Some(port) = text.strip_prefix(':') {
        return port
            .parse()
            .map(ListenAddress::AnyHost)
            .map_err(|_| invalid("port must be a number from 0 to 65535"));
    }
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(ListenAddress::Exact(address));
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| invalid("expected HOST:PORT or :PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| invalid("port must be a number from 0 to 65535"))?;
    if host.is_empty() || host.contains(':') {
        return Err(invalid("expected HOST:PORT, [IPv6]:PORT or :PORT"));
    }
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addresses| addresses.next())
        .map(ListenAddress::Exact)
        .ok_or_else(|| invalid("host does not resolve"))
}

pub(super) fn parse_events_mode(text: &str) -> Result<EventsMode, String> {
    match text {
        "auto" => Ok(EventsMode::Auto),
        "on" => Ok(EventsMode::On),
        "off" => Ok(EventsMode::Off),
        _ => Err(format!("invalid value {text:?} (one of: auto, on, off)")),
    }
}

/// The largest events ring: 64 MiB holds 838,000 events, 64 times the default, which
/// lost none at the most churn a 2-CPU host could make (README, "Events"). The kernel
/// maps a ring twice, so 2 GiB would cost 4 GiB of locked memory.
pub(super) const MAX_RING_BYTES: u32 = 64 << 20;

pub(super) fn check_ring_bytes(bytes: u32) -> Result<(), String> {
    if !bytes.is_power_of_two() || bytes < 4096 {
        Err(format!("{bytes} is not a power of two of at least 4096"))
    } else if bytes > MAX_RING_BYTES {
        Err(format!(
            "{bytes} is above the {} MiB maximum",
            MAX_RING_BYTES >> 20
        ))
    } else {
        Ok(())
    }
}

pub(super) fn parse_namespace_mode(text: &str) -> Result<NamespaceMode, String> {
    match text {
        "own" => Ok(NamespaceMode::Own),
        "all" => Ok(NamespaceMode::All),
        _ => Err(format!("invalid value {text:?} (one of: own, all)")),
    }
}

pub(super) fn parse_patterns(patterns: &[String]) -> Result<Vec<glob::Pattern>, String> {
    patterns
        .iter()
        .map(|p| glob::Pattern::new(p).map_err(|e| format!("invalid pattern {p:?}: {e}")))
        .collect()
}

/// A telemetry path must match a request's path as sent, byte for byte: so only the
/// characters a URI path carries unencoded (RFC 3986 `pchar` and `/`). `/métrics` arrives
/// as `/m%C3%A9trics` and a `?` starts the query: either would answer 404 forever.
pub(super) fn check_telemetry_path(path: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/".contains(c);
    if !path.starts_with('/') || path.len() < 2 {
        return Err(format!(
            "invalid telemetry path {path:?}: must start with / and not be / itself"
        ));
    }
    match path.chars().find(|c| !allowed(*c)) {
        Some(c) => Err(format!(
            "invalid telemetry path {path:?}: {c:?} can never match a request's path (use \
             letters, digits and -._~!$&'()*+,;=:@/)"
        )),
        None => Ok(()),
    }
}

/// The longest sample interval: a day. Longer ones serve nothing useful, and one near
/// `u64::MAX` seconds overflowed the sampler's clock.
pub(super) const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

pub(super) fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?}: {e} (examples: 15s, 1m, 500ms)"))?;
    if interval < Duration::from_millis(100) {
        return Err(format!("interval {text:?} is below the 100ms minimum"));
    }
    if interval > MAX_INTERVAL {
        return Err(format!("interval {text:?} is above the 24h maximum"));
    }
    Ok(interval)
}

/// Bounds of `sample.reconcile_period`: at least a second, at most a day (the same
/// maximum as the interval's).
pub(super) const MIN_RECONCILE_PERIOD: Duration = Duration::from_secs(1);
pub(super) const MAX_RECONCILE_PERIOD: Duration = Duration::from_secs(24 * 3600);

pub(super) fn parse_reconcile_period(text: &str) -> Result<Duration, String> {
    let period = humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?}: {e} (examples: 10m, 1h, 30s)"))?;
    if period < MIN_RECONCILE_PERIOD {
        return Err(format!("reconcile period {text:?} is below the 1s minimum"));
    }
    if period > MAX_RECONCILE_PERIOD {
        return Err(format!(
            "reconcile period {text:?} is above the 24h maximum"
        ));
    }
    Ok(period)
}

pub(super) fn parse_age(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?}: {e} (examples: 10s, 1m, 5m)"))
}

pub(super) fn parse_states(names: &[String]) -> Result<Vec<TcpState>, String> {
    let mut states = Vec::new();
    for name in names {
        let state = TcpState::parse(name).ok_or_else(|| {
            let known: Vec<&str> = TcpState::ALL.iter().map(|s| s.name()).collect();
            format!("unknown state {name:?} (known: {})", known.join(", "))
        })?;
        if state == TcpState::Listen {
            return Err(
                "listen is not a connection state; listeners have their own metrics".into(),
            );
        }
        if !states.contains(&state) {
            states.push(state);
        }
    }
    Ok(states)
}

/// Groups per metric: past 100,000 an exposition is tens of MB, which no Prometheus
/// should be asked to ingest every interval.
pub(super) const MAX_GROUPS: usize = 100_000;

pub(super) fn check_max_groups(value: usize) -> Result<(), String> {
    match value {
        0 => Err("must be at least 1".into()),
        v if v > MAX_GROUPS => Err(format!("{v} is above the maximum of {MAX_GROUPS}")),
        _ => Ok(()),
    }
}

/// Tracked CLOSE_WAIT sockets: 65 bytes each, so 20 million is 1.2 GiB at most.
pub(super) const MAX_TRACKED_SOCKETS: usize = 20_000_000;

pub(super) fn check_max_tracked(value: usize) -> Result<(), String> {
    if value > MAX_TRACKED_SOCKETS {
        Err(format!(
            "{value} is above the maximum of {MAX_TRACKED_SOCKETS}"
        ))
    } else {
        Ok(())
    }
}

/// The most peers per outbound group `tcpstate_close_wait_peer_connections` may carry
/// (each a series, besides `peer="other"`).
pub(super) const MAX_PEERS_PER_GROUP: usize = 10;

pub(super) fn check_peers_per_group(value: usize) -> Result<(), String> {
    if value > MAX_PEERS_PER_GROUP {
        Err(format!(
            "{value} is above the maximum of {MAX_PEERS_PER_GROUP} (0 turns the peer series off)"
        ))
    } else {
        Ok(())
    }
}

pub(super) fn parse_level(text: &str) -> Result<tracing::Level, String> {
    text.parse().map_err(|_| {
        format!("invalid log level {text:?} (one of: error, warn, info, debug, trace)")
    })
}

pub(super) fn parse_format(text: &str) -> Result<LogFormat, String> {
    match text {
        "logfmt" => Ok(LogFormat::Logfmt),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!(
            "invalid log format {text:?} (one of: logfmt, json)"
        )),
    }
}

pub(super) fn check_buckets(buckets: &[f64]) -> Result<(), String> {
    if buckets.is_empty() {
        return Err("needs at least one bucket".into());
    }
    // Each bucket is a series per group: 100 is already far more than a histogram needs.
    if buckets.len() > 100 {
        return Err(format!("{} buckets; at most 100", buckets.len()));
    }
    if buckets.iter().any(|b| !b.is_finite() || *b <= 0.0) {
        return Err("bucket bounds must be positive, finite seconds".into());
    }
    if buckets.windows(2).any(|w| w[0] >= w[1]) {
        return Err("bucket bounds must be strictly increasing".into());
    }
    Ok(())
}
