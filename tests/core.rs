//! The exporter end to end against the real kernel: sockets built by scenario actors in a
//! private network namespace, read through sock_diag by the running daemon, and checked
//! over HTTP with exact values. `ss` (iproute2) confirms each scenario first, so a wrong
//! value points at the exporter, not at the scenario.

mod support;

use std::time::Duration;

use support::{Actor, Daemon, Exposition, Netns, count_state, temp_config, wait_until};

const EXPORTER: &str = env!("CARGO_BIN_EXE_tcpstate-exporter");
/// Generous: a loaded CI machine can be slow to deliver a delayed ACK or run `ss`.
const SETTLE: Duration = Duration::from_secs(30);

/// Starts the daemon with a long interval: the served sample is the one taken at start,
/// before its own listener and the test's scrapes existed, so every count is exact.
fn start_daemon<'ns>(ns: &'ns Netns, extra: &[&str]) -> Daemon<'ns> {
    let mut args = vec!["--sample.interval", "1h"];
    args.extend_from_slice(extra);
    Daemon::exporter(ns, &args)
}

/// Waits until `ss` shows exactly these state counts.
fn settle(ns: &Netns, expected: &[(&str, usize)]) {
    let settled = wait_until(SETTLE, || {
        expected
            .iter()
            .all(|(state, count)| count_state(ns, state) == *count)
    });
    let seen: Vec<(String, usize)> = expected
        .iter()
        .map(|(s, _)| (s.to_string(), count_state(ns, s)))
        .collect();
    assert!(
        settled,
        "scenario did not settle: want {expected:?}, ss shows {seen:?}"
    );
}

