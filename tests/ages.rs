//! CLOSE_WAIT ages and durations against real sockets held for known times.
//!
//! The scenario holds sockets in CLOSE_WAIT for a chosen time (that wait is the
//! scenario itself, not a synchronisation); every check of the daemon polls until the
//! expected sample is served. Tolerances are one sample interval plus scheduling slack:
//! the served sample may be up to one interval old.

mod support;

use std::time::Duration;

use support::{Actor, Daemon, Exposition, Netns, inbound_close_wait, wait_until};

const INTERVAL: f64 = 0.5;
const SLACK: f64 = 0.5;
const WAIT: Duration = Duration::from_secs(20);

fn daemon(ns: &Netns) -> Daemon<'_> {
    Daemon::exporter(ns, &["--sample.interval", "500ms"])
}

const GROUP: [(&str, &str); 3] = [
    ("direction", "inbound"),
    ("port", "8080"),
    ("process", "holder"),
];

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

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
    let age = first.get("tcpstate_close_wait_oldest_seconds", &GROUP);
    assert!(
        age >= 3.0 - SLACK && age <= held + SLACK,
        "first sighting after 3 s: age {age}, held {held}"
    );
    // And it keeps growing with the clock.
    assert!(wait_until(WAIT, || fin.elapsed() > Duration::from_secs(5)));
    let later = scrape(&daemon);
    let held = fin.elapsed().as_secs_f64();
    let age = later.get("tcpstate_close_wait_oldest_seconds", &GROUP);
    assert!(
        age >= held - INTERVAL - SLACK && age <= held + SLACK,
        "age {age} while held {held}"
    );
    assert_eq!(later.get("tcpstate_close_wait_tracked", &[]), 3.0);
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
