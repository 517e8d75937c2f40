//! `tcpstate-bench`: how much one sample of tcpstate-exporter costs next to the least
//! work that can count the TCP table (the floor), `ss` and /proc/net/tcp, on tables of
//! 10k to 500k+ sockets built in a private network namespace.
//!
//! Every figure is measured in the same run, interleaved over rounds, and reported as
//! a median and as a ratio to the floor of that size: absolute times on a shared
//! 2-core machine mean little, ratios travel. Needs root (network namespaces).
//! See docs/benchmarks.md for how to run it and what the figures say.

mod busy;
mod daemon;
mod floor;
mod hold;
mod load;
mod measure;
mod oncall;
mod pods;
mod report;
mod rounds;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use tcpstate_testkit::netns::{self, Netns};

/// Prefix of the namespaces this tool creates (`tcpstate-bench-PID-N`): one left by a
/// killed run is removed by the next.
const NETNS_PREFIX: &str = "tcpstate-bench";

/// Options; see `usage`.
#[derive(Clone, Debug)]
pub struct Options {
    pub sizes: Vec<usize>,
    pub rounds: usize,
    /// `ss -tanp` runs up to this size, one round above `ssp_all_rounds`.
    pub ssp_max: usize,
    pub ssp_all_rounds: usize,
    pub rss_samples: usize,
    pub rss_size: Option<usize>,
    pub daemon_size: Option<usize>,
    pub daemon_samples: u64,
    pub wrk: daemon::WrkPlan,
    pub doc: Option<PathBuf>,
    /// `--hold N -- COMMAND...`: hold a table of N sockets while COMMAND runs.
    pub hold: Option<(usize, Vec<String>)>,
    /// `--pods-hold N -- COMMAND...`: hold a host table and N pods while COMMAND runs.
    pub pods_hold: Option<(usize, Vec<String>)>,
    /// `--busy`: events lost vs churn rate and staleness under CPU hogs instead.
    pub busy_mode: bool,
    pub busy: busy::BusyPlan,
    /// `--oncall N`: the on-call view's costs on a table of N sockets.
    pub oncall: Option<usize>,
    /// `--pods 10,100,300`: many pod namespaces beside a large host table instead.
    pub pods_mode: bool,
    pub pods: pods::PodsPlan,
    pub scenario: PathBuf,
    pub exporter: PathBuf,
}

fn usage() -> &'static str {
    "usage: tcpstate-bench [--sizes 10000,100000,500000] [--rounds 5]
       [--ssp-max 1000000] [--ssp-all-rounds 10000]
       [--rss-samples 1000] [--rss-size N] [--daemon-size N] [--daemon-samples 20]
       [--wrk-seconds 10] [--wrk-connections 50] [--wrk-threads 1,2]
       [--doc docs/benchmarks.md | --no-doc]
       [--scenario PATH] [--exporter PATH] [--churn PATH]
       tcpstate-bench --hold N -- COMMAND [ARGS...]
       tcpstate-bench [--pods-table 100k] [--pods-connections 200] [--pods-layouts shared]
       --pods-hold N -- COMMAND [ARGS...]
       tcpstate-bench --busy [--busy-rates 10k,20k,50k,100k] [--busy-churn-seconds 5]
       [--busy-hogs 0,2,4] [--busy-table 110k] [--busy-interval-ms 1000]
       [--busy-staleness-seconds 20] [--busy-ring-bytes N] [--busy-only loss|staleness]
       [--doc PATH | --no-doc]
       tcpstate-bench --oncall N [--rounds 5]
       tcpstate-bench --pods 10,100,300 [--pods-table 100k] [--pods-connections 200]
       [--pods-close-wait 10] [--pods-layouts shared,private] [--pods-child-ehash 1024]
       [--pods-daemon-seconds 15] [--pods-detail-states close_wait]
       [--pods-reconcile-period 1s] [--rounds 5]
       [--doc PATH | --no-doc]
Sizes are sockets in the table (both ends of a connection count). The RSS loop runs at
--rss-size (default: the size nearest 100000), the daemon and wrk at --daemon-size (default:
the largest); 0 turns either off. wrk runs once per --wrk-threads entry against the
sampling daemon, then again against a daemon that does not sample (the same-run
baseline). --hold builds a table of N sockets, runs COMMAND inside its namespace (named
in $TCPSTATE_BENCH_NETNS) while holding it, and exits with COMMAND's status;
--pods-hold does the same with a host table and N pods (their namespaces' glob in
$TCPSTATE_BENCH_PODS, for namespaces_include). --busy
measures events lost vs connection churn (own, foreign and both namespaces) and the
served sample's age beside CPU hogs (docs/benchmarks.md, \"Busy host\"). --oncall
builds a table of N sockets and measures a sample with the fd figures against one without,
and the latency of the live page and the drill-down. --pods builds N pod namespaces beside a
host table and measures a round over every namespace against the floor, with the pods
sharing the host's established hash and with hashes of their own (docs/benchmarks.md,
\"Many namespaces\"). Needs root."
}

