//! Configuration: the TOML file and the flags, merged and validated once into `Settings`.
//!
//! Precedence: flag, then file, then built-in default. Every error is one line that names
//! the file, the line and the key (or the flag), so `check-config` output can be acted on.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::Flags;
use crate::record::TcpState;

pub const DEFAULT_PORT: u16 = 9815;
const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
const DEFAULT_MAX_GROUPS: usize = 500;
/// Seconds; 1 s to 1 h, roughly tripling: both "closed a little late" and "closed an hour
/// late" stay distinguishable.
pub const DEFAULT_DURATION_BUCKETS: [f64; 11] = [
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];
/// A tracked CLOSE_WAIT socket costs about 64 bytes (see `ages`): 1M is ~64 MiB at most.
const DEFAULT_MAX_TRACKED_SOCKETS: usize = 1_000_000;

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
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen_address: ListenAddress::AnyHost(DEFAULT_PORT),
            listen_address_text: format!(":{DEFAULT_PORT}"),
            telemetry_path: "/metrics".into(),
            web_config_file: None,
            sample_interval: DEFAULT_INTERVAL,
            log_level: tracing::Level::INFO,
            log_format: LogFormat::Logfmt,
            detail_states: vec![TcpState::CloseWait, TcpState::Established],
            max_groups: DEFAULT_MAX_GROUPS,
            process_attribution: true,
            pid_label: false,
            duration_buckets: DEFAULT_DURATION_BUCKETS.to_vec(),
            max_tracked_sockets: DEFAULT_MAX_TRACKED_SOCKETS,
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

