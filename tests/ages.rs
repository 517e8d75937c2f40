//! CLOSE_WAIT ages and durations against real sockets held for known times.
//!
//! The scenario holds sockets in CLOSE_WAIT for a chosen time (that wait is the
//! scenario itself, not a synchronisation); every check of the daemon polls until the
//! expected sample is served. A served sample may be an interval old or more, so times
//! are judged against the sample's own timestamp, plus scheduling slack.

mod support;

use std::collections::HashSet;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use support::{
    Actor, Daemon, Exposition, Netns, inbound_close_wait, temp_file, unix_now, wait_until,
};
use tcpstate_exporter::kernel::record::{SocketRecord, TcpState};
use tcpstate_exporter::kernel::sockdiag::{DiagSocket, DumpRequest, LookupStats};
use tcpstate_exporter::sampling::sampler::dates_by_lookups;

const SLACK: f64 = 0.5;
/// Two ages of one socket differ by the time between their samples' starts: only the
/// exposition's float rounding separates the two.
const ROUNDING: f64 = 0.001;
const WAIT: Duration = Duration::from_secs(20);

fn daemon(ns: &Netns) -> Daemon<'_> {
    Daemon::exporter(ns, &["--sample.interval", "500ms"])
}

const GROUP: [(&str, &str); 3] = [
    ("direction", "inbound"),
    ("port", "8080"),
    ("process", "holder"),
];

fn scrape(daemon: &Daemon) -> Exposition {
    Exposition::parse(&daemon.scrape("/metrics").2)
}

#[test]
fn oldest_age_follows_the_time_since_the_fin() {
    let ns = Netns::new("age");
    let mut server = Actor::spawn(&ns, "holder");
    let mut client = Actor::spawn(&ns, "client");
    let fin = inbound_close_wait(&ns, &mut server, &mut client, 8080, 3, 0);
    // Held before the exporter starts: the first sighting must date them from the FIN
    // (tcp_info.last_ack_recv), not from the moment the exporter first saw them.
    std::thread::sleep(Duration::from_secs(3));
    let daemon = daemon(&ns);
    let first = scrape(&daemon);
    let held = fin.elapsed().as_secs_f64();
    let first_age = first.get("tcpstate_close_wait_oldest_seconds", &GROUP);
    assert!(
        first_age >= 3.0 - SLACK && first_age <= held + SLACK,
        "first sighting after 3 s: age {first_age}, held {held}"
    );
    // And it keeps growing with the clock, judged on a sample taken past the 5 s mark
    // and 2 s after the first (an age stuck at its first value then falls short), against
    // that sample's own time, not the scrape's (the served sample may be an interval old,
    // later still under load). An age is computed when its sample begins, at most the
    // sample's duration before its timestamp: so it is at least the time from the FIN to
    // then, less SLACK for the FIN's own lag; and it grew by no more than the clock since
    // the first sample. (Not "at most the time since the FIN": a first sighting dates the
    // FIN from the sample's start though it reads last_ack_recv later in the sample, so
    // every later age runs ahead by up to that first sample's duration.)
    let fin_unix = unix_now() - fin.elapsed().as_secs_f64();
    let first_at = first.get("tcpstate_last_sample_timestamp_seconds", &[]);
    let first_duration = first.get("tcpstate_sample_duration_seconds", &[]);
    let mut later = scrape(&daemon);
    assert!(wait_until(WAIT, || {
        later = scrape(&daemon);
        let at = later.get("tcpstate_last_sample_timestamp_seconds", &[]);
        at - fin_unix > 5.0 && at - first_at > 2.0
    }));
    let sampled_at = later.get("tcpstate_last_sample_timestamp_seconds", &[]);
    let duration = later.get("tcpstate_sample_duration_seconds", &[]);
    let held = sampled_at - fin_unix;
    let grown = sampled_at - first_at + first_duration;
    let age = later.get("tcpstate_close_wait_oldest_seconds", &GROUP);
    assert!(
        age >= held - duration - SLACK && age <= first_age + grown + ROUNDING,
        "age {age} in a sample taken {held} s after the FIN, lasting {duration} s; \
         {first_age} in the first, {grown} s before at most"
    );
    assert_eq!(later.get("tcpstate_close_wait_tracked", &[]), 3.0);
}

/// More CLOSE_WAIT sockets at start-up than one batch of lookups, and more than the
/// 256 below which lookups are used whatever the table: the first sample dates every
/// one of them from its FIN, so all are past `stuck_after` at once. By default the
/// table's BPF iterator pass reads their ages as it walks; with events off (sock_diag
/// only), alone in the table (half of it) they are dated by a CLOSE_WAIT dump with
/// tcp_info, and beside 1,400 established sockets by lookups.
#[test]
fn a_first_sighting_of_hundreds_dates_every_one_from_its_fin() {
    first_sighting_dates_every_one_from_its_fin("age-pass", 700, Walk::BpfIterator);
    first_sighting_dates_every_one_from_its_fin("age-dump", 0, Walk::SockDiag);
    first_sighting_dates_every_one_from_its_fin("age-lookups", 700, Walk::SockDiag);
}

