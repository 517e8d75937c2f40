//! The socket table under test: `tcpstate-scenario` actors inside the namespace, each
//! holding bulk loads (`load ADDR:PORT COUNT STATE`), spread so no process passes its
//! 20,000-fd limit.
//!
//! The mix, as shares of the N sockets in the table (both ends of a loopback
//! connection are sockets): established 70 %, accept queues 6 % (the queued server end
//! and its ESTABLISHED client), held CLOSE_WAIT 10 % (server CLOSE_WAIT, client
//! FIN_WAIT2 keeping its fd), orphaned FIN_WAIT2 4 % (server CLOSE_WAIT, client closed)
//! and TIME_WAIT 10 %. TIME_WAIT lasts 60 s whatever the sysctls say, so those loads
//! live in "keeper" actors that rebuild them before they expire (`refresh`).
//!
//! Every listener gets its own port below the ephemeral range, so bind never competes
//! with the hundreds of thousands of client ports.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use tcpstate_testkit::netns::Netns;

/// Fds an actor may use for loads (20,000 per process here, minus stdio and listeners).
const ACTOR_FDS: usize = 19_000;
/// Largest single load per state, in connections; smaller chunks mean more listener
/// ports, like a real host serving many ports.
const CHUNK_ESTABLISHED: usize = 4_500;
const CHUNK_QUEUE: usize = 4_000;
const CHUNK_TIME_WAIT: usize = 10_000;
const MAX_KEEPERS: usize = 4;
/// TIME_WAIT lasts 60 s (TCP_TIMEWAIT_LEN); rebuild before the oldest batch is gone.
pub const TIME_WAIT_REFRESH: Duration = Duration::from_secs(45);
/// When a batch's TIME_WAIT sockets are surely gone: 60 s and the timer wheel's slack.
const TIME_WAIT_GONE: Duration = Duration::from_secs(62);
/// Listener ports are handed out from here, below the ephemeral range set in `prepare`.
const FIRST_PORT: u16 = 2_000;
pub const EPHEMERAL_RANGE: &str = "20000 65000";

