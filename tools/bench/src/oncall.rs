//! `--oncall N`: what the on-call view costs on a table of N sockets, measured in one run.
//!
//! 1. A sample with the fd figures (the fd cliff) against one without: two samplers with
//!    their own owner caches on the same table, steady, interleaved round by round (the
//!    order alternating), so drifts of a shared machine hit both alike.
//! 2. The live page (`GET /`) and the drill-down (`GET /api/v1/sockets`) served by the
//!    exporter daemon sampling the same table: size and latency of sequential requests.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tcpstate_exporter::config::Settings;
use tcpstate_exporter::model::sockets::SocketBudget;
use tcpstate_exporter::sampling::attribution::Attribution;
use tcpstate_exporter::sampling::sampler::Sampler;
use tcpstate_testkit::http;
use tcpstate_testkit::netns::Netns;

use crate::load::Table;
use crate::measure::{self, Cost};

/// Requests per path for the latency figures.
const REQUESTS: usize = 200;

pub fn run(scenario: &Path, exporter: &Path, size: usize, rounds: usize) -> Result<(), String> {
    let ns = crate::prepared_netns()?;
    let mut table = Table::build(&ns, scenario, size)?;
    eprintln!("== {size} sockets, {} actors", table.actors());
    let (with, without) = sample_costs(&ns, &mut table, rounds)?;
    let (w, wo) = (measure::median(&with), measure::median(&without));
    println!("sample at {size} sockets, steady, median of {rounds} interleaved rounds:");
    println!(
        "  with fd figures    wall {:>8.2} ms  cpu {:>8.2} ms",
        ms(w.wall),
        ms(w.cpu)
    );
    println!(
        "  without            wall {:>8.2} ms  cpu {:>8.2} ms",
        ms(wo.wall),
        ms(wo.cpu)
    );
    println!(
        "  ratio              wall {:>8.3}     cpu {:>8.3}",
        ratio(w.wall, wo.wall),
        ratio(w.cpu, wo.cpu)
    );
    table.refresh_and_settle()?;
    let daemon = crate::daemon::start(&ns, exporter, "5s")?;
    let served = ns.run(|| serve_figures(&mut table))?;
    drop(daemon);
    served
}

/// Per round, one steady sample with fd figures and one without.
fn sample_costs(
    ns: &Netns,
    table: &mut Table,
    rounds: usize,
) -> Result<(Vec<Cost>, Vec<Cost>), String> {
    ns.run(|| {
        let settings = Settings::default();
        let mut samplers = Vec::new();
        for fd_figures in [true, false] {
            let sampler = Sampler::new(&settings).map_err(|e| format!("sampler: {e}"))?;
            let mut owners = Attribution::new(&settings);
            owners.set_fd_figures(fd_figures);
            samplers.push((sampler, owners));
        }
        let mut costs = (Vec::new(), Vec::new());
        for round in 0..rounds + 2 {
            table.refresh_if_due()?;
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let (sampler, owners) = &mut samplers[i];
                owners.revalidate();
                let (sample, cost) =
                    measure::time(|| sampler.sample(owners, SocketBudget::default()));
                sample.map_err(|e| format!("sample: {e}"))?;
                // The first two rounds fill the caches: not steady yet.
                if round >= 2 {
                    if i == 0 { &mut costs.0 } else { &mut costs.1 }.push(cost);
                }
            }
        }
        Ok(costs)
    })?
}

/// Waits for the daemon's first sample, then times the page and the drill-down.
fn serve_figures(table: &mut Table) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], crate::daemon::PORT));
    let deadline = Instant::now() + Duration::from_secs(300);
    while http::get(addr, "/metrics", Duration::from_secs(10)).is_err() {
        if Instant::now() > deadline {
            return Err("the daemon never answered".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for path in [
        "/",
        "/api/v1/sockets?limit=100",
        "/api/v1/sockets?state=close_wait&limit=1000",
    ] {
        let mut times = Vec::with_capacity(REQUESTS);
        let mut bytes = 0;
        for _ in 0..REQUESTS {
            table.refresh_if_due()?;
            let started = Instant::now();
            let response = http::get(addr, path, Duration::from_secs(10))?;
            times.push(started.elapsed());
            if response.status != 200 {
                return Err(format!("{path}: HTTP {}", response.status));
            }
            bytes = response.body.len();
        }
        times.sort_unstable();
        let at = |q: f64| ms(times[((times.len() - 1) as f64 * q) as usize]);
        println!(
            "GET {path}: {bytes} bytes; {REQUESTS} requests: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}
