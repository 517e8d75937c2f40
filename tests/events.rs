//! The events mode's kernel edge against real sockets: the eBPF program attached to
//! sock:inet_sock_set_state, transitions counted exactly for scripted connections in
//! private network namespaces, events joined to sock_diag by cookie, namespaces kept
//! apart, losses counted, and a clear error without privileges.
//!
//! Needs root (namespaces, CAP_BPF), kernel BTF, and setpriv (util-linux). Every test
//! attaches its own program with the kernel's namespace filter set to the test's
//! namespaces: counts and events are exact for them alone, and neither tests running
//! in parallel nor churn elsewhere on the host (the busy-host CI step) reach them.

#![cfg(feature = "events")]

mod support;

use std::collections::HashSet;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use support::{Netns, SsSocket, wait_until};
use tcpstate_exporter::kernel::events::{
    EventFilter, EventSource, EventsConfig, StateChange, Transitions, monotonic_now_ns,
};
use tcpstate_exporter::kernel::record::TcpState::{self, *};
use tcpstate_exporter::kernel::sockdiag::{DiagSocket, DumpRequest};
use tcpstate_testkit::churn::{self, Churn, Plan};

const WAIT: Duration = Duration::from_secs(10);

/// Attaches with per-namespace counting on, sending `events`, and the kernel's namespace
/// filter set to `namespaces`: nothing of any other namespace (other tests, the host,
/// churn beside the suite) is counted or sent.
fn attach(events: EventFilter, namespaces: &[&Netns]) -> EventSource {
    let config = EventsConfig {
        events,
        count_per_netns: true,
        ..filtered()
    };
    attach_filtered(&config, namespaces)
}

/// The default configuration with the namespace filter on.
fn filtered() -> EventsConfig {
    EventsConfig {
        netns_filter: true,
        ..EventsConfig::default()
    }
}

/// Attaches per `config` and sets the namespace filter to `namespaces`.
fn attach_filtered(config: &EventsConfig, namespaces: &[&Netns]) -> EventSource {
    let mut source = EventSource::attach(config)
        .unwrap_or_else(|e| panic!("attach failed ({}): {e}", e.reason()));
    let inodes = namespaces.iter().map(|ns| inum(ns)).collect();
    source
        .maps_mut()
        .filter_netns(&inodes)
        .expect("set the namespace filter");
    source
}

/// The namespace's inode: what the kernel reports as `ns.inum`.
fn inum(ns: &Netns) -> u32 {
    let meta = std::fs::metadata(ns.path()).expect("netns bind mount");
    u32::try_from(meta.ino()).expect("netns inodes fit in 32 bits")
}

fn netns_transitions(source: &EventSource, inum: u32) -> Transitions {
    source
        .transitions_by_netns()
        .expect("read the per-namespace map")
        .remove(&inum)
        .unwrap_or_default()
}