#[test]
fn every_metric_is_exact_for_the_issue_scenarios() {
    let ns = Netns::new("core");
    let mut web = Actor::spawn(&ns, "web");
    let mut client = Actor::spawn(&ns, "client");
    let mut backend = Actor::spawn(&ns, "backend");
    let mut crawler = Actor::spawn(&ns, "crawler");

    web.listen("a", "127.0.0.1:8080", 16);
    web.listen("b", "[::1]:8081", 4);
    web.listen("f", "127.0.0.1:8090", 1);

    // Inbound CLOSE_WAIT, IPv4: 3 with 5 unread bytes each, 2 with none, 1 whose EOF
    // the program has read (Recv-Q 0).
    client.cmd("connect c1 127.0.0.1:8080 3 send=5");
    web.cmd("accept s1 a 3");
    client.cmd("connect c2 127.0.0.1:8080 2");
    web.cmd("accept s2 a 2");
    client.cmd("connect c3 127.0.0.1:8080 1");
    web.cmd("accept s3 a 1");
    // Inbound CLOSE_WAIT, IPv6, 7 unread bytes.
    client.cmd("connect c4 [::1]:8081 1 send=7");
    web.cmd("accept s4 b 1");
    // CLOSE_WAIT still in the accept queue of 8080, 3 unread bytes.
    client.cmd("connect c5 127.0.0.1:8080 1 send=3");
    for group in ["c1", "c2", "c3", "c4", "c5"] {
        client.cmd(&format!("close {group}"));
    }
    // Established idle connections, accepted.
    client.cmd("connect c8 127.0.0.1:8080 2");
    web.cmd("accept s8 a 2");
    // A full backlog: limit 1 admits 2 into the queue; a third stays in SYN_SENT.
    client.cmd("connect c6 127.0.0.1:8090 2");
    client.cmd("connect c7 127.0.0.1:8090 1 nowait");
    // Outbound CLOSE_WAIT toward a server that closed (and then stopped listening).
    backend.listen("d", "127.0.0.1:9000", 8);
    crawler.cmd("connect o1 127.0.0.1:9000 2");
    backend.cmd("accept d1 d 2");
    backend.cmd("close d1");
    backend.cmd("close d");

    let settled = wait_until(SETTLE, || {
        web.cmd("read s3");
        count_state(&ns, "CLOSE-WAIT") == 10
            && ns
                .sockets()
                .iter()
                .any(|s| s.state == "CLOSE-WAIT" && s.local_port == 8080 && s.recv_q == 0)
    });
    assert!(settled, "the EOF of s3 was not read: {:?}", ns.sockets());
    settle(
        &ns,
        &[
            ("ESTAB", 8),
            ("SYN-SENT", 1),
            ("CLOSE-WAIT", 10),
            ("FIN-WAIT-2", 10),
            ("LISTEN", 3),
        ],
    );

    let daemon = start_daemon(&ns, &[]);
    let (status, _, body) = daemon.scrape("/metrics");
    assert_eq!(status, 200);
    let m = Exposition::parse(&body);

    for (state, count) in [
        ("established", 8.0),
        ("syn_sent", 1.0),
        ("syn_recv", 0.0),
        ("fin_wait1", 0.0),
        ("fin_wait2", 10.0),
        ("time_wait", 0.0),
        ("close", 0.0),
        ("close_wait", 10.0),
        ("last_ack", 0.0),
        ("listen", 3.0),
        ("closing", 0.0),
    ] {
        assert_eq!(
            m.get("tcpstate_sockets", &[("state", state)]),
            count,
            "{state}"
        );
    }

    let group = |state, direction, port, process| {
        [
            ("state", state),
            ("direction", direction),
            ("port", port),
            ("process", process),
        ]
    };
    // (labels, connections, unread bytes, send queue, unread connections)
    let expected = [
        (
            group("close_wait", "inbound", "8080", "web"),
            7.0,
            18.0,
            0.0,
            4.0,
        ),
        (
            group("close_wait", "inbound", "8081", "web"),
            1.0,
            7.0,
            0.0,
            1.0,
        ),
        (
            group("close_wait", "outbound", "9000", "crawler"),
            2.0,
            0.0,
            0.0,
            0.0,
        ),
        (
            group("established", "inbound", "8080", "web"),
            2.0,
            0.0,
            0.0,
            0.0,
        ),
        (
            group("established", "outbound", "8080", "client"),
            2.0,
            0.0,
            0.0,
            0.0,
        ),
        (
            group("established", "inbound", "8090", "web"),
            2.0,
            0.0,
            0.0,
            0.0,
        ),
        (
            group("established", "outbound", "8090", "client"),
            2.0,
            0.0,
            0.0,
            0.0,
        ),
    ];
    for (labels, connections, unread, send, unread_connections) in expected {
        assert_eq!(
            m.get("tcpstate_connections", &labels),
            connections,
            "{labels:?}"
        );
        assert_eq!(
            m.get("tcpstate_recv_queue_bytes", &labels),
            unread,
            "{labels:?}"
        );
        assert_eq!(
            m.get("tcpstate_send_queue_bytes", &labels),
            send,
            "{labels:?}"
        );
        assert_eq!(
            m.get("tcpstate_unread_connections", &labels),
            unread_connections,
            "{labels:?}"
        );
    }
    assert_eq!(
        m.series("tcpstate_connections").len(),
        expected.len(),
        "no other group: {:?}",
        m.series("tcpstate_connections")
    );
    for (labels, _) in m.series("tcpstate_connections") {
        let port = labels
            .iter()
            .find(|(n, _)| n == "port")
            .expect("port label");
        let port: u16 = port.1.parse().expect("numeric port");
        assert!(port < 32768, "an ephemeral port became a label: {port}");
    }

    for (port, length, max) in [("8080", 1.0, 16.0), ("8081", 0.0, 4.0), ("8090", 2.0, 1.0)] {
        let labels = [("port", port), ("process", "web")];
        assert_eq!(
            m.get("tcpstate_listen_queue_length", &labels),
            length,
            "{port}"
        );
        assert_eq!(m.get("tcpstate_listen_queue_max", &labels), max, "{port}");
    }
    assert_eq!(m.series("tcpstate_listen_queue_length").len(), 3);
    assert_eq!(m.get("tcpstate_groups_folded", &[]), 0.0);

    // Self metrics.
    assert_eq!(m.get("tcpstate_samples_total", &[]), 1.0);
    for reason in [
        "netlink_io",
        "netlink_refused",
        "decode",
        "dump_interrupted",
        "enobufs",
        "bpf_iterator",
    ] {
        assert_eq!(
            m.get("tcpstate_sample_errors_total", &[("reason", reason)]),
            0.0
        );
    }
    assert!(m.get("tcpstate_last_sample_timestamp_seconds", &[]) > 1.7e9);
    assert!(m.get("tcpstate_sample_duration_seconds", &[]) > 0.0);
    assert_eq!(
        m.get(
            "tcpstate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(m.get("process_resident_memory_bytes", &[]) > 0.0);
    assert_eq!(m.kind("tcpstate_sample_errors_total"), Some("counter"));
    assert!(
        m.help("tcpstate_sockets")
            .is_some_and(|h| h.contains("timer")),
        "HELP says sampling is on a timer"
    );
    assert!(
        !body
            .lines()
            .any(|l| !l.starts_with('#') && l.split(' ').count() > 2),
        "no timestamps on samples"
    );
}

#[test]
fn max_groups_bounds_the_series_folding_the_smallest_into_other() {
    let ns = Netns::new("fold");
    let mut crawler = Actor::spawn(&ns, "crawler");
    let mut servers = Actor::spawn(&ns, "servers");
    // Outbound CLOSE_WAIT toward 4 service ports: 4, 3, 2, 1 connections.
    for (i, (port, count)) in [(7001, 4), (7002, 3), (7003, 2), (7004, 1)]
        .iter()
        .enumerate()
    {
        servers.listen(&format!("l{i}"), &format!("127.0.0.1:{port}"), 8);
        crawler.cmd(&format!("connect o{i} 127.0.0.1:{port} {count}"));
        servers.cmd(&format!("accept a{i} l{i} {count}"));
        servers.cmd(&format!("close a{i}"));
        servers.cmd(&format!("close l{i}"));
    }
    settle(&ns, &[("CLOSE-WAIT", 10), ("LISTEN", 0)]);
    let config = temp_config("[sample]\nmax_groups = 2\ndetail_states = [\"close_wait\"]\n");
    let daemon = start_daemon(&ns, &["--config.file", config.path()]);
    let m = Exposition::parse(&daemon.scrape("/metrics").2);
    let group = |port, process| {
        [
            ("state", "close_wait"),
            ("direction", "outbound"),
            ("port", port),
            ("process", process),
        ]
    };
    // Two series at most: the largest group, and the fold bucket for the rest.
    assert_eq!(
        m.get("tcpstate_connections", &group("7001", "crawler")),
        4.0
    );
    assert_eq!(m.get("tcpstate_connections", &group("other", "other")), 6.0);
    assert_eq!(m.series("tcpstate_connections").len(), 2);
    assert_eq!(m.get("tcpstate_groups_folded", &[]), 3.0);
}

#[test]
fn http_serves_gzip_landing_404_and_405() {
    let ns = Netns::new("http");
    let daemon = start_daemon(&ns, &[]);
    let plain = daemon.request("GET", "/metrics", &[]);
    assert_eq!(plain.status, 200);
    assert_eq!(
        plain.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let zipped = daemon.request("GET", "/metrics", &[("Accept-Encoding", "gzip")]);
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));
    let mut unzipped = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&zipped.body[..]),
        &mut unzipped,
    )
    .expect("valid gzip");
    assert_eq!(unzipped, plain.text(), "same exposition, compressed");

    let landing = daemon.request("GET", "/", &[]);
    assert_eq!(landing.status, 200);
    assert!(landing.text().contains("href=\"/metrics\""));
    assert_eq!(daemon.request("GET", "/nope", &[]).status, 404);
    let post = daemon.request("POST", "/metrics", &[]);
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
}