/// One `tcpstate-scenario` process, killed with its sockets on drop (and by the kernel
/// if this benchmark dies: PR_SET_PDEATHSIG).
pub struct Actor {
    name: String,
    pid: u32,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Actor {
    pub fn spawn(ns: &Netns, binary: &Path, name: &str) -> Result<Actor, String> {
        let mut cmd = ns.command(binary);
        cmd.args(["--name", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; the signal follows the actor across the
        // exec that `ip netns exec` performs.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("start {}: {e}", binary.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(format!("actor {name}: no pipes"));
        };
        let mut actor = Actor {
            name: name.to_string(),
            pid: 0,
            child,
            stdin,
            stdout: BufReader::new(stdout),
        };
        let reply = actor.cmd("pid")?;
        actor.pid = reply["pid"].as_u64().unwrap_or(0) as u32;
        Ok(actor)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends one command and returns the JSON of its `ok` reply.
    pub fn cmd(&mut self, line: &str) -> Result<Value, String> {
        self.send(line)?;
        self.reply(line)
    }

    fn send(&mut self, line: &str) -> Result<(), String> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("actor {} is gone: {e}", self.name))
    }

    fn reply(&mut self, line: &str) -> Result<Value, String> {
        let mut reply = String::new();
        let n = self
            .stdout
            .read_line(&mut reply)
            .map_err(|e| format!("actor {}: {e}", self.name))?;
        if n == 0 {
            return Err(format!("actor {} exited on `{line}`", self.name));
        }
        let reply = reply.trim_end();
        if let Some(json) = reply.strip_prefix("ok ") {
            serde_json::from_str(json).map_err(|e| format!("actor {}: {e}", self.name))
        } else {
            Err(format!("actor {}: `{line}`: {reply}", self.name))
        }
    }
}

impl Drop for Actor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connections per load state for a table of `sockets` sockets (see the module doc).
pub fn plan(sockets: usize) -> Vec<(&'static str, usize)> {
    let share = |fraction: f64| (sockets as f64 * fraction).round() as usize;
    vec![
        ("established", share(0.35)),
        ("accept_queue", share(0.03)),
        ("close_wait", share(0.05)),
        ("fin_wait2", share(0.02)),
        ("time_wait", share(0.10)),
    ]
}

fn fds_per_connection(state: &str) -> usize {
    match state {
        "established" | "close_wait" => 2,
        "fin_wait2" | "accept_queue" => 1,
        _ => 0,
    }
}

fn chunk_limit(state: &str) -> usize {
    match state {
        "accept_queue" => CHUNK_QUEUE,
        "time_wait" => CHUNK_TIME_WAIT,
        _ => CHUNK_ESTABLISHED,
    }
}

struct TimeWaitBatch {
    keeper: usize,
    listener: String,
    built: Instant,
}

/// The running table: holders keep their loads for the whole run, keepers rebuild
/// TIME_WAIT.
pub struct Table {
    holders: Vec<Actor>,
    keepers: Vec<Actor>,
    time_wait: Vec<TimeWaitBatch>,
    time_wait_target: usize,
    next_port: u16,
}

impl Table {
    /// Builds a table of about `sockets` sockets in `ns`.
    pub fn build(ns: &Netns, binary: &Path, sockets: usize) -> Result<Table, String> {
        let mut chunks: Vec<(&'static str, usize)> = Vec::new();
        let mut time_wait_target = 0;
        for (state, connections) in plan(sockets) {
            if state == "time_wait" {
                time_wait_target = connections;
                continue;
            }
            let mut left = connections;
            while left > 0 {
                let n = left.min(chunk_limit(state));
                chunks.push((state, n));
                left -= n;
            }
        }
        // First-fit decreasing by fds.
        chunks.sort_by_key(|(state, n)| std::cmp::Reverse(n * fds_per_connection(state)));
        let mut bins: Vec<(usize, Vec<(&'static str, usize)>)> = Vec::new();
        for chunk in chunks {
            let fds = chunk.1 * fds_per_connection(chunk.0);
            match bins.iter_mut().find(|(used, _)| used + fds <= ACTOR_FDS) {
                Some((used, list)) => {
                    *used += fds;
                    list.push(chunk);
                }
                None => bins.push((fds, vec![chunk])),
            }
        }
        let keepers = time_wait_target
            .div_ceil(CHUNK_TIME_WAIT)
            .clamp(1, MAX_KEEPERS);
        let mut table = Table {
            holders: Vec::new(),
            keepers: Vec::new(),
            time_wait: Vec::new(),
            time_wait_target,
            next_port: FIRST_PORT,
        };
        for i in 0..bins.len() {
            table
                .holders
                .push(Actor::spawn(ns, binary, &format!("bench-hold{i}"))?);
        }
        for i in 0..keepers {
            table
                .keepers
                .push(Actor::spawn(ns, binary, &format!("bench-tw{i}"))?);
        }
        let mut work: Vec<Vec<String>> = Vec::new();
        for (_, list) in &bins {
            let lines = list
                .iter()
                .map(|(state, n)| table.load_line(state, *n))
                .collect();
            work.push(lines);
        }
        run_parallel(&mut table.holders, &work)?;
        table.refresh_time_wait()?;
        Ok(table)
    }

    fn load_line(&mut self, state: &str, count: usize) -> String {
        let port = self.next_port;
        self.next_port += 1;
        assert!(
            self.next_port < 20_000,
            "listener ports ran into the ephemeral range"
        );
        format!("load 127.0.0.1:{port} {count} {state}")
    }

    pub fn actor_pids(&self) -> Vec<u32> {
        self.holders
            .iter()
            .chain(&self.keepers)
            .map(Actor::pid)
            .collect()
    }

    pub fn actors(&self) -> usize {
        self.holders.len() + self.keepers.len()
    }

    /// Rebuilds the TIME_WAIT share when the newest batch is older than
    /// `TIME_WAIT_REFRESH`, and closes the listeners of batches that expired.
    pub fn refresh_if_due(&mut self) -> Result<(), String> {
        let newest = self.time_wait.iter().map(|b| b.built).max();
        if newest.is_none_or(|t| t.elapsed() >= TIME_WAIT_REFRESH) {
            self.refresh_time_wait()?;
        }
        Ok(())
    }

    /// `refresh_if_due`, then waits until the TIME_WAIT generation a refresh replaced has
    /// timed out, so what is measured next sees one generation, not two: between a
    /// refresh and the old generation's end (15 s) the table holds 10 % more sockets,
    /// which skewed whichever method a round measured then.
    pub fn refresh_and_settle(&mut self) -> Result<(), String> {
        self.refresh_if_due()?;
        let Some(newest) = self.time_wait.iter().map(|b| b.built).max() else {
            return Ok(());
        };
        let previous = self
            .time_wait
            .iter()
            .map(|b| b.built)
            .filter(|built| newest.duration_since(*built) > TIME_WAIT_REFRESH / 2)
            .max();
        if let Some(youngest_previous) = previous {
            let left = TIME_WAIT_GONE.saturating_sub(youngest_previous.elapsed());
            eprintln!(
                "   waiting {:.0} s for the previous TIME_WAIT generation to time out",
                left.as_secs_f64()
            );
            std::thread::sleep(left);
            self.close_expired()?;
        }
        Ok(())
    }

    /// Closes the listeners of TIME_WAIT batches whose connections have timed out.
    fn close_expired(&mut self) -> Result<(), String> {
        let (expired, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.time_wait)
            .into_iter()
            .partition(|b| b.built.elapsed() >= TIME_WAIT_GONE);
        self.time_wait = keep;
        for batch in expired {
            self.keepers[batch.keeper].cmd(&format!("close {}", batch.listener))?;
        }
        Ok(())
    }

    fn refresh_time_wait(&mut self) -> Result<(), String> {
        if self.time_wait_target == 0 {
            return Ok(());
        }
        self.close_expired()?;
        let per_keeper = self.time_wait_target.div_ceil(self.keepers.len());
        let mut work = Vec::new();
        let mut left = self.time_wait_target;
        for _ in 0..self.keepers.len() {
            let n = per_keeper.min(left);
            left -= n;
            work.push(if n > 0 {
                vec![self.load_line("time_wait", n)]
            } else {
                Vec::new()
            });
        }
        let replies = run_parallel(&mut self.keepers, &work)?;
        for (keeper, reply) in replies.into_iter().enumerate() {
            for value in reply {
                self.time_wait.push(TimeWaitBatch {
                    keeper,
                    listener: value["listener"].as_str().unwrap_or_default().to_string(),
                    built: Instant::now(),
                });
            }
        }
        Ok(())
    }
}

/// Sends each actor its commands and waits for all replies, actors working in parallel.
fn run_parallel(actors: &mut [Actor], work: &[Vec<String>]) -> Result<Vec<Vec<Value>>, String> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = actors
            .iter_mut()
            .zip(work)
            .map(|(actor, lines)| {
                scope.spawn(move || {
                    lines
                        .iter()
                        .map(|line| actor.cmd(line))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}