/// How the first sample is made to walk the table.
#[derive(Clone, Copy, PartialEq)]
enum Walk {
    BpfIterator,
    SockDiag,
}

fn first_sighting_dates_every_one_from_its_fin(name: &str, established: usize, walk: Walk) {
    let ns = Netns::new(name);
    let mut server = Actor::spawn(&ns, "holder");
    let mut client = Actor::spawn(&ns, "client");
    server.listen("l", "127.0.0.1:8080", 512);
    for chunk in 0..established / 350 {
        client.cmd(&format!("connect e{chunk} 127.0.0.1:8080 350"));
        server.cmd(&format!("accept b{chunk} l 350"));
    }
    client.cmd("connect c 127.0.0.1:8080 300");
    server.cmd("accept a l 300");
    let fin = Instant::now();
    client.cmd("close c");
    assert!(wait_until(WAIT, || close_wait_records(&ns).len() == 300));
    assert!(wait_until(WAIT, || fin.elapsed() > Duration::from_secs(3)));
    let events = match walk {
        Walk::BpfIterator => "auto",
        Walk::SockDiag => "off",
    };
    let config = temp_file(
        &format!("{name}.toml"),
        &format!("events = \"{events}\"\n[close_wait]\nstuck_after = \"2s\"\n"),
    );
    // One sample only (the next is an hour away): what is served is the first sighting.
    let daemon = Daemon::exporter(
        &ns,
        &["--sample.interval", "1h", "--config.file", config.path()],
    );
    let first = scrape(&daemon);
    assert_eq!(first.get("tcpstate_samples_total", &[]), 1.0);
    assert_eq!(first.get("tcpstate_close_wait_tracked", &[]), 300.0);
    let established_seen = first.get("tcpstate_sockets", &[("state", "established")]);
    assert_eq!(established_seen, (2 * established) as f64);
    // Which way the sampler dated them follows from how it walked the table, and on
    // sock_diag from the table's size: check that each run takes the path its name
    // says, whatever the thresholds become.
    let by_iterator = first.get("tcpstate_table_walks_total", &[("via", "bpf_iterator")]);
    let by_dump = first.get("tcpstate_table_walks_total", &[("via", "sock_diag")]);
    let expected = match walk {
        Walk::BpfIterator => (1.0, 0.0),
        Walk::SockDiag => (0.0, 1.0),
    };
    assert_eq!(
        (by_iterator, by_dump),
        expected,
        "{name}: walks by iterator, by dump"
    );
    let walked = first.sum("tcpstate_sockets", &[]) as u64;
    let by_lookups = dates_by_lookups(300, walked);
    assert_eq!(
        by_lookups,
        established > 0,
        "{name}: 300 new of {walked} walked"
    );
    assert_eq!(
        first.get("tcpstate_close_wait_stuck_connections", &GROUP),
        300.0,
        "held 3 s, stuck after 2 s: each dated from its FIN, none from the first sighting"
    );
}

fn close_wait_records(ns: &Netns) -> Vec<SocketRecord> {
    diag_records(ns, [TcpState::CloseWait])
}

/// The namespace's sockets in `states`, read through sock_diag from inside it.
fn diag_records(
    ns: &Netns,
    states: impl IntoIterator<Item = TcpState> + Send,
) -> Vec<SocketRecord> {
    ns.run(|| {
        let mut socket = DiagSocket::open().expect("sock_diag socket");
        let mut found = Vec::new();
        socket
            .dump(DumpRequest::for_states(states, false), &mut |r| {
                found.push(*r)
            })
            .expect("sock_diag dump");
        found
    })
}

