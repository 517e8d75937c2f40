//! What the daemon writes to stderr, read back by a logfmt parser (the `logfmt` crate,
//! not this project's code): every startup, reload, shutdown and error line has
//! node_exporter's shape, `ts= level= caller= msg=` then the event's fields, values
//! quoted and escaped so that they come back intact. Startup errors are one line with
//! exit code 1 (runtime) or 2 (bad input), and a busy port fails before the eBPF attach.
//! `--log.format json` lines are JSON objects.

mod support;

use std::process::Output;
use std::time::Duration;

use support::{Daemon, Netns, temp_file, wait_until};

const EXPORTER: &str = env!("CARGO_BIN_EXE_tcpstate-exporter");
const WAIT: Duration = Duration::from_secs(30);
const ADDRESS: &str = "127.0.0.1:9815";

/// One log line as the parser reads it: keys in order, each with its value.
fn parse(line: &str) -> Vec<(String, String)> {
    logfmt::parse(line)
        .into_iter()
        .map(|pair| {
            let value = pair
                .val
                .unwrap_or_else(|| panic!("key {:?} without a value in {line:?}", pair.key));
            (pair.key, value)
        })
        .collect()
}

/// Checks node_exporter's shape and returns the pairs. Panics naming the line.
fn logfmt_line(line: &str) -> Vec<(String, String)> {
    let pairs = parse(line);
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        keys.len() >= 4 && keys[..4] == ["ts", "level", "caller", "msg"],
        "keys {keys:?} in {line:?}"
    );
    let ts = &pairs[0].1;
    assert!(
        humantime::parse_rfc3339(ts).is_ok() && ts.ends_with('Z') && ts.len() == 24,
        "ts {ts:?} is RFC 3339 UTC with milliseconds: {line:?}"
    );
    assert!(
        ["error", "warn", "info", "debug", "trace"].contains(&pairs[1].1.as_str()),
        "level {:?}: {line:?}",
        pairs[1].1
    );
    let caller = &pairs[2].1;
    let (file, number) = caller.rsplit_once(':').unwrap_or_default();
    assert!(
        file.ends_with(".rs") && !file.contains('/') && number.parse::<u32>().is_ok(),
        "caller {caller:?} is FILE.rs:LINE: {line:?}"
    );
    assert!(!pairs[3].1.is_empty(), "an empty msg: {line:?}");
    let mut seen = std::collections::HashSet::new();
    for key in &keys {
        assert!(seen.insert(*key), "key {key} twice: {line:?}");
    }
    pairs
}

