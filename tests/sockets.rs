//! The per-socket drill-down (`GET /api/v1/sockets`, `snapshot --sockets`) against `ss
//! -tanepo` of the same sockets: exact addresses, pids, fds, inodes, cookies and queues;
//! limits honoured; bad parameters answered 400 with a one-line reason.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::{Actor, Daemon, Exposition, Netns, SsSocket, count_state, unix_now, wait_until};

/// What `ss` and the drill-down both say of one socket, keyed by cookie.
#[derive(Debug, PartialEq)]
struct Row {
    state: String,
    local: String,
    peer: String,
    /// (pid, fd) of the holder; none in the accept queue.
    holder: Option<(u64, u64)>,
    inode: u64,
    recv_q: u64,
    send_q: u64,
}

fn endpoint(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

fn from_ss(s: &SsSocket) -> (u64, Row) {
    let state = match s.state.as_str() {
        "CLOSE-WAIT" => "close_wait",
        "ESTAB" => "established",
        other => panic!("unexpected state {other}"),
    };
    let holder = s.users.iter().min_by_key(|u| u.pid);
    let row = Row {
        state: state.into(),
        local: endpoint(&s.local_ip, s.local_port),
        peer: endpoint(
            &s.peer_ip,
            s.peer_port.expect("a connection has a peer port"),
        ),
        holder: holder.map(|u| (u64::from(u.pid), u64::from(u.fd))),
        inode: s.inode,
        recv_q: s.recv_q,
        send_q: s.send_q,
    };
    (s.cookie, row)
}

fn from_api(s: &Value) -> (u64, Row) {
    let text = |k: &str| {
        s[k].as_str()
            .unwrap_or_else(|| panic!("{k} in {s}"))
            .to_string()
    };
    let number = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}"));
    let holder = match (s["pid"].as_u64(), s["fd"].as_u64()) {
        (Some(pid), Some(fd)) => Some((pid, fd)),
        (None, None) => None,
        other => panic!("pid and fd go together: {other:?} in {s}"),
    };
    let row = Row {
        state: text("state"),
        local: text("local"),
        peer: text("peer"),
        holder,
        inode: number("inode"),
        recv_q: number("recv_q"),
        send_q: number("send_q"),
    };
    (number("cookie"), row)
}