/// The namespace's transitions and the full sockets `ss` shows (`full_socket_state`),
/// read when two reads of the transitions around one of `ss` agree: nothing moved
/// between them.
fn settled_transitions(
    source: &EventSource,
    inum: u32,
    ns: &Netns,
) -> (Transitions, Vec<(TcpState, SsSocket)>) {
    for _ in 0..20 {
        let before = netns_transitions(source, inum);
        let sockets = ns.sockets_unowned();
        let after = netns_transitions(source, inum);
        if before.nonzero().eq(after.nonzero()) {
            let held = sockets
                .into_iter()
                .filter_map(|socket| Some((full_socket_state(&socket)?, socket)))
                .collect();
            return (after, held);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the namespace's transitions never held still for one ss read");
}

/// `ss`'s view of held full sockets, for messages.
fn describe_held(held: &[(TcpState, SsSocket)]) -> Vec<String> {
    held.iter()
        .map(|(_, s)| {
            format!(
                "{} {}:{} -> {}:{:?}",
                s.state, s.local_ip, s.local_port, s.peer_ip, s.peer_port
            )
        })
        .collect()
}

/// The state of a full socket as `ss` shows it; `None` for a time-wait socket, which
/// `ss` spells by its substate (`TIME-WAIT`, or `FIN-WAIT-2` for an orphan whose peer
/// has not sent its FIN: the full socket left FIN_WAIT2 for CLOSE when it was replaced)
/// and whose timer it names `timewait`, and for `SYN-RECV`, also a request socket's.
fn full_socket_state(socket: &SsSocket) -> Option<TcpState> {
    let time_wait = socket
        .timer
        .as_deref()
        .is_some_and(|t| t.starts_with("timewait"));
    let state = socket.tcp_state()?;
    (!time_wait && !matches!(state, TimeWait | SynRecv)).then_some(state)
}

/// What a failed count is to be read against: the namespace's table by `ss`, the
/// counts that fell out of the per-namespace map, and the invocations of this process's
/// BPF programs the kernel skipped (`recursion_misses` in each program's fdinfo: a
/// tracing program is not run again on a CPU where it is already running).
fn counting_context(ns: &Netns, source: &EventSource) -> String {
    let ss = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .args(["ss", "-tan"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("ss failed: {e}"));
    let overflow = source
        .counts()
        .map(|c| c.netns_overflow.to_string())
        .unwrap_or_else(|e| e.to_string());
    let misses: Vec<String> = std::fs::read_dir("/proc/self/fdinfo")
        .into_iter()
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .filter_map(|info| {
            let line = info.lines().find(|l| l.starts_with("recursion_misses:"))?;
            Some(line.split_whitespace().last()?.to_string())
        })
        .collect();
    format!("netns_overflow {overflow}; recursion_misses per program {misses:?}; ss -tan:\n{ss}")
}

/// How many transitions `counted` lacks against `expected` (both sorted (from, to, n)
/// lists), or `None` if it counts one that `expected` lacks or more of one.
fn shortfall(counted: &[(u8, u8, u64)], expected: &[(u8, u8, u64)]) -> Option<u64> {
    let want = |from, to| {
        expected
            .iter()
            .find(|(f, t, _)| (*f, *t) == (from, to))
            .map_or(0, |(_, _, n)| *n)
    };
    let mut short = expected.iter().map(|(_, _, n)| n).sum::<u64>();
    for (from, to, n) in counted {
        short = short.checked_sub(*n).filter(|_| *n <= want(*from, *to))?;
    }
    Some(short)
}

/// Sockets in `state` in the namespace, by sock_diag, as (cookie, local, remote).
fn diag_sockets(ns: &Netns, state: TcpState) -> HashSet<(u64, SocketAddr, SocketAddr)> {
    ns.run(|| {
        let mut socket = DiagSocket::open().expect("sock_diag socket");
        let mut found = HashSet::new();
        socket
            .dump(DumpRequest::for_states([state], false), &mut |r| {
                found.insert((
                    r.cookie,
                    SocketAddr::new(r.local_addr, r.local_port),
                    SocketAddr::new(r.remote_addr, r.remote_port),
                ));
            })
            .expect("sock_diag dump");
        found
    })
}

/// `count` connections to a listener on `port` in `ns`: (listener, server ends, client ends).
fn connect(ns: &Netns, port: u16, count: usize) -> (TcpListener, Vec<TcpStream>, Vec<TcpStream>) {
    ns.run(|| {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
        let clients: Vec<TcpStream> = (0..count)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        let servers: Vec<TcpStream> = (0..count)
            .map(|_| listener.accept().expect("accept").0)
            .collect();
        (listener, servers, clients)
    })
}

/// A scripted life of 3 connections; every transition of the namespace is counted
/// exactly, by the kernel-side map, and each one is also delivered as an event.
#[test]
fn transitions_of_scripted_connections_are_counted_exactly() {
    let ns = Netns::new("ev-count");
    let mut source = attach(EventFilter::all(), &[&ns]);
    let inum = inum(&ns);

    let (listener, mut servers, clients) = connect(&ns, 8080, 3);
    // The peers close: the server ends enter CLOSE_WAIT.
    drop(clients);
    assert!(
        wait_until(WAIT, || diag_sockets(&ns, CloseWait).len() == 3),
        "3 server ends in CLOSE_WAIT"
    );
    // The server reads EOF, then closes: LAST_ACK, then CLOSE when the peer ACKs.
    for server in &mut servers {
        let mut buf = [0u8; 1];
        assert_eq!(server.read(&mut buf).expect("read EOF"), 0);
    }
    drop(servers);
    drop(listener);
    let mut expected: Vec<(u8, u8, u64)> = [
        (Close, Listen, 1),          // listen()
        (Listen, Close, 1),          // the listener closed
        (Close, SynSent, 3),         // connect()
        (SynSent, Established, 3),   // SYN-ACK received
        (Listen, SynRecv, 3),        // the child is cloned from the listener
        (SynRecv, Established, 3),   // the client's ACK completes the handshake
        (Established, FinWait1, 3),  // the client closes first
        (FinWait1, FinWait2, 3),     // its FIN is ACKed
        (Established, CloseWait, 3), // the server end receives that FIN
        (CloseWait, LastAck, 3),     // the server closes
        (LastAck, Close, 3),         // its FIN is ACKed
        // The server's FIN reaches the client in FIN_WAIT2: a timewait sock takes over
        // and the full socket is closed (TIME_WAIT is no state change of a full socket).
        (FinWait2, Close, 3),
    ]
    .map(|(from, to, n)| (from as u8, to as u8, n))
    .to_vec();
    expected.sort_unstable();
    let mut counted = Vec::new();
    let settled = wait_until(WAIT, || {
        counted = netns_transitions(&source, inum).nonzero().collect();
        counted.sort_unstable();
        counted == expected
    });
    let skipped = source.counts().expect("read the counters").skipped;
    if !settled && skipped > 0 {
        // The kernel skipped the program for some transitions (a softirq interrupted
        // it): the counts can only be short, by at most what it skipped, and the events
        // below cannot be exact either. The exporter counts those as lost events.
        let short = shortfall(&counted, &expected);
        assert!(
            short.is_some_and(|short| short <= skipped),
            "{skipped} skipped, yet transitions {counted:?} against {expected:?}; {}",
            counting_context(&ns, &source)
        );
        eprintln!("the kernel skipped the program {skipped} times: exactness not checked");
        return;
    }
    assert!(
        settled,
        "transitions in the namespace: {counted:?}, want {expected:?}; {}",
        counting_context(&ns, &source)
    );
    let transitions = netns_transitions(&source, inum);
    assert_eq!(transitions.get(Established, CloseWait), 3);
    assert_eq!(transitions.total(), 32);

    // The same transitions, one event each. The program counts before it sends, so the
    // last event may still be in flight when the counts are complete.
    let mut events = Vec::new();
    assert!(wait_until(WAIT, || {
        source.drain(|e| {
            if e.netns.inum == inum {
                events.push(*e)
            }
        });
        events.len() >= 32
    }));
    let mut from_events: Vec<(u8, u8, u64)> = Vec::new();
    for e in &events {
        match from_events
            .iter_mut()
            .find(|(f, t, _)| (*f, *t) == (e.from, e.to))
        {
            Some(slot) => slot.2 += 1,
            None => from_events.push((e.from, e.to, 1)),
        }
    }
    from_events.sort_unstable();
    assert_eq!(from_events, expected);
    let counts = source.counts().expect("counters");
    assert_eq!(counts.lost, 0, "a 1 MiB ring holds this test's events");
    assert_eq!(
        counts.transitions.total(),
        32,
        "with the filter, the global matrix is the namespace's transitions"
    );
}

/// A CLOSE_WAIT event names the socket by the cookie and addresses sock_diag reports,
/// and its timestamp is on CLOCK_MONOTONIC.
#[test]
fn close_wait_events_carry_the_sock_diag_cookie() {
    let ns = Netns::new("ev-cookie");
    let mut source = attach(EventFilter::touching([CloseWait]), &[&ns]);
    let inum = inum(&ns);

    let (_listener, servers, clients) = connect(&ns, 8081, 2);
    let before = monotonic_now_ns();
    drop(clients);
    assert!(wait_until(WAIT, || diag_sockets(&ns, CloseWait).len() == 2));
    let after = monotonic_now_ns();

    let mut entered: Vec<StateChange> = Vec::new();
    source.drain(|e| {
        if e.netns.inum == inum {
            entered.push(*e)
        }
    });
    assert_eq!(
        entered.len(),
        2,
        "only transitions touching CLOSE_WAIT: {entered:?}"
    );
    let from_events: HashSet<(u64, SocketAddr, SocketAddr)> = entered
        .iter()
        .map(|e| {
            assert_eq!(
                (e.from_state(), e.to_state()),
                (Some(Established), Some(CloseWait))
            );
            assert!(before <= e.monotonic_ns && e.monotonic_ns <= after, "{e:?}");
            assert_eq!(e.local.port(), 8081);
            (e.cookie, e.local, e.remote)
        })
        .collect();
    assert_eq!(from_events, diag_sockets(&ns, CloseWait));
    assert!(from_events.iter().all(|(cookie, _, _)| *cookie != 0));

    // Leaving CLOSE_WAIT is an event for the same cookie.
    drop(servers);
    let mut left: HashSet<u64> = HashSet::new();
    assert!(wait_until(WAIT, || {
        source.drain(|e| {
            if e.netns.inum == inum && e.from_state() == Some(CloseWait) {
                left.insert(e.cookie);
            }
        });
        left.len() == 2
    }));
    let cookies: HashSet<u64> = from_events.iter().map(|(c, _, _)| *c).collect();
    assert_eq!(left, cookies);
}

/// One program sees every namespace; each event says which one it came from.
#[test]
fn events_from_two_namespaces_carry_their_own_namespace() {
    let (a, b) = (Netns::new("ev-a"), Netns::new("ev-b"));
    let mut source = attach(EventFilter::touching([CloseWait]), &[&a, &b]);
    let (inum_a, inum_b) = (inum(&a), inum(&b));
    assert_ne!(inum_a, inum_b);

    // Same addresses and port in both: only the namespace tells them apart.
    let (_la, _sa, ca) = connect(&a, 8082, 1);
    let (_lb, _sb, cb) = connect(&b, 8082, 2);
    drop(ca);
    drop(cb);
    let mut seen: Vec<StateChange> = Vec::new();
    assert!(wait_until(WAIT, || {
        source.drain(|e| {
            if e.netns.inum == inum_a || e.netns.inum == inum_b {
                seen.push(*e)
            }
        });
        seen.len() == 3
    }));
    let in_a: Vec<&StateChange> = seen.iter().filter(|e| e.netns.inum == inum_a).collect();
    let in_b: Vec<&StateChange> = seen.iter().filter(|e| e.netns.inum == inum_b).collect();
    assert_eq!((in_a.len(), in_b.len()), (1, 2));
    // The never-reused namespace cookie agrees with the inode.
    assert!(in_b.iter().all(|e| e.netns.cookie == in_b[0].netns.cookie));
    assert_ne!(in_a[0].netns.cookie, in_b[0].netns.cookie);
    // Polled: the tracepoint fires before the kernel stores the new state, so a dump
    // right after the events may still show the sockets ESTABLISHED.
    assert!(
        wait_until(WAIT, || diag_sockets(&a, CloseWait).len() == 1),
        "{:?}",
        diag_sockets(&a, CloseWait)
    );
    let cookies_b: HashSet<u64> = in_b.iter().map(|e| e.cookie).collect();
    let diag_cookies =
        |ns: &Netns| -> HashSet<u64> { diag_sockets(ns, CloseWait).iter().map(|s| s.0).collect() };
    assert!(
        wait_until(WAIT, || diag_cookies(&b) == cookies_b),
        "events {cookies_b:?}, sock_diag {:?}",
        diag_cookies(&b)
    );

    let by_netns = source.transitions_by_netns().expect("per-namespace map");
    assert_eq!(by_netns[&inum_a].get(Established, CloseWait), 1);
    assert_eq!(by_netns[&inum_b].get(Established, CloseWait), 2);
    // A namespace's counts can be dropped once it is gone.
    let mut source = source;
    assert!(source.maps_mut().forget_netns(inum_a).expect("remove keys") > 0);
    assert!(
        !source
            .transitions_by_netns()
            .expect("map")
            .contains_key(&inum_a)
    );
}

/// Per-namespace counting is off by default: the global counts still see every
/// transition, and the per-namespace map stays empty.
#[test]
fn per_namespace_counting_is_off_by_default() {
    let ns = Netns::new("ev-global");
    let mut source = attach_filtered(&filtered(), &[&ns]);
    let inum = inum(&ns);
    let before = source.counts().expect("counters").transitions;
    let (_listener, _servers, clients) = connect(&ns, 8084, 2);
    drop(clients);
    let mut entered = 0;
    assert!(wait_until(WAIT, || {
        source.drain(|e| {
            if e.netns.inum == inum {
                entered += 1
            }
        });
        entered == 2
    }));
    let after = source.counts().expect("counters").transitions;
    assert_eq!(
        after.get(Established, CloseWait),
        before.get(Established, CloseWait) + 2,
        "{before:?} -> {after:?}"
    );
    assert!(source.transitions_by_netns().expect("map").is_empty());
}

/// A ring that is never drained fills up: further events are counted as lost, and the
/// kernel-side counts stay exact.
#[test]
fn a_full_ring_counts_lost_events_and_keeps_counts_exact() {
    let page = 4096;
    let config = EventsConfig {
        ring_bytes: page,
        events: EventFilter::all(),
        count_per_netns: true,
        ..filtered()
    };
    let ns = Netns::new("ev-lost");
    let mut source = attach_filtered(&config, &[&ns]);
    let inum = inum(&ns);
    // 40 connections: 280+ events, a page holds 51.
    let (listener, servers, clients) = connect(&ns, 8083, 40);
    drop(clients);
    assert!(wait_until(WAIT, || diag_sockets(&ns, CloseWait).len() == 40));
    assert!(wait_until(WAIT, || {
        netns_transitions(&source, inum).get(Established, CloseWait) == 40
    }));
    drop((listener, servers));
    let lost = source.lost().expect("counters");
    assert!(lost > 0, "a one-page ring cannot hold 280 events");
    let drained = source.drain(|_| {});
    assert!(
        drained <= (page / 80) as usize,
        "{drained} events from one page"
    );
    let transitions = netns_transitions(&source, inum);
    assert_eq!(transitions.get(Close, SynSent), 40);
    assert_eq!(transitions.get(SynSent, Established), 40);
}

/// The port of the connection `transitions_the_kernel_skips_...` keeps half-closed.
const KEPT_PORT: u16 = 8090;

/// Loopback connections for argv[1] seconds, flat out: the client closes, the server
/// end reads nothing and closes too (FIN both ways, clients end in TIME_WAIT).
const GRACEFUL_CHURN: &str = r#"
import socket, sys, threading, time
deadline = time.time() + float(sys.argv[1])
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1024)
def serve():
    while True:
        conn, _ = server.accept()
        conn.close()
threading.Thread(target=serve, daemon=True).start()
while time.time() < deadline:
    client = socket.socket()
    client.connect(server.getsockname())
    client.close()
"#;

/// Under churn the kernel skips the main program for transitions in softirqs that
/// interrupt it (its recursion_misses: ~0.1 % of transitions here); the nested program
/// handles those, so the per-namespace counts still balance: once every connection is
/// closed, each state was left as often as it was entered.
#[test]
fn transitions_the_kernel_skips_the_main_program_for_are_still_counted() {
    let ns = Netns::new("ev-nested");
    let source = attach(EventFilter::touching([CloseWait]), &[&ns]);
    let inum = inum(&ns);
    let mut counts = source.counts().expect("counters");
    // One connection kept half-closed throughout: its server end stays in CLOSE_WAIT (a
    // full socket that entered its state and never left it), its client's end becomes a
    // time-wait socket in FIN_WAIT2 (whose full socket left it). The balance below must
    // count the one as still in its state and not the other.
    let (_listener, _held_open, clients) = connect(&ns, KEPT_PORT, 1);
    drop(clients);
    // Three processes churning connections that both ends close gracefully (the
    // testkit's churn, whose servers reset, made no skips in 30 s here), until the
    // nested program has had to act.
    for _ in 0..6 {
        let churners: Vec<std::process::Child> = (0..3)
            .map(|_| {
                ns.command("python3")
                    .args(["-c", GRACEFUL_CHURN, "5"])
                    .spawn()
                    .expect("python3")
            })
            .collect();
        // Read while skips happen: a skip must never show as lost on its way to rescue.
        let churning = std::time::Instant::now();
        while churning.elapsed() < Duration::from_secs(4) {
            let now = source.counts().expect("counters");
            assert_eq!(now.skipped, 0, "read during churn: {now:?}");
            std::thread::sleep(Duration::from_millis(2));
        }
        for mut churner in churners {
            assert!(churner.wait().expect("churner").success(), "churner failed");
        }
        counts = source.counts().expect("counters");
        if counts.rescued >= 100 {
            break;
        }
    }
    assert!(
        counts.rescued >= 100,
        "30 s of churn and the kernel skipped the main program only {} times: {counts:?}",
        counts.rescued
    );
    // Every churned connection closed: only time-wait sockets left of them (the clients'
    // ends, closed first). A full socket its last transition still holds (an orphan
    // waiting for its peer's FIN or ACK on a busy host: the CI run of 2026-12-03 07:26
    // failed waiting for one) is counted as in its state, as the kept connection's are.
    let kept = |s: &SsSocket| s.local_port == KEPT_PORT || s.peer_port == Some(KEPT_PORT);
    // Waited for, not required: whatever is still held is counted below.
    wait_until(WAIT, || {
        let sockets = ns.sockets_unowned();
        sockets
            .iter()
            .all(|s| kept(s) || full_socket_state(s).is_none())
    });
    let (transitions, held) = settled_transitions(&source, inum, &ns);
    let lingering = describe_held(&held);
    let mut holding = [0u64; 256];
    for (state, _) in &held {
        holding[*state as usize] += 1;
    }
    // The kept connection exactly: its listener and server end are full sockets, its
    // client's end in FIN-WAIT-2 is not.
    let mut kept_states: Vec<&str> = held
        .iter()
        .filter(|(_, s)| kept(s))
        .map(|(state, s)| {
            assert_eq!(
                s.local_port, KEPT_PORT,
                "a client end counted: {lingering:?}"
            );
            state.name()
        })
        .collect();
    kept_states.sort_unstable();
    assert_eq!(
        kept_states,
        ["close_wait", "listen"],
        "the kept connection's full sockets: {lingering:?}"
    );
    let counts = source.counts().expect("counters");
    let (mut entered, mut left) = ([0u64; 256], [0u64; 256]);
    for (from, to, n) in transitions.nonzero() {
        left[usize::from(from)] += n;
        entered[usize::from(to)] += n;
    }
    // A socket's life begins in CLOSE (made) or LISTEN (a child cloned from its
    // listener: LISTEN -> SYN_RECV) and ends in CLOSE: every other state balances, but
    // for the sockets still in it. FIN_WAIT1 is reported apart: under this churn a few
    // of its exits in 10,000 (none skipped by the kernel: its recursion_misses are all
    // rescued) never reach the tracepoint's programs at all, a drift not understood yet
    // (see README).
    let (close, listen, fin_wait1) = (Close as usize, Listen as usize, FinWait1 as usize);
    let unbalanced: Vec<(usize, u64, u64, u64)> = (0..256)
        .filter(|&state| ![close, listen, fin_wait1].contains(&state))
        .filter(|&state| entered[state] != left[state] + holding[state])
        .map(|state| (state, entered[state], left[state], holding[state]))
        .collect();
    // Without the nested program every skip would leave a state entered and never
    // left, or the reverse. Every skip must be rescued; a rescue may double a
    // transition the main program handled (its key pushed out of the ring of 16 by
    // more transitions between the two programs): seen up to 5 in 175, so up to one
    // in ten is allowed.
    let imbalance: u64 = unbalanced
        .iter()
        .map(|(_, e, l, h)| e.abs_diff(l + h))
        .sum();
    assert!(
        counts.skipped == 0 && imbalance <= counts.rescued / 10,
        "states (entered, left, still in) unequal {unbalanced:?} with {} transitions \
         skipped by both programs, {} rescued; still held: {lingering:?}; {}",
        counts.skipped,
        counts.rescued,
        counting_context(&ns, &source)
    );
    let drift = entered[fin_wait1].abs_diff(left[fin_wait1] + holding[fin_wait1]);
    eprintln!(
        "rescued {}, imbalance {imbalance}, FIN_WAIT1 drift {drift} of {}, still held \
         {lingering:?}",
        counts.rescued, entered[fin_wait1]
    );
}

/// With the filter on, the transitions of a namespace outside it are neither counted
/// nor sent: only tallied as filtered. The filter follows the set user space gives it.
#[test]
fn namespaces_outside_the_filter_are_dropped_in_the_kernel() {
    let (inside, outside) = (Netns::new("ev-in"), Netns::new("ev-out"));
    let mut source = attach(EventFilter::touching([CloseWait]), &[&inside]);
    let (inum_in, inum_out) = (inum(&inside), inum(&outside));

    let (_l1, _s1, c1) = connect(&inside, 8085, 2);
    let (_l2, _s2, c2) = connect(&outside, 8085, 3);
    drop((c1, c2));
    assert!(wait_until(WAIT, || diag_sockets(&outside, CloseWait).len() == 3));
    let mut seen: Vec<u32> = Vec::new();
    assert!(wait_until(WAIT, || {
        source.drain(|e| seen.push(e.netns.inum));
        seen.len() >= 2
    }));
    assert_eq!(
        seen,
        vec![inum_in, inum_in],
        "only the filtered-in namespace's events"
    );
    // The outside namespace's 3 connections: 7 transitions each on both ends, and the
    // listener's own. Its sockets being in CLOSE_WAIT does not mean the clients have
    // taken the ACK of their FIN yet (FIN_WAIT1 -> FIN_WAIT2 may still be to come on a
    // busy host), so the tally is awaited, not read once.
    let mut counts = source.counts().expect("counters");
    assert!(
        wait_until(WAIT, || {
            counts = source.counts().expect("counters");
            counts.filtered >= 3 * 7
        }),
        "{counts:?}"
    );
    assert_eq!(counts.transitions.get(Established, CloseWait), 2);
    assert!(
        !source
            .transitions_by_netns()
            .expect("map")
            .contains_key(&inum_out)
    );

    // Swap: now only the other namespace passes.
    let swapped = [inum_out].into_iter().collect();
    source.maps_mut().filter_netns(&swapped).expect("filter");
    let (_l3, _s3, c3) = connect(&inside, 8086, 1);
    let (_l4, _s4, c4) = connect(&outside, 8086, 1);
    drop((c3, c4));
    seen.clear();
    assert!(wait_until(WAIT, || {
        source.drain(|e| seen.push(e.netns.inum));
        !seen.is_empty()
    }));
    assert!(wait_until(WAIT, || diag_sockets(&inside, CloseWait).len() == 3));
    source.drain(|e| seen.push(e.netns.inum));
    assert_eq!(seen, vec![inum_out]);
}

/// Without CAP_BPF / CAP_SYS_ADMIN attaching fails with an error that names the missing
/// privilege, not a panic.
#[test]
fn attaching_without_privileges_fails_with_a_clear_error() {
    if let Some(result) = attach_as_child() {
        return println!("RESULT {result}");
    }
    let result = attach_in_child(
        "attaching_without_privileges_fails_with_a_clear_error",
        "-all",
    );
    assert!(result.starts_with("not_permitted "), "{result}");
    assert!(result.contains("CAP_BPF"), "{result}");
}

/// CAP_BPF and CAP_PERFMON are all the events mode needs (no CAP_SYS_ADMIN).
#[test]
fn cap_bpf_and_cap_perfmon_suffice() {
    if let Some(result) = attach_as_child() {
        return println!("RESULT {result}");
    }
    let result = attach_in_child("cap_bpf_and_cap_perfmon_suffice", "-all,+bpf,+perfmon");
    assert_eq!(result, "attached");
}

const CHILD: &str = "TCPSTATE_EVENTS_CHILD";

/// In the child run of a privilege test: the outcome of an attach, as one line.
fn attach_as_child() -> Option<String> {
    std::env::var_os(CHILD)?;
    Some(match EventSource::attach(&EventsConfig::default()) {
        Ok(_) => "attached".to_string(),
        Err(e) => format!("{} {e}", e.reason()),
    })
}

/// Re-runs `test` (this binary) under setpriv with the capability bounding set
/// `bounding` (root's capabilities after exec are limited to it) and returns the
/// child's RESULT line.
fn attach_in_child(test: &str, bounding: &str) -> String {
    let binary = std::env::current_exe().expect("test binary path");
    let out = Command::new("setpriv")
        .arg("--inh-caps=-all")
        .arg(format!("--bounding-set={bounding}"))
        .arg("--")
        .arg(binary)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("setpriv (util-linux) runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the child must not panic: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| {
            l.split_once("RESULT ")
                .map(|(_, result)| result.to_string())
        })
        .unwrap_or_else(|| panic!("no RESULT line in {stdout}"))
}

/// Connection churn with and without the program attached, alternating in the same
/// run, in a private namespace: the overhead the events mode puts on the TCP stack.
/// A benchmark, not a check of speed: run it with
/// `cargo test --release --test events -- --ignored --nocapture churn`.
/// It asserts only what must hold at any speed: every connection made while attached
/// was counted, and nothing was lost.
///
/// The ring is drained after each round, outside the timed loop: the rates measure the
/// cost on the TCP path; what user space spends per event is printed apart (the
/// exporter drains on its sampler thread).
///
/// Two rates per round: connections per wall-clock second (what the machine delivers,
/// noisy on a shared machine) and per CPU second of the churning thread (loopback
/// softirq work, the BPF program included, is charged to that thread when the kernel
/// has no IRQ time accounting; steadier under other load).
#[test]
#[ignore = "benchmark; prints connections per second with and without the program"]
fn churn_overhead() {
    // More rounds narrow the error: TCPSTATE_BENCH_ROUNDS=60.
    let rounds: usize = std::env::var("TCPSTATE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20)
        .max(2);
    const ROUND: Duration = Duration::from_millis(400);
    let ns = Netns::new("ev-churn");
    let inum = inum(&ns);
    ns.run(|| churn_for(ROUND)); // warm-up
    // What the daemon attaches: CLOSE_WAIT events, the namespace filter (holding the
    // churning namespace), a wake-up mark at an eighth of the ring.
    let daemon = EventsConfig {
        ring_bytes: 16 << 20,
        wakeup_bytes: 2 << 20,
        ..filtered()
    };
    for (label, config) in [
        ("daemon: CLOSE_WAIT events, namespace filter", daemon),
        (
            "CLOSE_WAIT events, no namespace filter",
            EventsConfig {
                netns_filter: false,
                ..daemon
            },
        ),
        (
            "CLOSE_WAIT events, per-netns counts too",
            EventsConfig {
                count_per_netns: true,
                ..daemon
            },
        ),
        (
            "counting only, namespace filter",
            EventsConfig {
                events: EventFilter::touching([]),
                ..daemon
            },
        ),
        (
            "every transition as an event",
            EventsConfig {
                events: EventFilter::all(),
                ..daemon
            },
        ),
    ] {
        let (mut wall, mut cpu) = (RatioLog::default(), RatioLog::default());
        let (mut drained, mut drain_time) = (0usize, Duration::ZERO);
        for round in 0..rounds {
            // Alternate which goes first so drift (other load, frequency) cancels.
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            let mut rates = [Churn::default(); 2];
            for attached in order {
                let mut source = attached.then(|| attach_filtered(&config, &[&ns]));
                let established_to_close_wait = |s: &EventSource| {
                    s.counts()
                        .expect("counters")
                        .transitions
                        .get(Established, CloseWait)
                };
                let before = source.as_ref().map(established_to_close_wait);
                let churned = ns.run(|| churn_for(ROUND));
                if let (Some(source), Some(before)) = (&mut source, before) {
                    let started = std::time::Instant::now();
                    drained += source.drain(|e| {
                        std::hint::black_box(e);
                    });
                    drain_time += started.elapsed();
                    // Without the filter, other namespaces' connections may add to them.
                    let after = established_to_close_wait(source);
                    assert!(after - before >= churned.made, "every connection counted");
                    if config.count_per_netns {
                        let in_netns = netns_transitions(source, inum);
                        assert_eq!(in_netns.get(Established, CloseWait), churned.made);
                    }
                    assert_eq!(source.lost().expect("counters"), 0, "16 MiB ring");
                }
                rates[usize::from(attached)] = churned;
            }
            let [without, with] = rates;
            wall.add(without.per_wall_second(), with.per_wall_second());
            cpu.add(without.per_cpu_second(), with.per_cpu_second());
        }
        println!("{label}: per wall second: {}", wall.summary());
        println!("{label}: per CPU second:  {}", cpu.summary());
        if drained > 0 {
            println!(
                "{label}: user space drained {drained} events, {:.0} ns each",
                drain_time.as_nanos() as f64 / drained as f64
            );
        }
    }
}

/// Ratios with/without, averaged geometrically (so rounds of either order weigh the
/// same), with the standard error.
#[derive(Default)]
struct RatioLog {
    logs: Vec<f64>,
    without: f64,
    with: f64,
}

impl RatioLog {
    fn add(&mut self, without: f64, with: f64) {
        self.logs.push((with / without).ln());
        self.without += without;
        self.with += with;
    }

    fn summary(&self) -> String {
        let n = self.logs.len() as f64;
        let mean = self.logs.iter().sum::<f64>() / n;
        let variance = self.logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1.0);
        format!(
            "without {:.0}/s, with {:.0}/s, ratio {:.3}: loss {:.1}% +- {:.1}% (std. error)",
            self.without / n,
            self.with / n,
            mean.exp(),
            (1.0 - mean.exp()) * 100.0,
            (variance / n).sqrt() * 100.0
        )
    }
}

/// Loopback churn for `duration`, flat out, on this thread (see `tcpstate_testkit::churn`:
/// every connection passes through CLOSE_WAIT, no TIME_WAIT piles up).
fn churn_for(duration: Duration) -> Churn {
    let plan = Plan {
        duration: Some(duration),
        rate: None,
    };
    churn::churn(plan, &AtomicBool::new(false)).unwrap_or_else(|e| panic!("{e}"))
}
