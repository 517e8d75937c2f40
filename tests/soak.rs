//! Soak: the daemon samples fast (every 100 ms) a table that churns (connections opened,
//! entering CLOSE_WAIT, closed) while scrapers hammer /metrics. Every scrape must be a
//! complete exposition, counters never go backwards, no sample fails, and memory stays
//! flat once warmed up. Runs 60 s (TCPSTATE_SOAK_SECONDS to change; it ran 150 s until the
//! suite had to shrink: the memory check starts after the first quarter either way).

mod support;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{Actor, Daemon, Exposition, Netns};

/// Families every complete exposition holds, first to last.
const EXPECTED: [&str; 5] = [
    "tcpstate_sockets",
    "tcpstate_sample_errors_total",
    "tcpstate_last_sample_timestamp_seconds",
    "tcpstate_build_info",
    "process_resident_memory_bytes",
];

/// Counters (name, labels) whose value may never decrease.
fn counters(m: &Exposition) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for name in [
        "tcpstate_samples_total",
        "tcpstate_sample_errors_total",
        "tcpstate_attribution_fd_reads_total",
        "tcpstate_close_wait_duration_seconds_count",
        "tcpstate_close_wait_duration_seconds_sum",
        "tcpstate_sockets_skipped_total",
        "tcpstate_table_walks_total",
    ] {
        for (labels, value) in m.series(name) {
            out.push((format!("{name}{labels:?}"), value));
        }
    }
    out
}

#[test]
fn fast_samples_of_a_churning_table_under_scrapers_stay_correct_and_flat() {
    let seconds: u64 = std::env::var("TCPSTATE_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let ns = Netns::new("soak");
    let mut server = Actor::spawn(&ns, "churn-srv");
    let mut client = Actor::spawn(&ns, "churn-cli");
    server.listen("l", "127.0.0.1:8080", 128);
    let daemon = Daemon::exporter(&ns, &["--sample.interval", "100ms"]);

    let stop = AtomicBool::new(false);
    let scrapes = AtomicUsize::new(0);
    let problems = Mutex::new(Vec::<String>::new());
    let rss = Mutex::new(Vec::<(Instant, f64)>::new());
    let deadline = Instant::now() + Duration::from_secs(seconds);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                let mut last: HashMap<String, f64> = HashMap::new();
                while !stop.load(Ordering::Relaxed) {
                    let response = daemon.request("GET", "/metrics", &[]);
                    let text = response.text();
                    let parsed = std::panic::catch_unwind(|| Exposition::parse(&text));
                    let Ok(m) = parsed else {
                        problems
                            .lock()
                            .expect("lock")
                            .push("unparsable exposition".into());
                        continue;
                    };
                    if response.status != 200 {
                        problems
                            .lock()
                            .expect("lock")
                            .push(format!("status {}", response.status));
                    }
                    for family in EXPECTED {
                        if m.kind(family).is_none() && m.series(family).is_empty() {
                            problems
                                .lock()
                                .expect("lock")
                                .push(format!("incomplete: no {family}"));
                        }
                    }
                    for (key, value) in counters(&m) {
                        if let Some(previous) = last.insert(key.clone(), value)
                            && value < previous
                        {
                            problems
                                .lock()
                                .expect("lock")
                                .push(format!("{key} went back from {previous} to {value}"));
                        }
                    }
                    if let Some(bytes) = m.try_get("process_resident_memory_bytes", &[]) {
                        rss.lock().expect("lock").push((Instant::now(), bytes));
                    }
                    scrapes.fetch_add(1, Ordering::Relaxed);
                }
            });
        }

        // Churn: each round 10 connections arrive; the peers of 5 leave at once (CLOSE_WAIT),
        // and the server closes everything of the round before last.
        let mut round = 0u64;
        while Instant::now() < deadline {
            client.cmd(&format!("connect c{round} 127.0.0.1:8080 10"));
            server.cmd(&format!("accept s{round} l 10"));
            client.cmd(&format!("close c{round} 5"));
            if round >= 2 {
                let old = round - 2;
                server.cmd(&format!("close s{old}"));
                client.cmd(&format!("close c{old}"));
            }
            round += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
    });

    let problems = problems.into_inner().expect("lock");
    assert!(
        problems.is_empty(),
        "{} problems, first: {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
    assert!(scrapes.load(Ordering::Relaxed) > 100, "scrapers ran");
    let m = Exposition::parse(&daemon.scrape("/metrics").2);
    for (labels, value) in m.series("tcpstate_sample_errors_total") {
        assert_eq!(value, 0.0, "{labels:?}");
    }
    let samples = m.get("tcpstate_samples_total", &[]);
    eprintln!(
        "soak: {samples} samples, {} scrapes in {seconds} s",
        scrapes.load(Ordering::Relaxed)
    );
    assert!(
        samples > 20.0,
        "sampling kept going under the scrapers: {samples}"
    );
    let closed = m.get(
        "tcpstate_close_wait_duration_seconds_count",
        &[
            ("direction", "inbound"),
            ("port", "8080"),
            ("process", "churn-srv"),
        ],
    );
    assert!(
        closed > 100.0,
        "CLOSE_WAIT sockets were seen leaving: {closed}"
    );

    assert_flat_once_warm(&rss.into_inner().expect("lock"));
}

/// Memory: after the first quarter of the run (caches warm), the resident set stays within
/// 4 MiB. Prints what it saw and the least-squares slope over the warm part (seen with
/// `--nocapture`, or when the test fails), so that a slow growth can be watched for.
fn assert_flat_once_warm(rss: &[(Instant, f64)]) {
    const MIB: f64 = 1024.0 * 1024.0;
    let start = rss.first().map(|r| r.0).expect("rss samples");
    let span = rss.last().map(|r| r.0 - start).expect("rss samples");
    let warm: Vec<(f64, f64)> = rss
        .iter()
        .filter(|(at, _)| *at - start >= span / 4)
        .map(|(at, bytes)| ((*at - start).as_secs_f64(), *bytes))
        .collect();
    let low = warm.iter().map(|w| w.1).fold(f64::MAX, f64::min);
    let high = warm.iter().map(|w| w.1).fold(0.0, f64::max);
    let n = warm.len() as f64;
    let mean_t = warm.iter().map(|w| w.0).sum::<f64>() / n;
    let mean_b = warm.iter().map(|w| w.1).sum::<f64>() / n;
    let covariance: f64 = warm.iter().map(|w| (w.0 - mean_t) * (w.1 - mean_b)).sum();
    let variance: f64 = warm.iter().map(|w| (w.0 - mean_t).powi(2)).sum();
    let slope = covariance / variance;
    // The highest reading of each tenth of the run, for the log.
    let mut tenths = [0.0f64; 10];
    for (at, bytes) in rss {
        let tenth = ((*at - start).as_secs_f64() / span.as_secs_f64() * 10.0) as usize;
        tenths[tenth.min(9)] = tenths[tenth.min(9)].max(*bytes / MIB);
    }
    eprintln!(
        "soak: RSS (MiB, highest of each tenth of the run) {tenths:.2?}; warm from {:.0} s \
         to {:.0} s ({} readings): {:.2} to {:.2} MiB, slope {:+.1} KiB/s",
        span.as_secs_f64() / 4.0,
        span.as_secs_f64(),
        warm.len(),
        low / MIB,
        high / MIB,
        slope / 1024.0,
    );
    assert!(
        high - low < 4.0 * MIB,
        "RSS grew from {low} to {high} bytes while warm"
    );
}
