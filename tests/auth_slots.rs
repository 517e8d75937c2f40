//! Who holds the daemon's connection slots and its bcrypt time (issue 16, items 2 and
//! 3), attacked for real: the daemon in a private namespace, the attackers and the
//! scraper as plain sockets there. A scraper with valid credentials must always get
//! through; a user removed from the web config must lose access on connections it
//! already holds.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::http::{self, Connection, basic_auth};
use support::{Daemon, Netns, TempConfig, temp_file, wait_until};

const EXPORTER: &str = env!("CARGO_BIN_EXE_tcpstate-exporter");
const WAIT: Duration = Duration::from_secs(30);
const IO: Duration = Duration::from_secs(10);
/// How long a good scrape may take while an attack runs. Measured here well under a
/// second; the bound leaves room for a loaded machine, and is far below the attacks'
/// lock-outs (slots held for minutes, bcrypt queues of tens of seconds).
const SCRAPE_BOUND: Duration = Duration::from_secs(5);

fn v4() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9815))
}

fn v6() -> SocketAddr {
    "[::1]:9815".parse().expect("address")
}

/// A web config with these users, in a temp file removed when the guard is dropped.
fn web_config(name: &str, users: &[(&str, &str)], cost: u32) -> TempConfig {
    let file = temp_file(&format!("{name}.yml"), "");
    write_users(file.as_ref(), users, cost);
    file
}

fn write_users(path: &std::path::Path, users: &[(&str, &str)], cost: u32) {
    let mut text = String::from("basic_auth_users:\n");
    for (user, password) in users {
        let hash = bcrypt::hash(password, cost).expect("hash");
        text.push_str(&format!("  {user}: '{hash}'\n"));
    }
    std::fs::write(path, text).expect("web config");
}

/// The daemon on `[::]:9815` (IPv4 and IPv6), so a scraper on ::1 is another client
/// address than attackers on 127.0.0.1.
fn daemon<'ns>(ns: &'ns Netns, extra: &[&str]) -> Daemon<'ns> {
    let mut args = vec![
        "--web.listen-address",
        "[::]:9815",
        "--sample.interval",
        "1h",
    ];
    args.extend_from_slice(extra);
    Daemon::start(EXPORTER.as_ref(), ns, v4(), &args)
}

/// One scrape with `Connection: close` from inside `ns`; its status and how long it took.
fn scrape(ns: &Netns, to: SocketAddr, credentials: Option<&str>) -> (Option<u16>, Duration) {
    ns.run(|| {
        let started = Instant::now();
        let headers: Vec<(&str, &str)> = credentials
            .map(|c| vec![("Authorization", c)])
            .unwrap_or_default();
        let status = http::request(to, "GET", "/metrics", &headers, IO)
            .ok()
            .map(|r| r.status);
        (status, started.elapsed())
    })
}

#[test]
fn a_user_removed_by_a_reload_loses_access_on_open_connections() {
    let ns = Netns::new("auth-revoke");
    let path = web_config("revoke", &[("alice", "a-pass"), ("bob", "b-pass")], 4);
    let daemon = daemon(&ns, &["--web.config.file", path.path()]);
    let bob = basic_auth("bob", "b-pass");
    let mut open = ns.run(|| Connection::open(v4(), IO)).expect("connect");
    let before = open.request("GET", "/metrics", &[("Authorization", &bob)]);
    assert_eq!(before.map(|r| r.status), Ok(200));

    write_users(path.as_ref(), &[("alice", "a-pass")], 4);
    daemon.signal(libc::SIGHUP);
    assert!(wait_until(WAIT, || daemon
        .output()
        .contains("configuration reloaded")));
    // The same keep-alive connection, opened before the reload.
    let after = open.request("GET", "/metrics", &[("Authorization", &bob)]);
    assert_eq!(
        after.as_ref().map(|r| r.status),
        Ok(401),
        "bob was removed: {after:?}"
    );
    assert!(open.closed_by_server(), "a 401 closes the connection");
    let alice = basic_auth("alice", "a-pass");
    assert_eq!(scrape(&ns, v4(), Some(&alice)).0, Some(200));
}

