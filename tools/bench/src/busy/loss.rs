//! Events lost vs churn rate: `tcpstate-churn` in the daemon's own namespace, in a
//! foreign one, and in both at once, at each rate of the plan, one daemon (default
//! settings, `--sample.interval 1s`) watching its own namespace throughout.
//!
//! Every connection the churn makes enters CLOSE_WAIT once in the namespace it runs in,
//! so with nothing lost the daemon's `tcpstate_close_wait_entered_total` grows by
//! exactly the own namespace's connections. The benchmark's own scrapes leave CLOSE_WAIT
//! sockets too (the server closes first); they are outbound to port 9815, and left out
//! of the sum.

use std::fmt::Write as _;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tcpstate_testkit::netns::Netns;

use super::BusyPlan;
use crate::daemon::{self, Daemon};
use crate::measure;

/// Where the churn ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Own,
    Both,
    Foreign,
}

impl Place {
    pub fn label(self) -> &'static str {
        match self {
            Place::Own => "own namespace",
            Place::Both => "own + foreign",
            Place::Foreign => "foreign namespace",
        }
    }
}

/// What one `tcpstate-churn` run reported.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChurnFigures {
    pub made: u64,
    pub seconds: f64,
    pub rate: f64,
    pub cpu_seconds: f64,
}

/// The loss runs and what the daemon's memory did meanwhile.
#[derive(Clone, Debug, Default)]
pub struct Losses {
    pub runs: Vec<LossRun>,
    pub bursts: Vec<super::burst::BurstRun>,
    /// The daemon's peak and final resident memory over all the runs.
    pub hwm_kib: u64,
    pub rss_kib: u64,
}

#[derive(Clone, Debug)]
pub struct LossRun {
    pub rate: u64,
    pub place: Place,
    pub own: Option<ChurnFigures>,
    pub foreign: Option<ChurnFigures>,
    /// CLOSE_WAIT entries the daemon counted (the benchmark's scrapes left out).
    pub entered: u64,
    pub lost: u64,
    pub daemon_cpu: Duration,
}

/// The daemon's counters at one moment.
pub struct Reading {
    pub samples: f64,
    pub lost: f64,
    pub entered: f64,
}

pub fn read_counters(ns: &Netns) -> Result<Reading, String> {
    let text = ns.run(daemon::scrape)??;
    Ok(Reading {
        samples: daemon::metric(&text, "tcpstate_samples_total").unwrap_or(0.0),
        lost: daemon::metric(&text, "tcpstate_events_lost_total").unwrap_or(0.0),
        entered: daemon::metric_sum(&text, "tcpstate_close_wait_entered_total", |labels| {
            !labels.contains(&format!("port=\"{}\"", daemon::PORT))
        }),
    })
}