/// The file's schema. Unknown keys are errors: a typo must not silently fall back to a
/// default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    /// "own" or "all".
    namespaces: Option<String>,
    namespaces_include: Option<Vec<String>>,
    namespaces_exclude: Option<Vec<String>>,
    pods_log_dir: Option<PathBuf>,
    containers_log_dir: Option<PathBuf>,
    /// "auto", "on" or "off".
    events: Option<String>,
    events_ring_bytes: Option<u32>,
    #[serde(default)]
    web: WebSection,
    #[serde(default)]
    sample: SampleSection,
    #[serde(default)]
    log: LogSection,
    #[serde(default)]
    process: ProcessSection,
    #[serde(default)]
    close_wait: CloseWaitSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebSection {
    listen_address: Option<String>,
    telemetry_path: Option<String>,
    config_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleSection {
    interval: Option<String>,
    detail_states: Option<Vec<String>>,
    max_groups: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogSection {
    level: Option<String>,
    format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessSection {
    attribution: Option<bool>,
    pid_label: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CloseWaitSection {
    duration_buckets: Option<Vec<f64>>,
    max_tracked_sockets: Option<usize>,
}

/// Reads the file named by `--config.file` (if any) and merges the flags over it.
pub fn load(flags: &Flags) -> Result<Settings, ConfigError> {
    let file = match &flags.config_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
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

fn parse_file(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    let file: FileConfig = toml::from_str(text).map_err(|e| {
        let location = e
            .span()
            .map(|span| {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                let content = text.lines().nth(line - 1).unwrap_or("").trim();
                format!(" line {line} (`{content}`)")
            })
            .unwrap_or_default();
        ConfigError(format!(
            "config file {}:{location}: {}",
            path.display(),
            e.message().trim().replace('\n', " ")
        ))
    })?;
    // Semantic errors below name the key; point at its line too.
    let located = |key: &str, message: String| {
        let line = find_key_line(text, key)
            .map(|n| format!(" line {n}"))
            .unwrap_or_default();
        ConfigError(format!(
            "config file {}:{line}: {key}: {message}",
            path.display()
        ))
    };
    validate_file(&file).map_err(|(key, message)| located(key, message))?;
    Ok(file)
}

/// Line number of `key = ...` (the last dotted part), for messages about a key's value.
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            line.strip_prefix(leaf)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|index| index + 1)
}

/// Checks the file's values on their own, so errors can name key and line.
fn validate_file(file: &FileConfig) -> Result<(), (&'static str, String)> {
    if let Some(v) = &file.events {
        parse_events_mode(v).map_err(|e| ("events", e))?;
    }
    if let Some(v) = file.events_ring_bytes {
        check_ring_bytes(v).map_err(|e| ("events_ring_bytes", e))?;
    }
    if let Some(v) = &file.namespaces {
        parse_namespace_mode(v).map_err(|e| ("namespaces", e))?;
    }
    if let Some(v) = &file.namespaces_include {
        parse_patterns(v).map_err(|e| ("namespaces_include", e))?;
    }
    if let Some(v) = &file.namespaces_exclude {
        parse_patterns(v).map_err(|e| ("namespaces_exclude", e))?;
    }
    if let Some(v) = &file.web.listen_address {
        parse_listen_address(v).map_err(|e| ("web.listen_address", e))?;
    }
    if let Some(v) = &file.web.telemetry_path {
        check_telemetry_path(v).map_err(|e| ("web.telemetry_path", e))?;
    }
    if let Some(v) = &file.sample.interval {
        parse_interval(v).map_err(|e| ("sample.interval", e))?;
    }
    if let Some(v) = &file.sample.detail_states {
        parse_states(v).map_err(|e| ("sample.detail_states", e))?;
    }
    if let Some(v) = file.sample.max_groups {
        check_max_groups(v).map_err(|e| ("sample.max_groups", e))?;
    }
    if let Some(v) = &file.log.level {
        parse_level(v).map_err(|e| ("log.level", e))?;
    }
    if let Some(v) = &file.log.format {
        parse_format(v).map_err(|e| ("log.format", e))?;
    }
    if let Some(v) = &file.close_wait.duration_buckets {
        check_buckets(v).map_err(|e| ("close_wait.duration_buckets", e))?;
    }
    Ok(())
}

fn build(file: FileConfig, flags: &Flags) -> Result<Settings, ConfigError> {
    let defaults = Settings::default();
    let flag_error = |flag: &str, message: String| ConfigError(format!("flag --{flag}: {message}"));
    // File values were validated in `parse_file`; flags are validated here.
    let listen_address = match (&flags.listen_address, &file.web.listen_address) {
        (Some(v), _) => parse_listen_address(v).map_err(|e| flag_error("web.listen-address", e))?,
        (None, Some(v)) => parse_listen_address(v).map_err(ConfigError)?,
        (None, None) => defaults.listen_address,
    };
    let telemetry_path = match (&flags.telemetry_path, file.web.telemetry_path) {
        (Some(v), _) => {
            check_telemetry_path(v).map_err(|e| flag_error("web.telemetry-path", e))?;
            v.clone()
        }
        (None, Some(v)) => v,
        (None, None) => defaults.telemetry_path,
    };
    let sample_interval = match (&flags.sample_interval, &file.sample.interval) {
        (Some(v), _) => parse_interval(v).map_err(|e| flag_error("sample.interval", e))?,
        (None, Some(v)) => parse_interval(v).map_err(ConfigError)?,
        (None, None) => defaults.sample_interval,
    };
    let log_level = match (&flags.log_level, &file.log.level) {
        (Some(v), _) => parse_level(v).map_err(|e| flag_error("log.level", e))?,
        (None, Some(v)) => parse_level(v).map_err(ConfigError)?,
        (None, None) => defaults.log_level,
    };
    let log_format = match (&flags.log_format, &file.log.format) {
        (Some(v), _) => parse_format(v).map_err(|e| flag_error("log.format", e))?,
        (None, Some(v)) => parse_format(v).map_err(ConfigError)?,
        (None, None) => defaults.log_format,
    };
    let detail_states = match &file.sample.detail_states {
        Some(v) => parse_states(v).map_err(ConfigError)?,
        None => defaults.detail_states,
    };
    let namespaces = match &file.namespaces {
        Some(v) => parse_namespace_mode(v).map_err(ConfigError)?,
        None => defaults.namespaces,
    };
    let namespaces_include = match &file.namespaces_include {
        Some(v) => parse_patterns(v).map_err(ConfigError)?,
        None => Vec::new(),
    };
    let namespaces_exclude = match &file.namespaces_exclude {
        Some(v) => parse_patterns(v).map_err(ConfigError)?,
        None => Vec::new(),
    };
    let events = match &file.events {
        Some(v) => parse_events_mode(v).map_err(ConfigError)?,
        None => defaults.events,
    };
    Ok(Settings {
        events,
        events_ring_bytes: file.events_ring_bytes.unwrap_or(defaults.events_ring_bytes),
        namespaces,
        namespaces_include,
        namespaces_exclude,
        pods_log_dir: file.pods_log_dir.unwrap_or(defaults.pods_log_dir),
        containers_log_dir: file
            .containers_log_dir
            .unwrap_or(defaults.containers_log_dir),
        listen_address,
        listen_address_text: flags
            .listen_address
            .clone()
            .or(file.web.listen_address.clone())
            .unwrap_or(defaults.listen_address_text),
        telemetry_path,
        web_config_file: flags
            .web_config_file
            .clone()
            .or(file.web.config_file)
            .filter(|p| !p.as_os_str().is_empty()),
        sample_interval,
        log_level,
        log_format,
        detail_states,
        max_groups: file.sample.max_groups.unwrap_or(defaults.max_groups),
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
    })
}

fn parse_listen_address(text: &str) -> Result<ListenAddress, String> {
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

fn parse_events_mode(text: &str) -> Result<EventsMode, String> {
    match text {
        "auto" => Ok(EventsMode::Auto),
        "on" => Ok(EventsMode::On),
        "off" => Ok(EventsMode::Off),
        _ => Err(format!("invalid value {text:?} (one of: auto, on, off)")),
    }
}

fn check_ring_bytes(bytes: u32) -> Result<(), String> {
    if bytes.is_power_of_two() && bytes >= 4096 {
        Ok(())
    } else {
        Err(format!("{bytes} is not a power of two of at least 4096"))
    }
}

fn parse_namespace_mode(text: &str) -> Result<NamespaceMode, String> {
    match text {
        "own" => Ok(NamespaceMode::Own),
        "all" => Ok(NamespaceMode::All),
        _ => Err(format!("invalid value {text:?} (one of: own, all)")),
    }
}

fn parse_patterns(patterns: &[String]) -> Result<Vec<glob::Pattern>, String> {
    patterns
        .iter()
        .map(|p| glob::Pattern::new(p).map_err(|e| format!("invalid pattern {p:?}: {e}")))
        .collect()
}

fn check_telemetry_path(path: &str) -> Result<(), String> {
    if path.starts_with('/') && path.len() > 1 && !path.contains(char::is_whitespace) {
        Ok(())
    } else {
        Err(format!(
            "invalid telemetry path {path:?}: must start with / and not be / itself"
        ))
    }
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?}: {e} (examples: 15s, 1m, 500ms)"))?;
    if interval < Duration::from_millis(100) {
        return Err(format!("interval {text:?} is below the 100ms minimum"));
    }
    Ok(interval)
}

fn parse_states(names: &[String]) -> Result<Vec<TcpState>, String> {
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

fn check_max_groups(value: usize) -> Result<(), String> {
    if value == 0 {
        Err("must be at least 1".into())
    } else {
        Ok(())
    }
}

fn parse_level(text: &str) -> Result<tracing::Level, String> {
    text.parse().map_err(|_| {
        format!("invalid log level {text:?} (one of: error, warn, info, debug, trace)")
    })
}

fn parse_format(text: &str) -> Result<LogFormat, String> {
    match text {
        "logfmt" => Ok(LogFormat::Logfmt),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!(
            "invalid log format {text:?} (one of: logfmt, json)"
        )),
    }
}

fn check_buckets(buckets: &[f64]) -> Result<(), String> {
    if buckets.is_empty() {
        return Err("needs at least one bucket".into());
    }
    if buckets.iter().any(|b| !b.is_finite() || *b <= 0.0) {
        return Err("bucket bounds must be positive, finite seconds".into());
    }
    if buckets.windows(2).any(|w| w[0] >= w[1]) {
        return Err("bucket bounds must be strictly increasing".into());
    }
    Ok(())
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
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Settings, String> {
        parse(text, Path::new("test.toml")).map_err(|e| e.0)
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let settings = parse_text("").expect("valid");
        assert_eq!(settings.listen_address, ListenAddress::AnyHost(9815));
        assert_eq!(settings.sample_interval, Duration::from_secs(15));
        assert_eq!(
            settings.detail_states,
            vec![TcpState::CloseWait, TcpState::Established]
        );
        assert_eq!(settings.max_groups, 500);
    }

    #[test]
    fn the_shipped_example_is_valid_and_states_the_defaults() {
        let text = include_str!("../config/tcpstate-exporter.toml");
        let settings = parse_text(text).expect("shipped config is valid");
        let defaults = Settings::default();
        assert_eq!(settings.listen_address, defaults.listen_address);
        assert_eq!(settings.telemetry_path, defaults.telemetry_path);
        assert_eq!(settings.sample_interval, defaults.sample_interval);
        assert_eq!(settings.detail_states, defaults.detail_states);
        assert_eq!(settings.max_groups, defaults.max_groups);
        assert_eq!(settings.duration_buckets, defaults.duration_buckets);
        assert_eq!(settings.max_tracked_sockets, defaults.max_tracked_sockets);
        assert_eq!(settings.process_attribution, defaults.process_attribution);
        assert_eq!(settings.pid_label, defaults.pid_label);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let error = parse_text("[sample]\ninterval = \"5s\"\nintervall = \"5s\"\n").unwrap_err();
        assert!(error.contains("line 3"), "{error}");
        assert!(error.contains("intervall"), "{error}");
        assert!(!error.contains('\n'), "one line: {error}");
    }

    #[test]
    fn wrong_type_names_line() {
        let error = parse_text("[sample]\nmax_groups = \"many\"\n").unwrap_err();
        assert!(error.contains("line 2"), "{error}");
        assert!(error.contains("max_groups"), "{error}");
    }

    #[test]
    fn bad_values_name_key_and_line() {
        for (text, key, line) in [
            ("[sample]\ninterval = \"15x\"\n", "sample.interval", 2),
            ("[sample]\ninterval = \"1ms\"\n", "sample.interval", 2),
            (
                "\n[web]\nlisten_address = \"nonsense\"\n",
                "web.listen_address",
                3,
            ),
            (
                "[web]\nlisten_address = \":99999\"\n",
                "web.listen_address",
                2,
            ),
            (
                "[web]\ntelemetry_path = \"metrics\"\n",
                "web.telemetry_path",
                2,
            ),
            (
                "[sample]\ndetail_states = [\"close_wiat\"]\n",
                "sample.detail_states",
                2,
            ),
            (
                "[sample]\ndetail_states = [\"listen\"]\n",
                "sample.detail_states",
                2,
            ),
            ("[sample]\nmax_groups = 0\n", "sample.max_groups", 2),
            ("[log]\nlevel = \"loud\"\n", "log.level", 2),
            ("[log]\nformat = \"xml\"\n", "log.format", 2),
            (
                "[close_wait]\nduration_buckets = [5, 1]\n",
                "close_wait.duration_buckets",
                2,
            ),
        ] {
            let error = parse_text(text).unwrap_err();
            assert!(error.contains(key), "{text}: {error}");
            assert!(error.contains(&format!("line {line}")), "{text}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn namespace_filters() {
        let settings = parse_text(
            "namespaces = \"all\"\nnamespaces_include = [\"test-*\", \"host\"]\nnamespaces_exclude = [\"test-skip*\"]\n",
        )
        .expect("valid");
        assert_eq!(settings.namespaces, NamespaceMode::All);
        assert!(settings.namespace_wanted("test-a"));
        assert!(settings.namespace_wanted("host"));
        assert!(!settings.namespace_wanted("test-skip-1"));
        assert!(!settings.namespace_wanted("ns-4026531840"));
        assert!(Settings::default().namespace_wanted("anything"));
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = parse_file(
            "[sample]\ninterval = \"30s\"\n[web]\nlisten_address = \":1234\"\n",
            Path::new("f.toml"),
        )
        .expect("valid");
        let flags = Flags {
            sample_interval: Some("2s".into()),
            ..Flags::default()
        };
        let settings = build(file, &flags).expect("valid");
        assert_eq!(settings.sample_interval, Duration::from_secs(2));
        assert_eq!(settings.listen_address, ListenAddress::AnyHost(1234));
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let flags = Flags {
            listen_address: Some("localhost".into()),
            ..Flags::default()
        };
        let error = build(FileConfig::default(), &flags).unwrap_err().0;
        assert!(error.starts_with("flag --web.listen-address:"), "{error}");
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen_address("127.0.0.1:9"),
            Ok(ListenAddress::Exact(
                "127.0.0.1:9".parse().expect("literal")
            ))
        );
        assert_eq!(
            parse_listen_address("[::1]:9"),
            Ok(ListenAddress::Exact("[::1]:9".parse().expect("literal")))
        );
        assert!(parse_listen_address("localhost:9").is_ok());
        assert!(parse_listen_address("::1:9").is_err());
        assert!(parse_listen_address("9815").is_err());
    }
}
