//! Proves the test support itself: every scenario the exporter's tests rely on is
//! built with `tcpstate-scenario` actors in a private namespace and checked, with
//! exact numbers, against `ss` (iproute2's independent view of the kernel table).
//! What `ss` shows here is the reference the exporter's metrics are compared with.

mod support;

use std::time::Duration;

use support::{Actor, Exposition, Netns, SsSocket, port_of, wait_until};

/// Long enough for a delayed ACK (the peer of a CLOSE_WAIT socket is in FIN_WAIT1
/// until it comes, up to 200 ms) on a loaded CI machine.
const SETTLE: Duration = Duration::from_secs(5);

/// A fresh namespace with a server and a client actor. Bind the result as
/// `let (ns, srv, cli)` so the actors are dropped before their namespace.
fn scene(prefix: &str, server: &str, client: &str) -> (Netns, Actor, Actor) {
    let ns = Netns::new(prefix);
    let srv = Actor::spawn(&ns, server);
    let cli = Actor::spawn(&ns, client);
    (ns, srv, cli)
}

fn ports(reply: &serde_json::Value, field: &str) -> Vec<u16> {
    reply[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} in {reply}"))
        .iter()
        .map(|p| {
            p.as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .expect("port")
        })
        .collect()
}

/// Sockets whose local port is `port` (the server side of its connections).
fn local(sockets: &[SsSocket], port: u16, state: &str) -> Vec<SsSocket> {
    sockets
        .iter()
        .filter(|s| s.local_port == port && s.state == state)
        .cloned()
        .collect()
}

/// Sockets whose peer port is `port` (the client side of connections to it).
fn toward(sockets: &[SsSocket], port: u16, state: &str) -> Vec<SsSocket> {
    sockets
        .iter()
        .filter(|s| s.peer_port == Some(port) && s.state == state)
        .cloned()
        .collect()
}

fn recv_qs(sockets: &[SsSocket]) -> Vec<u64> {
    let mut q: Vec<u64> = sockets.iter().map(|s| s.recv_q).collect();
    q.sort_unstable();
    q
}

/// What `ss` shows once `settled` holds of it, or after SETTLE its last view (the
/// assertions that follow then say what differs). An actor's command returns before the
/// peer's side has changed: a FIN, a final ACK or data lands there in softirq.
fn sockets_once(ns: &Netns, settled: impl Fn(&[SsSocket]) -> bool) -> Vec<SsSocket> {
    let mut sockets = Vec::new();
    wait_until(SETTLE, || {
        sockets = ns.sockets();
        settled(&sockets)
    });
    sockets
}

#[test]
fn inbound_close_wait_with_and_without_unread_data_ipv4_and_ipv6() {
    let (ns, mut srv, mut cli) = scene("selftest-in", "srv-app", "cli-app");
    for (family, host) in [("v4", "127.0.0.1"), ("v6", "::1")] {
        let port = srv.listen(&format!("l{family}"), &format!("{host}:0"), 16);
        let target = format!("{host}:{port}");
        cli.cmd(&format!("connect quiet{family} {target} 2"));
        srv.cmd(&format!("accept aquiet{family} l{family} 2"));
        cli.cmd(&format!("connect loud{family} {target} 3 send=5"));
        srv.cmd(&format!("accept aloud{family} l{family} 3"));
        cli.cmd(&format!("close quiet{family}"));
        cli.cmd(&format!("close loud{family}"));

        // The CLOSE_WAIT side changes state as the FIN arrives, after close() returned.
        let sockets = sockets_once(&ns, |s| {
            recv_qs(&local(s, port, "CLOSE-WAIT")) == [1, 1, 6, 6, 6]
        });
        let cw = local(&sockets, port, "CLOSE-WAIT");
        // The unread FIN counts as one byte: no data shows 1, five bytes show 6.
        assert_eq!(recv_qs(&cw), [1, 1, 6, 6, 6], "{family}: {cw:#?}");
        assert!(
            cw.iter()
                .all(|s| s.user_names() == ["srv-app"] && s.inode != 0)
        );
        assert!(cw.iter().all(|s| s.send_q == 0));

        // Once the program has read the data and the EOF, Recv-Q is 0.
        let read = srv.cmd(&format!("read aloud{family}"));
        assert_eq!(read["bytes"], serde_json::json!([5, 5, 5]));
        assert_eq!(read["eof"], serde_json::json!([true, true, true]));
        let sockets = ns.sockets();
        assert_eq!(
            recv_qs(&local(&sockets, port, "CLOSE-WAIT")),
            [0, 0, 0, 1, 1],
            "{family}"
        );
        srv.cmd(&format!("read aquiet{family}"));
        assert_eq!(
            recv_qs(&local(&ns.sockets(), port, "CLOSE-WAIT")),
            [0; 5],
            "{family}"
        );

        // The closed client ends are orphans in FIN_WAIT2 once the delayed ACK came.
        assert!(
            wait_until(SETTLE, || {
                let fw2 = toward(&ns.sockets(), port, "FIN-WAIT-2");
                fw2.len() == 5 && fw2.iter().all(|s| s.users.is_empty() && s.inode == 0)
            }),
            "{family}: {:#?}",
            ns.sockets()
        );
    }
    // Cross-check the parser with ss's own state filter.
    let plain = ns.exec("ss", &["-tanH", "state", "close-wait"]);
    assert_eq!(plain.lines().count(), 10, "{plain}");
}

