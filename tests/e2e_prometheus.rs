//! End to end against a real Prometheus (Debian package `prometheus`, 2.42): the
//! exporter samples a private network namespace in which a "leaky" server keeps
//! piling up CLOSE_WAIT connections (and closes some of them late, for the duration
//! histogram); Prometheus scrapes it from inside the same namespace with the shipped
//! rules rendered with short `for:` windows (tests/monitoring/override_rules.py, never
//! an edit of the shipped file). Through Prometheus's HTTP API this test checks that
//! the target is up, that the values Prometheus stored are the ones the scenario holds
//! and the exporter serves, that the growth and stuck alerts fire for the right group,
//! that the leak's run toward the leaky server's descriptor limit fires the fd exhaustion
//! alert for it, and that every dashboard query returns data. A second exporter, in a
//! namespace of its own joined by a veth pair, holds a larger leak that does not grow:
//! Prometheus scrapes both at once, and the fleet recording rules must rank the groups
//! of both instances (the dashboard's "Fleet" row reads them); `promtool check metrics` must find
//! nothing to say about the exposition.
//!
//! tests/monitoring/live_prometheus.py runs Prometheus (it also checks rule health,
//! runs the dashboard queries and waits for the alerts). Its `--then` hook is a
//! handshake: it prints `ready URL` and waits for this test's verdict on stdin, so the
//! checks below run while Prometheus is still scraping.
//!
//! Installs `prometheus`, `jsonnet` and `python3-yaml` (apt) when missing, and fails,
//! never skips, when it cannot.

#[path = "e2e_prometheus/fleet.rs"]
mod fleet;
mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Actor, Daemon, Exposition, Netns, http, wait_until};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const EXPORTER_ADDR: &str = support::EXPORTER_ADDRESS;
const PORT: &str = "8080";
const BACKLOG: u32 = 128;
/// The group every CLOSE_WAIT connection of the scenario belongs to.
const GROUP: [(&str, &str); 3] = [
    ("direction", "inbound"),
    ("port", PORT),
    ("process", "leaky"),
];
/// Connections held from the start with unread data: the stuck leak.
const STUCK: usize = 4;
const UNREAD_BYTES: usize = 5;
/// New CLOSE_WAIT connections per tick of the grower (one tick a second).
const PER_TICK: usize = 3;
/// Every other group is closed this many ticks after it was made (the histogram's data).
const CLOSE_AFTER: usize = 3;
/// The grower stops by itself after this many ticks if the test never tells it to.
const MAX_TICKS: usize = 120;
/// The most CLOSE_WAIT connections "leaky" can hold: the stuck ones, PER_TICK a tick for
/// MAX_TICKS ticks, less the groups closed CLOSE_AFTER ticks on, every other tick.
const MOST_HELD: usize =
    STUCK + PER_TICK * MAX_TICKS - PER_TICK * (MAX_TICKS - CLOSE_AFTER).div_ceil(2);
// The fleet's hoard outranks the leak at any point of the run, not only at its start.
const _: () = assert!(fleet::HOARD > MOST_HELD);
/// Scrapes of the growth Prometheus must hold before the grower stops.
const GROWTH_SAMPLES: usize = 12;
/// Per-wait timeout of live_prometheus.py, and how long this test waits for its `ready`.
const PROM_WAIT_SECONDS: u64 = 30;
/// The leaky server's soft RLIMIT_NOFILE: the cliff its leak runs toward (it holds
/// about 200 descriptors at most before the test stops it).
const NOFILE: u32 = 512;
const READY: Duration = Duration::from_secs(150);
const SETTLE: Duration = Duration::from_secs(20);

