//! Staleness under CPU hogs: a table of `BusyPlan::table` sockets (the load of the main
//! benchmark) sampled every `BusyPlan::interval` by the daemon (default settings
//! otherwise), while 0, 2, 4 ... threads spin (`tcpstate-churn --threads 0 --hogs N`).
//! Every 250 ms the served sample's age is read, `now -
//! tcpstate_last_sample_timestamp_seconds`, from a scraper at normal priority in the
//! namespace. The target: never older than twice the interval plus one sample's time.

use std::fmt::Write as _;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tcpstate_testkit::netns::Netns;

use super::BusyPlan;
use crate::daemon::{self, Daemon};
use crate::load::Table;

#[derive(Clone, Debug, Default)]
pub struct StalenessRun {
    pub hogs: usize,
    pub seconds: f64,
    /// Samples published during the run.
    pub samples: u64,
    pub reads: u64,
    pub median_age: f64,
    pub max_age: f64,
    /// The longest `tcpstate_sample_duration_seconds` seen.
    pub max_sample_seconds: f64,
    pub interval: f64,
}

impl StalenessRun {
    /// Twice the interval plus one sample time, `sample_seconds`: what a sample takes
    /// when the sampler is not starved (the run without hogs), since a starved sample's
    /// own time is the very thing that grows.
    pub fn bound(&self, sample_seconds: f64) -> f64 {
        2.0 * self.interval + sample_seconds
    }
}

/// One sample's time for the bound: the longest of the run without hogs (else of all).
pub fn reference_sample_seconds(runs: &[StalenessRun]) -> f64 {
    runs.iter()
        .find(|r| r.hogs == 0)
        .map(|r| r.max_sample_seconds)
        .unwrap_or_else(|| {
            runs.iter()
                .map(|r| r.max_sample_seconds)
                .fold(0.0, f64::max)
        })
}

pub fn measure(options: &crate::Options) -> Result<Vec<StalenessRun>, String> {
    let plan = &options.busy;
    let ns = crate::prepared_netns()?;
    eprintln!("== staleness: table of {} sockets", plan.table);
    let mut table = Table::build(&ns, &options.scenario, plan.table)?;
    let interval = format!("{}ms", plan.interval.as_millis());
    let _daemon = Daemon::start(&ns, &options.exporter, &["--sample.interval", &interval])?;
    // Past the first (attributed) samples.
    let deadline = Instant::now() + Duration::from_secs(120);
    while ns.run(daemon::samples_now)? < 3 {
        if Instant::now() > deadline {
            return Err("the daemon took no 3 samples in 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut runs = Vec::new();
    for &hogs in &plan.hogs {
        table.refresh_and_settle()?;
        eprintln!("   {hogs} hogs for {} s", plan.staleness_seconds);
        let hog = spawn_hogs(&ns, plan, hogs)?;
        let run = observe(&ns, plan, hogs);
        drop(hog);
        let run = run?;
        eprintln!(
            "   {} samples, age median {:.2} s, max {:.2} s, longest sample {:.2} s",
            run.samples, run.median_age, run.max_age, run.max_sample_seconds
        );
        runs.push(run);
    }
    Ok(runs)
}

/// The hog process, killed on drop.
struct Hogs(Option<Child>);

impl Drop for Hogs {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_hogs(ns: &Netns, plan: &BusyPlan, hogs: usize) -> Result<Hogs, String> {
    if hogs == 0 {
        return Ok(Hogs(None));
    }
    let child = ns
        .command(&plan.churn)
        .args(["--threads", "0", "--hogs", &hogs.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", plan.churn.display()))?;
    Ok(Hogs(Some(child)))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Reads the served sample's age every 250 ms for the run's duration.
fn observe(ns: &Netns, plan: &BusyPlan, hogs: usize) -> Result<StalenessRun, String> {
    ns.run(|| {
        let started = Instant::now();
        let mut ages = Vec::new();
        let mut run = StalenessRun {
            hogs,
            interval: plan.interval.as_secs_f64(),
            ..StalenessRun::default()
        };
        let mut first_samples = None;
        while started.elapsed() < Duration::from_secs(plan.staleness_seconds) {
            let text = daemon::scrape()?;
            let age = unix_now()
                - daemon::metric(&text, "tcpstate_last_sample_timestamp_seconds").unwrap_or(0.0);
            ages.push(age);
            let samples = daemon::metric(&text, "tcpstate_samples_total").unwrap_or(0.0) as u64;
            run.samples = samples - *first_samples.get_or_insert(samples);
            let took = daemon::metric(&text, "tcpstate_sample_duration_seconds").unwrap_or(0.0);
            run.max_sample_seconds = run.max_sample_seconds.max(took);
            std::thread::sleep(Duration::from_millis(250));
        }
        run.seconds = started.elapsed().as_secs_f64();
        run.reads = ages.len() as u64;
        ages.sort_by(f64::total_cmp);
        run.median_age = ages.get(ages.len() / 2).copied().unwrap_or(0.0);
        run.max_age = ages.last().copied().unwrap_or(0.0);
        Ok(run)
    })?
}

pub fn write(md: &mut String, plan: &BusyPlan, runs: &[StalenessRun]) {
    let _ = writeln!(
        md,
        "#### Staleness under CPU hogs\n\nA table of {} sockets, the daemon sampling it every \
         {} ms (attribution on), N threads spinning beside it for {} s each; the served \
         sample's age read every 250 ms. Target: never older than 2 × interval + one \
         sample time, the longest `tcpstate_sample_duration_seconds` of the run without \
         hogs ({:.2} s here): a starved sample's own time is what grows.\n",
        plan.table,
        plan.interval.as_millis(),
        plan.staleness_seconds,
        reference_sample_seconds(runs),
    );
    let reference = reference_sample_seconds(runs);
    md.push_str(
        "| hogs | samples | reads | age median | age max | longest sample | bound | result |\n\
         |---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in runs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {} |",
            r.hogs,
            r.samples,
            r.reads,
            r.median_age,
            r.max_age,
            r.max_sample_seconds,
            r.bound(reference),
            if r.max_age <= r.bound(reference) {
                "pass"
            } else {
                "FAIL"
            }
        );
    }
    md.push('\n');
}