#[test]
fn close_wait_in_accept_queue_has_no_owner_until_accepted() {
    let (ns, mut srv, mut cli) = scene("selftest-aq", "acceptor", "impatient");
    let port = srv.listen("l", "127.0.0.1:0", 8);
    cli.cmd(&format!("connect c 127.0.0.1:{port} 2 send=7"));
    cli.cmd("close c 1");

    // The queued children come with the final ACKs, their data and the FIN after it.
    let sockets = sockets_once(&ns, |s| {
        local(s, port, "LISTEN").first().map(|l| l.recv_q) == Some(2)
            && recv_qs(&local(s, port, "CLOSE-WAIT")) == [8]
            && recv_qs(&local(s, port, "ESTAB")) == [7]
    });
    let listener = local(&sockets, port, "LISTEN");
    assert_eq!(listener.len(), 1);
    // A listener's Recv-Q is its accept-queue length, Send-Q the backlog.
    assert_eq!((listener[0].recv_q, listener[0].send_q), (2, 8));
    let cw = local(&sockets, port, "CLOSE-WAIT");
    assert_eq!(cw.len(), 1, "{sockets:#?}");
    assert_eq!((cw[0].recv_q, cw[0].inode), (8, 0));
    assert!(cw[0].users.is_empty());
    let queued = local(&sockets, port, "ESTAB");
    assert_eq!(queued.len(), 1);
    assert_eq!((queued[0].recv_q, queued[0].inode), (7, 0));

    // Accepting gives both an fd and an owner; the CLOSE_WAIT one keeps its data.
    srv.cmd("accept a l 2");
    let sockets = ns.sockets();
    let cw = local(&sockets, port, "CLOSE-WAIT");
    assert_eq!(cw.len(), 1);
    assert_eq!(cw[0].recv_q, 8);
    assert_eq!(cw[0].user_names(), ["acceptor"]);
    assert!(cw[0].inode != 0);
    assert_eq!(local(&sockets, port, "LISTEN")[0].recv_q, 0);
}

#[test]
fn full_backlog_leaves_later_clients_in_syn_sent() {
    let (ns, mut srv, mut cli) = scene("selftest-full", "slowserver", "clients");
    let port = srv.listen("l", "127.0.0.1:0", 2);
    // The queue holds backlog + 1 connections.
    cli.cmd(&format!("connect in 127.0.0.1:{port} 3"));
    let waiting = cli.cmd(&format!("connect waiting 127.0.0.1:{port} 2 nowait"));

    // The queued children come with the final ACKs.
    let sockets = sockets_once(&ns, |s| {
        local(s, port, "LISTEN").first().map(|l| l.recv_q) == Some(3)
            && local(s, port, "ESTAB").len() == 3
    });
    let listener = &local(&sockets, port, "LISTEN")[0];
    assert_eq!((listener.recv_q, listener.send_q), (3, 2));
    assert_eq!(local(&sockets, port, "ESTAB").len(), 3);
    let syn_sent = toward(&sockets, port, "SYN-SENT");
    let mut syn_ports: Vec<u16> = syn_sent.iter().map(|s| s.local_port).collect();
    syn_ports.sort_unstable();
    let mut expected = ports(&waiting, "local_ports");
    expected.sort_unstable();
    assert_eq!(syn_ports, expected);
    assert!(syn_sent.iter().all(|s| s.user_names() == ["clients"]));
}

