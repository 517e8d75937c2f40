//! The real daemon under load: its peak and steady RSS while it samples the table every
//! second, and `/metrics` latency under 50 concurrent `wrk` connections meanwhile; then
//! the same scrapes against a daemon that does not sample, the same-run baseline that
//! says how much of the latency is the machine (wrk and the server sharing its CPUs).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::measure;
use tcpstate_testkit::http;
use tcpstate_testkit::netns::Netns;

pub const PORT: u16 = 9815;

/// What the daemon phase measured.
#[derive(Clone, Debug, Default)]
pub struct DaemonFigures {
    pub samples: u64,
    pub rss_at_10_kib: u64,
    /// VmRSS at the last sample before wrk.
    pub rss_end_kib: u64,
    pub rss_after_wrk_kib: u64,
    pub hwm_kib: u64,
    /// Daemon CPU per sample over the whole phase (scrapes included).
    pub cpu_per_sample: Duration,
    pub last_sample_seconds: f64,
    /// One wrk run per thread count of the plan, in its order.
    pub wrk: Vec<WrkFigures>,
}

/// The scrape load: `wrk -t{threads} -c{connections} -d{seconds}s`, once per entry of
/// `threads`.
#[derive(Clone, Debug)]
pub struct WrkPlan {
    pub seconds: u32,
    pub connections: u32,
    pub threads: Vec<u32>,
}

#[derive(Clone, Debug, Default)]
pub struct WrkFigures {
    pub threads: u32,
    pub connections: u32,
    pub seconds: u32,
    pub requests: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Socket errors (connect, read, write, timeout) plus non-2xx responses.
    pub errors: u64,
    pub samples_during: u64,
    pub raw: String,
}

/// The exporter running inside a namespace, listening on 127.0.0.1:`PORT` there; killed
/// on drop, and with the benchmark if it dies.
pub struct Daemon(Child);

impl Daemon {
    /// Starts `exporter` in `ns` with `args` after the listen address and log level.
    pub fn start(ns: &Netns, exporter: &Path, args: &[&str]) -> Result<Daemon, String> {
        let mut cmd = ns.command(exporter);
        cmd.args([
            "--web.listen-address",
            &format!("127.0.0.1:{PORT}"),
            "--log.level",
            "warn",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
        // SAFETY: prctl is async-signal-safe; the daemon dies with this benchmark.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        Ok(Daemon(
            cmd.spawn().map_err(|e| format!("start exporter: {e}"))?,
        ))
    }

    /// `ip netns exec` execs the daemon: its pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A config file for the daemon, `NAME-PID.toml` in the temp dir, removed on drop: a
/// benchmark that returns early, fails or panics leaves none behind either.
pub struct ConfigFile(tempfile::TempPath);

impl ConfigFile {
    /// Writes `text` to a new file `NAME-XXXXXX.toml` in the temp dir: the bench runs as
    /// root and /tmp is everyone's, so it is created exclusively (`O_EXCL`: nothing
    /// planted under that name is followed or truncated) under a random name, mode 0600,
    /// and removed when dropped, on a panic too.
    pub fn write(name: &str, text: &str) -> Result<ConfigFile, String> {
        use std::io::Write;
        let mut file = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .suffix(".toml")
            .tempfile()
            .map_err(|e| format!("{}: {e}", std::env::temp_dir().display()))?;
        let path = file.path().display().to_string();
        file.write_all(text.as_bytes())
            .map_err(|e| format!("{path}: {e}"))?;
        Ok(ConfigFile(file.into_temp_path()))
    }

    /// The path, as the daemon's `--config.file` takes it.
    pub fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

/// Starts the exporter in `ns` on 127.0.0.1:PORT, sampling every `interval`.
pub fn start(ns: &Netns, exporter: &Path, interval: &str) -> Result<Daemon, String> {
    Daemon::start(ns, exporter, &["--sample.interval", interval])
}

/// Starts the daemon in `ns` sampling every `interval`, lets it take `samples` samples,
/// then runs the wrk plan (`seconds` 0: no wrk).
pub fn measure(
    ns: &Netns,
    exporter: &Path,
    interval: &str,
    samples: u64,
    plan: &WrkPlan,
) -> Result<DaemonFigures, String> {
    let daemon = Daemon::start(ns, exporter, &["--sample.interval", interval])?;
    let pid = daemon.pid();
    let pid_text = pid.to_string();
    let cpu_start = measure::process_cpu(pid).unwrap_or_default();
    let mut figures = DaemonFigures::default();
    ns.run(|| -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60 + samples * 5);
        let mut first_samples = None;
        loop {
            if Instant::now() > deadline {
                return Err(format!(
                    "the daemon took fewer than {samples} samples in time"
                ));
            }
            let taken = match scrape() {
                Ok(text) => metric(&text, "tcpstate_samples_total").unwrap_or(0.0) as u64,
                Err(_) => 0,
            };
            if first_samples.is_none() && taken > 0 {
                first_samples = Some(taken);
            }
            if taken >= 10 && figures.rss_at_10_kib == 0 {
                figures.rss_at_10_kib = measure::status_kib(&pid_text, "VmRSS").unwrap_or(0);
            }
            if taken >= samples {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Flatness is read before wrk: 50 connections' buffers are not growth.
        figures.rss_end_kib = measure::status_kib(&pid_text, "VmRSS").unwrap_or(0);
        if plan.seconds > 0 {
            for threads in &plan.threads {
                let before = samples_now();
                let mut w = run_wrk(*threads, plan.seconds, plan.connections)?;
                w.samples_during = samples_now().saturating_sub(before);
                figures.wrk.push(w);
            }
        }
        let text = scrape()?;
        figures.samples = metric(&text, "tcpstate_samples_total").unwrap_or(0.0) as u64;
        figures.last_sample_seconds =
            metric(&text, "tcpstate_sample_duration_seconds").unwrap_or(0.0);
        Ok(())
    })??;
    figures.rss_after_wrk_kib = measure::status_kib(&pid_text, "VmRSS").unwrap_or(0);
    figures.hwm_kib = measure::status_kib(&pid_text, "VmHWM").unwrap_or(0);
    let cpu = measure::process_cpu(pid)
        .unwrap_or_default()
        .saturating_sub(cpu_start);
    figures.cpu_per_sample = cpu / figures.samples.max(1) as u32;
    Ok(figures)
}

pub fn samples_now() -> u64 {
    scrape()
        .ok()
        .and_then(|t| metric(&t, "tcpstate_samples_total"))
        .unwrap_or(0.0) as u64
}

/// `GET /metrics` from this thread's namespace, with the shared HTTP client.
pub fn scrape() -> Result<String, String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], PORT));
    let response = http::get(addr, "/metrics", Duration::from_secs(10))?;
    match response.status {
        200 => Ok(response.text()),
        status => Err(format!("scrape: HTTP {status}")),
    }
}

