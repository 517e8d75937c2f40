//! `--busy`: the exporter on a busy host. Two measurements, each in fresh private
//! namespaces, written between their own markers in docs/benchmarks.md:
//!
//! - **events lost vs churn rate** (`loss`): connection churn at 10k to 100k
//!   connections per second (every connection through CLOSE_WAIT, `tcpstate-churn`, two
//!   threads, so the churn uses both CPUs) in the daemon's own namespace, in a foreign
//!   one, and in both at once; per run the rate reached, the CLOSE_WAIT entries the
//!   daemon counted against the connections made, and `tcpstate_events_lost_total`.
//! - **staleness under CPU hogs** (`staleness`): a table of 110k sockets sampled every
//!   second while 0, 2 and 4 threads spin; the age of the served sample
//!   (`now - tcpstate_last_sample_timestamp_seconds`) read every 250 ms.

mod loss;
mod staleness;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::report::{self, Machine};

pub use loss::LossRun;
pub use staleness::StalenessRun;

/// What `--busy` runs.
#[derive(Clone, Debug)]
pub struct BusyPlan {
    /// Churn rates asked for, connections per second (all threads together).
    pub rates: Vec<u64>,
    pub churn_seconds: u64,
    pub hogs: Vec<usize>,
    pub table: usize,
    pub interval: Duration,
    pub staleness_seconds: u64,
    pub churn: PathBuf,
}

impl Default for BusyPlan {
    fn default() -> Self {
        BusyPlan {
            rates: vec![10_000, 20_000, 50_000, 100_000],
            churn_seconds: 5,
            hogs: vec![0, 2, 4],
            table: 110_000,
            interval: Duration::from_secs(1),
            staleness_seconds: 20,
            churn: PathBuf::new(),
        }
    }
}

const START: &str = "<!-- tcpstate-bench busy: start -->";
const END: &str = "<!-- tcpstate-bench busy: end -->";

/// Runs both measurements, prints their tables and writes them into `doc`.
pub fn run(options: &crate::Options) -> Result<(), String> {
    let plan = &options.busy;
    let losses = loss::measure(options)?;
    let stale = staleness::measure(options)?;
    let markdown = markdown(&Machine::probe(), plan, &losses, &stale);
    println!("\n{markdown}");
    if let Some(doc) = &options.doc {
        report::write_between(doc, START, END, &markdown)?;
        println!("results written into {}", doc.display());
    }
    Ok(())
}

fn markdown(
    machine: &Machine,
    plan: &BusyPlan,
    losses: &[LossRun],
    stale: &[StalenessRun],
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Run of {}: {} CPUs ({}), kernel {}; load average before the run: {}.\n",
        machine.date,
        machine.cpus,
        machine.model,
        machine.kernel,
        load_average(),
    );
    loss::write(&mut md, plan, losses);
    staleness::write(&mut md, plan, stale);
    md
}

/// /proc/loadavg's first three fields: how busy the machine was besides the benchmark.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