#[test]
fn outbound_close_wait_toward_a_closed_server() {
    let (ns, mut srv, mut cli) = scene("selftest-out", "upstream", "pooler");
    let port = srv.listen("l", "127.0.0.1:0", 4);
    let out = cli.cmd(&format!("connect pool 127.0.0.1:{port} 2"));
    srv.cmd("accept a l 2");
    srv.cmd("close a");
    srv.cmd("close l");

    // The client ends enter CLOSE_WAIT as the server's FINs arrive.
    let sockets = sockets_once(&ns, |s| recv_qs(&toward(s, port, "CLOSE-WAIT")) == [1, 1]);
    assert!(local(&sockets, port, "LISTEN").is_empty());
    let cw = toward(&sockets, port, "CLOSE-WAIT");
    let mut local_ports: Vec<u16> = cw.iter().map(|s| s.local_port).collect();
    local_ports.sort_unstable();
    let mut expected = ports(&out, "local_ports");
    expected.sort_unstable();
    assert_eq!(local_ports, expected);
    assert!(
        cw.iter()
            .all(|s| s.recv_q == 1 && s.user_names() == ["pooler"])
    );
    let server_ends_gone_to_fin_wait2 = || local(&ns.sockets(), port, "FIN-WAIT-2").len() == 2;
    assert!(wait_until(SETTLE, server_ends_gone_to_fin_wait2));
}

#[test]
fn established_idle_pair_and_keepalive() {
    let (ns, mut srv, mut cli) = scene("selftest-est", "server", "client");
    let port = srv.listen("l", "127.0.0.1:0", 4);
    cli.cmd(&format!("connect c 127.0.0.1:{port} 1"));
    srv.cmd("accept a l 1");
    cli.cmd("keepalive c on");

    let sockets = ns.sockets();
    let server_end = local(&sockets, port, "ESTAB");
    let client_end = toward(&sockets, port, "ESTAB");
    assert_eq!((server_end.len(), client_end.len()), (1, 1), "{sockets:#?}");
    assert_eq!(server_end[0].user_names(), ["server"]);
    assert_eq!(client_end[0].user_names(), ["client"]);
    for s in [&server_end[0], &client_end[0]] {
        assert_eq!((s.recv_q, s.send_q), (0, 0));
    }
    assert!(
        client_end[0]
            .timer
            .as_deref()
            .is_some_and(|t| t.starts_with("keepalive")),
        "{client_end:#?}"
    );
    assert_eq!(server_end[0].timer, None);
}

#[test]
fn socket_shared_with_a_forked_child() {
    let (ns, mut srv, mut cli) = scene("selftest-fork", "parent", "peer");
    let port = srv.listen("l", "[::]:0", 4);
    // A dual-stack listener accepts IPv4 as v4-mapped IPv6.
    cli.cmd(&format!("connect c 127.0.0.1:{port} 1"));
    srv.cmd("accept a l 1");
    cli.cmd("close c");
    let child = pid_in(&srv.cmd("fork kid holder"));

    let sockets = sockets_once(&ns, |s| local(s, port, "CLOSE-WAIT").len() == 1);
    let cw = local(&sockets, port, "CLOSE-WAIT");
    assert_eq!(cw.len(), 1);
    assert_eq!(cw[0].local_ip, "::ffff:127.0.0.1");
    assert_eq!(cw[0].user_names(), ["holder", "parent"]);
    let pids: Vec<u32> = cw[0].users.iter().map(|u| u.pid).collect();
    assert!(
        pids.contains(&child) && pids.contains(&srv.pid()),
        "{pids:?}"
    );

    // The parent lets go: the child alone holds it.
    srv.cmd("close a");
    assert_eq!(
        local(&ns.sockets(), port, "CLOSE-WAIT")[0].user_names(),
        ["holder"]
    );
    // The child dies: the socket is closed and leaves CLOSE_WAIT.
    srv.cmd("kill-child kid");
    assert!(wait_until(SETTLE, || local(
        &ns.sockets(),
        port,
        "CLOSE-WAIT"
    )
    .is_empty()));
}

