//! `--pods 10,100,300`: what a round over every namespace costs on a node with many
//! pod-like namespaces beside a large host table, measured in one run.
//!
//! One "host" namespace holds a table of `--pods-table` sockets (the main benchmark's
//! mix). For each pod count N and each layout, N pod namespaces are built, each with one
//! actor holding a listener with `--pods-connections` established loopback connections,
//! a few CLOSE_WAIT (their clients in FIN_WAIT2) and a short accept queue. Layouts:
//!
//! - `shared`: the pods are made from the init namespace, whose
//!   `net.ipv4.tcp_child_ehash_entries` is 0: they share the host-wide established hash,
//!   as on a node where nobody set it. sock_diag filters that hash by namespace, so every
//!   namespace's dump walks all of it.
//! - `private`: the pods are made from inside the host namespace with
//!   `tcp_child_ehash_entries` set there (`--pods-child-ehash`): each gets its own hash,
//!   so its dump walks its own sockets only.
//!
//! Per round, interleaved: the floor (one minimal dump of the host table), one minimal
//! dump in every pod namespace (the walk alone), and a round of the exporter's own
//! `NamespaceSet` with `namespaces = "all"` (attribution included), in-process, CPU of
//! the measuring thread. Then the real daemon, CPU from /proc/PID/stat over its samples.

use crate::report::{millis as ms, ratio};
use std::path::Path;
use std::time::{Duration, Instant};

use tcpstate_exporter::sampling::attribution::Attribution;
use tcpstate_exporter::sampling::namespace_set::NamespaceSet;
use tcpstate_testkit::netns::Netns;

use crate::floor::{Dump, FloorSocket};
use crate::load::{Actor, Table};
use crate::measure::{self, Cost};

/// Prefix of every namespace of this mode (`tcpstate-pods-PID-N`).
pub const PREFIX: &str = "tcpstate-pods";
const DOC_START: &str = "<!-- tcpstate-bench pods: start -->";
const DOC_END: &str = "<!-- tcpstate-bench pods: end -->";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Shared,
    Private,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Shared => "shared",
            Layout::Private => "private",
        }
    }
}

#[derive(Clone, Debug)]
pub struct PodsPlan {
    pub counts: Vec<usize>,
    pub table: usize,
    pub connections: usize,
    pub close_wait: usize,
    pub layouts: Vec<Layout>,
    pub child_ehash: u32,
    /// Seconds the daemon samples (every second) for its CPU figure; 0: no daemon.
    pub daemon_seconds: u64,
    /// The daemon's `[sample] detail_states` (`--pods-detail-states close_wait`); empty:
    /// its default (close_wait, established).
    pub detail_states: Vec<String>,
    /// The daemon's `[sample] reconcile_period` (`--pods-reconcile-period 1s`: one
    /// reconciliation walk in every round, the most the daemon allows); empty: its
    /// default (10m, beyond the measurement).
    pub reconcile_period: String,
}

impl Default for PodsPlan {
    fn default() -> Self {
        PodsPlan {
            counts: vec![10, 100, 300],
            table: 100_000,
            connections: 200,
            close_wait: 10,
            layouts: vec![Layout::Shared, Layout::Private],
            child_ehash: 1024,
            daemon_seconds: 15,
            detail_states: Vec::new(),
            reconcile_period: String::new(),
        }
    }
}

pub fn parse_layouts(text: &str) -> Result<Vec<Layout>, String> {
    text.split(',')
        .map(|l| match l {
            "shared" => Ok(Layout::Shared),
            "private" => Ok(Layout::Private),
            _ => Err(format!("--pods-layouts: shared or private, not {l:?}")),
        })
        .collect()
}

