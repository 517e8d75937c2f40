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

mod burst;
mod loss;
mod staleness;

use std::path::PathBuf;
use std::time::Duration;

use crate::report::{self, Machine};

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
    /// `events_ring_bytes` for the loss runs (`None`: the daemon's default).
    pub ring_bytes: Option<u32>,
    /// Run only one of the two measurements.
    pub only: Option<Part>,
    pub churn: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Loss,
    Staleness,
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
            ring_bytes: None,
            only: None,
            churn: PathBuf::new(),
        }
    }
}

const LOSS_MARKERS: (&str, &str) = (
    "<!-- tcpstate-bench busy loss: start -->",
    "<!-- tcpstate-bench busy loss: end -->",
);
const STALENESS_MARKERS: (&str, &str) = (
    "<!-- tcpstate-bench busy staleness: start -->",
    "<!-- tcpstate-bench busy staleness: end -->",
);

/// Runs the measurements of the plan, prints their tables and writes each into `doc`
/// between its own markers (a run of one part leaves the other's figures).
pub fn run(options: &crate::Options) -> Result<(), String> {
    let plan = &options.busy;
    let mut parts = Vec::new();
    if plan.only != Some(Part::Staleness) {
        let mut md = header();
        let losses = loss::measure(options)?;
        loss::write(&mut md, plan, &losses);
        parts.push((LOSS_MARKERS, md));
    }
    if plan.only != Some(Part::Loss) {
        let mut md = header();
        let runs = staleness::measure(options)?;
        staleness::write(&mut md, plan, &runs);
        parts.push((STALENESS_MARKERS, md));
    }
    for ((start, end), markdown) in &parts {
        println!("\n{markdown}");
        if let Some(doc) = &options.doc {
            report::write_between(doc, start, end, markdown)?;
        }
    }
    if let Some(doc) = &options.doc {
        println!("results written into {}", doc.display());
    }
    Ok(())
}

/// When and where, and how busy the machine was before the benchmark started.
fn header() -> String {
    let machine = Machine::probe();
    format!(
        "Run of {}: {} CPUs ({}), kernel {}; load average before: {}.\n\n",
        machine.date,
        machine.cpus,
        machine.model,
        machine.kernel,
        load_average(),
    )
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
