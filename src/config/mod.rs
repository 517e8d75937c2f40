//! Configuration: the TOML file and the flags, merged and validated once into `Settings`.
//!
//! Precedence: flag, then file, then built-in default. Every error is one line that names
//! the file, the line and the key (or the flag), so `check-config` output can be acted on.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod cli;
mod file;
pub mod input;
pub mod usage;
mod values;
pub mod version;

use crate::kernel::record::TcpState;
use cli::Flags;
use file::{FileConfig, parse_file};
use values::*;

pub const DEFAULT_PORT: u16 = 9815;
const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
const DEFAULT_MAX_GROUPS: usize = 500;
/// Ten minutes between full dumps of a namespace followed by events: what events cannot
/// show (half-open handshakes) is corrected at least that often.
const DEFAULT_RECONCILE_PERIOD: Duration = Duration::from_secs(600);
/// Seconds; 1 s to 1 h, roughly tripling: both "closed a little late" and "closed an hour
/// late" stay distinguishable.
pub const DEFAULT_DURATION_BUCKETS: [f64; 11] = [
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];
/// A tracked CLOSE_WAIT socket costs `ages::BYTES_PER_TRACKED_SOCKET` (65) bytes: 1M is
/// about 62 MiB at most.
const DEFAULT_MAX_TRACKED_SOCKETS: usize = 1_000_000;
/// Stuck, for the daemon's gauges and the EOF alert: a program that reads the EOF and
/// closes within a minute is not leaking, whatever a sample catches in between.
const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(60);

/// A configuration problem, already phrased for the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Logfmt,
    Json,
}

/// Which network namespaces are sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceMode {
    /// The exporter's own namespace only (with hostNetwork: the host's).
    Own,
    /// Every network namespace of the host (containers, pods), discovered each sample.
    All,
}

/// Whether CLOSE_WAIT lifetimes come from kernel events (eBPF) as well as polling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventsMode {
    /// Used when the kernel and privileges allow; otherwise one info line and polling.
    Auto,
    /// Failing to attach is a startup error.
    On,
    Off,
}

/// Where the HTTP server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddress {
    /// `:PORT`: every address, IPv6 and IPv4 (dual-stack `[::]`, falling back to
    /// `0.0.0.0` on hosts without IPv6).
    AnyHost(u16),
    Exact(SocketAddr),
}

/// The validated settings every stage receives.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen_address: ListenAddress,
    /// The listen address as the flag or the file wrote it, for messages.
    pub listen_address_text: String,
    pub telemetry_path: String,
    pub web_config_file: Option<PathBuf>,
    pub sample_interval: Duration,
    /// How long a network namespace that shares the host's TCP hash and is followed
    /// through kernel events (events mode) may go between two full dumps of its sockets
    /// (the reconciliation). Between them its figures come from the kernel's state-change
    /// events plus exact lookups of the sockets that need fresh figures; what events
    /// cannot show (half-open handshakes still in the SYN queue, shown as SYN-RECV by
    /// `ss`) is corrected at the next reconciliation. At most one namespace is reconciled
    /// a round, so with more followed namespaces than rounds in a period the period
    /// stretches to about (followed namespaces x sample interval). Applied on reload.
    pub reconcile_period: Duration,
    pub log_level: tracing::Level,
    pub log_format: LogFormat,
    /// States whose connections are grouped by direction, port and process.
    pub detail_states: Vec<TcpState>,
    pub max_groups: usize,
    /// Resolve the owning process of detail-state sockets.
    pub process_attribution: bool,
    /// Add a `pid` label to per-process series.
    pub pid_label: bool,
    pub duration_buckets: Vec<f64>,
    pub max_tracked_sockets: usize,
    /// Age from which a CLOSE_WAIT socket counts as stuck (or `snapshot --stuck-after`).
    pub stuck_after: Duration,
    /// Series of `tcpstate_close_wait_peer_connections` per outbound CLOSE_WAIT group (the
    /// top peers, and `peer="other"`); 0: the family is off.
    pub peers_per_group: usize,
    /// Count CLOSE_WAIT sockets per pid, `snapshot`'s evidence (not a file key).
    pub close_wait_pids: bool,
    pub namespaces: NamespaceMode,
    /// Glob patterns on the `netns` label; empty include means all.
    pub namespaces_include: Vec<glob::Pattern>,
    pub namespaces_exclude: Vec<glob::Pattern>,
    /// kubelet's pod log directory, where pod names and namespaces are read from.
    pub pods_log_dir: PathBuf,
    /// kubelet's container log links, where container names are read from.
    pub containers_log_dir: PathBuf,
    pub events: EventsMode,
    /// Kernel ring buffer for events, bytes (a power of two, at least a page).
    pub events_ring_bytes: u32,
}