#[test]
fn prometheus_scrapes_the_leak_fires_the_alerts_and_serves_the_dashboard() {
    ensure_tools();
    let shipped_rules = std::fs::read(rules_path()).expect("read the shipped rules");
    let ns = Netns::new("e2eprom");
    let fleet_ns = Netns::new("e2efleet");
    fleet::link(&ns, &fleet_ns);
    let _hoard = fleet::hoard(&fleet_ns);
    // No evidence counts before stuck_after (1m by default): 2 s fits the test's minute.
    let config = support::temp_file("e2eprom.toml", "[close_wait]\nstuck_after = \"2s\"\n");
    let second = fleet::exporter(&fleet_ns, config.path());
    let mut server = Actor::spawn(&ns, "leaky");
    let mut client = Actor::spawn(&ns, "client");
    let daemon = Daemon::exporter(
        &ns,
        &["--sample.interval", "1s", "--config.file", config.path()],
    );
    server.cmd(&format!("nofile {NOFILE}"));
    let leaky_pid = server.pid();

    server.listen("l", &format!("127.0.0.1:{PORT}"), BACKLOG);
    client.cmd(&format!(
        "connect stuck 127.0.0.1:{PORT} {STUCK} send={UNREAD_BYTES}"
    ));
    server.cmd(&format!("accept stuck l {STUCK}"));
    client.cmd("close stuck");
    let first_fin = Instant::now();

    let stop = AtomicBool::new(false);
    let held = std::thread::scope(|scope| {
        let grower = scope.spawn(|| grow(&mut server, &mut client, &stop));
        // Stops the grower however this scope is left, so a failure cannot hang it.
        let _stop = StopOnDrop(&stop);
        // The histogram series exist only once a socket left CLOSE_WAIT; the dashboard
        // queries need them from Prometheus's first scrapes on.
        assert!(
            wait_until(SETTLE, || scrape(&daemon)
                .try_get("tcpstate_close_wait_duration_seconds_count", &GROUP)
                .is_some_and(|n| n >= PER_TICK as f64)),
            "no CLOSE_WAIT connection was observed leaving:\n{}",
            daemon.scrape("/metrics").2
        );

        let mut prom = LivePrometheus::start(&ns);
        let api = prom.wait_ready(&ns);
        check_target_and_rules(&api);
        check_alerts_fire_for_the_group(&api);
        check_fd_alert_fires_for_the_leaky_process(&api);
        fleet::check_ranking(&api, EXPORTER_ADDR, "leaky");
        check_growth_was_scraped(&api);
        stop.store(true, Ordering::Relaxed);
        let held = grower.join().expect("grower thread");
        check_values(&ns, &daemon, &api, &held, first_fin);
        check_fd_figures(&ns, &daemon, &api, leaky_pid);
        prom.finish(true);
        held
    });
    println!("scenario: {held:?}");
    drop(second);

    let (status, _, text) = daemon.scrape("/metrics");
    assert_eq!(status, 200);
    check_promtool_metrics(&text);
    assert_eq!(
        std::fs::read(rules_path()).expect("read the shipped rules"),
        shipped_rules,
        "the shipped rules file changed during the test"
    );
}

/// What the grower left: connections still in CLOSE_WAIT and connections it closed.
#[derive(Debug)]
struct Held {
    close_wait: usize,
    closed: usize,
    ticks: usize,
}

/// Adds PER_TICK CLOSE_WAIT connections to "leaky" every second until `stop`, closing
/// every other group CLOSE_AFTER ticks after its peers closed: steady growth (for the
/// growth alert) with some closes (for the duration histogram). The client closes
/// sockets it has nothing unread on, so they send FIN, not RST.
///
/// Like a real server, "leaky" closes before it accepts again, so new connections reuse
/// the fd numbers just freed: attribution must follow a reused fd to its new socket.
fn grow(server: &mut Actor, client: &mut Actor, stop: &AtomicBool) -> Held {
    let mut held = Held {
        close_wait: STUCK,
        closed: 0,
        ticks: 0,
    };
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) && held.ticks < MAX_TICKS {
        let k = held.ticks;
        if k >= CLOSE_AFTER && (k - CLOSE_AFTER).is_multiple_of(2) {
            server.cmd(&format!("close g{}", k - CLOSE_AFTER));
            held.close_wait -= PER_TICK;
            held.closed += PER_TICK;
        }
        client.cmd(&format!("connect c{k} 127.0.0.1:{PORT} {PER_TICK}"));
        server.cmd(&format!("accept g{k} l {PER_TICK}"));
        client.cmd(&format!("close c{k}"));
        held.close_wait += PER_TICK;
        held.ticks += 1;
        // The scenario's rhythm (one step a second), not a synchronisation.
        let next = start + Duration::from_secs(held.ticks as u64);
        while !stop.load(Ordering::Relaxed) && Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    held
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn scrape(daemon: &Daemon) -> Exposition {
    Exposition::parse(&daemon.scrape("/metrics").2)
}

fn rules_path() -> std::path::PathBuf {
    Path::new(REPO).join("deploy/prometheus/tcpstate-alerts.yml")
}

/// The selector of one series of the group, as Prometheus stores it (job and instance
/// added by the scrape).
fn selector(metric: &str, extra: &[(&str, &str)]) -> String {
    let labels: Vec<String> = [("job", "tcpstate-exporter"), ("instance", EXPORTER_ADDR)]
        .iter()
        .chain(extra)
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect();
    format!("{metric}{{{}}}", labels.join(","))
}

fn with_group<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut labels = GROUP.to_vec();
    labels.extend_from_slice(extra);
    labels
}

