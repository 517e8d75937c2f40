//! Timing: wall and CPU time of in-process work (the calling thread's rusage) and of
//! child commands (their own rusage, from wait4), plus the non-exporter competitors
//! that run in-process: /proc/net/tcp{,6} and a bare readlink pass over /proc/PID/fd.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one run of one method cost.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cost {
    pub wall: Duration,
    pub cpu: Duration,
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
}

/// CPU time (user + system) of the calling thread so far, from the scheduler's
/// nanosecond runtime (rusage would round to clock ticks).
pub fn thread_cpu() -> Duration {
    tcpstate_testkit::churn::thread_cpu_time()
}

/// Runs `f` on this thread and returns its result with its wall and CPU time.
pub fn time<T>(f: impl FnOnce() -> T) -> (T, Cost) {
    let (cpu0, wall0) = (thread_cpu(), Instant::now());
    let value = f();
    let cost = Cost {
        wall: wall0.elapsed(),
        cpu: thread_cpu().saturating_sub(cpu0),
    };
    (value, cost)
}

/// Runs a command (in the caller thread's namespace: a child inherits it) with its
/// output discarded; CPU is the child's own user + system time.
pub fn run_child(program: &str, args: &[&str]) -> Result<Cost, String> {
    let start = Instant::now();
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our unwaited child.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    if rc != pid {
        return Err(format!(
            "wait4 {program}: {}",
            std::io::Error::last_os_error()
        ));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!(
            "{program} {} failed: status {status}",
            args.join(" ")
        ));
    }
    Ok(Cost {
        wall,
        cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
    })
}

/// Reads /proc/net/tcp and tcp6 of this thread's namespace (thread-self: /proc/net
/// follows the process's main thread, which stays outside) and counts the lines.
pub fn read_proc_net() -> Result<u64, String> {
    let mut buffer = vec![0u8; 1 << 20];
    let mut lines = 0u64;
    for path in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
        let mut file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
        loop {
            let n = file.read(&mut buffer).map_err(|e| format!("{path}: {e}"))?;
            if n == 0 {
                break;
            }
            lines += buffer[..n].iter().filter(|b| **b == b'\n').count() as u64;
        }
        lines -= 1; // the header
    }
    Ok(lines)
}

/// What attribution cannot avoid on a cold cache: list the fds of `pids` and readlink
/// each. Returns the socket links found.
pub fn readlink_fds(pids: &[u32]) -> u64 {
    let mut sockets = 0;
    for pid in pids {
        let Ok(listing) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for entry in listing.flatten() {
            if let Ok(target) = std::fs::read_link(entry.path())
                && target
                    .as_os_str()
                    .as_encoded_bytes()
                    .starts_with(b"socket:[")
            {
                sockets += 1;
            }
        }
    }
    sockets
}

/// A `Key: value kB` line of /proc/PID/status, in bytes.
pub fn status_kib(pid: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// utime + stime of a process from /proc/PID/stat.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// Median of the walls and, separately, of the CPU times.
pub fn median(costs: &[Cost]) -> Cost {
    let pick = |mut v: Vec<Duration>| {
        v.sort();
        if v.is_empty() {
            Duration::ZERO
        } else if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2
        }
    };
    Cost {
        wall: pick(costs.iter().map(|c| c.wall).collect()),
        cpu: pick(costs.iter().map(|c| c.cpu).collect()),
    }
}