/// Value of an unlabelled sample line.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Sum of the values of every series of `name` whose labels pass `keep` (the text
/// between the braces; empty for an unlabelled series).
pub fn metric_sum(text: &str, name: &str, keep: impl Fn(&str) -> bool) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            keep(labels).then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

fn run_wrk(threads: u32, seconds: u32, connections: u32) -> Result<WrkFigures, String> {
    let out = Command::new("wrk")
        .args([
            &format!("-t{threads}"),
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "--timeout",
            "5s",
            &format!("http://127.0.0.1:{PORT}/metrics"),
        ])
        .output()
        .map_err(|e| format!("wrk (apt-get install wrk): {e}"))?;
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "wrk failed: {raw}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut figures = parse_wrk(&raw);
    figures.threads = threads;
    figures.connections = connections;
    figures.seconds = seconds;
    figures.raw = raw;
    Ok(figures)
}

/// Reads wrk's `--latency` report: percentiles, request count, errors.
pub fn parse_wrk(raw: &str) -> WrkFigures {
    let mut f = WrkFigures::default();
    for line in raw.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => f.p50_ms = millis(v),
            ["99%", v] => f.p99_ms = millis(v),
            ["Latency", _avg, _stdev, max, ..] => f.max_ms = millis(max),
            [n, "requests", "in", ..] => f.requests = n.parse().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                f.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => f.errors += n.parse().unwrap_or(0),
            _ => {}
        }
    }
    f
}

/// wrk durations: `812.00us`, `1.23ms`, `2.10s`.
fn millis(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        "m" => value * 60_000.0,
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn a_config_file_goes_with_its_guard_even_when_the_benchmark_panics() {
        let name = "tcpstate-bench-guard-test";
        let (sender, written) = std::sync::mpsc::channel();
        let ended = std::panic::catch_unwind(|| {
            let file = ConfigFile::write(name, "x = 1\n").expect("write");
            sender.send(PathBuf::from(file.arg())).expect("send");
            assert_eq!(
                std::fs::read_to_string(file.arg()).ok().as_deref(),
                Some("x = 1\n")
            );
            panic!("a benchmark that fails with its daemon's config written");
        });
        assert!(ended.is_err());
        let path = written.recv().expect("the path");
        assert!(!path.exists(), "{} left behind", path.display());
    }

    /// The name is not derived from the pid (a file planted at a guessable name is
    /// never the one written: creation is exclusive, `tempfile`'s), two configs never
    /// share a file, and only root can read them.
    #[test]
    fn config_files_get_names_of_their_own_readable_by_root_alone() {
        use std::os::unix::fs::PermissionsExt;
        let name = "tcpstate-bench-name-test";
        let guessable = std::env::temp_dir().join(format!("{name}-{}.toml", std::process::id()));
        let (one, two) = (
            ConfigFile::write(name, "a = 1\n").expect("write"),
            ConfigFile::write(name, "b = 2\n").expect("write"),
        );
        assert_ne!(one.arg(), two.arg());
        assert_ne!(PathBuf::from(one.arg()), guessable);
        for (file, text) in [(&one, "a = 1\n"), (&two, "b = 2\n")] {
            assert_eq!(
                std::fs::read_to_string(file.arg()).ok().as_deref(),
                Some(text)
            );
            let mode = std::fs::metadata(file.arg())
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{}", file.arg());
        }
    }

    #[test]
    fn sums_the_series_of_a_family() {
        let text = "# TYPE x counter\nx{port=\"80\"} 2\nx{port=\"9815\"} 5\nxy 7\nx 1\n";
        assert_eq!(metric_sum(text, "x", |_| true), 8.0);
        assert_eq!(metric_sum(text, "x", |l| !l.contains("9815")), 3.0);
        assert_eq!(metric(text, "x"), Some(1.0));
    }

    #[test]
    fn reads_a_wrk_latency_report() {
        let raw = "Running 10s test @ http://127.0.0.1:9815/metrics
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.10ms  500.00us  25.30ms   90.00%
  Latency Distribution
     50%  812.00us
     75%    1.20ms
     90%    2.00ms
     99%    4.50ms
  45000 requests in 10.00s, 120.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 3
Requests/sec:   4500.00
";
        let f = parse_wrk(raw);
        assert_eq!(f.requests, 45000);
        assert!((f.p50_ms - 0.812).abs() < 1e-9);
        assert!((f.p99_ms - 4.5).abs() < 1e-9);
        assert!((f.max_ms - 25.3).abs() < 1e-9);
        assert_eq!(f.errors, 6);
    }
}