fn check_target_and_rules(api: &PromApi) {
    let up = api.query("up{job=\"tcpstate-exporter\"}");
    assert_eq!(up.len(), 2, "two targets expected: {up:?}");
    assert!(
        up.iter().all(|t| sample_value(t) == 1.0),
        "a target is down: {up:?}"
    );
    // The rules Prometheus runs are the override: short windows, same expressions.
    let rules = api.get("/api/v1/rules", &[]);
    let growing = rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .find(|r| r["name"] == "TcpStateCloseWaitGrowing")
        .unwrap_or_else(|| panic!("TcpStateCloseWaitGrowing not loaded: {rules}"));
    assert_eq!(
        growing["duration"], 1,
        "override for: 1s not applied: {growing}"
    );
    let query = growing["query"].as_str().unwrap_or_default();
    assert!(
        query.contains("[30s]") && query.contains(">= 3"),
        "override window/minIncrease not applied: {query}"
    );
}

/// Both CLOSE_WAIT alerts fire for the leaky group; the stuck one also for the second
/// instance's leak, which does not grow; nothing else (a group with `process=""` would
/// mean the exporter lost track of who holds the sockets).
fn check_alerts_fire_for_the_group(api: &PromApi) {
    let leaky = format!("{EXPORTER_ADDR}/inbound/{PORT}/leaky");
    let hoard = format!("{}/inbound/9090/hoarder", fleet::ADDR);
    for (name, want) in [
        ("TcpStateCloseWaitGrowing", vec![leaky.clone()]),
        ("TcpStateCloseWaitStuck", vec![hoard, leaky.clone()]),
    ] {
        let mut groups = Vec::new();
        let fired = wait_until(SETTLE, || {
            let alerts = api.get("/api/v1/alerts", &[]);
            groups = alerts["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
                .map(|a| {
                    let label = |l: &str| a["labels"][l].as_str().unwrap_or_default().to_string();
                    ["instance", "direction", "port", "process"]
                        .map(label)
                        .join("/")
                })
                .collect::<Vec<String>>();
            groups.sort();
            groups == want
        });
        assert!(
            fired,
            "{name} must fire for {want:?} only; fires for {groups:?}"
        );
    }
}

/// The leak runs toward the leaky server's descriptor limit: the fd exhaustion alert
/// fires for that process, and for no other.
fn check_fd_alert_fires_for_the_leaky_process(api: &PromApi) {
    let alerts = api.get("/api/v1/alerts", &[]);
    let processes: Vec<&str> = alerts["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["labels"]["alertname"] == "TcpStateFdExhaustionPredicted")
        .filter(|a| a["state"] == "firing")
        .filter_map(|a| a["labels"]["process"].as_str())
        .collect();
    assert_eq!(processes, ["leaky"], "all alerts: {alerts}");
}

/// Once the grower stopped, the descriptors Prometheus holds for the leaky process are
/// what `ls /proc/PID/fd | wc -l` and /proc/PID/limits say.
fn check_fd_figures(ns: &Netns, daemon: &Daemon, api: &PromApi, pid: u32) {
    let ls = ns.exec("sh", &["-c", &format!("ls /proc/{pid}/fd | wc -l")]);
    let open: f64 = ls.trim().parse().expect("a count");
    let process = [("process", "leaky")];
    let expected = [
        ("tcpstate_process_open_fds", open),
        ("tcpstate_process_max_fds", f64::from(NOFILE)),
    ];
    assert!(
        wait_until(SETTLE, || expected.iter().all(|(metric, want)| scrape(
            daemon
        )
        .try_get(metric, &process)
            == Some(*want))),
        "the exporter never served {expected:?}:\n{}",
        daemon.scrape("/metrics").2
    );
    for (metric, want) in expected {
        let query = selector(metric, &process);
        let mut seen = Vec::new();
        let agreed = wait_until(SETTLE, || {
            seen = api.query(&query);
            seen.len() == 1 && sample_value(&seen[0]) == want
        });
        assert!(agreed, "Prometheus {query}: want {want}, has {seen:?}");
    }
}

/// Prometheus stored the growth itself, scrape by scrape over GROWTH_SAMPLES scrapes,
/// not just its end. (A tick that closes a group adds nothing, and a sample may fall
/// between its steps, so the series rises on about half the scrapes, not all.)
fn check_growth_was_scraped(api: &PromApi) {
    let query = format!(
        "{}[2m]",
        selector(
            "tcpstate_connections",
            &with_group(&[("state", "close_wait")])
        )
    );
    let mut values = Vec::new();
    let enough = wait_until(SETTLE, || {
        let series = api.query(&query);
        values = series
            .first()
            .map(|s| {
                s["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(sample_pair)
                    .collect()
            })
            .unwrap_or_default();
        series.len() == 1 && values.len() >= GROWTH_SAMPLES
    });
    assert!(
        enough,
        "fewer than {GROWTH_SAMPLES} samples of {query}: {values:?}"
    );
    let rises = values.windows(2).filter(|w| w[1] > w[0]).count();
    let grown = values.last().zip(values.first()).map(|(l, f)| l - f);
    assert!(
        rises >= GROWTH_SAMPLES / 3 && grown >= Some((GROWTH_SAMPLES * PER_TICK / 3) as f64),
        "CLOSE_WAIT did not keep growing in Prometheus's samples: {values:?}"
    );
}

/// A metric, its labels (besides job and instance) and the value it must have.
type Expected<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

/// Once the grower stopped: Prometheus's latest values equal what the scenario holds,
/// what `ss` shows and what a fresh scrape of the exporter serves.
fn check_values(ns: &Netns, daemon: &Daemon, api: &PromApi, held: &Held, first_fin: Instant) {
    let close_wait = |ns: &Netns| {
        ns.sockets()
            .iter()
            .filter(|s| s.state == "CLOSE-WAIT")
            .count()
    };
    assert!(
        wait_until(SETTLE, || close_wait(ns) == held.close_wait),
        "ss shows {} CLOSE-WAIT, the scenario holds {held:?}",
        close_wait(ns)
    );
    let cw = with_group(&[("state", "close_wait")]);
    let expected: Vec<Expected> = vec![
        ("tcpstate_connections", cw.clone(), held.close_wait as f64),
        (
            "tcpstate_sockets",
            vec![("state", "close_wait")],
            held.close_wait as f64,
        ),
        (
            "tcpstate_close_wait_tracked",
            vec![],
            held.close_wait as f64,
        ),
        (
            "tcpstate_recv_queue_bytes",
            cw.clone(),
            (STUCK * UNREAD_BYTES) as f64,
        ),
        ("tcpstate_unread_connections", cw.clone(), STUCK as f64),
        (
            "tcpstate_close_wait_duration_seconds_count",
            GROUP.to_vec(),
            held.closed as f64,
        ),
        (
            "tcpstate_listen_queue_max",
            vec![("port", PORT), ("process", "leaky")],
            f64::from(BACKLOG),
        ),
    ];
    // The exporter serves a sample taken after the last step (the histogram counts a
    // close one sample after it happened): all values at once, in one fresh scrape.
    let mut mismatches = Vec::new();
    let served = wait_until(SETTLE, || {
        let fresh = scrape(daemon);
        mismatches = expected
            .iter()
            .filter(|(metric, labels, want)| fresh.try_get(metric, labels) != Some(*want))
            .map(|(metric, labels, want)| {
                let has = fresh.try_get(metric, labels);
                format!("{metric}{labels:?}: want {want}, served {has:?}")
            })
            .collect();
        mismatches.is_empty()
    });
    assert!(
        served,
        "exporter never served the scenario: {mismatches:#?}"
    );
    for (metric, labels, want) in &expected {
        let query = selector(metric, labels);
        let mut seen = Vec::new();
        let agreed = wait_until(SETTLE, || {
            seen = api.query(&query);
            seen.len() == 1 && sample_value(&seen[0]) == *want
        });
        assert!(agreed, "Prometheus {query}: want {want}, has {seen:?}");
    }
    // The leak's age, as Prometheus stored it, against the test's own clock: at most one
    // sample and one scrape behind, plus scheduling slack.
    let oldest = api.query(&selector("tcpstate_close_wait_oldest_seconds", &GROUP));
    let held_for = first_fin.elapsed().as_secs_f64();
    assert_eq!(oldest.len(), 1, "{oldest:?}");
    let age = sample_value(&oldest[0]);
    assert!(
        age > 5.0 && age <= held_for + 0.5 && age >= held_for - 4.0,
        "oldest age {age} in Prometheus, leak held {held_for} s"
    );
}

/// `promtool check metrics` (the exposition linter) must find nothing at all.
fn check_promtool_metrics(exposition: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run promtool: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics ({}):\n{said}\non:\n{exposition}",
        out.status
    );
}

/// tests/monitoring/live_prometheus.py running inside the namespace, stopped on drop.
struct LivePrometheus {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// The `--then` handshake was reached: a verdict on stdin ends it.
    ready: bool,
    finished: bool,
}

impl LivePrometheus {
    fn start(ns: &Netns) -> LivePrometheus {
        let timeout = PROM_WAIT_SECONDS.to_string();
        let mut child = ns
            .command("python3")
            .arg(Path::new(REPO).join("tests/monitoring/live_prometheus.py"))
            .args(["--target", EXPORTER_ADDR, "--target", fleet::ADDR])
            .args(["--timeout", &timeout])
            .args(["--set", "closeWaitStuck.ageSeconds=5"])
            .args(["--set", "closeWaitGrowth.minIncrease=3"])
            .args(["--set", "closeWaitGrowth.window=30s"])
            .args(["--expect-firing", "TcpStateCloseWaitGrowing"])
            .args(["--expect-firing", "TcpStateCloseWaitStuck"])
            .args(["--expect-firing", "TcpStateFdExhaustionPredicted"])
            .args([
                "--then",
                r#"echo "ready $PROM_URL"; read -r verdict; [ "$verdict" = pass ]"#,
            ])
            .env("PYTHONUNBUFFERED", "1")
            .current_dir(REPO)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start live_prometheus.py: {e}"));
        let (tx, lines) = mpsc::channel();
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    println!("live_prometheus: {line}");
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        LivePrometheus {
            child,
            stdin,
            lines,
            ready: false,
            finished: false,
        }
    }

    /// Waits for the `--then` handshake: by then Prometheus has the target up, the rules
    /// healthy, every dashboard query answered and the expected alerts firing (or has
    /// recorded which failed, to report at exit).
    fn wait_ready<'ns>(&mut self, ns: &'ns Netns) -> PromApi<'ns> {
        let deadline = Instant::now() + READY;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("ready http://") {
                        self.ready = true;
                        let addr = url
                            .trim()
                            .parse()
                            .unwrap_or_else(|e| panic!("bad Prometheus URL {line:?}: {e}"));
                        return PromApi { ns, addr };
                    }
                }
                Err(e) => panic!("live_prometheus.py never got ready ({e})"),
            }
        }
    }

    /// Gives the verdict and requires live_prometheus.py to exit 0 (every one of its
    /// own checks passed too).
    fn finish(&mut self, pass: bool) {
        self.finished = true;
        let status = self.verdict(pass);
        assert!(
            status.is_some_and(|s| s.success()),
            "live_prometheus.py failed ({status:?}); its output is above"
        );
    }

    /// Answers the handshake; live_prometheus.py then stops Prometheus and exits.
    fn verdict(&mut self, pass: bool) -> Option<std::process::ExitStatus> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(if pass { b"pass\n" } else { b"fail\n" });
        }
        self.wait_exit()
    }

    /// Waits (bounded) for live_prometheus.py to exit; SIGKILL if it does not.
    fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let mut status = None;
        wait_until(Duration::from_secs(60), || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        status
    }
}

