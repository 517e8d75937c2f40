//! Per-process attribution against real processes: each scenario actor renames itself
//! (prctl PR_SET_NAME), so the expected `process` label is unambiguous.

mod support;

use std::time::Duration;

use support::{
    Actor, Daemon, Exposition, Netns, count_state, inbound_close_wait, temp_file, wait_until,
};

const SETTLE: Duration = Duration::from_secs(30);
const SAMPLE: Duration = Duration::from_secs(20);

fn settle_close_wait(ns: &Netns, count: usize) {
    assert!(
        wait_until(SETTLE, || count_state(ns, "CLOSE-WAIT") == count),
        "CLOSE_WAIT count never reached {count}: {:?}",
        ns.sockets()
    );
}

fn close_wait(direction: &str, port: &str, process: &str) -> [(&'static str, String); 4] {
    [
        ("state", "close_wait".to_string()),
        ("direction", direction.to_string()),
        ("port", port.to_string()),
        ("process", process.to_string()),
    ]
}

fn get(m: &Exposition, name: &str, labels: &[(&'static str, String)]) -> f64 {
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    m.get(name, &labels)
}

#[test]
fn inbound_outbound_accept_queue_and_shared_sockets_have_the_right_owner() {
    let ns = Netns::new("owners");
    let mut server = Actor::spawn(&ns, "api-server");
    let mut peer = Actor::spawn(&ns, "peer");
    let mut upstream = Actor::spawn(&ns, "upstream");
    let mut worker = Actor::spawn(&ns, "worker");

    // Inbound: api-server accepts 2 and never closes them after the peer leaves; one
    // more peer connection stays in the accept queue.
    server.listen("l", "127.0.0.1:8080", 8);
    peer.cmd("connect p 127.0.0.1:8080 3");
    server.cmd("accept a l 2");
    peer.cmd("close p");
    // Outbound: worker connects to upstream, which closes: worker holds CLOSE_WAIT.
    upstream.listen("u", "127.0.0.1:6379", 8);
    worker.cmd("connect w 127.0.0.1:6379 2");
    upstream.cmd("accept x u 2");
    upstream.cmd("close x");
    // Shared: a socket accepted by api-server, then inherited by a forked child.
    peer.cmd("connect q 127.0.0.1:8080 1");
    server.cmd("accept b l 1");
    let child = server.cmd("fork kid api-child");
    assert!(child["pid"].as_u64().expect("child pid") > u64::from(server.pid()));
    peer.cmd("close q");
    settle_close_wait(&ns, 6);
    assert!(
        ns.sockets()
            .iter()
            .any(|s| s.users.iter().any(|u| u.name == "api-child")),
        "the child holds the shared socket"
    );

    let daemon = Daemon::exporter(&ns, &["--sample.interval", "1h"]);
    let m = Exposition::parse(&daemon.scrape("/metrics").2);
    // 2 accepted + 1 in the accept queue (listener's process) + 1 shared (lowest pid).
    let inbound = close_wait("inbound", "8080", "api-server");
    assert_eq!(get(&m, "tcpstate_connections", &inbound), 4.0);
    assert_eq!(
        get(
            &m,
            "tcpstate_connections",
            &close_wait("outbound", "6379", "worker")
        ),
        2.0
    );
    let close_wait_series: Vec<_> = m
        .series("tcpstate_connections")
        .into_iter()
        .filter(|(labels, _)| {
            labels
                .iter()
                .any(|(k, v)| k == "state" && v == "close_wait")
        })
        .collect();
    assert_eq!(
        close_wait_series.len(),
        2,
        "counted once: {close_wait_series:?}"
    );
    assert_eq!(
        m.get(
            "tcpstate_listen_queue_length",
            &[("port", "8080"), ("process", "api-server")]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "tcpstate_listen_queue_length",
            &[("port", "6379"), ("process", "upstream")]
        ),
        0.0
    );
    assert_eq!(m.get("tcpstate_attribution_unresolved_sockets", &[]), 0.0);
}

#[test]
fn orphans_have_no_process_and_pid_label_is_opt_in() {
    let ns = Netns::new("orphan");
    let mut server = Actor::spawn(&ns, "holder");
    let mut client = Actor::spawn(&ns, "quitter");
    // The client closes: its ends become orphaned FIN_WAIT2 sockets (no fd, no owner).
    inbound_close_wait(&ns, &mut server, &mut client, 8080, 2, 0);
    assert!(wait_until(SETTLE, || count_state(&ns, "FIN-WAIT-2") == 2));
    let config = temp_file(
        "orphan.toml",
        "[sample]\ndetail_states = [\"close_wait\", \"fin_wait2\"]\n[process]\npid_label = true\n",
    );
    let daemon = Daemon::exporter(
        &ns,
        &["--sample.interval", "1h", "--config.file", config.path()],
    );
    let m = Exposition::parse(&daemon.scrape("/metrics").2);
    assert_eq!(
        m.get(
            "tcpstate_connections",
            &[
                ("state", "fin_wait2"),
                ("direction", "outbound"),
                ("port", "8080"),
                ("process", ""),
                ("pid", ""),
            ]
        ),
        2.0
    );
    let pid = server.pid().to_string();
    assert_eq!(
        m.get(
            "tcpstate_connections",
            &[
                ("state", "close_wait"),
                ("direction", "inbound"),
                ("port", "8080"),
                ("process", "holder"),
                ("pid", pid.as_str()),
            ]
        ),
        2.0
    );
}

#[test]
fn a_steady_state_sample_reads_no_fd_again() {
    let ns = Netns::new("steady");
    let mut server = Actor::spawn(&ns, "steady-srv");
    let mut client = Actor::spawn(&ns, "steady-cli");
    inbound_close_wait(&ns, &mut server, &mut client, 8080, 50, 0);
    // CLOSE_WAIT only: the test's own scrape connections (established) are not
    // attributed, so any fd read would come from the cache failing.
    let config = temp_file(
        "steady.toml",
        "[sample]\ndetail_states = [\"close_wait\"]\n",
    );
    let daemon = Daemon::exporter(
        &ns,
        &["--sample.interval", "200ms", "--config.file", config.path()],
    );
    let reads = |m: &Exposition| m.get("tcpstate_attribution_fd_reads_total", &[]);
    let samples = |m: &Exposition| m.get("tcpstate_samples_total", &[]);
    // Every scrape on one keep-alive connection: a `Connection: close` scrape leaves the
    // test's socket in CLOSE_WAIT for a moment, and a sample catching it there would
    // rightly read fds to find its owner.
    let mut scraper = daemon.keep_alive();
    let first = scraper.metrics();
    assert!(
        reads(&first) >= 50.0,
        "the first sample resolved the 50 sockets"
    );
    // Wait for a few samples with nothing new, then for a few more: reads stay flat.
    let mut baseline = None;
    assert!(wait_until(SAMPLE, || {
        let m = scraper.metrics();
        match baseline {
            None if samples(&m) >= samples(&first) + 3.0 => {
                baseline = Some((samples(&m), reads(&m)));
                false
            }
            Some((at, fds)) if samples(&m) >= at + 5.0 => {
                assert_eq!(reads(&m), fds, "a steady-state sample re-read fds");
                true
            }
            _ => false,
        }
    }));
    let m = scraper.metrics();
    assert_eq!(
        m.get(
            "tcpstate_connections",
            &[
                ("state", "close_wait"),
                ("direction", "inbound"),
                ("port", "8080"),
                ("process", "steady-srv"),
            ]
        ),
        50.0
    );
}

/// The fd cliff: a program's open descriptors and soft limit, as `ls /proc/PID/fd | wc
/// -l` and /proc/PID/limits say, in the metrics and beside the verdict of `snapshot`.
#[test]
fn the_fd_figures_equal_proc() {
    let ns = Netns::new("fdcliff");
    let mut server = Actor::spawn(&ns, "fd-leaker");
    let mut client = Actor::spawn(&ns, "fd-client");
    server.cmd("nofile 300");
    inbound_close_wait(&ns, &mut server, &mut client, 8080, 20, 0);
    let pid = server.pid();
    let ls = ns.exec("sh", &["-c", &format!("ls /proc/{pid}/fd | wc -l")]);
    let open: f64 = ls.trim().parse().expect("a count");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let soft: f64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .expect("Max open files");
    assert_eq!(soft, 300.0, "{limits}");
    assert!(open >= 22.0, "listener and 20 accepted sockets: {open}");

    let daemon = Daemon::exporter(&ns, &["--sample.interval", "1h"]);
    let m = Exposition::parse(&daemon.scrape("/metrics").2);
    let process = [("process", "fd-leaker")];
    assert_eq!(m.get("tcpstate_process_open_fds", &process), open);
    assert_eq!(m.get("tcpstate_process_max_fds", &process), soft);
    assert_eq!(
        m.try_get("tcpstate_process_open_fds", &[("process", "fd-client")]),
        None,
        "its sockets are orphans now: it owns no detail-state connection"
    );
    drop(daemon);

    let table = ns.exec(
        env!("CARGO_BIN_EXE_tcpstate-exporter"),
        &["snapshot", "--watch", "1"],
    );
    let row = table
        .lines()
        .find(|l| l.contains("fd-leaker"))
        .unwrap_or_else(|| panic!("no fd-leaker row:\n{table}"));
    assert!(row.contains(&format!("fds {open}/300")), "{table}");
}
