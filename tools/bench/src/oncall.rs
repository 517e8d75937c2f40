//! `--oncall N`: what the on-call view costs on a table of N sockets, measured in one run.
//!
//! 1. A sample with the fd figures (the fd cliff) against one without: two samplers with
//!    their own owner caches on the same table, steady, interleaved round by round (the
//!    order alternating), so drifts of a shared machine hit both alike.
//! 2. The live page: rendering it from the last sample (what the first request of a round
//!    pays), and then `GET /` and the drill-down (`GET /api/v1/sockets`) served by the
//!    exporter daemon sampling the same table: size and latency of sequential requests.

use crate::report::{millis as ms, ratio};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tcpstate_exporter::config::Settings;
use tcpstate_exporter::model::sample::{NamespaceInfo, NamespaceSample, Sample};
use tcpstate_exporter::model::sockets::SocketBudget;
use tcpstate_exporter::output::page;
use tcpstate_exporter::output::published::Published;
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
    let (with, without, render) = sample_costs(&ns, &mut table, rounds)?;
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
    let render = measure::median(&render);
    println!(
        "page rendered from the last sample (paid by a round's first request): {:.2} ms",
        ms(render.wall)
    );
    table.refresh_and_settle()?;
    let daemon = crate::daemon::start(&ns, exporter, "5s")?;
    let served = ns.run(|| serve_figures(&mut table))?;
    drop(daemon);
    served
}

/// Costs per round: sample with fd figures, sample without, page rendered.
type Costs = (Vec<Cost>, Vec<Cost>, Vec<Cost>);

/// Per round, one steady sample with fd figures and one without, and the page rendered
/// from the first.
fn sample_costs(ns: &Netns, table: &mut Table, rounds: usize) -> Result<Costs, String> {
    ns.run(|| {
        let settings = Settings::default();
        let mut samplers = Vec::new();
        for fd_figures in [true, false] {
            let sampler = Sampler::new(&settings).map_err(|e| format!("sampler: {e}"))?;
            let mut owners = Attribution::new(&settings);
            owners.set_fd_figures(fd_figures);
            samplers.push((sampler, owners));
        }
        let mut costs = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds + 2 {
            table.refresh_if_due()?;
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let (sampler, owners) = &mut samplers[i];
                owners.revalidate();
                let (sample, cost) =
                    measure::time(|| sampler.sample(owners, SocketBudget::default()));
                let (sample, _) = sample.map_err(|e| format!("sample: {e}"))?;
                if i == 0 && round >= 2 {
                    costs.2.push(render_cost(sample, &settings));
                }
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

/// What rendering the page of one namespace's sample costs.
fn render_cost(sample: Sample, settings: &Settings) -> Cost {
    let namespace = NamespaceSample {
        info: NamespaceInfo::default(),
        sample,
    };
    let published = Published::new(std::slice::from_ref(&namespace), 0.0, settings);
    let (page, cost) = measure::time(|| page::render(&published));
    std::hint::black_box(page);
    cost
}