impl Drop for LivePrometheus {
    /// On a failed check: past the handshake, a "fail" verdict (the normal way out);
    /// before it, SIGINT, which live_prometheus.py turns into stopping its Prometheus.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if self.ready {
            self.verdict(false);
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        self.stdin = None;
        self.wait_exit();
    }
}

/// Prometheus's HTTP API, reached from inside the namespace.
struct PromApi<'ns> {
    ns: &'ns Netns,
    addr: SocketAddr,
}

impl PromApi<'_> {
    /// `GET path?params`: the `data` of a successful answer; panics on any other.
    fn get(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect();
        let target = format!("{path}?{}", query.join("&"));
        let addr = self.addr;
        let response = self
            .ns
            .run(|| http::get(addr, &target, Duration::from_secs(30)))
            .unwrap_or_else(|e| panic!("Prometheus {path}: {e}"));
        let body: Value = serde_json::from_slice(&response.body)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", response.text()));
        assert_eq!(
            body["status"], "success",
            "{path} {params:?} answered {}: {body}",
            response.status
        );
        body["data"].clone()
    }

    /// An instant query: its result vector (or matrix, for a range selector).
    fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.get("/api/v1/query", &[("query", expr)]);
        data["result"].as_array().cloned().unwrap_or_default()
    }
}