/// The batched lookups behind that dating, against the real kernel: 100 sockets (four
/// batches), three of them closed after they were listed. Each socket still there
/// comes back itself, with tcp_info; the closed ones count as gone, not as an error.
#[test]
fn lookups_return_each_socket_still_there_and_count_the_closed_ones() {
    let ns = Netns::new("lookups");
    let (mut servers, closing, closed) = ns.run(|| {
        let listener = TcpListener::bind("127.0.0.1:8081").expect("bind");
        let clients: Vec<TcpStream> = (0..100)
            .map(|_| TcpStream::connect("127.0.0.1:8081").expect("connect"))
            .collect();
        let servers: Vec<TcpStream> = (0..100)
            .map(|_| listener.accept().expect("accept").0)
            .collect();
        // Every FIN goes out between these two moments.
        let closing = Instant::now();
        drop(clients);
        (servers, closing, Instant::now())
    });
    assert!(wait_until(WAIT, || close_wait_records(&ns).len() == 100));
    let listed = close_wait_records(&ns);
    // Close three; wait until the kernel has let go of them (LAST_ACK until the ACK).
    servers.truncate(97);
    let still_there = |ns: &Netns| -> HashSet<u64> {
        diag_records(ns, TcpState::ALL)
            .iter()
            .filter(|r| r.local_port == 8081)
            .map(|r| r.cookie)
            .collect()
    };
    assert!(wait_until(WAIT, || {
        let there = still_there(&ns);
        listed.iter().filter(|r| there.contains(&r.cookie)).count() == 97
    }));
    // The FINs are at least this old when the lookups read tcp_info.
    let at_least = closed.elapsed().as_millis() as u32;
    let (found, stats) = ns.run(|| {
        let mut socket = DiagSocket::open().expect("sock_diag socket");
        let mut found = Vec::new();
        let stats = socket
            .lookup_many_with_info(&listed, &mut |r| found.push(*r))
            .expect("lookups");
        (found, stats)
    });
    assert_eq!(stats, LookupStats { found: 97, gone: 3 });
    let wanted: HashSet<u64> = listed.iter().map(|r| r.cookie).collect();
    let returned: HashSet<u64> = found.iter().map(|r| r.cookie).collect();
    assert_eq!(returned.len(), 97, "each socket once");
    assert!(returned.is_subset(&wanted));
    for record in &found {
        assert_eq!(record.state, TcpState::CloseWait);
        let info = record.tcp_info.expect("tcp_info with every answer");
        // The kernel's clock for it ticks in jiffies (up to 4 ms here).
        let at_most = closing.elapsed().as_millis() as u32;
        assert!(
            info.last_ack_recv_ms + 10 >= at_least && info.last_ack_recv_ms <= at_most + 10,
            "last ACK {} ms ago, the FIN {at_least}..{at_most} ms ago",
            info.last_ack_recv_ms
        );
    }
    drop(servers);
}

#[test]
fn closing_k_sockets_adds_exactly_k_observations_with_their_times() {
    let ns = Netns::new("dur");
    let mut server = Actor::spawn(&ns, "holder");
    let mut client = Actor::spawn(&ns, "client");
    let daemon = daemon(&ns);
    let fin = inbound_close_wait(&ns, &mut server, &mut client, 8080, 5, 0);
    assert!(wait_until(WAIT, || fin.elapsed() > Duration::from_secs(2)));
    let count = |m: &Exposition| m.try_get("tcpstate_close_wait_duration_seconds_count", &GROUP);
    assert!(
        wait_until(WAIT, || count(&scrape(&daemon)) == Some(0.0)),
        "nothing has left CLOSE_WAIT yet, and the group's histogram is there at zero"
    );

    server.cmd("close a 2");
    let held = fin.elapsed().as_secs_f64();
    // The sample that first misses them: its time bounds the estimate from above.
    let mut noticed = 0.0;
    assert!(
        wait_until(WAIT, || {
            let m = scrape(&daemon);
            noticed = m.get("tcpstate_last_sample_timestamp_seconds", &[]);
            count(&m) == Some(2.0)
        }),
        "two observations expected"
    );
    // How late that sample came after the close (more than one interval on a loaded
    // machine): the departure is placed within that gap.
    let gap = noticed - unix_now() + fin.elapsed().as_secs_f64() - held;
    // More samples pass; no socket is observed twice, the others are still there.
    let m = scrape(&daemon);
    let samples = m.get("tcpstate_samples_total", &[]);
    assert!(wait_until(WAIT, || scrape(&daemon)
        .get("tcpstate_samples_total", &[])
        >= samples + 3.0));
    let m = scrape(&daemon);
    assert_eq!(count(&m), Some(2.0));
    let sum = m.get("tcpstate_close_wait_duration_seconds_sum", &GROUP);
    assert!(
        sum >= 2.0 * (held - gap - SLACK) && sum <= 2.0 * (held + gap + SLACK),
        "sum {sum} for 2 sockets held {held} s, noticed {gap} s after the close"
    );
    let bucket = |le: &str| {
        let mut labels = GROUP.to_vec();
        labels.push(("le", le));
        m.get("tcpstate_close_wait_duration_seconds_bucket", &labels)
    };
    // Both in the bucket of their time held, however late a loaded machine let the test
    // close them (the bounds of a bucket the estimate straddles are not asserted).
    for le in ["1", "2", "5", "10", "30", "60"] {
        let bound: f64 = le.parse().expect("a bucket bound");
        if bound < held - gap - SLACK {
            assert_eq!(bucket(le), 0.0, "le={le}, held {held} s");
        } else if bound >= held + gap + SLACK {
            assert_eq!(bucket(le), 2.0, "le={le}, held {held} s");
        }
    }
    assert_eq!(bucket("+Inf"), 2.0);
    assert_eq!(
        m.get(
            "tcpstate_connections",
            &[
                ("state", "close_wait"),
                ("direction", "inbound"),
                ("port", "8080"),
                ("process", "holder"),
            ]
        ),
        3.0
    );
    assert_eq!(
        m.kind("tcpstate_close_wait_duration_seconds"),
        Some("histogram")
    );
}