fn pid_in(reply: &serde_json::Value) -> u32 {
    reply["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .expect("pid")
}

#[test]
fn load_builds_each_state_exactly() {
    let ns = Netns::new("selftest-load");
    let mut loader = Actor::spawn(&ns, "loader");
    // More than one batch of 512, to cover the batching.
    let n = 600;
    let mut load = |state: &str| {
        port_of(
            &loader.cmd(&format!("load 127.0.0.1:0 {n} {state}")),
            "port",
        )
    };
    let est = load("established");
    let cw = load("close_wait");
    let fw2 = load("fin_wait2");
    let tw = load("time_wait");
    let aq = load("accept_queue");

    let expected = |s: &[SsSocket]| {
        let count = |v: Vec<SsSocket>| v.len();
        let held = |v: &[SsSocket]| v.iter().all(|s| s.user_names() == ["loader"]);
        let free = |v: &[SsSocket]| v.iter().all(|s| s.users.is_empty() && s.inode == 0);
        count(local(s, est, "ESTAB")) == n
            && count(toward(s, est, "ESTAB")) == n
            && local(s, cw, "CLOSE-WAIT").len() == n
            && local(s, cw, "CLOSE-WAIT").iter().all(|s| s.recv_q == 1)
            && held(&toward(s, cw, "FIN-WAIT-2"))
            && count(toward(s, cw, "FIN-WAIT-2")) == n
            && count(local(s, fw2, "CLOSE-WAIT")) == n
            && free(&toward(s, fw2, "FIN-WAIT-2"))
            && count(toward(s, fw2, "FIN-WAIT-2")) == n
            && count(toward(s, tw, "TIME-WAIT")) == n
            && s.iter().filter(|x| x.local_port == tw).count() == 1
            && free(&local(s, aq, "ESTAB"))
            && count(local(s, aq, "ESTAB")) == n
            && held(&toward(s, aq, "ESTAB"))
            && local(s, aq, "LISTEN")[0].recv_q == n as u64
    };
    assert!(wait_until(SETTLE, || expected(&ns.sockets())), "{:#?}", {
        let s = ns.sockets();
        let mut states = std::collections::BTreeMap::new();
        for x in &s {
            *states.entry(x.state.clone()).or_insert(0) += 1;
        }
        states
    });

    // Loads that cannot fit fail up front, with the reason.
    let too_many_fds = loader.try_cmd("load 127.0.0.1:0 10000 established");
    assert!(too_many_fds.is_err_and(|e| e.contains("fds")));
    // Accept queues are bounded by this namespace's somaxconn, and only by it.
    ns.sysctl("net.core.somaxconn", "500");
    assert_eq!(ns.read_sysctl("net.core.somaxconn"), "500");
    let host = std::fs::read_to_string("/proc/sys/net/core/somaxconn").expect("host sysctl");
    assert_ne!(host.trim(), "500", "the sysctl leaked out of the namespace");
    let too_deep = loader.try_cmd("load 127.0.0.1:0 501 accept_queue");
    assert!(too_deep.is_err_and(|e| e.contains("somaxconn=500")));
}

#[test]
fn actor_reports_errors_without_dying() {
    let ns = Netns::new("selftest-err");
    let mut a = Actor::spawn(&ns, "errs");
    let refused = a.try_cmd("connect c 127.0.0.1:9 1");
    assert!(refused.is_err_and(|e| e.contains("refused")));
    assert!(a.try_cmd("frobnicate").is_err());
    assert!(a.try_cmd("read nothing").is_err());
    a.listen("l", "127.0.0.1:0", 1);
    assert!(
        a.try_cmd("listen l 127.0.0.1:0 1").is_err(),
        "ids are not reused"
    );
    assert_eq!(a.cmd("pid")["pid"].as_u64(), Some(u64::from(a.pid())));
    // comm is the actor's name, exactly.
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", a.pid())).expect("comm");
    assert_eq!(comm.trim_end(), "errs");
}

#[test]
fn exposition_parser_is_exact_and_strict() {
    let text = "\
# HELP tcpstate_connections Connections per state.\\nSecond line.
# TYPE tcpstate_connections gauge
tcpstate_connections{state=\"close_wait\",direction=\"inbound\",port=\"80\"} 3
tcpstate_connections{port=\"other\",direction=\"outbound\",state=\"close_wait\"} 1e3
tcpstate_build_info{version=\"a\\\"b\\\\c\"} 1
tcpstate_bucket{le=\"+Inf\"} 2
up 1 1700000000000
";
    let e = Exposition::parse(text);
    assert_eq!(
        e.get(
            "tcpstate_connections",
            &[
                ("port", "80"),
                ("state", "close_wait"),
                ("direction", "inbound")
            ]
        ),
        3.0
    );
    assert_eq!(
        e.sum("tcpstate_connections", &[("state", "close_wait")]),
        1003.0
    );
    assert_eq!(e.get("tcpstate_build_info", &[("version", "a\"b\\c")]), 1.0);
    assert_eq!(e.get("tcpstate_bucket", &[("le", "+Inf")]), 2.0);
    assert_eq!(
        e.help("tcpstate_connections"),
        Some("Connections per state.\nSecond line.")
    );
    assert_eq!(e.kind("tcpstate_connections"), Some("gauge"));
    assert_eq!(e.timestamped, 1);
    assert_eq!(e.try_get("tcpstate_connections", &[("port", "80")]), None);

    let missing = std::panic::catch_unwind(|| e.get("tcpstate_connections", &[("port", "81")]));
    let message = *missing
        .expect_err("absent series panics")
        .downcast::<String>()
        .expect("message");
    assert!(message.contains("port=\"other\""), "{message}");

    for bad in [
        "a{b=\"c\"} 1\na{b=\"c\"} 2",
        "a{b=c} 1",
        "a 1 x",
        "a{b=\"c\",b=\"d\"} 1",
    ] {
        assert!(
            std::panic::catch_unwind(|| Exposition::parse(bad)).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn http_responses_are_parsed_with_either_framing() {
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let r = support::parse_response(chunked).expect("chunked");
    assert_eq!((r.status, r.text().as_str()), (200, "hello world"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let sized = b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\nnot";
    let r = support::parse_response(sized).expect("sized");
    assert_eq!((r.status, r.body.as_slice()), (404, b"not".as_slice()));
}

#[test]
fn ss_lines_are_parsed_with_owners_and_timers() {
    let text = "\
CLOSE-WAIT 6 0 127.0.0.1:41911 127.0.0.1:53826 users:((\"kid\",pid=7,fd=9),(\"srv\",pid=6,fd=9)) timer:(keepalive,1min,0) ino:25043 sk:a <->
LISTEN 2 2 [::]:41911 [::]:* ino:25036 sk:2 <->
TIME-WAIT 0 0 127.0.0.1:53826 127.0.0.1:41911 timer:(timewait,59sec,0) ino:0 sk:5
UNCONN 0 0 127.0.0.1:* 127.0.0.1:8080  ino:0 sk:163cbd8 cgroup:unreachable:1 ---
";
    let s = support::parse_ss(text);
    assert_eq!(
        s.len(),
        3,
        "a bound-inactive socket (seen in a CI run) is left out"
    );
    assert_eq!(s[0].recv_q, 6);
    assert_eq!(s[0].user_names(), ["kid", "srv"]);
    assert_eq!(s[0].users[1].pid, 6);
    assert_eq!(s[0].timer.as_deref(), Some("keepalive,1min,0"));
    assert_eq!((s[1].local_ip.as_str(), s[1].peer_port), ("::", None));
    assert!(s[2].inode == 0 && s[2].users.is_empty());
}

/// Temp files and directories are removed when dropped, and when the test holding them
/// fails: a panic unwinds through their guards.
#[test]
fn temp_files_and_dirs_are_removed_on_drop_and_on_panic() {
    use std::path::PathBuf;
    let file = support::temp_config("x = 1\n");
    let dir = support::TempDir::new("selftest");
    let inside = PathBuf::from(dir.file("a.toml", "y = 2\n"));
    assert_eq!(std::fs::read_to_string(&file).expect("read"), "x = 1\n");
    assert_eq!(std::fs::read_to_string(&inside).expect("read"), "y = 2\n");
    let paths = [PathBuf::from(file.path()), dir.path().to_path_buf()];
    drop((file, dir));
    for path in &paths {
        assert!(!path.exists(), "{} left behind", path.display());
    }

    let (tx, rx) = std::sync::mpsc::channel();
    let failed = std::thread::spawn(move || {
        let file = support::temp_file("web.yml", "");
        let dir = support::TempDir::new("selftest");
        dir.file("b.toml", "");
        let sent = [PathBuf::from(file.path()), dir.path().to_path_buf()];
        tx.send(sent).expect("send");
        panic!("a test failing on purpose");
    })
    .join();
    assert!(failed.is_err());
    for path in rx.recv().expect("the paths") {
        assert!(!path.exists(), "{} left behind", path.display());
    }
}
