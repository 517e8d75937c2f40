//! The three causes of the article, each built for real in a private namespace, and the
//! verdict `snapshot --watch --format json` gives for each.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Actor, Netns, count_state, inbound_close_wait, wait_until};

const EXPORTER: &str = env!("CARGO_BIN_EXE_tcpstate-exporter");
const WAIT: Duration = Duration::from_secs(20);

/// Runs `snapshot --format json` with `args` in the namespace; returns the parsed JSON,
/// the exit code and stderr.
fn snapshot(ns: &Netns, args: &[&str]) -> (Value, Option<i32>, String) {
    let out = ns
        .command(EXPORTER)
        .args(["snapshot", "--format", "json"])
        .args(args)
        .output()
        .expect("run snapshot");
    let text = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "snapshot printed no JSON ({e}):\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        value,
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until sockets whose peer's FIN left at `fin` are older than `age`.
fn wait_for_age(fin: Instant, age: Duration) {
    std::thread::sleep(age.saturating_sub(fin.elapsed()));
}

fn group<'a>(snapshot: &'a Value, port: &str, process: &str) -> &'a Value {
    snapshot["diagnosis"]
        .as_array()
        .expect("diagnosis list")
        .iter()
        .find(|d| d["port"] == port && d["process"] == process)
        .unwrap_or_else(|| panic!("no diagnosis for {port}/{process} in {snapshot:#}"))
}

#[test]
fn a_program_that_never_closes_is_diagnosed_as_a_bug() {
    let ns = Netns::new("cause1");
    let mut server = Actor::spawn(&ns, "forgetful");
    let mut client = Actor::spawn(&ns, "client");
    let fin = inbound_close_wait(&ns, &mut server, &mut client, 8080, 4, 10);
    // Old enough to count as stuck with --stuck-after 2s, and nothing closes meanwhile.
    wait_for_age(fin, Duration::from_secs(2));
    let (value, code, stderr) = snapshot(
        &ns,
        &[
            "--watch",
            "3",
            "--sample.interval",
            "500ms",
            "--stuck-after",
            "2s",
            "--max-close-wait",
            "3",
        ],
    );
    let d = group(&value, "8080", "forgetful");
    assert_eq!(d["cause"], "never_closed", "{d:#}");
    assert_eq!(d["close_wait"], 4);
    assert_eq!(d["unread_bytes"], 40);
    assert_eq!(d["closes_seen"], 0);
    assert_eq!(d["stuck"], 4);
    assert_eq!(d["pids"][0]["pid"], server.pid());
    assert_eq!(d["pids"][0]["close_wait"], 4);
    assert_eq!(d["pid_count"], 1);
    let verdict = d["verdict"].as_str().expect("verdict");
    assert!(
        verdict.starts_with("never closed: 4 of 4 older than 2.0s (oldest"),
        "{verdict}"
    );
    assert!(
        verdict.contains("no closes seen") && verdict.contains("100% hold unread data"),
        "{verdict}"
    );
    assert_eq!(code, Some(3), "4 CLOSE_WAIT > --max-close-wait 3");
    assert!(
        stderr
            .contains("exit 3: --max-close-wait 3 crossed by inbound 8080 forgetful: 4 CLOSE_WAIT"),
        "stderr names the threshold: {stderr}"
    );
    let (_, code, stderr) = snapshot(&ns, &["--watch", "1", "--max-close-wait", "4"]);
    assert_eq!(code, Some(0), "threshold not crossed: {stderr}");
    // What a person types, without flags: a few seconds of watching, and an answer once
    // the sockets are older than the default --stuck-after (10s).
    wait_for_age(fin, Duration::from_secs(10));
    let (value, code, _) = snapshot(&ns, &[]);
    let d = group(&value, "8080", "forgetful");
    assert_eq!(d["cause"], "never_closed", "{d:#}");
    assert!(
        d["watched_seconds"].as_f64().expect("watched") >= 3.0,
        "{d:#}"
    );
    assert_eq!(code, Some(0));
}