fn get_json(daemon: &Daemon, path: &str) -> Value {
    let (status, _, body) = daemon.scrape(path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

fn sockets(answer: &Value) -> &Vec<Value> {
    answer["sockets"].as_array().expect("a sockets array")
}

/// Inbound: `api` accepted 2 connections whose peers sent 5 bytes and left, a third
/// waits in the accept queue; outbound: `worker` holds 2 connections to `upstream`, which
/// closed them; plus one established connection of `worker`. Also returns when the
/// inbound peers closed (unix time before and after the command).
fn scenario(ns: &Netns) -> (Vec<Actor>, (f64, f64)) {
    let mut api = Actor::spawn(ns, "api");
    let mut peer = Actor::spawn(ns, "peer");
    let mut upstream = Actor::spawn(ns, "upstream");
    let mut worker = Actor::spawn(ns, "worker");
    api.listen("l", "127.0.0.1:8080", 16);
    peer.cmd("connect p 127.0.0.1:8080 3 send=5");
    api.cmd("accept a l 2");
    let closing = unix_now();
    peer.cmd("close p");
    let closed = (closing, unix_now());
    upstream.listen("u", "127.0.0.1:6379", 16);
    worker.cmd("connect w 127.0.0.1:6379 2");
    upstream.cmd("accept x u 2");
    upstream.cmd("close x");
    worker.cmd("connect e 127.0.0.1:6379 1");
    upstream.cmd("accept y u 1");
    assert!(
        wait_until(Duration::from_secs(30), || count_state(ns, "CLOSE-WAIT")
            == 5),
        "{:?}",
        ns.sockets()
    );
    (vec![api, peer, upstream, worker], closed)
}

#[test]
fn the_drill_down_equals_ss_and_honours_its_limits() {
    let ns = Netns::new("drill");
    let (actors, closed) = scenario(&ns);
    // Held a while before the daemon's one sample, so an age counted from that first
    // sighting instead of the FIN would be seen to be short.
    assert!(wait_until(Duration::from_secs(5), || unix_now() > closed.1 + 1.5));
    let daemon = Daemon::exporter(&ns, &["--sample.interval", "1h"]);
    let truth: Vec<SsSocket> = ns.sockets();
    let expected = |keep: &dyn Fn(&SsSocket) -> bool| -> BTreeMap<u64, Row> {
        truth.iter().filter(|s| keep(s)).map(from_ss).collect()
    };

    let inbound = get_json(&daemon, "/api/v1/sockets?state=close_wait&port=8080");
    let got: BTreeMap<u64, Row> = sockets(&inbound).iter().map(from_api).collect();
    let want = expected(&|s| s.state == "CLOSE-WAIT" && s.local_port == 8080);
    assert_eq!(got, want, "inbound vs ss");
    assert_eq!(got.len(), 3);
    let api = actors[0].pid();
    // The one sample (1 h interval): how long it took, between its ages and `taken_at`.
    let metrics = Exposition::parse(&daemon.scrape("/metrics").2);
    let took = metrics.get("tcpstate_sample_duration_seconds", &[]);
    for s in sockets(&inbound) {
        assert_eq!(s["process"], "api", "{s}");
        assert_eq!(s["direction"], "inbound");
        // Dated from the peer's FIN (tcp_info's last ACK) as of the sample: between the
        // close command's start and its end, less the sample's own duration (ages are
        // taken as it starts, `taken_at` as it ends) and the kernel's ms clock.
        let age = s["age_seconds"].as_f64().expect("CLOSE_WAIT is aged");
        let taken_at = inbound["taken_at"].as_f64().expect("taken_at");
        assert!(
            age <= taken_at - closed.0 + 0.05 && age >= taken_at - took - closed.1 - 0.05,
            "age {age}, the peer closed {}..{} s before the sample: {s}",
            taken_at - closed.1,
            taken_at - closed.0
        );
        let queued = s["in_accept_queue"].as_bool().expect("flag");
        assert_eq!(queued, s["pid"].is_null(), "{s}");
        if !queued {
            assert_eq!(s["pid"].as_u64(), Some(u64::from(api)));
            assert_eq!(s["unread_bytes"], 5, "Recv-Q 6 less the FIN: {s}");
        }
    }
    assert_eq!(
        sockets(&inbound)
            .iter()
            .filter(|s| s["in_accept_queue"] == true)
            .count(),
        1
    );

    let outbound = get_json(&daemon, "/api/v1/sockets?direction=outbound&process=worker");
    let got: BTreeMap<u64, Row> = sockets(&outbound).iter().map(from_api).collect();
    let want = expected(&|s| s.peer_port == Some(6379));
    assert_eq!(got, want, "outbound vs ss, CLOSE_WAIT and established");
    assert_eq!(
        sockets(&outbound)[0]["state"],
        "close_wait",
        "CLOSE_WAIT first"
    );
    assert!(sockets(&outbound)[2]["age_seconds"].is_null(), "{outbound}");

    let limited = get_json(&daemon, "/api/v1/sockets?state=close_wait&limit=2");
    assert_eq!(
        (
            &limited["matched"],
            &limited["returned"],
            sockets(&limited).len()
        ),
        (&Value::from(5), &Value::from(2), 2)
    );
    for (query, reason) in [
        ("limit=0", "limit \"0\" is not a number from 1 to 1000"),
        ("limit=5000", "limit 5000 is over the cap of 1000"),
        (
            "port=http",
            "port \"http\" is not a port number (1 to 65535)",
        ),
        ("state=listen", "state listen is not kept per socket"),
        ("pid=1", "unknown parameter \"pid\""),
        ("process=%zz", "a bad %-escape in the query"),
    ] {
        let (status, _, body) = daemon.scrape(&format!("/api/v1/sockets?{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.starts_with("400 bad request: "), "{body}");
        assert!(body.contains(reason), "{query}: {body}");
        assert_eq!(body.lines().count(), 1, "one line: {body:?}");
    }
    drop(daemon);
    drop(actors);
}

#[test]
fn snapshot_sockets_prints_the_same_sockets() {
    let ns = Netns::new("drillsnap");
    let (_actors, _) = scenario(&ns);
    let exporter = env!("CARGO_BIN_EXE_tcpstate-exporter");
    let json = ns.exec(
        exporter,
        &[
            "snapshot",
            "--watch",
            "1",
            "--sockets",
            "--format",
            "json",
            "--port",
            "8080",
        ],
    );
    let answer: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let got: BTreeMap<u64, Row> = sockets(&answer).iter().map(from_api).collect();
    let want: BTreeMap<u64, Row> = ns
        .sockets()
        .iter()
        .filter(|s| s.state == "CLOSE-WAIT" && s.local_port == 8080)
        .map(from_ss)
        .collect();
    assert_eq!(got, want);

    let table = ns.exec(
        exporter,
        &[
            "snapshot",
            "--watch",
            "1",
            "--sockets",
            "--process",
            "worker",
        ],
    );
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("STATE"), "{table}");
    let rows: Vec<&&str> = lines.iter().filter(|l| l.contains(" worker ")).collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(rows[0].starts_with("close_wait"), "{table}");
    assert!(table.contains("3 of 3 matching sockets"), "{table}");

    let refused = ns
        .command(exporter)
        .args(["snapshot", "--watch", "1", "--sockets", "--limit", "0"])
        .output()
        .expect("runs");
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(
        stderr.trim_end(),
        "tcpstate-exporter: --sockets: limit \"0\" is not a number from 1 to 1000"
    );
}

/// Outbound CLOSE_WAIT toward two backends: the peers are named in `snapshot`, match the
/// drill-down's peer filter, and become series only with the opt-in, the top N and
/// `peer="other"`.
#[test]
fn outbound_groups_name_their_peers() {
    let ns = Netns::new("peers");
    let mut upstream = Actor::spawn(&ns, "upstream");
    let mut worker = Actor::spawn(&ns, "worker");
    upstream.listen("a", "127.0.0.1:6379", 16);
    upstream.listen("b", "127.0.0.2:6379", 16);
    worker.cmd("connect x 127.0.0.1:6379 3");
    worker.cmd("connect y 127.0.0.2:6379 1");
    upstream.cmd("accept ax a 3");
    upstream.cmd("accept by b 1");
    upstream.cmd("close ax");
    upstream.cmd("close by");
    assert!(
        wait_until(Duration::from_secs(30), || count_state(&ns, "CLOSE-WAIT")
            == 4),
        "{:?}",
        ns.sockets()
    );
    let held_by_peer = |ip: &str| {
        ns.sockets()
            .iter()
            .filter(|s| s.state == "CLOSE-WAIT" && s.peer_ip == ip && s.peer_port == Some(6379))
            .filter(|s| s.users.iter().any(|u| u.name == "worker"))
            .count()
    };
    assert_eq!(
        (held_by_peer("127.0.0.1"), held_by_peer("127.0.0.2")),
        (3, 1)
    );

    let exporter = env!("CARGO_BIN_EXE_tcpstate-exporter");
    let json = ns.exec(exporter, &["snapshot", "--watch", "1", "--format", "json"]);
    let snapshot: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let group = snapshot["diagnosis"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["direction"] == "outbound" && d["process"] == "worker")
        .unwrap_or_else(|| panic!("no outbound worker group: {json}"));
    assert_eq!(group["peer_count"], 2, "{group}");
    assert_eq!(
        group["peers"],
        serde_json::json!([
            {"peer": "127.0.0.1:6379", "close_wait": 3},
            {"peer": "127.0.0.2:6379", "close_wait": 1}
        ])
    );
    let table = ns.exec(exporter, &["snapshot", "--watch", "1"]);
    assert!(
        table.contains("peers 127.0.0.1:6379 x3, 127.0.0.2:6379 x1"),
        "{table}"
    );

    let config = support::temp_file("peers.toml", "[close_wait]\npeers_per_group = 1\n");
    let daemon = Daemon::exporter(
        &ns,
        &["--sample.interval", "1h", "--config.file", config.path()],
    );
    let m = support::Exposition::parse(&daemon.scrape("/metrics").2);
    let peer = |peer: &str| {
        m.try_get(
            "tcpstate_close_wait_peer_connections",
            &[
                ("direction", "outbound"),
                ("port", "6379"),
                ("process", "worker"),
                ("peer", peer),
            ],
        )
    };
    assert_eq!(
        (
            peer("127.0.0.1:6379"),
            peer("other"),
            peer("127.0.0.2:6379")
        ),
        (Some(3.0), Some(1.0), None)
    );
    let answer = get_json(&daemon, "/api/v1/sockets?peer=127.0.0.2");
    let got: Vec<String> = sockets(&answer)
        .iter()
        .map(|s| format!("{} {}", s["peer"], s["process"]))
        .collect();
    assert_eq!(got, ["\"127.0.0.2:6379\" \"worker\""]);
    let answer = get_json(
        &daemon,
        "/api/v1/sockets?peer=127.0.0.1:6379&state=close_wait",
    );
    assert_eq!(answer["matched"], 3, "{answer}");
}