fn parse_options() -> Result<Options, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin_dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let mut o = Options {
        sizes: vec![10_000, 100_000, 500_000],
        rounds: 5,
        ssp_max: 1_000_000,
        ssp_all_rounds: 10_000,
        rss_samples: 1000,
        rss_size: None,
        daemon_size: None,
        daemon_samples: 20,
        wrk: daemon::WrkPlan {
            seconds: 10,
            connections: 50,
            // One thread leaves the daemon a CPU of its own on a 2-CPU machine; two
            // (wrk's default) make the scrapers and the server share both.
            threads: vec![1, 2],
        },
        doc: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/benchmarks.md")),
        hold: None,
        pods_hold: None,
        busy_mode: false,
        busy: busy::BusyPlan {
            churn: bin_dir.join("tcpstate-churn"),
            ..busy::BusyPlan::default()
        },
        oncall: None,
        pods_mode: false,
        pods: pods::PodsPlan::default(),
        scenario: bin_dir.join("tcpstate-scenario"),
        exporter: bin_dir.join("tcpstate-exporter"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--no-doc" {
            o.doc = None;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        if flag == "--busy" {
            o.busy_mode = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| -> Result<usize, String> {
            let v = v.replace('_', "");
            let (digits, scale) = match v.strip_suffix(['k', 'K']) {
                Some(d) => (d, 1000),
                None => (v.as_str(), 1),
            };
            digits
                .parse::<usize>()
                .map(|n| n * scale)
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--sizes" => {
                o.sizes = value.split(',').map(number).collect::<Result<_, _>>()?;
            }
            "--rounds" => o.rounds = number(&value)?.max(1),
            "--ssp-max" => o.ssp_max = number(&value)?,
            "--ssp-all-rounds" => o.ssp_all_rounds = number(&value)?,
            "--rss-samples" => o.rss_samples = number(&value)?,
            "--rss-size" => o.rss_size = Some(number(&value)?),
            "--daemon-size" => o.daemon_size = Some(number(&value)?),
            "--daemon-samples" => o.daemon_samples = number(&value)? as u64,
            "--wrk-seconds" => o.wrk.seconds = number(&value)? as u32,
            "--wrk-connections" => o.wrk.connections = number(&value)? as u32,
            "--wrk-threads" => {
                o.wrk.threads = value
                    .split(',')
                    .map(|t| number(t).map(|n| n.max(1) as u32))
                    .collect::<Result<_, _>>()?;
            }
            "--doc" => o.doc = Some(PathBuf::from(value)),
            "--hold" | "--pods-hold" => {
                let missing = || format!("{flag} N needs -- COMMAND after it");
                if args.next().as_deref() != Some("--") {
                    return Err(missing());
                }
                let command: Vec<String> = args.by_ref().collect();
                if command.is_empty() {
                    return Err(missing());
                }
                let held = Some((number(&value)?, command));
                if flag == "--hold" {
                    o.hold = held;
                } else {
                    o.pods_hold = held;
                }
            }
            "--busy-rates" => {
                o.busy.rates = value
                    .split(',')
                    .map(|r| number(r).map(|n| n as u64))
                    .collect::<Result<_, _>>()?;
            }
            "--busy-hogs" => {
                o.busy.hogs = value.split(',').map(number).collect::<Result<_, _>>()?;
            }
            "--busy-churn-seconds" => o.busy.churn_seconds = number(&value)?.max(1) as u64,
            "--busy-table" => o.busy.table = number(&value)?,
            "--busy-interval-ms" => {
                o.busy.interval = std::time::Duration::from_millis(number(&value)?.max(1) as u64);
            }
            "--busy-staleness-seconds" => {
                o.busy.staleness_seconds = number(&value)?.max(1) as u64;
            }
            "--busy-ring-bytes" => {
                o.busy.ring_bytes =
                    Some(u32::try_from(number(&value)?).map_err(|e| e.to_string())?);
            }
            "--busy-only" => {
                o.busy.only = Some(match value.as_str() {
                    "loss" => busy::Part::Loss,
                    "staleness" => busy::Part::Staleness,
                    _ => return Err("--busy-only: loss or staleness".into()),
                });
            }
            "--churn" => o.busy.churn = PathBuf::from(value),
            "--oncall" => o.oncall = Some(number(&value)?),
            "--pods" => {
                o.pods_mode = true;
                o.pods.counts = value.split(',').map(number).collect::<Result<_, _>>()?;
            }
            "--pods-table" => o.pods.table = number(&value)?,
            "--pods-connections" => o.pods.connections = number(&value)?,
            "--pods-close-wait" => o.pods.close_wait = number(&value)?,
            "--pods-layouts" => o.pods.layouts = pods::parse_layouts(&value)?,
            "--pods-child-ehash" => {
                o.pods.child_ehash = u32::try_from(number(&value)?).map_err(|e| e.to_string())?;
            }
            "--pods-daemon-seconds" => o.pods.daemon_seconds = number(&value)? as u64,
            "--pods-reconcile-period" => o.pods.reconcile_period = value,
            "--pods-detail-states" => {
                o.pods.detail_states = value.split(',').map(str::to_string).collect();
            }
            "--scenario" => o.scenario = PathBuf::from(value),
            "--exporter" => o.exporter = PathBuf::from(value),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    o.sizes.sort_unstable();
    // RSS growth is looked for at 100k when that size is run: large enough for a leak
    // per socket to show, small enough for 1,000 samples to take about a minute.
    let near_100k = o.sizes.iter().copied().min_by_key(|s| s.abs_diff(100_000));
    o.rss_size = o.rss_size.or(near_100k);
    o.daemon_size = o.daemon_size.or(o.sizes.last().copied());
    for binary in [&o.scenario, &o.exporter, &o.busy.churn] {
        if !binary.exists() {
            return Err(format!(
                "{} is missing: cargo build --release --workspace",
                binary.display()
            ));
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("tcpstate-bench: {e}");
            }
            eprintln!("{}", usage());
            return ExitCode::from(2);
        }
    };
    if let Some((size, command)) = &options.hold {
        return match hold::hold(&options.scenario, *size, command) {
            Ok(status) => ExitCode::from(status.code().map_or(1, |c| c as u8)),
            Err(e) => {
                eprintln!("tcpstate-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some((count, command)) = &options.pods_hold {
        return match pods::hold(&options, *count, command) {
            Ok(status) => ExitCode::from(status.code().map_or(1, |c| c as u8)),
            Err(e) => {
                eprintln!("tcpstate-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(size) = options.oncall {
        return match oncall::run(&options.scenario, &options.exporter, size, options.rounds) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tcpstate-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let result = if options.pods_mode {
        pods::run(&options)
    } else if options.busy_mode {
        busy::run(&options)
    } else {
        run(&options)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcpstate-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: &Options) -> Result<(), String> {
    let started = Instant::now();
    let mut results = Vec::new();
    for &size in &options.sizes {
        results.push(one_size(options, size)?);
    }
    let machine = report::Machine::probe();
    let markdown = report::markdown(&machine, options, &results);
    println!("\n{markdown}");
    if let Some(doc) = &options.doc {
        report::write_into_doc(doc, &markdown)?;
        println!("results written into {}", doc.display());
    }
    println!("total {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// A fresh namespace with the sysctls a large loopback table needs.
pub fn prepared_netns() -> Result<Netns, String> {
    prepared_netns_named(NETNS_PREFIX)
}

/// `prepared_netns` with another name prefix (stale ones of it are removed first).
pub fn prepared_netns_named(prefix: &str) -> Result<Netns, String> {
    netns::remove_stale(prefix);
    let ns = Netns::create(prefix)?;
    ns.sysctl("net.core.somaxconn", "65535")?;
    ns.sysctl("net.ipv4.tcp_max_tw_buckets", "2000000")?;
    ns.sysctl("net.ipv4.ip_local_port_range", load::EPHEMERAL_RANGE)?;
    // Orphaned FIN_WAIT2 sockets then stay for the whole run.
    ns.sysctl("net.ipv4.tcp_fin_timeout", "100000")?;
    Ok(ns)
}

/// Builds a table of `size` sockets in a fresh namespace, measures everything on it,
/// and tears it down (on error too: the actors and the namespace are dropped).
fn one_size(options: &Options, size: usize) -> Result<rounds::SizeResult, String> {
    eprintln!("== {size} sockets");
    let ns = prepared_netns()?;
    let build_start = Instant::now();
    let mut table = load::Table::build(&ns, &options.scenario, size)?;
    eprintln!(
        "   built in {:.1} s by {} actors",
        build_start.elapsed().as_secs_f64(),
        table.actors()
    );
    let mut result = rounds::measure_size(&ns, &mut table, options, size)?;
    if options.rss_size == Some(size) && options.rss_samples > 0 {
        result.rss_loop = Some(rounds::rss_loop(&ns, &mut table, options.rss_samples)?);
    }
    if options.daemon_size == Some(size) {
        table.refresh_and_settle()?;
        eprintln!("   daemon: {} samples, then wrk", options.daemon_samples);
        result.daemon = Some(daemon::measure(
            &ns,
            &options.exporter,
            "1s",
            options.daemon_samples,
            &options.wrk,
        )?);
        if options.wrk.seconds > 0 {
            eprintln!("   daemon that does not sample (one sample an hour): wrk");
            result.daemon_idle = Some(daemon::measure(
                &ns,
                &options.exporter,
                "1h",
                1,
                &options.wrk,
            )?);
            // The scrape latency target holds at the default interval: a sample every
            // 15 s, so the wrk runs (10 s each) overlap one or two of them.
            eprintln!("   daemon at the default interval (15 s): wrk");
            result.daemon_default = Some(daemon::measure(
                &ns,
                &options.exporter,
                "15s",
                2,
                &options.wrk,
            )?);
        }
    }
    drop(table);
    drop(ns);
    Ok(result)
}