#[test]
fn a_program_slower_than_its_peers_timeout_closes_late() {
    let ns = Netns::new("cause2");
    let mut server = Actor::spawn(&ns, "slowpoke");
    let mut client = Actor::spawn(&ns, "impatient");
    server.listen("l", "127.0.0.1:8080", 64);
    // Every connection: the peer gives up (closes) at once, the server takes ~1.5 s more
    // to answer and close. Connections keep coming while the snapshot watches.
    let snapshot_thread = {
        let ns_name = ns.name().to_string();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            std::process::Command::new("ip")
                .args([
                    "netns", "exec", &ns_name, EXPORTER, "snapshot", "--format", "json",
                ])
                .args([
                    "--watch",
                    "10",
                    "--sample.interval",
                    "500ms",
                    "--late-after",
                    "1s",
                ])
                .output()
                .expect("snapshot")
        })
    };
    // Until the snapshot has ended (not a fixed time: a slow start of the snapshot on a
    // loaded machine would otherwise watch a window with no closes in it), bounded.
    let started = Instant::now();
    let mut waiting: Vec<(String, Instant)> = Vec::new();
    let mut n = 0;
    while !snapshot_thread.is_finished() && started.elapsed() < Duration::from_secs(60) {
        let id = format!("c{n}");
        client.cmd(&format!("connect {id} 127.0.0.1:8080 1"));
        server.cmd(&format!("accept s{n} l 1"));
        client.cmd(&format!("close {id}"));
        waiting.push((format!("s{n}"), Instant::now()));
        n += 1;
        waiting.retain(|(sid, since)| {
            if since.elapsed() >= Duration::from_millis(1500) {
                server.cmd(&format!("close {sid}"));
                false
            } else {
                true
            }
        });
        std::thread::sleep(Duration::from_millis(250));
    }
    let out = snapshot_thread.join().expect("snapshot thread");
    let value: Value = serde_json::from_slice(&out.stdout).expect("json");
    let d = group(&value, "8080", "slowpoke");
    assert_eq!(d["cause"], "closed_late", "{d:#}");
    let closes = d["closes_seen"].as_u64().expect("closes seen");
    assert!(closes >= 5, "{d:#}");
    let mean = d["mean_close_seconds"].as_f64().expect("mean");
    assert!((1.0..3.0).contains(&mean), "held ~1.5 s each: {d:#}");
    assert!(
        d["verdict"]
            .as_str()
            .expect("verdict")
            .contains("the peer gave up first")
    );
}

#[test]
fn a_backlog_the_program_cannot_drain_is_diagnosed_as_such() {
    let ns = Netns::new("cause3");
    let mut server = Actor::spawn(&ns, "overloaded");
    let mut client = Actor::spawn(&ns, "client");
    // Backlog 4 admits 5; the program never accepts. The peers give up and close.
    server.listen("l", "127.0.0.1:8080", 4);
    client.cmd("connect c 127.0.0.1:8080 5 send=20");
    client.cmd("connect late 127.0.0.1:8080 2 nowait");
    client.cmd("close c");
    assert!(wait_until(WAIT, || count_state(&ns, "CLOSE-WAIT") == 5));
    let (value, _, _) = snapshot(&ns, &["--watch", "2", "--sample.interval", "1500ms"]);
    let d = group(&value, "8080", "overloaded");
    assert_eq!(d["cause"], "accept_backlog", "{d:#}");
    assert_eq!(d["close_wait"], 5);
    assert_eq!(d["unaccepted"], 5);
    assert_eq!(d["listen_queue_length"], 5);
    assert_eq!(d["listen_queue_max"], 4);
    let verdict = d["verdict"].as_str().expect("verdict");
    assert!(
        verdict.starts_with("accept backlog: 5 of 5 never accepted, accept queue 5/4"),
        "{verdict}"
    );
    // The SYN retransmissions of the two late clients overflowed the queue meanwhile.
    assert!(verdict.contains("listen overflows"), "{verdict}");
}
