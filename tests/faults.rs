//! Faults and hostile input against the running daemon: configuration reloads (good and
//! bad), shutdown, slow and flooding clients, oversized requests, and running without
//! privileges.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{Actor, Daemon, Exposition, Netns, http, inbound_close_wait, temp_file, wait_until};

const EXPORTER: &str = env!("CARGO_BIN_EXE_tcpstate-exporter");
const WAIT: Duration = Duration::from_secs(30);

fn address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9815))
}

fn signal(daemon: &Daemon, signal: i32) {
    // SAFETY: kill(2) with a pid we spawned; no memory is touched.
    let rc = unsafe { libc::kill(daemon.pid() as i32, signal) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

#[test]
fn sighup_applies_a_good_config_and_refuses_a_bad_one_without_dropping_scrapes() {
    let ns = Netns::new("reload");
    let config = temp_file(
        "reload.toml",
        "[sample]\ndetail_states = [\"close_wait\"]\n",
    );
    let daemon = Daemon::exporter(
        &ns,
        &["--sample.interval", "200ms", "--config.file", config.path()],
    );
    // Scrapers hammer /metrics during both reloads; every scrape must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let scrapes = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    std::thread::scope(|scope| {
        for _ in 0..2 {
            let (stop, scrapes, failures, daemon) = (&stop, &scrapes, &failures, &daemon);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let response = daemon.request("GET", "/metrics", &[]);
                    if response.status != 200 || !response.text().contains("tcpstate_build_info") {
                        failures.lock().expect("lock").push(response.status);
                    }
                    scrapes.fetch_add(1, Ordering::Relaxed);
                }
            });
        }

        // A bad file: refused, logged, the old config keeps running.
        std::fs::write(&config, "[sample]\ndetail_states = [\"close_wiat\"]\n").expect("write");
        signal(&daemon, libc::SIGHUP);
        assert!(
            wait_until(WAIT, || daemon
                .output()
                .contains("configuration reload refused")),
            "{}",
            daemon.output()
        );
        assert!(
            daemon.output().contains("close_wiat"),
            "the log names the bad value"
        );
        let m = Exposition::parse(&daemon.scrape("/metrics").2);
        assert!(m.series("tcpstate_connections").iter().all(|(labels, _)| {
            labels
                .iter()
                .any(|(k, v)| k == "state" && v == "close_wait")
        }));

        // A good one: established connections now get detail series; the path moves.
        std::fs::write(
            &config,
            "[sample]\ndetail_states = [\"close_wait\", \"established\"]\n",
        )
        .expect("write");
        signal(&daemon, libc::SIGHUP);
        assert!(wait_until(WAIT, || daemon
            .output()
            .contains("configuration reloaded")));
        let mut client = Actor::spawn(&ns, "client");
        let mut server = Actor::spawn(&ns, "server");
        server.listen("l", "127.0.0.1:7000", 8);
        client.cmd("connect c 127.0.0.1:7000 2");
        server.cmd("accept a l 2");
        assert!(wait_until(WAIT, || {
            let m = Exposition::parse(&daemon.scrape("/metrics").2);
            m.try_get(
                "tcpstate_connections",
                &[
                    ("state", "established"),
                    ("direction", "inbound"),
                    ("port", "7000"),
                    ("process", "server"),
                ],
            ) == Some(2.0)
        }));
        stop.store(true, Ordering::Relaxed);
    });
    assert!(scrapes.load(Ordering::Relaxed) > 10);
    assert_eq!(
        *failures.lock().expect("lock"),
        Vec::<u16>::new(),
        "no scrape failed"
    );
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let ns = Netns::new("term");
    let mut child = ns
        .command(EXPORTER)
        .args(["--web.listen-address", "127.0.0.1:9815"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    assert!(wait_until(WAIT, || ns.run(|| TcpStream::connect(address()).is_ok())));
    // SAFETY: kill(2) on our child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let started = Instant::now();
    let mut status = None;
    assert!(wait_until(WAIT, || {
        status = child.try_wait().expect("wait");
        status.is_some()
    }));
    assert!(
        status.expect("exited").success(),
        "exit status 0 on SIGTERM"
    );
    assert!(started.elapsed() < WAIT);
    let mut log = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("log");
    assert!(log.contains("shutting down"), "{log}");
}

#[test]
fn slow_clients_floods_and_huge_requests_are_bounded() {
    let ns = Netns::new("hostile");
    let daemon = Daemon::exporter(&ns, &["--sample.interval", "1h"]);
    ns.run(|| {
        // Slowloris: 50 clients send half a request head and stall.
        let mut slow: Vec<TcpStream> = (0..50)
            .map(|_| {
                let mut s = TcpStream::connect(address()).expect("connect");
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                    .expect("write");
                s
            })
            .collect();
        // A flood of 400 idle connections: past the cap, connections are closed at once.
        let flood: Vec<TcpStream> = (0..400)
            .filter_map(|_| TcpStream::connect(address()).ok())
            .collect();
        // Poll without blocking: a connection the server closed reads EOF (or reset);
        // one it serves has nothing to read yet.
        let closed = |streams: &[TcpStream]| {
            streams
                .iter()
                .filter(|s| {
                    s.set_nonblocking(true).expect("nonblocking");
                    let mut byte = [0u8; 1];
                    let mut s = *s;
                    match s.read(&mut byte) {
                        Ok(0) => true,
                        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                        Ok(_) => false,
                    }
                })
                .count()
        };
        let opened = flood.len() + slow.len();
        // At most 256 connections are held at once: beyond the cap the oldest ones
        // nobody authenticated (the slow clients first) are shed for the newest.
        // The flood's count is taken when the cap is first seen to hold: read later, the
        // header deadline (10 s) may have closed the idle ones that were admitted too.
        let mut flood_closed = 0;
        assert!(
            wait_until(WAIT, || {
                flood_closed = closed(&flood);
                flood_closed + closed(&slow) >= opened - 256
            }),
            "connections beyond the cap are closed: {} of {opened}",
            closed(&flood) + closed(&slow)
        );
        assert!(
            flood_closed < flood.len(),
            "the cap is not zero: {flood_closed} of {} closed",
            flood.len()
        );
        drop(flood);
        for s in &slow {
            s.set_nonblocking(false).expect("blocking");
        }

        // While the slow clients stall, scrapes are still served.
        let ok = scrape_status(&[]);
        assert_eq!(ok, Some(200));

        // The stalled heads are cut off by the header deadline (10 s), if not shed.
        for s in &mut slow {
            s.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
        }
        // Closed by the server (EOF or reset) well before our 20 s read timeout: a timeout
        // here would mean the server kept the stalled connection open.
        let cut: usize = slow
            .iter_mut()
            .map(|s| {
                let mut rest = Vec::new();
                let closed = match s.read_to_end(&mut rest) {
                    Ok(_) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                };
                usize::from(closed && !String::from_utf8_lossy(&rest).contains("200 OK"))
            })
            .sum();
        assert_eq!(
            cut, 50,
            "every stalled request was closed by the server, none served"
        );

        // A 64 KiB request head is refused (431), not buffered.
        let big = "x".repeat(64 * 1024);
        let status = scrape_status(&[("X-Padding", big.as_str())]);
        assert_eq!(
            status,
            Some(431),
            "refused with 431, not buffered nor left hanging"
        );
        assert_eq!(scrape_status(&[]), Some(200));
    });
    drop(daemon);
}

/// One GET /metrics from the calling thread (inside the namespace); the status, or None
/// when the server closed the connection without an answer.
fn scrape_status(headers: &[(&str, &str)]) -> Option<u16> {
    http::request(
        address(),
        "GET",
        "/metrics",
        headers,
        Duration::from_secs(10),
    )
    .ok()
    .map(|response| response.status)
}

#[test]
fn without_privileges_it_serves_counts_and_says_why_owners_are_missing() {
    let ns = Netns::new("nopriv");
    let mut server = Actor::spawn(&ns, "rootsrv");
    let mut client = Actor::spawn(&ns, "rootcli");
    inbound_close_wait(&ns, &mut server, &mut client, 8080, 2, 0);
    // As nobody, with every capability dropped: sock_diag still works, /proc/PID/fd of
    // root's processes does not.
    let out = ns
        .command("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
            EXPORTER,
            "snapshot",
            "--format",
            "prometheus",
        ])
        .output()
        .expect("setpriv (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let m = Exposition::parse(&stdout);
    assert_eq!(m.get("tcpstate_sockets", &[("state", "close_wait")]), 2.0);
    assert_eq!(
        m.get(
            "tcpstate_connections",
            &[
                ("state", "close_wait"),
                ("direction", "inbound"),
                ("port", "8080"),
                ("process", ""),
            ]
        ),
        2.0
    );
    assert!(
        stderr.contains("grant CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE"),
        "one clear log line says why: {stderr}"
    );
    assert_eq!(
        stderr.matches("CAP_SYS_PTRACE").count(),
        1,
        "said once: {stderr}"
    );
}
