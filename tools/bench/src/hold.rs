//! `--hold N -- COMMAND...`: builds a table of N sockets in a private namespace, runs
//! COMMAND inside that namespace while the table is held (TIME_WAIT kept alive), then
//! tears everything down. For measuring anything else against a large table: a
//! Prometheus, `ss`, a profiler, the exporter with other flags. `--pods-hold` holds a
//! node of pods the same way (`pods::hold`).

use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tcpstate_testkit::netns::Netns;

use crate::load::Table;

/// Environment variable naming the namespace for COMMAND (`ip -n "$TCPSTATE_BENCH_NETNS"`).
pub const NETNS_ENV: &str = "TCPSTATE_BENCH_NETNS";

/// Builds the table, runs `command` in the namespace and returns its exit status.
pub fn hold(scenario: &Path, size: usize, command: &[String]) -> Result<ExitStatus, String> {
    let ns = crate::prepared_netns()?;
    let started = Instant::now();
    let mut table = Table::build(&ns, scenario, size)?;
    eprintln!(
        "holding {size} sockets in netns {} ({} actors, built in {:.1} s)",
        ns.name(),
        table.actors(),
        started.elapsed().as_secs_f64()
    );
    run_while_holding(&ns, &mut table, command, &[])
}

/// Runs `command` inside `ns` (its name in `$TCPSTATE_BENCH_NETNS`, plus `env`) and keeps
/// `table`'s TIME_WAIT sockets alive until it exits; returns its exit status.
pub fn run_while_holding(
    ns: &Netns,
    table: &mut Table,
    command: &[String],
    env: &[(&str, String)],
) -> Result<ExitStatus, String> {
    let (program, args) = command
        .split_first()
        .ok_or("a command is needed after --")?;
    eprintln!("running {program}");
    let mut child = ns
        .command(program)
        .args(args)
        .env(NETNS_ENV, ns.name())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .spawn()
        .map_err(|e| format!("start {program}: {e}"))?;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(e) => return Err(format!("wait for {program}: {e}")),
        }
        if let Err(e) = table.refresh_if_due() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("keeping TIME_WAIT alive: {e}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