/// Polls until the daemon has published `samples` samples (its first ones, or those
/// after a churn run: events drained and applied).
pub fn wait_for_samples(ns: &Netns, samples: f64) -> Result<Reading, String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(reading) = read_counters(ns)
            && reading.samples >= samples
        {
            return Ok(reading);
        }
        if Instant::now() > deadline {
            return Err(format!("the daemon did not reach {samples} samples"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn measure(options: &crate::Options) -> Result<Losses, String> {
    let plan = &options.busy;
    let own = crate::prepared_netns()?;
    let foreign = crate::prepared_netns()?;
    let mut args = vec!["--sample.interval".to_string(), "1s".to_string()];
    // Removed when this returns, whichever way (after the daemon, declared later).
    let config = plan
        .ring_bytes
        .map(|bytes| {
            let text = format!("events_ring_bytes = {bytes}\n");
            daemon::ConfigFile::write("tcpstate-bench", &text)
        })
        .transpose()?;
    if let Some(config) = &config {
        args.extend(["--config.file".to_string(), config.arg()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start(&own, &options.exporter, &args)?;
    wait_for_samples(&own, 2.0)?;
    let mut losses = Losses::default();
    for &rate in &plan.rates {
        for place in [Place::Own, Place::Both, Place::Foreign] {
            eprintln!("== churn {rate}/s, {}", place.label());
            let run = one_run(plan, &daemon, (&own, &foreign), rate, place)?;
            eprintln!(
                "   own {:?}, foreign {:?}: entered {}, lost {}",
                run.own.map(|c| c.made),
                run.foreign.map(|c| c.made),
                run.entered,
                run.lost
            );
            losses.runs.push(run);
        }
    }
    for place in [Place::Own, Place::Foreign] {
        eprintln!("== burst of closes, {}", place.label());
        let run = super::burst::one_run(plan, &daemon, (&own, &foreign), place)?;
        eprintln!(
            "   {} connections at {:.0}/s: entered {}, lost {}",
            run.made(),
            run.rate(),
            run.entered,
            run.lost
        );
        losses.bursts.push(run);
    }
    let pid = daemon.pid().to_string();
    losses.hwm_kib = measure::status_kib(&pid, "VmHWM").unwrap_or(0);
    losses.rss_kib = measure::status_kib(&pid, "VmRSS").unwrap_or(0);
    Ok(losses)
}

fn one_run(
    plan: &BusyPlan,
    daemon: &Daemon,
    (own, foreign): (&Netns, &Netns),
    rate: u64,
    place: Place,
) -> Result<LossRun, String> {
    let before = read_counters(own)?;
    let cpu_before = measure::process_cpu(daemon.pid()).unwrap_or_default();
    let start = |ns: &Netns| spawn_churn(ns, plan, rate);
    let own_child = matches!(place, Place::Own | Place::Both)
        .then(|| start(own))
        .transpose()?;
    let foreign_child = matches!(place, Place::Foreign | Place::Both)
        .then(|| start(foreign))
        .transpose()?;
    let own_figures = own_child.map(finish_churn).transpose()?;
    let foreign_figures = foreign_child.map(finish_churn).transpose()?;
    let counted = Counted::since(own, daemon, &before, cpu_before)?;
    Ok(LossRun {
        rate,
        place,
        own: own_figures,
        foreign: foreign_figures,
        entered: counted.entered,
        lost: counted.lost,
        daemon_cpu: counted.daemon_cpu,
    })
}

/// What the daemon counted during a run: read once the churn ended and two more
/// samples applied everything drained.
pub struct Counted {
    pub entered: u64,
    pub lost: u64,
    pub daemon_cpu: Duration,
}

impl Counted {
    pub fn since(
        own: &Netns,
        daemon: &Daemon,
        before: &Reading,
        cpu_before: Duration,
    ) -> Result<Counted, String> {
        let daemon_cpu = measure::process_cpu(daemon.pid())
            .unwrap_or_default()
            .saturating_sub(cpu_before);
        let ended = read_counters(own)?;
        let after = wait_for_samples(own, ended.samples + 2.0)?;
        Ok(Counted {
            entered: (after.entered - before.entered).max(0.0) as u64,
            lost: (after.lost - before.lost).max(0.0) as u64,
            daemon_cpu,
        })
    }
}

fn spawn_churn(ns: &Netns, plan: &BusyPlan, rate: u64) -> Result<Child, String> {
    ns.command(&plan.churn)
        .args(["--threads", "2", "--rate", &rate.to_string()])
        .args(["--seconds", &plan.churn_seconds.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", plan.churn.display()))
}

pub fn finish_churn(child: Child) -> Result<ChurnFigures, String> {
    let out = child
        .wait_with_output()
        .map_err(|e| format!("tcpstate-churn: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_churn(&text).ok_or_else(|| format!("tcpstate-churn said {text:?} ({})", out.status))
}

/// Reads `made=M seconds=W rate=R cpu_seconds=C`.
pub fn parse_churn(text: &str) -> Option<ChurnFigures> {
    let field = |key: &str| -> Option<f64> {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    Some(ChurnFigures {
        made: field("made")? as u64,
        seconds: field("seconds")?,
        rate: field("rate")?,
        cpu_seconds: field("cpu_seconds")?,
    })
}

pub fn write(md: &mut String, plan: &BusyPlan, losses: &Losses) {
    let ring = plan.ring_bytes.map_or("the default ring".to_string(), |b| {
        format!("`events_ring_bytes = {b}`")
    });
    let _ = writeln!(
        md,
        "#### Events lost vs churn rate\n\n`tcpstate-churn --threads 2 --rate R --seconds {}` \
         (every connection through CLOSE_WAIT) in the daemon's own namespace, in a foreign \
         one, or one of each at once; one daemon, default settings but \
         `--sample.interval 1s` and {ring}, for all runs. *Reached*: connections per second made \
         (own / foreign). *Entered − made*: CLOSE_WAIT entries the daemon counted minus \
         the own namespace's connections (0: every one counted). *Churn CPUs*: the churning \
         threads' CPU time over the wall time (2.0: both CPUs). *Daemon CPU*: its user + \
         system time during the churn.\n",
        plan.churn_seconds,
    );
    md.push_str(
        "| rate asked | churn in | reached (own / foreign) | churn CPUs | own connections | entered − made | events lost | daemon CPU |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &losses.runs {
        let reached =
            |c: Option<ChurnFigures>| c.map_or("-".to_string(), |c| format!("{:.0}", c.rate));
        let made = r.own.map_or(0, |c| c.made);
        let cpus = [r.own, r.foreign]
            .iter()
            .flatten()
            .map(|c| c.cpu_seconds / c.seconds.max(1e-9))
            .sum::<f64>();
        let _ = writeln!(
            md,
            "| {} | {} | {} / {} | {cpus:.2} | {} | {:+} | {} | {:.2} s |",
            r.rate,
            r.place.label(),
            reached(r.own),
            reached(r.foreign),
            made,
            r.entered as i64 - made as i64,
            r.lost,
            r.daemon_cpu.as_secs_f64(),
        );
    }
    md.push('\n');
    super::burst::write(md, &losses.bursts);
    let _ = writeln!(
        md,
        "The daemon's memory after these runs: peak (VmHWM) {:.1} MiB, resident {:.1} MiB.\n",
        losses.hwm_kib as f64 / 1024.0,
        losses.rss_kib as f64 / 1024.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_churn_report() {
        let c = parse_churn("made=250000 seconds=5.001 rate=49990 cpu_seconds=9.5\n")
            .expect("a report");
        assert_eq!(c.made, 250_000);
        assert!((c.rate - 49990.0).abs() < 1e-9);
        assert!(parse_churn("").is_none());
    }
}