impl Settings {
    /// Whether a namespace with this `netns` label is sampled under "all".
    pub fn namespace_wanted(&self, label: &str) -> bool {
        (self.namespaces_include.is_empty()
            || self.namespaces_include.iter().any(|p| p.matches(label)))
            && !self.namespaces_exclude.iter().any(|p| p.matches(label))
    }

    /// The keys whose change in `new` a reload cannot apply (they take effect only on
    /// restart): the listener, the logger, and the state the sampler thread built at
    /// start. `self` is the running configuration.
    pub fn restart_only_changes(&self, new: &Settings) -> Vec<&'static str> {
        let changed = [
            (
                "web.listen_address",
                self.listen_address != new.listen_address,
            ),
            ("log.level", self.log_level != new.log_level),
            ("log.format", self.log_format != new.log_format),
            (
                "process.attribution",
                self.process_attribution != new.process_attribution,
            ),
            ("process.pid_label", self.pid_label != new.pid_label),
            (
                "close_wait.duration_buckets",
                self.duration_buckets != new.duration_buckets,
            ),
            (
                "close_wait.max_tracked_sockets",
                self.max_tracked_sockets != new.max_tracked_sockets,
            ),
            (
                "close_wait.stuck_after",
                self.stuck_after != new.stuck_after,
            ),
            ("events", self.events != new.events),
            (
                "events_ring_bytes",
                self.events_ring_bytes != new.events_ring_bytes,
            ),
        ];
        changed
            .into_iter()
            .filter_map(|(key, changed)| changed.then_some(key))
            .collect()
    }

    /// These settings with the restart-only keys (see [`Self::restart_only_changes`])
    /// taken from `running`: what a reload really runs, and what the next reload must be
    /// compared with.
    pub fn keeping_restart_only(self, running: &Settings) -> Settings {
        Settings {
            listen_address: running.listen_address.clone(),
            listen_address_text: running.listen_address_text.clone(),
            log_level: running.log_level,
            log_format: running.log_format,
            process_attribution: running.process_attribution,
            pid_label: running.pid_label,
            duration_buckets: running.duration_buckets.clone(),
            max_tracked_sockets: running.max_tracked_sockets,
            stuck_after: running.stuck_after,
            events: running.events,
            events_ring_bytes: running.events_ring_bytes,
            // Not a file key: what the running command asked for.
            close_wait_pids: running.close_wait_pids,
            ..self
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen_address: ListenAddress::AnyHost(DEFAULT_PORT),
            listen_address_text: format!(":{DEFAULT_PORT}"),
            telemetry_path: "/metrics".into(),
            web_config_file: None,
            sample_interval: DEFAULT_INTERVAL,
            reconcile_period: DEFAULT_RECONCILE_PERIOD,
            log_level: tracing::Level::INFO,
            log_format: LogFormat::Logfmt,
            detail_states: vec![TcpState::CloseWait, TcpState::Established],
            max_groups: DEFAULT_MAX_GROUPS,
            process_attribution: true,
            pid_label: false,
            duration_buckets: DEFAULT_DURATION_BUCKETS.to_vec(),
            max_tracked_sockets: DEFAULT_MAX_TRACKED_SOCKETS,
            stuck_after: DEFAULT_STUCK_AFTER,
            peers_per_group: 0,
            close_wait_pids: false,
            namespaces: NamespaceMode::Own,
            namespaces_include: Vec::new(),
            namespaces_exclude: Vec::new(),
            pods_log_dir: PathBuf::from("/var/log/pods"),
            containers_log_dir: PathBuf::from("/var/log/containers"),
            events: EventsMode::Auto,
            events_ring_bytes: 1 << 20,
        }
    }
}

/// Reads the file named by `--config.file` (if any) and merges the flags over it.
pub fn load(flags: &Flags) -> Result<Settings, ConfigError> {
    let file = match &flags.config_file {
        Some(path) => {
            let text = input::read_bounded_text(path).map_err(|e| {
                ConfigError(format!("config file {}: cannot read: {e}", path.display()))
            })?;
            parse_file(&text, path)?
        }
        None => FileConfig::default(),
    };
    build(file, flags)
}

/// Parses and validates configuration text as if read from `path`.
pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
    build(parse_file(text, path)?, &Flags::default())
}

