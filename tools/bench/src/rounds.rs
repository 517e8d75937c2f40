//! One table size: every method measured in the same rounds, interleaved, on a thread
//! inside the namespace, so slow drifts of a shared machine hit all methods alike.

use std::time::{Duration, Instant};

use tcpstate_exporter::config::Settings;
use tcpstate_exporter::kernel::record::TcpState;
use tcpstate_exporter::kernel::sockdiag::{DiagSocket, DumpRequest};
use tcpstate_exporter::model::sockets::SocketBudget;
use tcpstate_exporter::sampling::attribution::Attribution;
use tcpstate_exporter::sampling::sampler::{SampleReport, Sampler};

use crate::Options;
use crate::daemon::{DaemonFigures, WrkFigures};
use crate::floor::{Dump, FloorSocket, StateCounts};
use crate::load::Table;
use crate::measure::{self, Cost};
use tcpstate_testkit::netns::Netns;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Floor,
    FloorCloseWaitInfo,
    CloseWaitLookups,
    FloorAllInfo,
    Ss,
    SsProcesses,
    ProcNet,
    PlainFirst,
    PlainSteady,
    AttributedFirst,
    AttributedSteady,
    Readlink,
}

impl Method {
    pub const ALL: [Method; 12] = [
        Method::Floor,
        Method::PlainFirst,
        Method::PlainSteady,
        Method::AttributedFirst,
        Method::AttributedSteady,
        Method::Ss,
        Method::SsProcesses,
        Method::ProcNet,
        Method::FloorCloseWaitInfo,
        Method::CloseWaitLookups,
        Method::FloorAllInfo,
        Method::Readlink,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Method::Floor => "floor: sock_diag dump, state byte only",
            Method::FloorCloseWaitInfo => "(part) CLOSE_WAIT dump with tcp_info",
            Method::CloseWaitLookups => "(part) CLOSE_WAIT tcp_info, one lookup each",
            Method::FloorAllInfo => "(alternative) one dump with tcp_info for every socket",
            Method::Ss => "`ss -tan`",
            Method::SsProcesses => "`ss -tanp`",
            Method::ProcNet => "read /proc/net/tcp + tcp6",
            Method::PlainFirst => "exporter sample, no attribution, first",
            Method::PlainSteady => "exporter sample, no attribution, steady",
            Method::AttributedFirst => "exporter sample, attribution, first",
            Method::AttributedSteady => "exporter sample, attribution, steady",
            Method::Readlink => "(part) readlink every fd of the actors",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct RssLoop {
    pub samples: usize,
    pub rss_1_kib: u64,
    pub rss_10_kib: u64,
    pub rss_end_kib: u64,
    pub per_sample: Cost,
}

#[derive(Debug)]
pub struct SizeResult {
    pub size: usize,
    pub actors: usize,
    /// State counts from the floor, one per floor run.
    pub counts: Vec<StateCounts>,
    pub costs: Vec<(Method, Vec<Cost>)>,
    pub attributed_first: SampleReport,
    pub attributed_steady: SampleReport,
    pub exporter_total: u64,
    pub rss_loop: Option<RssLoop>,
    pub daemon: Option<DaemonFigures>,
    /// The same scrapes against a daemon past its first sample and not sampling again.
    pub daemon_idle: Option<DaemonFigures>,
    /// The same scrapes against a daemon sampling at the default interval (15 s).
    pub daemon_default: Option<DaemonFigures>,
}

impl SizeResult {
    /// The baseline wrk run (daemon not sampling) with as many threads as `run`.
    pub fn idle_counterpart(&self, run: &WrkFigures) -> Option<&WrkFigures> {
        let idle = self.daemon_idle.as_ref()?;
        idle.wrk.iter().find(|b| b.threads == run.threads)
    }

    /// The wrk run against the daemon at the default interval with as many threads.
    pub fn default_counterpart(&self, run: &WrkFigures) -> Option<&WrkFigures> {
        let daemon = self.daemon_default.as_ref()?;
        daemon.wrk.iter().find(|b| b.threads == run.threads)
    }

    pub fn median(&self, method: Method) -> Option<Cost> {
        self.costs
            .iter()
            .find(|(m, c)| *m == method && !c.is_empty())
            .map(|(_, c)| measure::median(c))
    }

    fn push(&mut self, method: Method, cost: Cost) {
        match self.costs.iter_mut().find(|(m, _)| *m == method) {
            Some((_, list)) => list.push(cost),
            None => self.costs.push((method, vec![cost])),
        }
    }
}

fn settings(attribution: bool) -> Settings {
    Settings {
        process_attribution: attribution,
        ..Settings::default()
    }
}

/// A timed sample and what it reported.
type Timed = (Cost, SampleReport);

/// First sample of a new sampler, then one settling sample and one timed steady one.
fn first_and_steady(attribution: bool) -> Result<(Timed, Timed, u64), String> {
    let settings = settings(attribution);
    let (sampler, open) = measure::time(|| Sampler::new(&settings));
    let mut sampler = sampler.map_err(|e| format!("sampler: {e}"))?;
    // A fresh owner cache too: "first" means nothing known yet.
    let mut owners = Attribution::new(&settings);
    let (first, mut first_cost) =
        measure::time(|| sampler.sample(&mut owners, SocketBudget::default()));
    let (sample, first_report) = first.map_err(|e| format!("first sample: {e}"))?;
    first_cost.wall += open.wall;
    first_cost.cpu += open.cpu;
    let total = sample.state_counts.iter().sum();
    drop(sample);
    owners.revalidate();
    sampler
        .sample(&mut owners, SocketBudget::default())
        .map_err(|e| format!("sample: {e}"))?;
    owners.revalidate();
    let (steady, steady_cost) =
        measure::time(|| sampler.sample(&mut owners, SocketBudget::default()));
    let (_, steady_report) = steady.map_err(|e| format!("steady sample: {e}"))?;
    Ok((
        (first_cost, first_report),
        (steady_cost, steady_report),
        total,
    ))
}

/// What the first sample now pays to date its CLOSE_WAIT sockets: one exact lookup
/// with tcp_info per socket (the sockets are listed first, untimed).
fn close_wait_lookups() -> Result<Cost, String> {
    let mut socket = DiagSocket::open().map_err(|e| format!("netlink: {e}"))?;
    let mut close_wait = Vec::new();
    socket
        .dump(
            DumpRequest::for_states([TcpState::CloseWait], false),
            &mut |r| close_wait.push(*r),
        )
        .map_err(|e| format!("CLOSE_WAIT dump: {e}"))?;
    let (found, cost) = measure::time(|| socket.lookup_many_with_info(&close_wait, &mut |_| {}));
    found.map_err(|e| format!("CLOSE_WAIT lookups: {e}"))?;
    Ok(cost)
}

pub fn measure_size(
    ns: &Netns,
    table: &mut Table,
    options: &Options,
    size: usize,
) -> Result<SizeResult, String> {
    let mut result = SizeResult {
        size,
        actors: table.actors(),
        counts: Vec::new(),
        costs: Vec::new(),
        attributed_first: SampleReport::default(),
        attributed_steady: SampleReport::default(),
        exporter_total: 0,
        rss_loop: None,
        daemon: None,
        daemon_idle: None,
        daemon_default: None,
    };
    let pids = table.actor_pids();
    ns.run(|| -> Result<(), String> {
        let mut floor = FloorSocket::open().map_err(|e| format!("netlink: {e}"))?;
        for round in 0..options.rounds {
            let round_start = Instant::now();
            table.refresh_and_settle()?;
            let (counts, cost) = measure::time(|| floor.count(Dump::States));
            let counts = counts.map_err(|e| format!("floor dump: {e}"))?;
            result.push(Method::Floor, cost);
            result.counts.push(counts);

            let (plain_first, plain_steady, _) = first_and_steady(false)?;
            result.push(Method::PlainFirst, plain_first.0);
            result.push(Method::PlainSteady, plain_steady.0);

            table.refresh_and_settle()?;
            let (first, steady, total) = first_and_steady(true)?;
            result.push(Method::AttributedFirst, first.0);
            result.push(Method::AttributedSteady, steady.0);
            result.attributed_first = first.1;
            result.attributed_steady = steady.1;
            result.exporter_total = total;

            result.push(Method::Ss, measure::run_child("ss", &["-tan"])?);
            let (lines, cost) = measure::time(measure::read_proc_net);
            lines?;
            result.push(Method::ProcNet, cost);
            let (cw, cost) = measure::time(|| floor.count(Dump::CloseWaitInfo));
            cw.map_err(|e| format!("CLOSE_WAIT dump: {e}"))?;
            result.push(Method::FloorCloseWaitInfo, cost);
            result.push(Method::CloseWaitLookups, close_wait_lookups()?);
            let (all, cost) = measure::time(|| floor.count(Dump::AllInfo));
            all.map_err(|e| format!("dump with tcp_info: {e}"))?;
            result.push(Method::FloorAllInfo, cost);
            let (_, cost) = measure::time(|| measure::readlink_fds(&pids));
            result.push(Method::Readlink, cost);

            let (counts, cost) = measure::time(|| floor.count(Dump::States));
            let counts = counts.map_err(|e| format!("floor dump: {e}"))?;
            result.push(Method::Floor, cost);
            result.counts.push(counts);
            // Last in the round: at 500k it runs for minutes, longer than TIME_WAIT lives,
            // so nothing else of the round may come after it on a thinning table.
            let ssp_rounds = if size <= options.ssp_all_rounds {
                options.rounds
            } else {
                1
            };
            if size <= options.ssp_max && round < ssp_rounds {
                table.refresh_and_settle()?;
                result.push(Method::SsProcesses, measure::run_child("ss", &["-tanp"])?);
            }
            eprintln!(
                "   round {}/{} ({:.1} s): {} sockets: {}",
                round + 1,
                options.rounds,
                round_start.elapsed().as_secs_f64(),
                counts.total(),
                counts.describe()
            );
        }
        Ok(())
    })??;
    Ok(result)
}

/// Many samples with attribution in this process, for RSS growth: the process's VmRSS
/// after sample 1, 10 and the last. The table is kept whole (TIME_WAIT rebuilt) throughout.
pub fn rss_loop(ns: &Netns, table: &mut Table, samples: usize) -> Result<RssLoop, String> {
    eprintln!("   RSS loop: {samples} samples in-process");
    ns.run(|| -> Result<RssLoop, String> {
        let mut sampler = Sampler::new(&settings(true)).map_err(|e| format!("sampler: {e}"))?;
        let mut owners = Attribution::new(&settings(true));
        let rss = || measure::status_kib("self", "VmRSS").unwrap_or(0);
        let mut figures = RssLoop {
            samples,
            rss_1_kib: 0,
            rss_10_kib: 0,
            rss_end_kib: 0,
            per_sample: Cost::default(),
        };
        let mut total = Cost::default();
        for i in 1..=samples {
            table.refresh_and_settle()?;
            owners.revalidate();
            let (sample, cost) =
                measure::time(|| sampler.sample(&mut owners, SocketBudget::default()));
            sample.map_err(|e| format!("sample {i}: {e}"))?;
            total.wall += cost.wall;
            total.cpu += cost.cpu;
            match i {
                1 => figures.rss_1_kib = rss(),
                10 => figures.rss_10_kib = rss(),
                _ => {}
            }
        }
        figures.rss_end_kib = rss();
        let n = samples.max(1) as u32;
        figures.per_sample = Cost {
            wall: total.wall / n,
            cpu: total.cpu / n,
        };
        Ok(figures)
    })?
}

/// Microseconds per socket.
pub fn per_socket(cost: Duration, sockets: u64) -> f64 {
    cost.as_secs_f64() * 1e6 / sockets.max(1) as f64
}