/// (comm, scheduling policy, nice) of each thread of `pid`, from /proc/PID/task/*/stat.
fn thread_scheduling(pid: u32) -> Vec<(String, u32, i32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir");
    tasks
        .flatten()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_string();
            // After the comm: field 3 (state) first, so field N is at index N - 3.
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some((
                comm,
                fields[41 - 3].parse().ok()?,
                fields[19 - 3].parse().ok()?,
            ))
        })
        .collect()
}

/// Scrapes win the CPU over sampling: only the sampler thread is SCHED_BATCH (at nice 0:
/// a fair share, or samples go stale on a busy host); the HTTP workers and the events
/// drain thread keep the normal policy and priority.
#[test]
fn only_the_sampler_thread_is_lowered() {
    let ns = Netns::new("sched");
    let daemon = start_daemon(&ns, &[]);
    let threads = thread_scheduling(daemon.pid());
    let of = |name: &str| -> Vec<(u32, i32)> {
        threads
            .iter()
            .filter(|(comm, _, _)| comm == name)
            .map(|(_, policy, nice)| (*policy, *nice))
            .collect()
    };
    const SCHED_OTHER: u32 = 0;
    const SCHED_BATCH: u32 = 3;
    assert_eq!(of("sampler"), vec![(SCHED_BATCH, 0)], "{threads:?}");
    let http = of("http");
    assert!(!http.is_empty(), "{threads:?}");
    assert!(http.iter().all(|t| *t == (SCHED_OTHER, 0)), "{threads:?}");
    // Events mode (root here, attached before the first sample, so before serving):
    // exactly one ring reader, and it never inherits the batch policy.
    assert_eq!(of("events"), vec![(SCHED_OTHER, 0)], "{threads:?}");
}