fn sample_value(series: &Value) -> f64 {
    sample_pair(&series["value"])
}

/// `[timestamp, "value"]` -> value.
fn sample_pair(pair: &Value) -> f64 {
    pair[1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad sample {pair}"))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Installs what this test runs when it is missing, as tests/monitoring/check.sh does:
/// `prometheus` (also brings promtool), `jsonnet` and `python3-yaml` (the rules
/// override renders the mixin). Debian's prometheus package starts its service where
/// it can; the instance the install started is stopped again, so nothing is left
/// listening on :9090.
fn ensure_tools() {
    let mut packages = Vec::new();
    if !on_path("prometheus") || !on_path("promtool") {
        packages.push("prometheus");
    }
    if !on_path("jsonnet") {
        packages.push("jsonnet");
    }
    if !python_has_yaml() {
        packages.push("python3-yaml");
    }
    if packages.is_empty() {
        return;
    }
    let before = service_instances();
    run_ok(Command::new("apt-get").args(["update", "-qq"]));
    run_ok(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-o", "DPkg::Lock::Timeout=600", "install", "-y", "-qq"])
            .arg("--no-install-recommends")
            .args(&packages),
    );
    if Path::new("/run/systemd/system").exists() && before.is_empty() {
        let _ = Command::new("systemctl")
            .args(["stop", "prometheus"])
            .status();
    }
    for pid in service_instances().difference(&before) {
        // SAFETY: plain kill(2) of a process the package install started.
        unsafe { libc::kill(*pid, libc::SIGTERM) };
    }
    for tool in ["prometheus", "promtool", "jsonnet"] {
        assert!(
            on_path(tool),
            "{tool} missing after installing {packages:?}"
        );
    }
    assert!(
        python_has_yaml(),
        "python3 cannot import yaml after install"
    );
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

fn python_has_yaml() -> bool {
    Command::new("python3")
        .args(["-c", "import yaml"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Pids of `prometheus` processes run by the package's `prometheus` user (the service);
/// the test's own instances run as the caller.
fn service_instances() -> HashSet<i32> {
    use std::os::unix::fs::MetadataExt;
    let Some(uid) = user_id("prometheus") else {
        return HashSet::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashSet::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            let owner = e.metadata().ok()?.uid();
            (comm.trim() == "prometheus" && owner == uid).then_some(pid)
        })
        .collect()
}

fn user_id(name: &str) -> Option<u32> {
    std::fs::read_to_string("/etc/passwd")
        .ok()?
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
        .and_then(|f| f.get(2)?.parse().ok())
}

fn run_ok(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}