/// How far an attack has got: rounds in which every one of its connections was
/// (re)opened and acted on.
#[derive(Default)]
struct AttackProgress {
    stop: AtomicBool,
    rounds: AtomicUsize,
}

/// Keeps `count` connections from 127.0.0.1 busy the way `act` says until told to stop:
/// every connection the server closed is opened again. Fails the test if a round could
/// not open them all, so an attack that never reached the server cannot pass for one
/// the server withstood.
fn attack(
    ns: &Netns,
    count: usize,
    progress: &AttackProgress,
    mut act: impl FnMut(&mut Connection) + Send,
) {
    ns.run(|| {
        let mut connections: Vec<Option<Connection>> = (0..count).map(|_| None).collect();
        while !progress.stop.load(Ordering::Relaxed) {
            for slot in &mut connections {
                let alive = slot.as_mut().is_some_and(|c| {
                    c.stream().set_nonblocking(true).is_ok() && !c.closed_by_server()
                });
                if !alive {
                    *slot = Connection::open(v4(), IO).ok();
                }
                if let Some(connection) = slot.as_mut() {
                    let _ = connection.stream().set_nonblocking(false);
                    act(connection);
                }
            }
            let open = connections.iter().filter(|c| c.is_some()).count();
            assert_eq!(open, count, "the attack could not open its connections");
            progress.rounds.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(500));
        }
    });
}

/// Server-side connections of the daemon's port in ESTAB (held in a slot or waiting in
/// the accept queue behind them).
fn established_to_the_daemon(ns: &Netns) -> usize {
    ns.sockets_unowned()
        .iter()
        .filter(|s| s.local_port == 9815 && s.state == "ESTAB")
        .count()
}

/// Runs `attack` in the background; once `underway` holds (the attack has made a full
/// round, and whatever else the caller requires of it), `scrapes` good scrapes are
/// timed; returns their statuses and the slowest. The attack must still be making
/// rounds when the last scrape ends.
fn scrapes_under_attack(
    ns: &Netns,
    from: SocketAddr,
    credentials: Option<&str>,
    underway: impl Fn() -> bool,
    run_attack: impl FnOnce(&AttackProgress) + Send,
) -> (Vec<Option<u16>>, Duration) {
    let progress = AttackProgress::default();
    std::thread::scope(|scope| {
        let attacker = scope.spawn(|| run_attack(&progress));
        let started = wait_until(WAIT, || {
            attacker.is_finished() || (progress.rounds.load(Ordering::Relaxed) >= 1 && underway())
        });
        assert!(
            started && !attacker.is_finished(),
            "the attack never got underway"
        );
        let rounds_before = progress.rounds.load(Ordering::Relaxed);
        let mut statuses = Vec::new();
        let mut slowest = Duration::ZERO;
        for _ in 0..5 {
            let (status, took) = scrape(ns, from, credentials);
            statuses.push(status);
            slowest = slowest.max(took);
            std::thread::sleep(Duration::from_millis(300));
        }
        // Still underway as the scrapes end (for the never-reading clients: every slot
        // still held, seen by ss), not only some time later.
        let held_to_the_end = underway();
        // At least one more full round while the scrapes ran: the attack did not stall.
        let kept_up = wait_until(WAIT, || {
            progress.rounds.load(Ordering::Relaxed) > rounds_before
        });
        progress.stop.store(true, Ordering::Relaxed);
        attacker.join().expect("attacker");
        assert!(kept_up, "the attack stalled while the scrapes ran");
        assert!(
            held_to_the_end,
            "the attack had let go before the last scrape ended"
        );
        (statuses, slowest)
    })
}

/// Every scrape got its 200, none slower than the bound; says what was measured.
fn all_served(under: &str, statuses: &[Option<u16>], slowest: Duration) {
    eprintln!("scrapes under {under}: {statuses:?}, slowest {slowest:?}");
    assert!(
        statuses.iter().all(|s| *s == Some(200)),
        "{under}: {statuses:?}"
    );
    assert!(slowest < SCRAPE_BOUND, "{under}: {slowest:?}");
}

