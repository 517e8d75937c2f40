//! A burst of closes: `tcpstate-churn --burst` processes in the daemon's namespace (or
//! a foreign one) open their connections, wait, and are released together, so that tens
//! of thousands of connections pass through CLOSE_WAIT within a second or two: faster
//! than full connections can churn on this machine (each one's handshake costs about
//! as much as both of its closes), and more events at once than the ring holds.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::time::Duration;

use tcpstate_testkit::netns::Netns;

use super::BusyPlan;
use super::loss::{self, ChurnFigures, Counted, Place, read_counters};
use crate::daemon::Daemon;
use crate::measure;

/// Burst processes and the connections each opens (two fds each, under the 20,000-fd
/// limit of a process).
pub const PROCESSES: usize = 4;
pub const PAIRS: usize = 9_000;

#[derive(Clone, Debug)]
pub struct BurstRun {
    pub place: Place,
    /// The processes' figures: connections closed and the closes' wall time each.
    pub churns: Vec<ChurnFigures>,
    pub entered: u64,
    pub lost: u64,
    pub daemon_cpu: Duration,
}

impl BurstRun {
    pub fn made(&self) -> u64 {
        self.churns.iter().map(|c| c.made).sum()
    }

    /// Connections through CLOSE_WAIT per second: all of them over the longest
    /// process's window (the processes are released together).
    pub fn rate(&self) -> f64 {
        let window = self.churns.iter().map(|c| c.seconds).fold(0.0, f64::max);
        self.made() as f64 / window.max(1e-9)
    }
}

pub fn one_run(
    plan: &BusyPlan,
    daemon: &Daemon,
    (own, foreign): (&Netns, &Netns),
    place: Place,
) -> Result<BurstRun, String> {
    let target = if place == Place::Foreign {
        foreign
    } else {
        own
    };
    let mut children = (0..PROCESSES)
        .map(|_| spawn(target, plan))
        .collect::<Result<Vec<_>, _>>()?;
    for child in &mut children {
        wait_ready(child)?;
    }
    let before = read_counters(own)?;
    let cpu_before = measure::process_cpu(daemon.pid()).unwrap_or_default();
    for child in &mut children {
        let stdin = child.stdin.as_mut().ok_or("tcpstate-churn: no stdin")?;
        stdin
            .write_all(b"go\n")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("tcpstate-churn: release: {e}"))?;
    }
    let churns = children
        .into_iter()
        .map(loss::finish_churn)
        .collect::<Result<Vec<_>, _>>()?;
    let counted = Counted::since(own, daemon, &before, cpu_before)?;
    Ok(BurstRun {
        place,
        churns,
        entered: counted.entered,
        lost: counted.lost,
        daemon_cpu: counted.daemon_cpu,
    })
}

fn spawn(ns: &Netns, plan: &BusyPlan) -> Result<Child, String> {
    ns.command(&plan.churn)
        .args(["--burst", &PAIRS.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", plan.churn.display()))
}

/// Reads the `ready` line; the rest of stdout is left for `finish_churn`.
fn wait_ready(child: &mut Child) -> Result<(), String> {
    let stdout = child.stdout.take().ok_or("tcpstate-churn: no stdout")?;
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("tcpstate-churn: {e}"))?;
    if line.trim() != "ready" {
        return Err(format!("tcpstate-churn --burst said {line:?}"));
    }
    // `ready` is all it writes before the go; what follows is read unbuffered.
    child.stdout = Some(reader.into_inner());
    Ok(())
}

pub fn write(md: &mut String, runs: &[BurstRun]) {
    let _ = writeln!(
        md,
        "#### A burst of closes\n\n{PROCESSES} `tcpstate-churn --burst {PAIRS}` processes open \
         {PAIRS} loopback connections each, then are released together and close them all \
         (clients first: every server end enters CLOSE_WAIT, then leaves it), in the \
         daemon's namespace or a foreign one; the same daemon. *Rate*: connections through \
         CLOSE_WAIT per second, all of them over the longest process's closing time.\n"
    );
    md.push_str(
        "| burst in | connections | closing time | rate | entered − made | events lost | daemon CPU |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        let made = if r.place == Place::Foreign {
            0
        } else {
            r.made()
        };
        let window = r.churns.iter().map(|c| c.seconds).fold(0.0, f64::max);
        let _ = writeln!(
            md,
            "| {} | {} | {window:.2} s | {:.0}/s | {:+} | {} | {:.2} s |",
            r.place.label(),
            r.made(),
            r.rate(),
            r.entered as i64 - made as i64,
            r.lost,
            r.daemon_cpu.as_secs_f64(),
        );
    }
    md.push('\n');
}