/// The figures of one (pod count, layout).
#[derive(Clone, Debug, Default)]
struct PodsResult {
    pods: usize,
    layout: &'static str,
    host_sockets: u64,
    pod_sockets: u64,
    floor: Cost,
    pod_walks: Cost,
    first_round: Cost,
    round: Cost,
    /// The daemon with events off: every namespace dumped every round.
    daemon_cpu_per_round: Option<Duration>,
    /// The daemon with events: pods on the shared hash followed between dumps; and how
    /// many namespaces its last round served from their tables.
    followed_cpu_per_round: Option<Duration>,
    followed: Option<u64>,
}

/// One pod: its actor (dropped first, closing its sockets), a floor socket opened inside
/// it (a socket keeps its namespace, so it dumps the pod from any thread), its namespace.
struct Pod {
    _actor: Actor,
    floor: FloorSocket,
    ns: Netns,
}

pub fn run(options: &crate::Options) -> Result<(), String> {
    let plan = &options.pods;
    let started = Instant::now();
    let (host, mut table) = host_table(options)?;
    eprintln!(
        "== host table: {} sockets, {} actors",
        plan.table,
        table.actors()
    );
    let mut results = Vec::new();
    for &count in &plan.counts {
        for &layout in &plan.layouts {
            eprintln!("== {count} pods, {} hash", layout.name());
            let mut pods = build_pods(&host, &mut table, options, count, layout)?;
            let mut result = measure_rounds(&host, &mut table, &mut pods, options.rounds)?;
            result.layout = layout.name();
            if plan.daemon_seconds > 0 {
                let (cpu, _) = daemon_cpu(&host, options, count, false)?;
                result.daemon_cpu_per_round = Some(cpu);
                let (cpu, followed) = daemon_cpu(&host, options, count, true)?;
                if layout == Layout::Shared && followed == 0 {
                    return Err("events on, shared hash, yet no pod was followed".into());
                }
                result.followed_cpu_per_round = Some(cpu);
                result.followed = Some(followed);
            }
            print_line(&result);
            results.push(result);
            eprintln!("   removing {count} pods");
            drop(pods);
            table.refresh_if_due()?;
        }
    }
    let markdown = markdown(plan, &results);
    println!("\n{markdown}");
    if let Some(doc) = &options.doc {
        crate::report::write_between(doc, DOC_START, DOC_END, &markdown)?;
        println!("results written into {}", doc.display());
    }
    println!("total {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The host namespace (stale ones of a killed run removed first; `--pods-child-ehash`
/// set for the pods made inside it) and its table of `--pods-table` sockets.
fn host_table(options: &crate::Options) -> Result<(Netns, Table), String> {
    tcpstate_testkit::netns::remove_stale(PREFIX);
    let host = crate::prepared_netns_named(PREFIX)?;
    host.sysctl(
        "net.ipv4.tcp_child_ehash_entries",
        &options.pods.child_ehash.to_string(),
    )?;
    let table = Table::build(&host, &options.scenario, options.pods.table)?;
    Ok((host, table))
}

fn build_pods(
    host: &Netns,
    table: &mut Table,
    options: &crate::Options,
    count: usize,
    layout: Layout,
) -> Result<Vec<Pod>, String> {
    let plan = &options.pods;
    let started = Instant::now();
    let mut pods = Vec::with_capacity(count);
    for i in 0..count {
        if i % 20 == 0 {
            table.refresh_if_due()?;
        }
        let ns = match layout {
            Layout::Shared => Netns::create(PREFIX)?,
            Layout::Private => Netns::create_inside(PREFIX, host)?,
        };
        let mut actor = Actor::spawn(&ns, &options.scenario, &format!("pod{i}"))?;
        actor.cmd(&format!(
            "load 127.0.0.1:8080 {} established",
            plan.connections
        ))?;
        actor.cmd(&format!(
            "load 127.0.0.1:8081 {} close_wait",
            plan.close_wait
        ))?;
        actor.cmd("load 127.0.0.1:8082 5 accept_queue")?;
        let floor = ns
            .run(FloorSocket::open)?
            .map_err(|e| format!("floor socket: {e}"))?;
        pods.push(Pod {
            _actor: actor,
            floor,
            ns,
        });
    }
    if layout == Layout::Private
        && let Some(pod) = pods.first()
    {
        let entries = pod.ns.read_sysctl("net.ipv4.tcp_ehash_entries")?;
        eprintln!("   a pod's net.ipv4.tcp_ehash_entries = {entries} (negative: shared)");
    }
    eprintln!("   built in {:.1} s", started.elapsed().as_secs_f64());
    Ok(pods)
}

/// `--pods-hold N -- COMMAND...`: the host table and N pods of the first of
/// `--pods-layouts`, held while COMMAND runs in the host namespace (a profiler, the
/// exporter with other flags); `$TCPSTATE_BENCH_PODS` is the glob of the pods'
/// namespaces, for `namespaces_include`. Returns COMMAND's exit status.
pub fn hold(
    options: &crate::Options,
    count: usize,
    command: &[String],
) -> Result<std::process::ExitStatus, String> {
    let plan = &options.pods;
    let (host, mut table) = host_table(options)?;
    let layout = plan.layouts.first().copied().unwrap_or(Layout::Shared);
    let pods = build_pods(&host, &mut table, options, count, layout)?;
    eprintln!(
        "holding {} host sockets in netns {} and {count} pods ({} hash)",
        plan.table,
        host.name(),
        layout.name()
    );
    let glob = format!("{PREFIX}-{}-*", std::process::id());
    let status = crate::hold::run_while_holding(&host, &mut table, command, &[(PODS_ENV, glob)]);
    drop(pods);
    status
}

/// Environment variable holding the glob of the held pods' namespaces (`--pods-hold`).
pub const PODS_ENV: &str = "TCPSTATE_BENCH_PODS";

/// Interleaved rounds: floor, one minimal dump per pod, one exporter round.
fn measure_rounds(
    host: &Netns,
    table: &mut Table,
    pods: &mut [Pod],
    rounds: usize,
) -> Result<PodsResult, String> {
    let settings = tcpstate_exporter::config::parse(
        &format!(
            "namespaces = \"all\"\nnamespaces_include = [\"{PREFIX}-{}-*\"]\n",
            std::process::id()
        ),
        Path::new("pods-bench.toml"),
    )
    .map_err(|e| format!("settings: {e}"))?;
    let mut result = PodsResult {
        pods: pods.len(),
        ..PodsResult::default()
    };
    let (mut floors, mut walks, mut exporter) = (Vec::new(), Vec::new(), Vec::new());
    host.run(|| -> Result<(), String> {
        let mut set = NamespaceSet::new(&settings).map_err(|e| format!("sampler: {e}"))?;
        let mut attribution = Attribution::new(&settings);
        let mut floor = FloorSocket::open().map_err(|e| format!("floor socket: {e}"))?;
        let (round, first) = measure::time(|| set.sample_round(&mut attribution));
        check_round(&round, pods.len())?;
        result.first_round = first;
        for _ in 0..rounds {
            table.refresh_if_due()?;
            let (counts, cost) = measure::time(|| floor.count(Dump::States));
            result.host_sockets = counts.map_err(|e| format!("floor: {e}"))?.total();
            floors.push(cost);
            let (pod_sockets, cost) = pod_walks(pods)?;
            result.pod_sockets = pod_sockets;
            walks.push(cost);
            let (round, cost) = measure::time(|| set.sample_round(&mut attribution));
            check_round(&round, pods.len())?;
            exporter.push(cost);
        }
        Ok(())
    })??;
    result.floor = measure::median(&floors);
    result.pod_walks = measure::median(&walks);
    result.round = measure::median(&exporter);
    Ok(result)
}

/// Every pod and the host namespace were sampled.
fn check_round(
    round: &tcpstate_exporter::sampling::namespace_set::Round,
    pods: usize,
) -> Result<(), String> {
    if round.samples.len() != pods + 1 || !round.errors.is_empty() {
        return Err(format!(
            "the round sampled {} namespaces ({} errors), expected {}",
            round.samples.len(),
            round.errors.len(),
            pods + 1
        ));
    }
    Ok(())
}

/// One minimal dump in every pod namespace, from this thread through each pod's own
/// floor socket: sockets seen, summed cost.
fn pod_walks(pods: &mut [Pod]) -> Result<(u64, Cost), String> {
    let mut total = Cost::default();
    let mut sockets = 0;
    for pod in pods {
        let (counts, cost) = measure::time(|| pod.floor.count(Dump::States));
        sockets += counts.map_err(|e| format!("pod floor: {e}"))?.total();
        total.wall += cost.wall;
        total.cpu += cost.cpu;
    }
    Ok((sockets, total))
}

/// The daemon, `namespaces = "all"`, sampling every second: its CPU per round, and how
/// many namespaces its last round followed (with `events`; none without). The reconcile
/// period is the default (10 minutes: beyond the measurement, so the rounds measured are
/// the steady ones) unless `--pods-reconcile-period` sets it.
/// What the daemon's metrics say at one end of its measured window.
struct WindowFigures {
    samples: u64,
    /// Namespaces its last round served from their tables.
    followed: u64,
    /// Full dumps of followed namespaces that a steady window should not have
    /// (`first`: after lost events; `mismatch`).
    followed_dumps: f64,
}

fn window_figures() -> Result<WindowFigures, String> {
    let text = crate::daemon::scrape()?;
    let metric = |name: &str| {
        crate::daemon::metric(&text, name).ok_or(format!("no {name} in the daemon's metrics"))
    };
    let followed_dumps =
        crate::daemon::metric_sum(&text, "tcpstate_followed_namespace_dumps_total", |labels| {
            labels.contains("\"first\"") || labels.contains("\"mismatch\"")
        });
    Ok(WindowFigures {
        samples: metric("tcpstate_samples_total")? as u64,
        followed: metric("tcpstate_namespaces_followed")? as u64,
        followed_dumps,
    })
}

/// The daemon's figures once its sample count has passed `after` (polled every 100 ms,
/// a scrape each: ~0.5 ms of the daemon's CPU).
fn next_sample(after: u64, deadline: Instant) -> Result<WindowFigures, String> {
    loop {
        let now = window_figures()?;
        if now.samples > after {
            return Ok(now);
        }
        if Instant::now() > deadline {
            return Err("the daemon ended no sample in time".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn daemon_cpu(
    host: &Netns,
    options: &crate::Options,
    pods: usize,
    events: bool,
) -> Result<(Duration, u64), String> {
    let mut text = format!(
        "namespaces = \"all\"\nnamespaces_include = [\"{PREFIX}-{}-*\"]\nevents = \"{}\"\n",
        std::process::id(),
        if events { "on" } else { "off" }
    );
    text.push_str("[sample]\n");
    let states = &options.pods.detail_states;
    if !states.is_empty() {
        let quoted: Vec<String> = states.iter().map(|s| format!("{s:?}")).collect();
        text.push_str(&format!("detail_states = [{}]\n", quoted.join(", ")));
    }
    let period = &options.pods.reconcile_period;
    if !period.is_empty() {
        text.push_str(&format!("reconcile_period = {period:?}\n"));
    }
    // Dropped after the daemon (declared before it), whichever way this returns.
    let config = crate::daemon::ConfigFile::write(PREFIX, &text)?;
    let daemon = crate::daemon::Daemon::start(
        host,
        &options.exporter,
        &["--sample.interval", "1s", "--config.file", &config.arg()],
    )?;
    let pid = daemon.pid();
    let figure = host.run(|| -> Result<(Duration, u64), String> {
        // The first three samples fill the caches (every fd read once) and, with events,
        // make the tables (the kernel sends every transition from the first round's end).
        let deadline = Instant::now() + Duration::from_secs(120 + pods as u64);
        while crate::daemon::samples_now() < 3 {
            if Instant::now() > deadline {
                return Err("the daemon took fewer than 3 samples in time".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // A failed read is an error, never a figure: a CPU time of 0, or a window
        // counted as one sample, would print as a ratio.
        let cpu_now = || measure::process_cpu(pid).ok_or("cannot read the daemon's CPU time");
        // The window starts and ends as a sample ends, so it holds whole rounds, at least
        // one: rounds that outlast the interval (every pod dumped, 300 pods: ~15 s on a
        // busy machine) would otherwise leave none in it.
        let deadline = Instant::now() + Duration::from_secs(300 + pods as u64);
        let before = next_sample(window_figures()?.samples, deadline)?;
        let cpu0 = cpu_now()?;
        std::thread::sleep(Duration::from_secs(options.pods.daemon_seconds));
        let deadline = Instant::now() + Duration::from_secs(300 + pods as u64);
        let after = next_sample(window_figures()?.samples, deadline)?;
        let cpu1 = cpu_now()?;
        let samples = after.samples - before.samples;
        let dumps = after.followed_dumps - before.followed_dumps;
        if dumps > 0.0 {
            eprintln!("   note: {dumps} first/mismatch dumps of followed pods in the window");
        }
        Ok((cpu1.saturating_sub(cpu0) / samples as u32, after.followed))
    })?;
    drop(daemon);
    figure
}

fn print_line(r: &PodsResult) {
    eprintln!(
        "   floor {:.1} ms cpu ({} host sockets); {} pods ({} sockets): walks {:.2}x, round {:.2}x (first {:.2}x){}",
        ms(r.floor.cpu),
        r.host_sockets,
        r.pods,
        r.pod_sockets,
        ratio(r.pod_walks.cpu, r.floor.cpu),
        ratio(r.round.cpu, r.floor.cpu),
        ratio(r.first_round.cpu, r.floor.cpu),
        r.daemon_cpu_per_round
            .zip(r.followed_cpu_per_round)
            .map(|(d, f)| format!(
                ", daemon {:.2}x, followed {:.2}x ({} followed)",
                ratio(d, r.floor.cpu),
                ratio(f, r.floor.cpu),
                r.followed.unwrap_or_default()
            ))
            .unwrap_or_default()
    );
}

fn markdown(plan: &PodsPlan, results: &[PodsResult]) -> String {
    let mut md = format!(
        "Host table {} sockets requested; per pod {} established connections, {} CLOSE_WAIT, \
         an accept queue of 5; private hashes of {} buckets; the daemon's detail states: {}; \
         its reconcile period: {}. CPU time, medians; ratios to the floor of the same run.\n\n",
        plan.table,
        plan.connections,
        plan.close_wait,
        plan.child_ehash,
        match plan.detail_states.is_empty() {
            true => "its default (close_wait, established)".to_string(),
            false => plan.detail_states.join(", "),
        },
        match plan.reconcile_period.is_empty() {
            true => "its default (10m)",
            false => plan.reconcile_period.as_str(),
        }
    );
    md.push_str(
        "| pods | pods' hash | host sockets | pod sockets | floor CPU | one dump per pod | \
         exporter round | first round | daemon, every pod dumped | daemon, pods followed | \
         followed |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} ms | {:.2}x | {:.2}x | {:.2}x | {} | {} | {} |\n",
            r.pods,
            r.layout,
            r.host_sockets,
            r.pod_sockets,
            ms(r.floor.cpu),
            ratio(r.pod_walks.cpu, r.floor.cpu),
            ratio(r.round.cpu, r.floor.cpu),
            ratio(r.first_round.cpu, r.floor.cpu),
            r.daemon_cpu_per_round
                .map(|d| format!("{:.2}x", ratio(d, r.floor.cpu)))
                .unwrap_or_else(|| "-".into()),
            r.followed_cpu_per_round
                .map(|d| format!("{:.2}x", ratio(d, r.floor.cpu)))
                .unwrap_or_else(|| "-".into()),
            r.followed.map_or_else(|| "-".into(), |n| n.to_string()),
        ));
    }
    md
}