#[test]
fn idle_unauthenticated_connections_cannot_lock_out_a_scraper() {
    let ns = Netns::new("auth-idle");
    let path = web_config("idle", &[("prometheus", "good")], 4);
    let _daemon = daemon(&ns, &["--web.config.file", path.path()]);
    let good = basic_auth("prometheus", "good");
    // 300 keep-alive connections, each sending a request without credentials every
    // half second or so (answered 401) and never reading: more than every slot.
    let (statuses, slowest) = scrapes_under_attack(
        &ns,
        v4(),
        Some(&good),
        || true,
        |progress| {
            attack(&ns, 300, progress, |c| {
                let _ = c.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
            })
        },
    );
    all_served(
        "good scrapes under 300 idle 401 connections",
        &statuses,
        slowest,
    );
}

#[test]
fn wrong_passwords_cannot_keep_bcrypt_from_a_good_scrape() {
    let ns = Netns::new("auth-bcrypt");
    // Cost 8: a few tens of ms per check here, so 250 queued checks take seconds.
    let path = web_config("bcrypt", &[("prometheus", "good")], 8);
    let _daemon = daemon(&ns, &["--web.config.file", path.path()]);
    // The attackers know the user name and guess passwords, each a bcrypt check; the
    // scraper's credentials were never checked before (its first scrape, or the first
    // after a restart), from another address (::1).
    let wrong = basic_auth("prometheus", "guess");
    let good = basic_auth("prometheus", "good");
    let (statuses, slowest) = scrapes_under_attack(
        &ns,
        v6(),
        Some(&good),
        || true,
        |progress| {
            let request =
                format!("GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {wrong}\r\n\r\n");
            attack(&ns, 250, progress, move |c| {
                let _ = c.send(request.as_bytes());
            })
        },
    );
    all_served("250 wrong-password connections", &statuses, slowest);
}

#[test]
fn clients_that_never_read_cannot_hold_the_slots() {
    let ns = Netns::new("auth-noread");
    // Socket buffers of at most 64 KiB (send) and 8 KiB (receive) in this namespace, and
    // a thousand listeners for an exposition of about 150 KB: a response to a client that never reads blocks,
    // as a big host's exposition blocks under the default buffers.
    ns.sysctl("net.ipv4.tcp_wmem", "4096 16384 65536");
    ns.sysctl("net.ipv4.tcp_rmem", "4096 8192 8192");
    let listeners: Vec<std::net::TcpListener> = ns.run(|| {
        (0..1000)
            .filter_map(|_| std::net::TcpListener::bind("127.0.0.1:0").ok())
            .collect()
    });
    assert_eq!(listeners.len(), 1000);
    let config = temp_file("noread.toml", "[sample]\nmax_groups = 5000\n");
    let daemon = daemon(&ns, &["--config.file", config.path()]);
    let size = daemon.scrape("/metrics").2.len();
    assert!(size > 100_000, "exposition of {size} bytes");
    // 300 clients each ask once and never read (no credentials needed: no web config).
    // Underway once every slot (256) is held by a connection whose response is stuck.
    let slots_held = || established_to_the_daemon(&ns) >= 256;
    let (statuses, slowest) = scrapes_under_attack(&ns, v4(), None, slots_held, |progress| {
        attack(&ns, 300, progress, |c| {
            if c.stream().peer_addr().is_ok() {
                let _ = c.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
            }
        })
    });
    all_served("300 non-reading clients", &statuses, slowest);

    // One that never reads is cut off by the write timeout (10 s), not the 5-minute
    // lifetime.
    let mut reader = ns.run(|| Connection::open(v4(), IO)).expect("connect");
    reader
        .send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let reader_port = reader.stream().local_addr().expect("local address").port();
    // The server's end of that connection, by state. On a loaded machine `ss` may first
    // see it after the timeout already cut it off (FIN-WAIT-1), so "accepted" is any
    // state, and "cut off" any state but ESTAB.
    let server_end = || {
        ns.sockets()
            .into_iter()
            .find(|s| s.local_port == 9815 && s.peer_port == Some(reader_port))
            .map(|s| s.state)
    };
    assert!(
        wait_until(WAIT, || server_end().is_some()),
        "{:?}",
        ns.sockets()
    );
    assert!(
        wait_until(WAIT, || server_end().as_deref() != Some("ESTAB")),
        "the server still holds the connection of a client that never reads"
    );
    drop(listeners);
}