fn value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Every line of `text` as logfmt; at least one.
fn all_lines(text: &str) -> Vec<Vec<(String, String)>> {
    let lines: Vec<_> = text.lines().map(logfmt_line).collect();
    assert!(!lines.is_empty(), "no log lines");
    lines
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a child this test started; no memory is touched.
    let rc = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

/// Runs the exporter in `ns` to completion (it is expected to fail at startup).
fn run(ns: &Netns, args: &[&str]) -> Output {
    ns.command(EXPORTER)
        .args(args)
        .output()
        .expect("run the exporter")
}

#[test]
fn startup_reload_shutdown_and_error_lines_are_logfmt() {
    let ns = Netns::new("logfmt");
    let config = temp_file(
        "reload.toml",
        "[sample]\ndetail_states = [\"close_wait\"]\n",
    );
    let daemon = Daemon::exporter(
        &ns,
        &["--sample.interval", "1s", "--config.file", config.path()],
    );

    // A refused reload: the error, quotes and all, comes back intact from the parser.
    std::fs::write(&config, "[sample]\ndetail_states = [\"close_wiat\"]\n").expect("write");
    signal(daemon.pid(), libc::SIGHUP);
    assert!(wait_until(WAIT, || daemon
        .output()
        .contains("reload refused")));
    // A good one, with a setting that needs a restart: a warn line.
    std::fs::write(&config, "[process]\npid_label = true\n").expect("write");
    signal(daemon.pid(), libc::SIGHUP);
    assert!(wait_until(WAIT, || daemon
        .output()
        .contains("configuration reloaded")));

    // Startup errors while it holds the port: each is one logfmt line.
    let busy = run(&ns, &["--web.listen-address", ADDRESS]);
    let bad_config = temp_file("bad.toml", "[sample]\ninterval = \"soon\"\n");
    let bad_file = run(&ns, &["--config.file", bad_config.path()]);
    let web_config = temp_file("web.yml", "tls_server_config:\n  cert_file: /nonexistent\n");
    let bad_web = run(
        &ns,
        &[
            "--web.listen-address",
            "127.0.0.1:9817",
            "--web.config.file",
            web_config.path(),
        ],
    );

    signal(daemon.pid(), libc::SIGTERM);
    assert!(wait_until(WAIT, || daemon
        .output()
        .contains("shutting down")));

    let lines = all_lines(&daemon.output());
    let messages: Vec<&str> = lines.iter().filter_map(|l| value(l, "msg")).collect();
    for expected in [
        "starting tcpstate-exporter",
        "serving metrics",
        "configuration reload refused; keeping the running one",
        "configuration reloaded",
        "shutting down",
    ] {
        assert!(
            messages.contains(&expected),
            "no {expected:?} in {messages:?}"
        );
    }
    let starting = lines
        .iter()
        .find(|l| value(l, "msg") == Some("starting tcpstate-exporter"))
        .expect("start line");
    assert_eq!(value(starting, "version"), Some(env!("CARGO_PKG_VERSION")));
    let serving = lines
        .iter()
        .find(|l| value(l, "msg") == Some("serving metrics"))
        .expect("serving line");
    assert_eq!(value(serving, "address"), Some(ADDRESS));
    assert_eq!(value(serving, "tls"), Some("false"));
    let refused = lines
        .iter()
        .find(|l| value(l, "level") == Some("error"))
        .expect("the refused reload is an error line");
    let error = value(refused, "error").expect("an error field");
    assert!(
        error.contains("\"close_wiat\""),
        "quotes survive: {error:?}"
    );
    assert!(lines.iter().any(|l| value(l, "level") == Some("warn")));

    // Busy port: exit 1, and the bind fails before the slow work (the eBPF attach logs
    // its own line, which must not appear): the start line, then the error, nothing else.
    assert_eq!(busy.status.code(), Some(1), "{busy:?}");
    let busy_lines = all_lines(&String::from_utf8_lossy(&busy.stderr));
    assert_eq!(busy_lines.len(), 2, "{busy_lines:?}");
    assert_eq!(value(&busy_lines[1], "level"), Some("error"));
    assert_eq!(
        value(&busy_lines[1], "msg"),
        Some("cannot listen on 127.0.0.1:9815: Address already in use (os error 98)")
    );

    // Bad input: exit 2, one error line naming what is wrong.
    assert_eq!(bad_file.status.code(), Some(2), "{bad_file:?}");
    let bad_file_lines = all_lines(&String::from_utf8_lossy(&bad_file.stderr));
    assert_eq!(bad_file_lines.len(), 1, "{bad_file_lines:?}");
    let message = value(&bad_file_lines[0], "msg").expect("msg");
    assert!(message.contains("sample.interval"), "{message}");
    assert_eq!(bad_web.status.code(), Some(2), "{bad_web:?}");
    let bad_web_lines = all_lines(&String::from_utf8_lossy(&bad_web.stderr));
    let last = bad_web_lines.last().expect("a line");
    assert_eq!(value(last, "level"), Some("error"), "{bad_web_lines:?}");
    assert!(
        bad_web_lines
            .iter()
            .all(|l| value(l, "msg") != Some("serving metrics")),
        "{bad_web_lines:?}"
    );
}

#[test]
fn json_lines_are_json_objects() {
    let ns = Netns::new("logjson");
    let daemon = Daemon::exporter(&ns, &["--log.format", "json", "--sample.interval", "1s"]);
    signal(daemon.pid(), libc::SIGTERM);
    assert!(wait_until(WAIT, || daemon
        .output()
        .contains("shutting down")));
    let output = daemon.output();
    for line in output.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(value["timestamp"].is_string(), "{line}");
        assert!(value["level"].is_string(), "{line}");
        assert!(value["fields"]["message"].is_string(), "{line}");
    }
    // A bad flag value in json mode is a JSON line too.
    let out = run(&ns, &["--log.format", "json", "--sample.interval", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let value: serde_json::Value = serde_json::from_str(stderr.trim()).expect("one JSON line");
    assert_eq!(value["level"], "ERROR");
}

#[test]
fn bad_flags_are_one_line_with_exit_code_2() {
    let out = std::process::Command::new(EXPORTER)
        .arg("--web.listen-adress=:1")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("tcpstate-exporter: unexpected argument"),
        "{stderr}"
    );
}