/// Merges flags over the file over the defaults. File values were validated in
/// `parse_file`; flags are validated here, and an error names the flag.
fn build(file: FileConfig, flags: &Flags) -> Result<Settings, ConfigError> {
    let defaults = Settings::default();
    let listen_address = layered(
        ("web.listen-address", &flags.listen_address),
        &file.web.listen_address,
        parse_listen_address,
    )?;
    let telemetry_path = layered(
        ("web.telemetry-path", &flags.telemetry_path),
        &file.web.telemetry_path,
        |v| check_telemetry_path(v).map(|()| v.to_string()),
    )?;
    let sample_interval = layered(
        ("sample.interval", &flags.sample_interval),
        &file.sample.interval,
        parse_interval,
    )?;
    let log_level = layered(
        ("log.level", &flags.log_level),
        &file.log.level,
        parse_level,
    )?;
    let log_format = layered(
        ("log.format", &flags.log_format),
        &file.log.format,
        parse_format,
    )?;
    let listen_address_text = flags
        .listen_address
        .clone()
        .or(file.web.listen_address.clone());
    let web_config_file = flags
        .web_config_file
        .clone()
        .or(file.web.config_file.clone())
        .filter(|p| !p.as_os_str().is_empty());
    let from_file = from_file(file, Settings::default())?;
    Ok(Settings {
        listen_address: listen_address.unwrap_or(defaults.listen_address),
        listen_address_text: listen_address_text.unwrap_or(defaults.listen_address_text),
        telemetry_path: telemetry_path.unwrap_or(defaults.telemetry_path),
        web_config_file,
        sample_interval: sample_interval.unwrap_or(defaults.sample_interval),
        log_level: log_level.unwrap_or(defaults.log_level),
        log_format: log_format.unwrap_or(defaults.log_format),
        ..from_file
    })
}

/// The settings only the file sets (flags are layered over these by `build`).
fn from_file(file: FileConfig, defaults: Settings) -> Result<Settings, ConfigError> {
    Ok(Settings {
        detail_states: match &file.sample.detail_states {
            Some(v) => parse_states(v).map_err(ConfigError)?,
            None => defaults.detail_states,
        },
        max_groups: file.sample.max_groups.unwrap_or(defaults.max_groups),
        reconcile_period: match &file.sample.reconcile_period {
            Some(v) => parse_reconcile_period(v).map_err(ConfigError)?,
            None => defaults.reconcile_period,
        },
        namespaces: match &file.namespaces {
            Some(v) => parse_namespace_mode(v).map_err(ConfigError)?,
            None => defaults.namespaces,
        },
        namespaces_include: parse_patterns(file.namespaces_include.as_deref().unwrap_or_default())
            .map_err(ConfigError)?,
        namespaces_exclude: parse_patterns(file.namespaces_exclude.as_deref().unwrap_or_default())
            .map_err(ConfigError)?,
        pods_log_dir: file.pods_log_dir.unwrap_or(defaults.pods_log_dir),
        containers_log_dir: file
            .containers_log_dir
            .unwrap_or(defaults.containers_log_dir),
        events: match &file.events {
            Some(v) => parse_events_mode(v).map_err(ConfigError)?,
            None => defaults.events,
        },
        events_ring_bytes: file.events_ring_bytes.unwrap_or(defaults.events_ring_bytes),
        process_attribution: file
            .process
            .attribution
            .unwrap_or(defaults.process_attribution),
        pid_label: file.process.pid_label.unwrap_or(defaults.pid_label),
        duration_buckets: file
            .close_wait
            .duration_buckets
            .unwrap_or(defaults.duration_buckets),
        max_tracked_sockets: file
            .close_wait
            .max_tracked_sockets
            .unwrap_or(defaults.max_tracked_sockets),
        stuck_after: match &file.close_wait.stuck_after {
            Some(v) => parse_age(v).map_err(ConfigError)?,
            None => defaults.stuck_after,
        },
        peers_per_group: file
            .close_wait
            .peers_per_group
            .unwrap_or(defaults.peers_per_group),
        ..defaults
    })
}

/// A value set by a flag (which wins, and names itself in an error) or by the file;
/// `None` when neither sets it.
fn layered<T>(
    (flag_name, flag): (&str, &Option<String>),
    file: &Option<String>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, ConfigError> {
    match (flag, file) {
        (Some(v), _) => parse(v)
            .map(Some)
            .map_err(|e| ConfigError(format!("flag --{flag_name}: {e}"))),
        (None, Some(v)) => parse(v).map(Some).map_err(ConfigError),
        (None, None) => Ok(None),
    }
}

impl ListenAddress {
    /// Addresses to try binding, in order.
    pub fn candidates(&self) -> Vec<SocketAddr> {
        match self {
            ListenAddress::AnyHost(port) => vec![
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), *port),
                SocketAddr::new(IpAddr::from([0, 0, 0, 0]), *port),
            ],
            ListenAddress::Exact(address) => vec![*address],
        }
    }
}

#[cfg(test)]
mod tests;
