//! The TOML file: its schema (unknown keys are errors) and the checks that name a bad
//! value's key and line.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::ConfigError;
use crate::config::values::*;

/// The file's schema. Unknown keys are errors: a typo must not silently fall back to a
/// default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    /// "own" or "all".
    pub(super) namespaces: Option<String>,
    pub(super) namespaces_include: Option<Vec<String>>,
    pub(super) namespaces_exclude: Option<Vec<String>>,
    pub(super) pods_log_dir: Option<PathBuf>,
    pub(super) containers_log_dir: Option<PathBuf>,
    /// "auto", "on" or "off".
    pub(super) events: Option<String>,
    pub(super) events_ring_bytes: Option<u32>,
    #[serde(default)]
    pub(super) web: WebSection,
    #[serde(default)]
    pub(super) sample: SampleSection,
    #[serde(default)]
    pub(super) log: LogSection,
    #[serde(default)]
    pub(super) process: ProcessSection,
    #[serde(default)]
    pub(super) close_wait: CloseWaitSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WebSection {
    pub(super) listen_address: Option<String>,
    pub(super) telemetry_path: Option<String>,
    pub(super) config_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SampleSection {
    pub(super) interval: Option<String>,
    pub(super) reconcile_period: Option<String>,
    pub(super) detail_states: Option<Vec<String>>,
    pub(super) max_groups: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogSection {
    pub(super) level: Option<String>,
    pub(super) format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProcessSection {
    pub(super) attribution: Option<bool>,
    pub(super) pid_label: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CloseWaitSection {
    pub(super) duration_buckets: Option<Vec<f64>>,
    pub(super) max_tracked_sockets: Option<usize>,
    pub(super) stuck_after: Option<String>,
    pub(super) peers_per_group: Option<usize>,
}

pub(super) fn parse_file(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    let file: FileConfig = toml::from_str(text).map_err(|e| {
        let location = e
            .span()
            .map(|span| {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                let content = text.lines().nth(line - 1).unwrap_or("").trim();
                format!(" line {line} (`{}`)", excerpt(content))
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

/// A line quoted in an error: at most 80 characters of it.
fn excerpt(line: &str) -> String {
    match line.char_indices().nth(80) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line.to_string(),
    }
}

/// Line number of the key's assignment: `leaf = ...` in its table, or a dotted
/// `table.leaf = ...` (spaces and quotes around the dots allowed), for messages about a
/// key's value.
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    let wanted: Vec<&str> = key.split('.').collect();
    text.lines()
        .position(|line| {
            let Some((left, _)) = line.split_once('=') else {
                return false;
            };
            let left = left.trim();
            if left.is_empty() || left.starts_with(['[', '#']) {
                return false;
            }
            let parts: Vec<&str> = left
                .split('.')
                .map(|part| part.trim().trim_matches(['"', '\'']))
                .collect();
            wanted.ends_with(&parts)
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
    if let Some(v) = &file.sample.reconcile_period {
        parse_reconcile_period(v).map_err(|e| ("sample.reconcile_period", e))?;
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
    if let Some(v) = file.close_wait.max_tracked_sockets {
        check_max_tracked(v).map_err(|e| ("close_wait.max_tracked_sockets", e))?;
    }
    if let Some(v) = &file.close_wait.duration_buckets {
        check_buckets(v).map_err(|e| ("close_wait.duration_buckets", e))?;
    }
    if let Some(v) = &file.close_wait.stuck_after {
        parse_age(v).map_err(|e| ("close_wait.stuck_after", e))?;
    }
    if let Some(v) = file.close_wait.peers_per_group {
        check_peers_per_group(v).map_err(|e| ("close_wait.peers_per_group", e))?;
    }
    Ok(())
}