#[test]
fn telemetry_path_flag_moves_the_metrics() {
    let ns = Netns::new("path");
    let daemon = start_daemon(&ns, &["--web.telemetry-path", "/tcp"]);
    assert_eq!(daemon.request("GET", "/metrics", &[]).status, 404);
    let (status, _, body) = daemon.scrape("/tcp");
    assert_eq!(status, 200);
    assert!(body.contains("tcpstate_sockets{state=\"listen\"}"));
}

fn run_exporter(args: &[&str]) -> std::process::Output {
    std::process::Command::new(EXPORTER)
        .args(args)
        .output()
        .expect("run exporter")
}

#[test]
fn check_config_accepts_the_shipped_file_and_names_bad_keys() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/tcpstate-exporter.toml");
    let ok = run_exporter(&["check-config", "--config.file", shipped]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let bad = temp_config("[sample]\ninterval = \"15s\"\nmax_group = 3\n");
    let out = run_exporter(&["check-config", "--config.file", bad.path()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("line 3") && stderr.contains("max_group"),
        "{stderr}"
    );

    let out = run_exporter(&["--sample.interval", "soon", "check-config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sample.interval"));

    let out = run_exporter(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn snapshot_prints_json_table_and_exposition() {
    let ns = Netns::new("snap");
    let mut server = Actor::spawn(&ns, "leaky");
    let mut client = Actor::spawn(&ns, "client");
    server.listen("l", "127.0.0.1:8080", 8);
    client.cmd("connect c 127.0.0.1:8080 2 send=4");
    server.cmd("accept s l 2");
    client.cmd("close c");
    settle(&ns, &[("CLOSE-WAIT", 2), ("FIN-WAIT-2", 2)]);

    let json = ns.exec(EXPORTER, &["snapshot", "--format", "json"]);
    let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let group = value["namespaces"][0]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["state"] == "close_wait")
        .expect("a close_wait group");
    assert_eq!(group["direction"], "inbound");
    assert_eq!(group["port"], "8080");
    assert_eq!(group["process"], "leaky");
    assert_eq!(group["connections"], 2);
    assert_eq!(group["unread_bytes"], 8);

    let table = ns.exec(EXPORTER, &["snapshot"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("inbound"))
        .unwrap_or_else(|| panic!("no inbound row in:\n{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    let pid = server.pid().to_string();
    // DIRECTION PORT PROCESS PID CW OLDEST UNREAD_B UNACCEPTED ESTAB VERDICT...
    assert_eq!(
        cells[..5],
        ["inbound", "8080", "leaky", pid.as_str(), "2"],
        "{table}"
    );
    assert_eq!(cells[6..9], ["8", "0", "0"], "{table}");
    assert!(table.contains("close_wait 2"), "{table}");

    let exposition = ns.exec(EXPORTER, &["snapshot", "--format", "prometheus"]);
    let m = Exposition::parse(&exposition);
    assert_eq!(m.get("tcpstate_sockets", &[("state", "close_wait")]), 2.0);
}
